//! Certificate rotation over real sockets: the injector serves from files laid out as a
//! Kubernetes Secret volume (`tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`), the
//! kubelet's atomic writer swaps `..data`, and the next handshake presents the new certificate,
//! while a broken or mismatched update leaves the old one served.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ferry_injector::{
    InjectorConfig,
    certs::{self, CaPem, Sans},
    metrics::Metrics,
    server::{self, Webhook},
    tls::{CertFiles, CertStore, TlsMaterial, watch_files},
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsConnector;

/// Writes `m` the way the kubelet updates a Secret volume: a new timestamped directory, then an
/// atomic rename of a fresh `..data` symlink over the old one.
fn publish(dir: &Path, generation: u32, cert: &str, key: &str) {
    let data = dir.join(format!("..2026_11_22_{generation:04}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert).unwrap();
    std::fs::write(data.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(PathBuf::from("..data").join(name), &link).unwrap();
        }
    }
}

fn leaf_der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

struct Injector {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    client: TlsConnector,
}

impl Injector {
    /// The leaf certificate presented by a new TLS handshake.
    async fn presented(&self) -> Vec<u8> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::IpAddress(self.addr.ip().into());
        let tls = self.client.connect(name, tcp).await.expect("handshake");
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// An admission round trip over a new connection.
    async fn admits(&self) -> bool {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::IpAddress(self.addr.ip().into());
        let Ok(mut tls) = self.client.connect(name, tcp).await else {
            return false;
        };
        let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":{"metadata":{},"spec":{"containers":[]}}}}"#;
        let req = format!(
            "POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out).await;
        out.starts_with("HTTP/1.1 200") && out.contains("\"allowed\":true")
    }

    fn reloads(&self, result: &str) -> u64 {
        let text = self.metrics.encode();
        let key = format!(
            "ferry_injector_certificate_reloads_total{{source=\"files\",result=\"{result}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

async fn start(dir: &Path, ca: &CaPem) -> Injector {
    let metrics = Arc::new(Metrics::default());
    let store = CertStore::new(metrics.clone());
    let files = CertFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca: None,
    };
    store.install(files.read().unwrap(), "files").unwrap();
    tokio::spawn(watch_files(store.clone(), files, Duration::from_millis(50)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = server::webhook_router(Arc::new(Webhook {
        config: InjectorConfig::default(),
        metrics: metrics.clone(),
        body_timeout: server::BODY_TIMEOUT,
    }));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(store.server_config()));
    tokio::spawn(server::serve(
        listener,
        Some(acceptor),
        router,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(leaf_der(&ca.cert))).unwrap();
    let client = ClientConfig::builder_with_provider(ferry_injector::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Injector {
        addr,
        metrics,
        client: TlsConnector::from(Arc::new(client)),
    }
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rotation_through_a_secret_volume_swap() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let ca = certs::new_ca(now).unwrap();
    let sans = Sans {
        dns: vec!["ferry-injector".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
    };
    let issue = || certs::issue(&ca, &sans, now).unwrap();
    let first: TlsMaterial = issue();
    publish(dir.path(), 1, &first.cert_pem, &first.key_pem);
    let inj = start(dir.path(), &ca).await;
    assert_eq!(inj.presented().await, leaf_der(&first.cert_pem));
    assert!(inj.admits().await);

    // Two rotations: each is served by the next handshakes, and admission keeps working.
    let mut served = first;
    for generation in 2..=3 {
        let next = issue();
        publish(dir.path(), generation, &next.cert_pem, &next.key_pem);
        let want = leaf_der(&next.cert_pem);
        until("the rotated certificate is served", async || {
            inj.presented().await == want
        })
        .await;
        assert!(inj.admits().await);
        served = next;
    }
    assert_eq!(inj.reloads("ok"), 3);

    // A broken certificate is refused; the previous one stays.
    publish(
        dir.path(),
        4,
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
        &served.key_pem,
    );
    until("the broken update is noticed", async || {
        inj.reloads("failed") >= 1
    })
    .await;
    assert_eq!(inj.presented().await, leaf_der(&served.cert_pem));
    assert!(inj.admits().await);

    // So is a certificate with somebody else's key.
    let other = issue();
    publish(dir.path(), 5, &other.cert_pem, &served.key_pem);
    until("the mismatched update is noticed", async || {
        inj.reloads("failed") >= 2
    })
    .await;
    assert_eq!(inj.presented().await, leaf_der(&served.cert_pem));

    // Fixing the files is picked up again.
    publish(dir.path(), 6, &other.cert_pem, &other.key_pem);
    let want = leaf_der(&other.cert_pem);
    until("the fixed certificate is served", async || {
        inj.presented().await == want
    })
    .await;
    assert!(inj.admits().await);
}
