//! The daprd flags the injector writes, on a real `ferryd`: kubernetes mode (no registry, no
//! writes, other app IDs fail fast), `/metrics`, `--app-max-concurrency`, app health checks,
//! listen addresses the machine lacks, and start-up errors.
//!
//! Kubernetes-mode sidecars do not register, so they are started here with explicit ports and
//! found through their public health port.

mod common;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, oneshot},
    task::JoinHandle,
};

// === A kubernetes-mode ferryd ===

/// A port on 127.0.0.1 that was free a moment ago (the flags do not take 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private directory used as `HOME` and `FERRY_HOME`: kubernetes mode must leave it empty.
struct Home(PathBuf);

impl Home {
    fn new(test: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ferry-k8s-{test}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// Everything under the directory, recursively.
    fn contents(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                }
                out.push(p);
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The ports given to one kubernetes-mode sidecar.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    internal: u16,
    public: u16,
    metrics: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            http: free_port(),
            internal: free_port(),
            public: free_port(),
            metrics: free_port(),
        }
    }
}

/// `ferry_injector::inject::sidecar_args` for a pod in namespace `shop` (see the injector's
/// `defaults` fixture), on free ports, followed by `extra`.
fn injected_args(app_id: &str, ports: Ports, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--mode",
        "kubernetes",
        "--dapr-http-port",
        &ports.http.to_string(),
        "--dapr-grpc-port",
        "0",
        "--dapr-internal-grpc-port",
        &ports.internal.to_string(),
        "--dapr-listen-addresses",
        "[::1],127.0.0.1",
        "--dapr-public-port",
        &ports.public.to_string(),
        "--app-id",
        app_id,
        "--app-protocol",
        "http",
        "--namespace",
        "shop",
        "--log-level",
        "info",
        "--dapr-graceful-shutdown-seconds",
        "-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A `ferryd` process, killed on drop (its log printed if the test failed).
struct Ferryd {
    child: Child,
    log: PathBuf,
    ports: Ports,
}

impl Ferryd {
    /// Starts `ferryd ARGS` with the injector's env, and waits until the public port's
    /// `/v1.0/healthz` answers 204.
    async fn start(home: &Home, ports: Ports, args: &[String]) -> Self {
        Self::start_env(home, ports, args, &[]).await
    }

    /// [`Self::start`] with more environment variables.
    async fn start_env(home: &Home, ports: Ports, args: &[String], env: &[(&str, &str)]) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "ferryd-k8s-{}-{}.log",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(ferryd())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home.0)
            .env("FERRY_HOME", &home.0)
            // What the injected container gets (injector/src/inject.rs sidecar_container).
            .env("NAMESPACE", "shop")
            .env("POD_NAME", "orders-7d4b9c-x2x9z")
            .env("POD_IP", "127.0.0.1")
            .env("DAPR_CONTROLPLANE_NAMESPACE", "ferry-system")
            .env("DAPR_CONTROLPLANE_TRUST_DOMAIN", "cluster.local")
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn ferryd");
        let mut f = Self { child, log, ports };
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = f.child.try_wait().unwrap() {
                panic!("ferryd exited early ({status}):\n{}", f.log_text());
            }
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                try_send(get_req(&f.public("/v1.0/healthz"))),
            )
            .await;
            if let Ok(Ok(r)) = probe
                && r.status == StatusCode::NO_CONTENT
            {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "ferryd never became ready:\n{}",
                f.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.http)
    }

    fn public(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.public)
    }

    fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.ports.metrics)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ferryd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- ferryd log ---\n{}", self.log_text());
        }
        let _ = fs::remove_file(&self.log);
    }
}

fn endpoint_yaml(name: &str, base_url: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: {name}\nspec:\n  baseUrl: {base_url}\n"
    )
}

/// Calls `url` until `done` accepts the answer, failing after [`STEP`].
async fn until(url: &str, what: &str, done: impl Fn(&Resp) -> bool) -> Resp {
    let deadline = Instant::now() + STEP;
    loop {
        let r = get(url).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `series` (name and labels, exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

async fn scrape(url: &str) -> String {
    let r = get(url).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    r.text()
}

// === kubernetes mode ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_starts_with_the_injected_arguments_and_writes_nothing() {
    let home = Home::new("start");
    let app = TestApp::start("orders-app").await;
    let ports = Ports::free();
    let app_port = app.port.to_string();
    let metrics_port = ports.metrics.to_string();
    // Every optional flag the injector can add, except --app-ssl (the test app speaks HTTP).
    let args = injected_args(
        "orders",
        ports,
        &[
            "--app-port",
            &app_port,
            "--log-as-json",
            "--enable-metrics",
            "--metrics-port",
            &metrics_port,
            "--config",
            "tracing",
            "--max-body-size",
            "16Mi",
            "--dapr-http-max-request-size",
            "16",
            "--read-buffer-size",
            "8Ki",
            "--app-max-concurrency",
            "10",
            "--enable-app-health-check",
            "--app-health-check-path",
            "/healthz",
            "--app-health-probe-interval",
            "1",
            "--app-health-probe-timeout",
            "250",
            "--app-health-threshold",
            "2",
        ],
    );
    let f = Ferryd::start(&home, ports, &args).await;

    assert_eq!(get(&f.public("/v1.0/healthz")).await.status, 204);
    // No Kubernetes API configuration here (no service account, no KUBECONFIG): readiness does
    // not depend on the API, outbound health says what is missing.
    let r = get(&f.public("/v1.0/healthz/outbound")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_OUTBOUND_HEALTH_NOT_READY");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("dapr outbound is not ready: no Kubernetes API configuration"),
        "{}",
        r.text()
    );
    // The internal port listens on all interfaces (peers come by pod IP).
    tokio::net::TcpStream::connect(("127.0.0.1", ports.internal))
        .await
        .expect("the internal port listens");

    // Self-invocation works once the first health probe has passed.
    let r = until(
        &f.api("/v1.0/invoke/orders/method/hello?x=1"),
        "self-invocation",
        |r| r.status == 200,
    )
    .await;
    assert_eq!(r.echo().path(), "/hello?x=1");

    let meta = get(&f.public("/v1.0/metadata")).await.json();
    assert_eq!(meta["id"], "orders");
    assert_eq!(meta["extended"]["namespace"], "shop");
    assert_eq!(meta["extended"]["configuration"], "tracing");
    let props = &meta["appConnectionProperties"];
    assert_eq!(props["port"], app.port);
    assert_eq!(props["maxConcurrency"], 10);
    assert_eq!(
        props["health"],
        serde_json::json!({
            "healthCheckPath": "/healthz",
            "healthProbeInterval": "1s",
            "healthProbeTimeout": "250ms",
            "healthThreshold": 2,
        })
    );
    assert!(
        scrape(&f.metrics_url())
            .await
            .contains(r#"dapr_http_healthprobes_completed_count{app_id="orders",status="200"}"#)
    );

    // No registry, nothing else either: the pod's root filesystem is read-only.
    assert_eq!(home.contents(), Vec::<PathBuf>::new());

    // One line per warning, each once, as JSON.
    let log = f.log_text();
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| {
            panic!("--log-as-json wrote a line that is not JSON ({e}): {line}")
        });
    }
    assert_eq!(
        log.matches(
            "cannot watch the Configuration tracing (--config): no Kubernetes API configuration"
        )
        .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("--dapr-http-max-request-size 16 is deprecated and ignored")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_fails_other_app_ids_clearly_and_keeps_local_and_external_calls() {
    let home = Home::new("resolve");
    let app = TestApp::start("orders-app").await;
    let ext = TestApp::start("ext").await;
    // The resources live outside the directory that must stay untouched.
    let resources = Home::new("resources");
    fs::write(
        resources.0.join("catalog.yaml"),
        endpoint_yaml("catalog", &format!("http://127.0.0.1:{}/api", ext.port)),
    )
    .unwrap();

    let ports = Ports::free();
    let app_port = app.port.to_string();
    let metrics_port = ports.metrics.to_string();
    let args = injected_args(
        "orders",
        ports,
        &[
            "--app-port",
            &app_port,
            "--resources-path",
            resources.0.to_str().unwrap(),
            "--enable-metrics",
            "--metrics-port",
            &metrics_port,
        ],
    );
    let f = Ferryd::start(&home, ports, &args).await;

    for (target, app_id, ns) in [
        ("cart", "cart", "shop"),
        ("cart.billing", "cart", "billing"),
    ] {
        let started = Instant::now();
        let r = get(&f.api(&format!("/v1.0/invoke/{target}/method/x"))).await;
        // Fails at once: no lookup, no connection attempt (those would take seconds).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{target}: slow failure"
        );
        let msg = r.invoke_error(500);
        assert!(
            msg.contains(&format!("'{app_id}'")) && msg.contains(&format!("'{ns}'")),
            "{target}: {msg}"
        );
        assert!(
            msg.contains("no Kubernetes API configuration"),
            "{target}: {msg}"
        );
    }
    let r = call("GET", &f.api("/any/path"), &[("dapr-app-id", "cart")], "").await;
    assert!(r.invoke_error(500).contains("Kubernetes API"));

    // What needs no lookup still works: self (also as orders.shop), an HTTPEndpoint, a URL.
    assert_eq!(
        get(&f.api("/v1.0/invoke/orders/method/self"))
            .await
            .echo()
            .app(),
        "orders-app"
    );
    assert_eq!(
        get(&f.api("/v1.0/invoke/orders.shop/method/self"))
            .await
            .echo()
            .app(),
        "orders-app"
    );
    let e = get(&f.api("/v1.0/invoke/catalog/method/items"))
        .await
        .echo();
    assert_eq!((e.app(), e.path()), ("ext", "/api/items"));
    let e = get(&f.api(&format!(
        "/v1.0/invoke/http://127.0.0.1:{}/method/direct",
        ext.port
    )))
    .await
    .echo();
    assert_eq!((e.app(), e.path()), ("ext", "/direct"));

    // Metrics: the HTTPEndpoint call counts (labelled with its name); self-invocation, URL
    // calls and failed lookups do not, as in Dapr.
    let text = scrape(&f.metrics_url()).await;
    assert_eq!(
        sample(
            &text,
            r#"dapr_runtime_service_invocation_req_sent_total{app_id="orders",dst_app_id="catalog",type="unary"}"#
        ),
        Some(1),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"dapr_runtime_service_invocation_res_recv_total{app_id="orders",src_app_id="catalog",status="200",type="unary"}"#
        ),
        Some(1),
        "{text}"
    );
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("dapr_runtime_service_invocation_"))
        .collect();
    assert_eq!(series.len(), 2, "{text}");
    assert_eq!(home.contents(), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_serves_while_the_api_is_unreachable_and_calls_fail_with_its_error() {
    let home = Home::new("no-api");
    let app = TestApp::start("orders-app").await;
    // An API server address where nothing listens: every request is refused at once.
    let closed = free_port();
    let kubeconfig = home.0.join("kubeconfig");
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:{closed}\", insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let ports = Ports::free();
    let app_port = app.port.to_string();
    let args = injected_args(
        "orders",
        ports,
        &["--app-port", &app_port, "--kube-sync-timeout-seconds", "1"],
    );
    let launched = Instant::now();
    let f = Ferryd::start_env(
        &home,
        ports,
        &args,
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    )
    .await;

    // Ready (Ferryd::start waited for /v1.0/healthz) although the API never answered; outbound
    // health says what is missing and why.
    let r = until(
        &f.public("/v1.0/healthz/outbound"),
        "outbound health to report the API's error",
        |r| r.status == 500 && r.text().contains("last error"),
    )
    .await;
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.starts_with(
            "dapr outbound is not ready: RoutingTable shop/ferry: not synced yet (last error: "
        ),
        "{msg}"
    );
    assert!(msg.contains("EndpointSlices of namespace shop"), "{msg}");

    // The own namespace's watches started with the sidecar: once the sync timeout has passed,
    // a call fails at once, with the API's error.
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(launched.elapsed())).await;
    let started = Instant::now();
    let msg = get(&f.api("/v1.0/invoke/cart/method/x"))
        .await
        .invoke_error(500);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert!(
        msg.contains("failed to resolve address for 'cart' in namespace 'shop': the Kubernetes API at https://127.0.0.1:"),
        "{msg}"
    );
    assert!(
        msg.contains("has not listed namespace 'shop'") && msg.contains("last error: "),
        "{msg}"
    );

    // Another namespace: the first call waits for its first list, about the sync timeout, and
    // no longer; the next ones fail at once.
    let started = Instant::now();
    let msg = get(&f.api("/v1.0/invoke/cart.billing/method/x"))
        .await
        .invoke_error(500);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(
        msg.contains("has not listed namespace 'billing' within 1s"),
        "{msg}"
    );
    let started = Instant::now();
    get(&f.api("/v1.0/invoke/cart.billing/method/x"))
        .await
        .invoke_error(500);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // Self-invocation needs no lookup.
    let r = get(&f.api("/v1.0/invoke/orders/method/self")).await;
    assert_eq!(r.echo().app(), "orders-app");
    assert_eq!(home.contents(), vec![kubeconfig]);
}

// === /metrics ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_both_sides_of_a_call_with_daprs_names() {
    let mesh = Mesh::new("metrics");
    let app = TestApp::start("b-app").await;
    let (mb, ma) = (free_port(), free_port());
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&["--enable-metrics", "--metrics-port", &mb.to_string()])
        .start()
        .await;
    let a = mesh
        .sidecar("a")
        .args(&["--enable-metrics", "--metrics-port", &ma.to_string()])
        .start()
        .await;
    let a_metrics = format!("http://127.0.0.1:{ma}/metrics");
    let b_metrics = format!("http://127.0.0.1:{mb}/metrics");

    // Self-invocation records nothing (Dapr's invokeLocal does not either)...
    assert_eq!(get(&b.url("/v1.0/invoke/b/method/self")).await.status, 200);
    let text = scrape(&b_metrics).await;
    assert!(!text.contains("dapr_runtime_service_invocation"), "{text}");

    // ...a call to another app is counted on both sides.
    assert_eq!(get(&a.url("/v1.0/invoke/b/method/one")).await.status, 200);
    let r = call("POST", &a.url("/v1.0/invoke/b/method/status/503"), &[], "x").await;
    assert_eq!(r.status, 503);

    let a_text = scrape(&a_metrics).await;
    for (series, want) in [
        (
            r#"dapr_runtime_service_invocation_req_sent_total{app_id="a",dst_app_id="b",type="unary"}"#,
            2,
        ),
        (
            r#"dapr_runtime_service_invocation_res_recv_total{app_id="a",src_app_id="b",status="200",type="unary"}"#,
            1,
        ),
        (
            r#"dapr_runtime_service_invocation_res_recv_total{app_id="a",src_app_id="b",status="503",type="unary"}"#,
            1,
        ),
    ] {
        assert_eq!(sample(&a_text, series), Some(want), "{series}\n{a_text}");
    }
    let b_text = scrape(&b_metrics).await;
    for (series, want) in [
        (
            r#"dapr_runtime_service_invocation_req_recv_total{app_id="b",src_app_id="a"}"#,
            2,
        ),
        (
            r#"dapr_runtime_service_invocation_res_sent_total{app_id="b",dst_app_id="a",status="200"}"#,
            1,
        ),
        (
            r#"dapr_runtime_service_invocation_res_sent_total{app_id="b",dst_app_id="a",status="503"}"#,
            1,
        ),
    ] {
        assert_eq!(sample(&b_text, series), Some(want), "{series}\n{b_text}");
    }
    // Labels never carry paths.
    assert!(!a_text.contains("status/503") && !b_text.contains("/one"));

    // Only /metrics is served there.
    assert_eq!(
        get(&format!("http://127.0.0.1:{ma}/v1.0/healthz"))
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_without_the_flag_and_a_busy_port_is_a_start_error() {
    let mesh = Mesh::new("metrics-off");
    let port = free_port();
    let _a = mesh
        .sidecar("a")
        .args(&["--metrics-port", &port.to_string()])
        .start()
        .await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "metrics are off unless --enable-metrics is given"
    );

    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let busy = taken.local_addr().unwrap().port().to_string();
    let out = tokio::process::Command::new(ferryd())
        .env_clear()
        .env("FERRY_HOME", &mesh.home)
        .args([
            "--app-id",
            "x",
            "--dapr-http-port",
            "0",
            "--dapr-grpc-port",
            "0",
        ])
        .args(["--enable-metrics", "--metrics-port", &busy])
        .kill_on_drop(true)
        .output();
    let out = step("ferryd on a busy metrics port", out).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--metrics-port"), "{stderr}");
}

// === A test app with gates ===

/// What [`GateApp`] saw, in order: `arrive <n>`, `finish <n>`.
#[derive(Default)]
struct GateState {
    events: Mutex<Vec<String>>,
    changed: Notify,
    /// Release `/gate/<n>`'s body.
    gates: Mutex<BTreeMap<String, oneshot::Sender<()>>>,
    /// What `/healthz` answers.
    health: AtomicU16,
    probes: AtomicUsize,
}

impl GateState {
    fn push(&self, e: String) {
        self.events.lock().unwrap().push(e);
        self.changed.notify_waiters();
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `event` has happened, up to `limit`; says whether it did.
    async fn saw(&self, event: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if self.events().iter().any(|e| e == event) {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return self.events().iter().any(|e| e == event);
            }
        }
    }

    fn release(&self, n: &str) {
        let tx = self
            .gates
            .lock()
            .unwrap()
            .remove(n)
            .unwrap_or_else(|| panic!("gate {n} is not waiting"));
        let _ = tx.send(());
    }
}

/// Routes: `/gate/<n>` sends its head and `start`, waits for [`GateState::release`], then
/// sends `end`; `/healthz` answers [`GateState::health`]; anything else 200 `ok`.
struct GateApp {
    port: u16,
    state: Arc<GateState>,
    task: JoinHandle<()>,
}

impl GateApp {
    async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(GateState {
            health: AtomicU16::new(200),
            ..Default::default()
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| gate_route(st.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { port, state, task }
    }
}

impl Drop for GateApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gate_route(
    st: Arc<GateState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        st.probes.fetch_add(1, Ordering::SeqCst);
        let status = st.health.load(Ordering::SeqCst);
        return Ok(Response::builder()
            .status(status)
            .body(full("health"))
            .unwrap());
    }
    let Some(n) = path.strip_prefix("/gate/").map(str::to_owned) else {
        return Ok(Response::new(full("ok")));
    };
    let (tx, rx) = oneshot::channel();
    st.gates.lock().unwrap().insert(n.clone(), tx);
    st.push(format!("arrive {n}"));
    let frames = futures_util::stream::unfold((0, Some(rx), st, n), |(i, rx, st, n)| async move {
        match i {
            0 => Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"start"))),
                (1, rx, st, n),
            )),
            1 => {
                let _ = rx?.await;
                st.push(format!("finish {n}"));
                Some((
                    Ok(Frame::data(Bytes::from_static(b"end"))),
                    (2, None, st, n),
                ))
            }
            _ => None,
        }
    });
    Ok(Response::new(
        http_body_util::StreamBody::new(frames).boxed_unsync(),
    ))
}

/// Starts a request and returns once its response head and first chunk have arrived.
async fn open(url: String) -> Response<Incoming> {
    let mut resp = step("response head", client().request(get_req(&url)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = step("first chunk", resp.body_mut().frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "start");
    resp
}

async fn rest(resp: Response<Incoming>) -> Bytes {
    step("rest of the body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes()
}

// === --app-max-concurrency ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_one_holds_the_second_request_until_the_first_body_ends() {
    let mesh = Mesh::new("concurrency");

    // Without a limit, the harness sees two requests inside the app at once.
    let free = GateApp::start().await;
    let b = mesh.sidecar("b").app_port(free.port).start().await;
    let one = open(b.url("/v1.0/invoke/b/method/gate/1")).await;
    let two = tokio::spawn(open(b.url("/v1.0/invoke/b/method/gate/2")));
    assert!(
        free.state.saw("arrive 2", STEP).await,
        "no limit: both arrive"
    );
    free.state.release("1");
    free.state.release("2");
    assert_eq!(rest(one).await, "end");
    assert_eq!(rest(two.await.unwrap()).await, "end");
    drop(b);

    // With --app-max-concurrency 1 (self-invocation delivers to the app like a peer does).
    let app = GateApp::start().await;
    let c = mesh
        .sidecar("c")
        .app_port(app.port)
        .args(&["--app-max-concurrency", "1"])
        .start()
        .await;
    let one = open(c.url("/v1.0/invoke/c/method/gate/1")).await;
    let second = tokio::spawn(open(c.url("/v1.0/invoke/c/method/gate/2")));
    // It queues (no 429) and stays out of the app while the first body is open. (A broken
    // limit lets it in within this wait; a working one can only pass it.)
    assert!(
        !app.state.saw("arrive 2", Duration::from_secs(1)).await,
        "the second request reached the app while the first body was open: {:?}",
        app.state.events()
    );
    assert!(!second.is_finished());
    app.state.release("1");
    assert_eq!(rest(one).await, "end");
    assert!(
        app.state.saw("arrive 2", STEP).await,
        "{:?}",
        app.state.events()
    );
    app.state.release("2");
    assert_eq!(rest(second.await.unwrap()).await, "end");
    assert_eq!(
        app.state.events(),
        ["arrive 1", "finish 1", "arrive 2", "finish 2"]
    );
}

// === app health checks ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_app_gets_no_requests_until_it_recovers() {
    let mesh = Mesh::new("app-health");
    let app = GateApp::start().await;
    let metrics = free_port();
    mesh.write(
        "resources/direct.yaml",
        &endpoint_yaml("direct", &format!("http://127.0.0.1:{}", app.port)),
    );
    let res = mesh.home.join("resources");
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&[
            "--enable-app-health-check",
            "--app-health-probe-interval",
            "1",
            "--app-health-probe-timeout",
            "500",
            "--app-health-threshold",
            "2",
            "--enable-metrics",
            "--metrics-port",
            &metrics.to_string(),
            "--resources-path",
            res.to_str().unwrap(),
        ])
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;
    let from_a = a.url("/v1.0/invoke/b/method/work");
    let own = b.url("/v1.0/invoke/b/method/work");

    until(&from_a, "healthy at first", |r| r.status == 200).await;

    app.state.health.store(500, Ordering::SeqCst);
    let probes_before = app.state.probes.load(Ordering::SeqCst);
    let r = until(&from_a, "unhealthy after 2 failed probes", |r| {
        r.status == 500
    })
    .await;
    assert!(
        app.state.probes.load(Ordering::SeqCst) >= probes_before + 2,
        "unhealthy only after the threshold of failed probes"
    );
    let msg = r.invoke_error(500);
    assert!(msg.contains("app is not in a healthy state"), "{msg}");
    let msg = get(&own).await.invoke_error(500);
    assert!(msg.contains("app is not in a healthy state"), "{msg}");
    // HTTPEndpoint calls are not the app channel: unaffected.
    let r = get(&b.url("/v1.0/invoke/direct/method/work")).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));

    app.state.health.store(204, Ordering::SeqCst);
    until(&from_a, "healthy again after one good probe", |r| {
        r.status == 200
    })
    .await;
    assert_eq!(get(&own).await.text(), "ok");

    let text = scrape(&format!("http://127.0.0.1:{metrics}/metrics")).await;
    let count = |status: u16| {
        sample(
            &text,
            &format!(r#"dapr_http_healthprobes_completed_count{{app_id="b",status="{status}"}}"#),
        )
        .unwrap_or(0)
    };
    assert!(
        count(200) >= 1 && count(500) >= 2 && count(204) >= 1,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_passed_a_probe_is_unhealthy_from_the_start() {
    let mesh = Mesh::new("app-health-start");
    let app = GateApp::start().await;
    app.state.health.store(503, Ordering::SeqCst);
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&[
            "--enable-app-health-check",
            "--app-health-probe-interval",
            "1",
            "--app-health-threshold",
            "5",
        ])
        .start()
        .await;
    // Fewer than 5 probes have failed, yet nothing gets through: the app starts unhealthy.
    let msg = get(&b.url("/v1.0/invoke/b/method/work"))
        .await
        .invoke_error(500);
    assert!(msg.contains("app is not in a healthy state"), "{msg}");
    app.state.health.store(200, Ordering::SeqCst);
    until(
        &b.url("/v1.0/invoke/b/method/work"),
        "first good probe",
        |r| r.status == 200,
    )
    .await;
}

// === listen addresses and start-up errors ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_the_machine_lacks_is_skipped() {
    let mesh = Mesh::new("listen");
    // 192.0.2.1 (documentation space) stands in for [::1] on a host without IPv6.
    let a = mesh
        .sidecar("a")
        .args(&[
            "--dapr-listen-addresses",
            "192.0.2.1,127.0.0.1",
            "--log-level",
            "fatal",
        ])
        .start()
        .await;
    assert_eq!(get(&a.url("/v1.0/healthz")).await.status, 204);
    let log = a.log_text();
    assert!(
        !log.contains("INFO") && !log.contains("WARN"),
        "fatal logs errors only:\n{log}"
    );

    let out = tokio::process::Command::new(ferryd())
        .env_clear()
        .env("FERRY_HOME", &mesh.home)
        .args([
            "--app-id",
            "x",
            "--dapr-http-port",
            "0",
            "--dapr-grpc-port",
            "0",
        ])
        .args(["--dapr-listen-addresses", "192.0.2.1"])
        .kill_on_drop(true)
        .output();
    let out = step("ferryd with no usable address", out).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--dapr-listen-addresses"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_do_not_fit_together_exit_64_naming_them() {
    let mesh = Mesh::new("bad-flags");
    for (args, names) in [
        (
            &["--enable-app-health-check"][..],
            &["--enable-app-health-check", "--app-port"][..],
        ),
        (
            &[
                "--app-port",
                "5000",
                "--enable-app-health-check",
                "--app-health-probe-interval",
                "1",
                "--app-health-probe-timeout",
                "1500",
            ],
            &["--app-health-probe-timeout", "--app-health-probe-interval"],
        ),
        (&["--app-max-concurrency", "-2"], &["--app-max-concurrency"]),
        (
            &["--app-health-threshold", "0"],
            &["--app-health-threshold"],
        ),
        (&["--log-level", "trace"], &["--log-level"]),
        (&["--mode", "cluster"], &["--mode"]),
        (
            &["--dapr-http-max-request-size", "0"],
            &["--dapr-http-max-request-size"],
        ),
    ] {
        let out = tokio::process::Command::new(ferryd())
            .env_clear()
            .env("FERRY_HOME", &mesh.home)
            .args([
                "--app-id",
                "x",
                "--dapr-http-port",
                "0",
                "--dapr-grpc-port",
                "0",
            ])
            .args(args)
            .kill_on_drop(true)
            .output();
        let out = step("ferryd refusing flags", out).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        for name in names {
            assert!(
                stderr.contains(name),
                "{args:?} should name {name}: {stderr}"
            );
        }
    }
}
