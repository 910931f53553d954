//! ferryd against a CA on Sentry's contract (`--sentry-address`), with real processes: the CA
//! runs in the test (Ferry's `SentryService` over the signing core, as the operator hosts it),
//! the sidecars are real ferryd processes. Certificates with a short life are renewed under
//! load with no failed call; the CA away for a while stops nobody who holds a certificate, and
//! a new sidecar waits, not Ready, saying why; a root rotation (add the new root, switch the
//! issuer, remove the old root) under load fails no call.

#[path = "common/ca.rs"]
mod ca;
mod common;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ca::Ca;
use common::*;
use ferry_identity::CaMaterial;

/// Calls a → b from `workers` loops until stopped; returns (ok, failed, first failure).
fn load(
    a: &Sidecar,
    workers: usize,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, Vec<String>)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let url = a.url("/v1.0/invoke/b/method/load");
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (s, url) = (s.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut i = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let r = call("POST", &url, &[], &format!("{w}-{i}")).await;
                    if r.status == 200 {
                        ok += 1;
                    } else {
                        failed.push(format!("{}: {}", r.status, r.text()));
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, failed)
            }));
        }
        let mut all = (0, Vec::new());
        for t in tasks {
            let (ok, failed) = t.await.unwrap();
            all.0 += ok;
            all.1.extend(failed);
        }
        all
    });
    (stop, task)
}

fn anchors_file(mesh: &Mesh, pem: &str) -> PathBuf {
    // Written whole and renamed into place, as the kubelet updates a mounted ConfigMap.
    let tmp = mesh.write("trust/.ca.crt.tmp", pem);
    let path = mesh.home.join("trust/ca.crt");
    std::fs::rename(tmp, &path).unwrap();
    path
}

async fn expiry(sc: &Sidecar) -> String {
    get(&sc.url("/v1.0/metadata")).await.json()["extended"]["certificateExpiry"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_under_load_without_a_failed_call() {
    let mesh = Mesh::new("sentry-renew");
    let material = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let ca = Ca::start(&material, Duration::from_secs(5)).await;
    let anchors = anchors_file(&mesh, &material.root_cert);
    let args = ca.args(&anchors);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&args)
        .start()
        .await;
    let a = mesh.sidecar("a").args(&args).start().await;
    let first = expiry(&b).await;

    let (stop, task) = load(&a, 4);
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = task.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 100, "only {ok} calls");
    assert_ne!(expiry(&b).await, first, "b's certificate was never renewed");
    assert!(
        b.log_text()
            .matches("renewed the workload certificate")
            .count()
            >= 2,
        "{}",
        b.log_text()
    );
    // A sidecar that joins now meets b's renewed certificate in a fresh handshake.
    let c = mesh.sidecar("c").args(&args).start().await;
    assert_eq!(get(&c.url("/v1.0/invoke/b/method/x")).await.status, 200);
    eprintln!(
        "renewal under load: {ok} calls, 0 failed; CA signed {}",
        ca.signed.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_away_calls_go_on_and_a_new_sidecar_waits_not_ready() {
    let mesh = Mesh::new("sentry-away");
    let material = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let mut ca = Ca::start(&material, Duration::from_secs(3600)).await;
    let anchors = anchors_file(&mesh, &material.root_cert);
    let args = ca.args(&anchors);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&args)
        .start()
        .await;
    let a = mesh.sidecar("a").args(&args).start().await;

    ca.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (stop, task) = load(&a, 2);
    let mc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = mesh
        .sidecar("c")
        .args(&args)
        .args(&["--enable-metrics", "--metrics-port", &mc.to_string()])
        .start_unready()
        .await;
    // c has no certificate: not Ready, and it says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let r = get(&c.url("/v1.0/healthz")).await;
        if r.status == 500 && r.text().contains("cannot reach the CA") {
            break r.text();
        }
        assert!(
            Instant::now() < deadline,
            "{} {}\n{}",
            r.status,
            r.text(),
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains("ERR_HEALTH_NOT_READY") && reason.contains("[mtls]"),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = task.await.unwrap();
    assert!(
        failed.is_empty(),
        "calls failed while the CA was away: {:?}",
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 20, "only {ok} calls");

    let metrics = format!("http://127.0.0.1:{mc}/metrics");
    let text = get(&metrics).await.text();
    assert!(
        text.contains(
            r#"dapr_runtime_mtls_workload_cert_rotated_fail_total{app_id="c",reason="sentry_conn"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"ferry_mtls_workload_cert_expiry_timestamp_seconds{app_id="c"} 0"#),
        "{text}"
    );

    // The CA is back: c gets its certificate on its next try, and calls.
    ca.serve().await;
    c.wait_healthy().await;
    assert_eq!(get(&c.url("/v1.0/invoke/b/method/x")).await.status, 200);
    let text = get(&metrics).await.text();
    assert!(
        text.contains(r#"dapr_runtime_mtls_workload_cert_rotated_total{app_id="c"} 1"#),
        "{text}"
    );
    let expiry: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"ferry_mtls_workload_cert_expiry_timestamp_seconds{app_id="c"} "#)
        })
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now + 3000 && expiry <= now + 3600,
        "{expiry} vs {now}"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_under_load_fails_no_call() {
    let mesh = Mesh::new("sentry-rotate");
    let old = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let new = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let ttl = Duration::from_secs(4);
    let ca = Ca::start(&old, ttl).await;
    let anchors = anchors_file(&mesh, &old.root_cert);
    let args = ca.args(&anchors);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&args)
        .start()
        .await;
    let a = mesh.sidecar("a").args(&args).start().await;
    let (stop, task) = load(&a, 4);

    // 1. Trust both roots.
    let both = format!("{}{}", old.root_cert, new.root_cert);
    anchors_file(&mesh, &both);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 2. Sign with the new issuer; wait until every certificate is the new issuer's.
    ca.switch_issuer(&new, &both, ttl);
    tokio::time::sleep(ttl * 2).await;
    // 3. Trust only the new root.
    anchors_file(&mesh, &new.root_cert);
    ca.switch_issuer(&new, &new.root_cert, ttl);
    tokio::time::sleep(Duration::from_secs(4)).await;

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = task.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} calls failed during the rotation: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 100, "only {ok} calls");
    for sc in [&a, &b] {
        assert_eq!(
            sc.log_text().matches("the trust anchors changed").count(),
            2,
            "{}",
            sc.log_text()
        );
    }
    // A sidecar that trusts only the new root meets a and b in fresh handshakes.
    let c = mesh.sidecar("c").args(&args).start().await;
    assert_eq!(get(&c.url("/v1.0/invoke/b/method/x")).await.status, 200);
    eprintln!("root rotation under load: {ok} calls, 0 failed");
}
