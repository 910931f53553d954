//! Ferry against Dapr's own binaries, with real processes on both sides (`make interop` builds
//! them with e2e/dapr/build.sh and runs these; `make test` includes it):
//!
//! * ferryd gets its certificate from **Dapr's Sentry**, run as Dapr's self-hosted mTLS docs
//!   run it, with daprd's flags and daprd's defaults, and two ferryd call each other over mTLS
//!   with those certificates;
//! * **daprd** gets its certificate from **Ferry's CA** (the signing core and Sentry service the
//!   operator hosts) and serves mTLS with it: a client holding a certificate from Ferry's CA
//!   reaches daprd's internal gRPC port and sees daprd's SPIFFE ID; one from another CA is
//!   refused.
//!
//! They are `#[ignore]`d for a plain `cargo test`: they need `FERRY_DAPR_BIN`, the directory
//! holding `sentry` and `daprd`.

#[path = "common/ca.rs"]
mod ca;
mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use common::*;
use ferry_api::{AppId, Namespace, SpiffeId, TrustDomain};
use ferry_identity::{Authority, CaMaterial, Credentials, PendingKey, TrustBundle};
use ferry_sidecar::outbound::{
    mtls::PeerConnect,
    peers::{Connect, Peer},
};

fn dapr_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("FERRY_DAPR_BIN").expect(
        "FERRY_DAPR_BIN must name the directory holding Dapr's sentry and daprd: \
         `make interop` builds them (e2e/dapr/build.sh) and sets it",
    );
    let path = Path::new(&dir).join(name);
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

/// A Dapr process whose output goes to a file of the mesh; killed when dropped.
struct DaprProcess {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl DaprProcess {
    fn spawn(mesh: &Mesh, name: &'static str, args: &[String], env: &[(&str, &str)]) -> Self {
        let log = mesh.home.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(dapr_bin(name))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&mesh.home)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self { name, child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `url` answers `status`, failing with the process's log.
    async fn wait_for(&mut self, url: &str, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("{} exited ({exit}):\n{}", self.name, self.log_text());
            }
            if let Ok(r) = try_send(get_req(url)).await
                && r.status == status
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer {status} at {url} within 60 s:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn port() -> String {
    reserve_port().1.to_string()
}

/// A sample's value in Prometheus text (the sum over its label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Dapr's binaries: make interop"]
async fn ferryd_gets_its_certificate_from_dapr_sentry() {
    let mesh = Mesh::new("dapr-sentry");
    let creds = mesh.home.join("sentry-certs");
    std::fs::create_dir_all(&creds).unwrap();
    let (grpc, healthz, metrics) = (port(), port(), port());
    // As Dapr's self-hosted mTLS docs run it: a Configuration file for Sentry, the issuer
    // credentials generated on first start into the directory, and Sentry's own defaults for
    // its trust domain (localhost) and namespace (default).
    let config = mesh.write(
        "sentry-config.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprsystem\n\
         spec:\n  mtls:\n    enabled: true\n    workloadCertTTL: 24h\n    allowedClockSkew: 15m\n",
    );
    let mut sentry = DaprProcess::spawn(
        &mesh,
        "sentry",
        &[
            "--config",
            config.to_str().unwrap(),
            "--issuer-credentials",
            creds.to_str().unwrap(),
            "--port",
            &grpc,
            "--listen-address",
            "127.0.0.1",
            "--healthz-port",
            &healthz,
            "--healthz-listen-address",
            "127.0.0.1",
            "--metrics-port",
            &metrics,
            "--metrics-listen-address",
            "127.0.0.1",
        ]
        .map(String::from),
        &[],
    );
    sentry
        .wait_for(&format!("http://127.0.0.1:{healthz}/healthz"), 200)
        .await;
    let anchors = std::fs::read_to_string(creds.join("ca.crt")).unwrap();
    assert!(anchors.contains("BEGIN CERTIFICATE"), "{anchors}");

    // daprd's flags, daprd's defaults for the control plane (namespace `default`, trust domain
    // `localhost`), and the anchors in DAPR_TRUST_ANCHORS.
    let address = format!("127.0.0.1:{grpc}");
    let mtls = ["--enable-mtls", "--sentry-address", &address];
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&mtls)
        .env("DAPR_TRUST_ANCHORS", &anchors)
        .start()
        .await;
    let a = mesh
        .sidecar("a")
        .args(&mtls)
        .env("DAPR_TRUST_ANCHORS", &anchors)
        .start()
        .await;

    for i in 0..5 {
        let r = call(
            "POST",
            &a.url("/v1.0/invoke/b/method/pay"),
            &[("dapr-caller-app-id", "forged")],
            &format!("{i}"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let e = r.echo();
        assert_eq!(e.header("dapr-caller-app-id").as_deref(), Some("a"));
        assert_eq!(e.body(), format!("{i}"));
    }
    // Dapr's Sentry decides the trust domain: `public` when the request names none.
    for (sc, id) in [(&a, "a"), (&b, "b")] {
        let meta = get(&sc.url("/v1.0/metadata")).await.json();
        assert_eq!(
            meta["extended"]["spiffeID"],
            format!("spiffe://public/ns/default/{id}")
        );
    }
    // The certificates came from that Sentry: it counted two signed requests.
    let text = get(&format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .text();
    assert_eq!(
        metric(&text, "dapr_sentry_cert_sign_success_total"),
        2.0,
        "{text}"
    );
    assert_eq!(metric(&text, "dapr_sentry_cert_sign_failure_total"), 0.0);

    // A ferryd expecting another control plane refuses this Sentry, and says which it met.
    let wrong = mesh
        .sidecar("c")
        .args(&mtls)
        .args(&["--control-plane-namespace", "dapr-system"])
        .env("DAPR_TRUST_ANCHORS", &anchors)
        .start_unready()
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        let r = get(&wrong.url("/v1.0/healthz")).await;
        let log = wrong.log_text();
        if log.contains("spiffe://localhost/ns/default/dapr-sentry") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "{} {}\n{log}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        why.contains("not spiffe://localhost/ns/dapr-system/dapr-sentry"),
        "{why}"
    );
    assert_ne!(get(&wrong.url("/v1.0/healthz")).await.status, 204);
}

/// A certificate for `id` from `authority`, as the credentials a client presents.
fn credentials(authority: &Authority, anchors: &str, id: &SpiffeId) -> std::sync::Arc<Credentials> {
    let bundle = TrustBundle::from_pem(anchors).unwrap();
    let key = PendingKey::generate(id).unwrap();
    let signed = authority.sign(key.csr_pem().as_bytes(), id).unwrap();
    let svid = key.complete(&signed.chain_pem, id, &bundle).unwrap();
    let creds = Credentials::new(bundle);
    creds.set_svid(svid);
    creds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Dapr's binaries: make interop"]
async fn daprd_gets_its_certificate_from_ferrys_ca() {
    let mesh = Mesh::new("daprd-ferry-ca");
    let material = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let ca = ca::Ca::start(&material, Duration::from_secs(3600)).await;
    let resources = mesh.home.join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    let (http, grpc, internal, metrics) = (port(), port(), port(), port());
    let address = ca.addr.to_string();
    let mut daprd = DaprProcess::spawn(
        &mesh,
        "daprd",
        &[
            "--app-id",
            "orders",
            "--mode",
            "standalone",
            "--enable-mtls",
            "--sentry-address",
            &address,
            "--control-plane-namespace",
            "ferry-system",
            "--control-plane-trust-domain",
            "cluster.local",
            "--dapr-http-port",
            &http,
            "--dapr-grpc-port",
            &grpc,
            "--dapr-internal-grpc-port",
            &internal,
            "--dapr-listen-addresses",
            "127.0.0.1",
            "--metrics-port",
            &metrics,
            "--resources-path",
            resources.to_str().unwrap(),
            "--log-level",
            "debug",
        ]
        .map(String::from),
        &[("DAPR_TRUST_ANCHORS", &material.root_cert)],
    );
    daprd
        .wait_for(&format!("http://127.0.0.1:{http}/v1.0/healthz"), 204)
        .await;
    assert!(
        ca.signed.load(Ordering::Relaxed) >= 1,
        "daprd is up without a certificate from Ferry's CA:\n{}",
        daprd.log_text()
    );

    // daprd's internal port serves the certificate Ferry's CA signed for it, and takes ours.
    let authority = Authority::from_material(&material, Duration::from_secs(3600)).unwrap();
    let ours = SpiffeId::new(
        TrustDomain::default(),
        Namespace::new("default").unwrap(),
        AppId::new("checkout").unwrap(),
    );
    let creds = credentials(&authority, &material.root_cert, &ours);
    let addr = format!("127.0.0.1:{internal}").parse().unwrap();
    let peer = |callee: &'static str| Peer {
        addr,
        callee: http::HeaderValue::from_static(callee),
    };
    let connect = PeerConnect::mtls(ferry_identity::tls::client_config(&creds));
    let io = connect
        .connect(&peer("orders.default"))
        .await
        .unwrap_or_else(|e| panic!("mTLS to daprd: {e}\n{}", daprd.log_text()));
    // A gRPC call over that connection reaches daprd's gRPC server: for a method it does not
    // serve, daprd's service-invocation proxy answers that the call names no target app.
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 over mTLS with daprd");
    tokio::spawn(conn);
    let req = http::Request::post(format!("https://{addr}/ferry.test.Probe/Ping"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(vec![0u8, 0, 0, 0, 0]))
        .unwrap();
    let resp = send.send_request(req).await.expect("daprd answers");
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("content-type"), "application/grpc", "{resp:?}");
    assert!(
        header("grpc-message").contains("dapr-callee-app-id"),
        "{resp:?}"
    );
    // The identity check is the caller's: daprd is not `payments`.
    let err = connect
        .connect(&peer("payments.default"))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("is spiffe://public/ns/default/orders, not payments.default"),
        "{err}"
    );

    // A certificate from another CA does not get in.
    let other = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let other_authority = Authority::from_material(&other, Duration::from_secs(3600)).unwrap();
    let mut both = other.root_cert.clone();
    both.push_str(&material.root_cert);
    let foreign = credentials(&other_authority, &both, &ours);
    let refused = PeerConnect::mtls(ferry_identity::tls::client_config(&foreign));
    let outcome = async {
        let io = refused.connect(&peer("orders.default")).await?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = http::Request::post(format!("https://{addr}/ferry.test.Probe/Ping"))
            .header("content-type", "application/grpc")
            .body(full(vec![0u8, 0, 0, 0, 0]))
            .unwrap();
        send.send_request(req).await.map_err(std::io::Error::other)
    }
    .await;
    assert!(
        outcome.is_err(),
        "daprd took a certificate from a CA it does not trust: {outcome:?}"
    );
}
