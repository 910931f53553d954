//! External targets: HTTPEndpoint resources (headers, client TLS, mTLS, bad PKI, invalid
//! files) and full-URL (FQDN) invocation with its link-local guard and off switch.

mod common;

use std::sync::Arc;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
};
use tokio::net::TcpListener;

/// The headers only sidecar-to-sidecar calls carry.
const REMOTE_ONLY: [&str; 6] = [
    "dapr-caller-app-id",
    "dapr-caller-namespace",
    "dapr-callee-app-id",
    "x-forwarded-for",
    "x-forwarded-host",
    "forwarded",
];

fn endpoint_yaml(name: &str, base_url: &str, extra: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: {name}\nspec:\n  baseUrl: {base_url}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint_is_listed_and_called() {
    let mesh = Mesh::new("endpoint");
    let ext = TestApp::start("ext").await;
    let headers = "  headers:\n  - name: X-Override\n    value: from-endpoint\n  - name: X-Number\n    value: 42\n";
    mesh.write(
        "resources/ext.yaml",
        &endpoint_yaml(
            "ext-api",
            &format!("http://127.0.0.1:{}/api", ext.port),
            headers,
        ),
    );
    // Other kinds in the same folder are skipped.
    mesh.write(
        "resources/other.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.in-memory\n",
    );
    let res = mesh.home.join("resources");
    let a = mesh
        .sidecar("a")
        .args(&["--resources-path", res.to_str().unwrap()])
        .start()
        .await;

    let meta = get(&a.url("/v1.0/metadata")).await.json();
    assert_eq!(meta["id"], "a");
    assert_eq!(
        meta["httpEndpoints"],
        serde_json::json!([{"name": "ext-api"}])
    );

    let e = call(
        "PUT",
        &a.url("/v1.0/invoke/ext-api/method/x/y?q=1&q=2"),
        &[
            ("x-override", "from-caller"),
            ("dapr-caller-app-id", "spoof"),
            ("x-kept", "yes"),
        ],
        "data",
    )
    .await
    .echo();
    assert_eq!(e.path(), "/api/x/y?q=1&q=2");
    assert_eq!(e.method(), "PUT");
    assert_eq!(e.body(), "data");
    assert_eq!(e.header_all("x-override"), ["from-endpoint"]);
    assert_eq!(e.header("x-number").as_deref(), Some("42"));
    assert_eq!(e.header("x-kept").as_deref(), Some("yes"));
    for h in REMOTE_ONLY {
        assert!(!e.has(h), "{h} sent to an HTTPEndpoint: {:?}", e.0);
    }
    assert!(e.has("traceparent"));
    // The method is normalized before it is joined to baseUrl: it cannot climb out of /api.
    let r = get(&a.url("/v1.0/invoke/ext-api/method/../../status/418")).await;
    assert_eq!(r.echo().path(), "/api/status/418");
}

/// A CA and a certificate it signed for 127.0.0.1 (server) or a client.
struct Pki {
    ca_pem: String,
    roots: RootCertStore,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(cn: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        Self {
            ca_pem: ca.pem(),
            roots,
            ca,
        }
    }

    /// (cert PEM, key PEM, cert DER, key DER)
    fn issue(
        &self,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (
        String,
        String,
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
    ) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.pem(), key.serialize_pem(), cert.der().clone(), der)
    }
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("        {l}\n")).collect()
}

fn tls_yaml(name: &str, port: u16, root_ca: &str, client: Option<(&str, &str)>) -> String {
    let mut tls = format!(
        "  clientTLS:\n    rootCA:\n      value: |\n{}",
        indent(root_ca)
    );
    if let Some((cert, key)) = client {
        tls.push_str(&format!(
            "    certificate:\n      value: |\n{}    privateKey:\n      value: |\n{}",
            indent(cert),
            indent(key)
        ));
    }
    endpoint_yaml(name, &format!("https://127.0.0.1:{port}"), &tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint_client_tls() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pki = Pki::new("ferry test CA");
    let other = Pki::new("someone else's CA");
    let (_, _, srv_der, srv_key) = pki.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (cli_pem, cli_key_pem, _, _) =
        pki.issue(&["ferry-client"], ExtendedKeyUsagePurpose::ClientAuth);
    let (wrong_cli_pem, wrong_cli_key_pem, _, _) =
        other.issue(&["intruder"], ExtendedKeyUsagePurpose::ClientAuth);

    let server_cfg = |require_client: bool| {
        let b = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = if require_client {
            let v = WebPkiClientVerifier::builder_with_provider(
                Arc::new(pki.roots.clone()),
                provider.clone(),
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        } else {
            b.with_no_client_auth()
        };
        let mut cfg = b
            .with_single_cert(vec![srv_der.clone()], srv_key.clone_key())
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    };
    let listen = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let tls_app = TestApp::serve("tls", listen().await, Some(server_cfg(false)));
    let mtls_app = TestApp::serve("mtls", listen().await, Some(server_cfg(true)));

    let mesh = Mesh::new("client-tls");
    let files = [
        ("tls", tls_yaml("tls", tls_app.port, &pki.ca_pem, None)),
        (
            "mtls",
            tls_yaml(
                "mtls",
                mtls_app.port,
                &pki.ca_pem,
                Some((&cli_pem, &cli_key_pem)),
            ),
        ),
        (
            "bad-pki",
            tls_yaml("bad-pki", tls_app.port, &other.ca_pem, None),
        ),
        (
            "no-client-cert",
            tls_yaml("no-client-cert", mtls_app.port, &pki.ca_pem, None),
        ),
        (
            "wrong-client-cert",
            tls_yaml(
                "wrong-client-cert",
                mtls_app.port,
                &pki.ca_pem,
                Some((&wrong_cli_pem, &wrong_cli_key_pem)),
            ),
        ),
    ];
    for (name, yaml) in &files {
        mesh.write(&format!("resources/{name}.yaml"), yaml);
    }
    let res = mesh.home.join("resources");
    let a = mesh
        .sidecar("a")
        .args(&["--resources-path", res.to_str().unwrap()])
        .start()
        .await;
    let meta = get(&a.url("/v1.0/metadata")).await.json();
    assert_eq!(meta["httpEndpoints"].as_array().unwrap().len(), 5, "{meta}");

    let e = get(&a.url("/v1.0/invoke/tls/method/hello")).await.echo();
    assert_eq!((e.app(), e.path()), ("tls", "/hello"));
    assert_eq!(e.0["client_cert"], false);
    let e = get(&a.url("/v1.0/invoke/mtls/method/hello")).await.echo();
    assert_eq!((e.app(), e.path()), ("mtls", "/hello"));
    assert_eq!(
        e.0["client_cert"], true,
        "the client certificate was presented"
    );

    for bad in ["bad-pki", "no-client-cert", "wrong-client-cert"] {
        let msg = get(&a.url(&format!("/v1.0/invoke/{bad}/method/hello")))
            .await
            .invoke_error(500);
        assert!(
            msg.starts_with(&format!("failed to invoke, id: {bad}, err: ")),
            "{msg}"
        );
    }
    assert_eq!(
        mtls_app.request_count(),
        1,
        "only the good client got through"
    );
    // Still fine afterwards.
    assert_eq!(
        get(&a.url("/v1.0/invoke/tls/method/again"))
            .await
            .echo()
            .path(),
        "/again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_http_endpoint_files_stop_ferryd() {
    let mesh = Mesh::new("bad-endpoint");
    for (file, yaml) in [
        ("bad-url.yaml", endpoint_yaml("e", "ftp://127.0.0.1:1", "")),
        (
            "no-url.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: e\nspec: {}\n"
                .into(),
        ),
        ("bad-yaml.yaml", "apiVersion: [unclosed\n".into()),
        (
            "bad-ca.yaml",
            endpoint_yaml(
                "e",
                "https://127.0.0.1:1",
                "  clientTLS:\n    rootCA:\n      value: not a pem\n",
            ),
        ),
    ] {
        let dir = mesh.home.join(format!("res-{file}"));
        let path = mesh.write(&format!("res-{file}/{file}"), &yaml);
        let out = tokio::process::Command::new(ferryd())
            .env_clear()
            .env("FERRY_HOME", &mesh.home)
            .args(["--app-id", "a", "--dapr-http-port", "0", "--resources-path"])
            .arg(&dir)
            .kill_on_drop(true)
            .output();
        let out = step("ferryd refusing a bad resource", out).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{file}: {stderr}");
        assert!(
            stderr.contains(path.to_str().unwrap()),
            "{file}: the message should name the file: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fqdn_urls_reach_the_server() {
    let mesh = Mesh::new("fqdn");
    let ext = TestApp::start("ext").await;
    let a = mesh.sidecar("a").start().await;
    let port = ext.port;
    for (path, want) in [
        (
            format!("/v1.0/invoke/http://127.0.0.1:{port}/method/x?z=1"),
            "/x?z=1".to_owned(),
        ),
        (
            format!("/v1.0/invoke/http%3A%2F%2F127.0.0.1%3A{port}/method/y"),
            "/y".into(),
        ),
        (
            format!("/v1.0/invoke/http://127.0.0.1:{port}/base/method/z"),
            "/base/z".into(),
        ),
        (
            format!("/v1.0/invoke/http://localhost:{port}/method/"),
            "/".into(),
        ),
    ] {
        let e = call("POST", &a.url(&path), &[], "to-url").await.echo();
        assert_eq!(e.path(), want, "{path}");
        assert_eq!(e.body(), "to-url");
        for h in REMOTE_ONLY {
            assert!(!e.has(h), "{h} sent to a URL: {:?}", e.0);
        }
    }
    // Redirects from a URL target are not followed either.
    let r = get(&a.url(&format!(
        "/v1.0/invoke/http://127.0.0.1:{port}/method/redirect"
    )))
    .await;
    assert_eq!(r.status, 301);
    // Nothing listening: a clear 500.
    let (_reserved, closed) = reserve_port();
    let msg = get(&a.url(&format!("/v1.0/invoke/http://127.0.0.1:{closed}/method/x")))
        .await
        .invoke_error(500);
    assert!(msg.contains(&format!("127.0.0.1:{closed}")), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fqdn_link_local_and_metadata_addresses_are_refused() {
    // Refused before any connection is attempted: no packet leaves the machine.
    let mesh = Mesh::new("link-local");
    let a = mesh.sidecar("a").start().await;
    for target in [
        "http://169.254.169.254",
        "http://169.254.169.254:80",
        "http%3A%2F%2F169.254.169.254",
        "http://[fe80::1]:8080",
        "http://100.100.100.200",
        "http://[::ffff:169.254.169.254]",
    ] {
        let msg = get(&a.url(&format!("/v1.0/invoke/{target}/method/latest/meta-data")))
            .await
            .invoke_error(500);
        assert!(msg.contains("link-local"), "{target}: {msg}");
        assert!(msg.contains("--allow-fqdn-link-local"), "{target}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fqdn_invocation_can_be_turned_off() {
    let mesh = Mesh::new("fqdn-off");
    let ext = TestApp::start("ext").await;
    mesh.write(
        "resources/ext.yaml",
        &endpoint_yaml("ext", &format!("http://127.0.0.1:{}", ext.port), ""),
    );
    let res = mesh.home.join("resources");
    let a = mesh
        .sidecar("a")
        .args(&[
            "--disable-fqdn-invocation",
            "--resources-path",
            res.to_str().unwrap(),
        ])
        .start()
        .await;
    let url = format!("http://127.0.0.1:{}", ext.port);
    for target in [url.clone(), url.replace(':', "%3A").replace('/', "%2F")] {
        let msg = get(&a.url(&format!("/v1.0/invoke/{target}/method/x")))
            .await
            .invoke_error(500);
        assert!(msg.contains("--disable-fqdn-invocation"), "{msg}");
    }
    assert_eq!(ext.request_count(), 0);
    // Named endpoints still work.
    assert_eq!(
        get(&a.url("/v1.0/invoke/ext/method/ok"))
            .await
            .echo()
            .path(),
        "/ok"
    );
}

/// An app that calls its sidecar over HTTP/2 reaches HTTPEndpoints over HTTP/1.1 (the external
/// client speaks HTTP/1.1; the request's version is the sidecar's, not the app's). Before the
/// stacks were rebuilt, the app's HTTP/2 went along and the call failed with
/// `UserUnsupportedVersion`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_reaches_an_http_endpoint() {
    let mesh = Mesh::new("endpoint-h2");
    let ext = TestApp::start("ext").await;
    mesh.write(
        "resources/ext.yaml",
        &endpoint_yaml("ext-api", &format!("http://127.0.0.1:{}/api", ext.port), ""),
    );
    let res = mesh.home.join("resources");
    let a = mesh
        .sidecar("a")
        .args(&["--resources-path", res.to_str().unwrap()])
        .start()
        .await;
    let out = curl(&[
        "--http2-prior-knowledge",
        "-d",
        "h2 body",
        &a.url("/v1.0/invoke/ext-api/method/over-h2?x=1"),
    ])
    .await;
    assert_eq!(out.status_line, "HTTP/2 200", "{out:?}");
    let e = Echo(serde_json::from_str(&out.body).unwrap());
    assert_eq!(e.path(), "/api/over-h2?x=1");
    assert_eq!(e.body(), "h2 body");
}
