//! mTLS between sidecars with real processes, standalone: the local CA under FERRY_HOME issues
//! each sidecar's SVID; calls carry the caller's verified identity; the internal port refuses
//! whoever cannot prove one (the attack of issue 14); a caller never talks to a peer whose
//! certificate is another app's.

mod common;

use std::time::Duration;

use common::*;
use ferry_api::{AppId, Namespace, SpiffeId, TrustDomain};
use ferry_identity::{Authority, CaMaterial, Credentials, PendingKey, TrustBundle};
use ferry_sidecar::outbound::{
    mtls::PeerConnect,
    peers::{Connect, Peer},
};

const MTLS: &[&str] = &["--enable-mtls"];

/// The curl exit status and stderr of a request that must not get an answer.
async fn curl_fails(args: &[&str]) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run curl");
    assert!(
        !out.status.success(),
        "curl {args:?} got an answer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_the_callers_verified_identity() {
    let mesh = Mesh::new("mtls-calls");
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(MTLS)
        .start()
        .await;
    let a = mesh.sidecar("a").args(MTLS).start().await;

    for i in 0..5 {
        let r = call(
            "POST",
            &a.url("/v1.0/invoke/b/method/pay"),
            // What an app says about its caller is never what the callee's app sees.
            &[
                ("dapr-caller-app-id", "forged"),
                ("dapr-caller-namespace", "evil"),
            ],
            &format!("{i}"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let e = r.echo();
        assert_eq!(e.header("dapr-caller-app-id").as_deref(), Some("a"));
        assert_eq!(
            e.header("dapr-caller-namespace").as_deref(),
            Some("default")
        );
        assert_eq!(e.body(), format!("{i}"));
    }
    // A streamed body goes over the pooled HTTP/2 connection, inside TLS too.
    let big = "x".repeat(200 * 1024);
    let r = call("POST", &a.url("/v1.0/invoke/b/method/upload"), &[], &big).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().body_len(), big.len() as u64);

    let meta = get(&b.url("/v1.0/metadata")).await.json();
    assert_eq!(meta["extended"]["spiffeID"], "spiffe://public/ns/default/b");
    let expiry = meta["extended"]["certificateExpiry"].as_str().unwrap();
    assert!(expiry.ends_with('Z') && expiry.len() == 20, "{expiry}");
    assert!(
        mesh.home.join("ca/issuer.key").exists(),
        "the local CA lives under FERRY_HOME"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_port_refuses_whoever_cannot_prove_an_identity() {
    let mesh = Mesh::new("mtls-attack");
    let app = TestApp::start("payments-app").await;
    let payments = mesh
        .sidecar("payments")
        .app_port(app.port)
        .args(MTLS)
        .start()
        .await;
    let url = format!("http://{}/refund", payments.internal);
    let tls_url = format!("https://{}/refund", payments.internal);
    let forged = [
        "-H",
        "ferry-callee: payments.default",
        "-H",
        "dapr-caller-app-id: checkout",
        "-H",
        "dapr-caller-namespace: default",
        "-X",
        "POST",
    ];

    // Plaintext, as the attacker sends it.
    for protocol in ["--http1.1", "--http2-prior-knowledge"] {
        let mut args = vec![protocol];
        args.extend_from_slice(&forged);
        args.push(&url);
        curl_fails(&args).await;
    }
    // TLS without a client certificate.
    let mut args = vec!["-k"];
    args.extend_from_slice(&forged);
    args.push(&tls_url);
    curl_fails(&args).await;

    // TLS with a certificate for `checkout` from a CA the mesh does not trust.
    let m = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let other = Authority::from_material(&m, Duration::from_secs(3600)).unwrap();
    let checkout = SpiffeId::new(
        TrustDomain::default(),
        Namespace::new("default").unwrap(),
        AppId::new("checkout").unwrap(),
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let signed = other
        .sign(csr.pem().unwrap().as_bytes(), &checkout)
        .unwrap();
    let cert = mesh.write("attacker/cert.pem", &signed.chain_pem);
    let key = mesh.write("attacker/key.pem", &key.serialize_pem());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut args = vec!["-k", "--cert", cert, "--key", key];
    args.extend_from_slice(&forged);
    args.push(&tls_url);
    curl_fails(&args).await;

    assert_eq!(app.request_count(), 0, "a request reached the payments app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_caller_cannot_reach_an_mtls_callee() {
    let mesh = Mesh::new("mtls-mixed");
    let app = TestApp::start("b-app").await;
    let _b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(MTLS)
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;
    let r = get(&a.url("/v1.0/invoke/b/method/x")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.invoke_error(500)
            .starts_with("failed to invoke, id: b, err: ")
    );
    assert_eq!(app.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_never_talks_to_a_peer_that_is_another_app() {
    // A sidecar of `payments`, in-process, on the address the caller thinks is `checkout`'s
    // (a recycled pod IP).
    let m = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let ca = Authority::from_material(&m, Duration::from_secs(3600)).unwrap();
    let creds = |app: &str| {
        let id = SpiffeId::new(
            TrustDomain::default(),
            Namespace::new("prod").unwrap(),
            AppId::new(app).unwrap(),
        );
        let bundle = TrustBundle::from_pem(ca.trust_anchors_pem()).unwrap();
        let key = PendingKey::generate(&id).unwrap();
        let signed = ca.sign(key.csr_pem().as_bytes(), &id).unwrap();
        let c = Credentials::new(bundle.clone());
        c.set_svid(key.complete(&signed.chain_pem, &id, &bundle).unwrap());
        c
    };
    let server = creds("payments");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(ferry_identity::tls::server_config(&server));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _tls = acceptor.accept(tcp).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let connect = PeerConnect::mtls(ferry_identity::tls::client_config(&creds("checkout")));
    let peer = |tag: &'static str| Peer {
        addr,
        callee: http::HeaderValue::from_static(tag),
    };
    let err = connect
        .connect(&peer("checkout.prod"))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(
        err.to_string()
            .contains("is spiffe://public/ns/prod/payments, not checkout.prod"),
        "{err}"
    );
    for near in ["payments.staging", "payment.prod", "payments.pro"] {
        assert!(connect.connect(&peer(near)).await.is_err(), "{near}");
    }
    assert!(connect.connect(&peer("payments.prod")).await.is_ok());
}
