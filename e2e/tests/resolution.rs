//! ferryd's kubernetes mode against the real API server: app IDs resolved through RoutingTables
//! and EndpointSlices, endpoint changes reaching the sidecar, fast failures, serving from cache
//! while the API server is out of reach, and HTTPEndpoints with Secrets and client TLS.
//!
//! Every sidecar runs as a child process of the test (`target/debug/ferryd --mode kubernetes`)
//! with the cluster's admin kubeconfig, or one that goes through a TCP proxy the test can cut.
//! The tests write the RoutingTable (as ferry-operator would), the app Services `<app>-dapr` and
//! their EndpointSlices themselves; the slices are real objects of the API server, pointing at
//! peer sidecars that listen on the pod bridge's address (what a pod IP is on this node).
//! One test also checks that the EndpointSlice controller copies an app Service's labels onto
//! its slices, which the sidecar's label-selected watch relies on. Run with `make e2e`.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use ferry_api::{HttpEndpoint, RoutingTable};
use ferry_e2e::{
    ClusterEnv, eventually, free_port, http_get, install_crds, with_temp_ns, workspace_bin,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{Namespace, Secret, Service},
        discovery::v1::EndpointSlice,
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

const WAIT: Duration = Duration::from_secs(30);
const MANAGER: &str = "ferry-e2e";
/// The labels ferry-operator puts on app Services (and the sidecar selects slices by).
const OPERATOR_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/managed-by", "ferry-operator"),
    ("dapr.io/enabled", "true"),
];

// === processes ===

/// A child process, killed on drop; its log is printed when the test fails (or when
/// FERRY_E2E_SIDECAR_LOGS is set).
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "ferry-e2e-resolution-{}-{}-{name}.log",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let out = fs::File::create(&log).expect("a log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("a log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_text());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("FERRY_E2E_SIDECAR_LOGS").is_some() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- last lines of {} ---", self.name);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = fs::remove_file(&self.log);
    }
}

/// `ferry-testapp` on 127.0.0.1:`port`; it answers `{"pod": <name>, "path": ...}`.
struct App {
    _proc: Proc,
    port: u16,
}

impl App {
    async fn start(name: &str) -> Self {
        let port = free_port();
        let mut proc = Proc::spawn(
            name,
            Command::new(workspace_bin("ferry-testapp"))
                .arg("--port")
                .arg(port.to_string())
                .env("POD_NAME", name),
        );
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            proc.check_running();
            assert!(Instant::now() < deadline, "{name} never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { _proc: proc, port }
    }
}

/// A kubernetes-mode ferryd.
struct Sidecar {
    _proc: Proc,
    http: u16,
    public: u16,
    /// Where peers reach it (the bridge address: a pod IP on this node).
    internal: SocketAddr,
}

struct Opts<'a> {
    app_port: Option<u16>,
    internal_ip: IpAddr,
    extra: &'a [&'a str],
}

impl Sidecar {
    async fn start(app_id: &str, ns: &str, kubeconfig: &Path, opts: Opts<'_>) -> Self {
        let (http, public, internal) = (free_port(), free_port(), free_port());
        let home = std::env::temp_dir().join(format!(
            "ferry-e2e-resolution-home-{}-{app_id}-{http}",
            std::process::id()
        ));
        fs::create_dir_all(&home).unwrap();
        let mut cmd = Command::new(workspace_bin("ferryd"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                "info,ferry_sidecar=debug,kube_client::client::builder=off",
            )
            .args([
                "--mode",
                "kubernetes",
                "--app-id",
                app_id,
                "--namespace",
                ns,
            ])
            .args([
                "--dapr-http-port",
                &http.to_string(),
                "--dapr-grpc-port",
                "0",
            ])
            .args(["--dapr-listen-addresses", "127.0.0.1"])
            .args(["--dapr-public-port", &public.to_string()])
            .args(["--dapr-internal-grpc-port", &internal.to_string()])
            .args([
                "--dapr-internal-grpc-listen-address",
                &opts.internal_ip.to_string(),
            ])
            .args(["--dapr-graceful-shutdown-seconds", "0"])
            .args(opts.extra);
        if let Some(p) = opts.app_port {
            cmd.args(["--app-port", &p.to_string()]);
        }
        let mut proc = Proc::spawn(&format!("ferryd {app_id}.{ns}"), &mut cmd);
        let url = format!("http://127.0.0.1:{public}/v1.0/healthz");
        let deadline = Instant::now() + WAIT;
        loop {
            proc.check_running();
            let last = match http_get(&url, Duration::from_secs(2)).await {
                Ok((204, _)) => break,
                Ok((code, body)) => format!("{code} {body}"),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                Instant::now() < deadline,
                "ferryd {app_id} never became ready: {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            _proc: proc,
            http,
            public,
            internal: SocketAddr::new(opts.internal_ip, internal),
        }
    }

    fn invoke(&self, target: &str, method: &str) -> String {
        format!(
            "http://127.0.0.1:{}/v1.0/invoke/{target}/method/{method}",
            self.http
        )
    }

    async fn outbound(&self) -> (u16, String) {
        http_get(
            &format!("http://127.0.0.1:{}/v1.0/healthz/outbound", self.public),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("outbound health: {e:#}"))
    }

    async fn healthz(&self) -> u16 {
        http_get(
            &format!("http://127.0.0.1:{}/v1.0/healthz", self.public),
            Duration::from_secs(5),
        )
        .await
        .map(|(code, _)| code)
        .unwrap_or_else(|e| panic!("healthz: {e:#}"))
    }

    async fn wait_outbound(&self, what: &str, want: u16, contains: &str) -> String {
        eventually(what, WAIT, || async {
            let (code, body) = self.outbound().await;
            if code == want && body.contains(contains) {
                Ok(body)
            } else {
                Err(format!("{code} {body}"))
            }
        })
        .await
    }
}

/// One request with headers and a fixed-length body: status and body.
async fn call(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    let fut = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
            status,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("POST {url}: {e}"),
        Err(_) => panic!("POST {url} hung for 10 s"),
    }
}

/// The `pod` an app answer names.
fn pod(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["pod"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("not an answer of the test app: {body}"))
}

/// The `message` of a sidecar error, checking its code.
fn invoke_error(status: u16, body: &str) -> String {
    assert_eq!(status, 500, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(v["errorCode"], "ERR_DIRECT_INVOKE", "{body}");
    v["message"].as_str().unwrap().to_owned()
}

// === the objects ferry-operator would write ===

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn apply_table(client: &Client, ns: &str, apps: &[&str], endpoints: Value) {
    let table: RoutingTable = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "RoutingTable",
        "metadata": {"name": "ferry", "namespace": ns},
        "spec": {
            "apps": apps.iter().map(|a| json!({
                "id": a, "service": format!("{a}-dapr"),
                "ports": {"http": 80, "grpc": 50001, "internal": 50002, "metrics": 9090}
            })).collect::<Vec<_>>(),
            "httpEndpoints": endpoints,
        }
    }))
    .unwrap();
    Api::<RoutingTable>::namespaced(client.clone(), ns)
        .patch("ferry", &apply(), &Patch::Apply(&table))
        .await
        .unwrap_or_else(|e| panic!("cannot apply RoutingTable {ns}/ferry: {e}"));
}

fn labels(extra: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in OPERATOR_LABELS.iter().chain(extra) {
        m.insert((*k).into(), (*v).into());
    }
    Value::Object(m)
}

/// The app's headless Service `<app>-dapr`, without a selector: its slices are the test's.
async fn apply_service(client: &Client, ns: &str, app: &str) {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("{app}-dapr"), "namespace": ns, "labels": labels(&[])},
        "spec": {"clusterIP": "None", "ports": [
            {"name": "dapr-internal", "port": 50002, "targetPort": 50002, "protocol": "TCP"}
        ]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(&format!("{app}-dapr"), &apply(), &Patch::Apply(&svc))
        .await
        .unwrap_or_else(|e| panic!("cannot apply Service {app}-dapr: {e}"));
}

/// An EndpointSlice `name` of `<app>-dapr` with `endpoints` (address, ready) on the internal
/// port `port`, labelled as the EndpointSlice controller labels the slices of app Services.
async fn apply_slice(
    client: &Client,
    ns: &str,
    name: &str,
    app: &str,
    endpoints: &[(SocketAddr, bool)],
) {
    let port = endpoints.first().map(|(a, _)| a.port()).unwrap_or(50002);
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": labels(&[
            ("kubernetes.io/service-name", &format!("{app}-dapr")),
            ("endpointslice.kubernetes.io/managed-by", "e2e.ferry.dev"),
        ])},
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|(a, ready)| json!({
            "addresses": [a.ip().to_string()], "conditions": {"ready": ready}
        })).collect::<Vec<_>>(),
        "ports": [
            {"name": "dapr-http", "port": 3500, "protocol": "TCP"},
            {"name": "dapr-internal", "port": port, "protocol": "TCP"}
        ]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .patch(name, &apply(), &Patch::Apply(&slice))
        .await
        .unwrap_or_else(|e| panic!("cannot apply EndpointSlice {name}: {e}"));
}

fn admin_kubeconfig() -> PathBuf {
    ClusterEnv::load().unwrap().kubeconfig().unwrap()
}

fn bridge_ip() -> IpAddr {
    ClusterEnv::load().unwrap().bridge_ip().unwrap()
}

/// A peer: the test app and its kubernetes-mode sidecar on the bridge address.
struct Peer {
    sidecar: Sidecar,
    _app: App,
}

async fn peer(name: &str, app_id: &str, ns: &str) -> Peer {
    let app = App::start(name).await;
    let sidecar = Sidecar::start(
        app_id,
        ns,
        &admin_kubeconfig(),
        Opts {
            app_port: Some(app.port),
            internal_ip: bridge_ip(),
            extra: &[],
        },
    )
    .await;
    Peer { sidecar, _app: app }
}

async fn caller(ns: &str, extra: &[&str]) -> Sidecar {
    caller_with(ns, &admin_kubeconfig(), extra).await
}

async fn caller_with(ns: &str, kubeconfig: &Path, extra: &[&str]) -> Sidecar {
    Sidecar::start(
        "caller",
        ns,
        kubeconfig,
        Opts {
            app_port: None,
            internal_ip: "127.0.0.1".parse().unwrap(),
            extra,
        },
    )
    .await
}

/// Creates namespace `name` for the duration of a test (with_temp_ns makes one; some tests
/// need two).
async fn second_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:06x}", fastrand_u32() & 0xff_ffff);
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"ferry.dev/e2e": "true"}}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
    name
}

fn fastrand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    t ^ std::process::id().rotate_left(16)
}

async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

// === tests ===

#[tokio::test]
#[ignore = "needs the Tier-1 cluster (make e2e)"]
async fn app_ids_resolve_to_peer_sidecars_in_the_same_and_another_namespace() {
    with_temp_ns("resolve", |client, ns| async move {
        install_crds(&client).await;
        let other = second_namespace(&client, "resolve-b").await;
        let outcome = tokio::spawn({
            let (client, ns, other) = (client.clone(), ns.clone(), other.clone());
            async move {
                // cart in the caller's namespace, over two slices; orders in another one.
                let one = peer("cart-one", "cart", &ns).await;
                let two = peer("cart-two", "cart", &ns).await;
                let orders = peer("orders-b", "orders", &other).await;
                apply_table(&client, &ns, &["cart"], json!([])).await;
                apply_table(&client, &other, &["orders"], json!([])).await;
                apply_service(&client, &ns, "cart").await;
                apply_service(&client, &other, "orders").await;
                apply_slice(
                    &client,
                    &ns,
                    "cart-dapr-1",
                    "cart",
                    &[(one.sidecar.internal, true)],
                )
                .await;
                apply_slice(
                    &client,
                    &ns,
                    "cart-dapr-2",
                    "cart",
                    &[(two.sidecar.internal, true)],
                )
                .await;
                apply_slice(
                    &client,
                    &other,
                    "orders-dapr-1",
                    "orders",
                    &[(orders.sidecar.internal, true)],
                )
                .await;

                let c = caller(&ns, &[]).await;
                c.wait_outbound("the caller's namespace to sync", 204, "")
                    .await;

                // Both instances serve `cart` (the URL form and `cart.<ns>`).
                let mut seen = std::collections::BTreeMap::<String, usize>::new();
                for i in 0..30 {
                    let target = if i % 2 == 0 {
                        "cart".to_owned()
                    } else {
                        format!("cart.{ns}")
                    };
                    let (code, body) = call(&c.invoke(&target, &format!("n/{i}")), &[]).await;
                    assert_eq!(code, 200, "{body}");
                    *seen.entry(pod(&body)).or_default() += 1;
                }
                assert_eq!(seen.len(), 2, "both instances serve: {seen:?}");
                assert!(seen.values().all(|n| *n >= 5), "uneven: {seen:?}");

                // The header form and the basic-auth form resolve the same way.
                let url = format!("http://127.0.0.1:{}/some/path", c.http);
                let (code, body) = call(&url, &[("dapr-app-id", "cart")]).await;
                assert_eq!(code, 200, "{body}");
                assert!(pod(&body).starts_with("cart-"), "{body}");
                // What curl sends for http://dapr-app-id:cart@host/p.
                let basic = format!("http://127.0.0.1:{}/p", c.http);
                let (code, body) = call(
                    &basic,
                    &[("authorization", "Basic ZGFwci1hcHAtaWQ6Y2FydA==")],
                )
                .await;
                assert_eq!(code, 200, "{body}");
                assert!(pod(&body).starts_with("cart-"), "{body}");

                // Another namespace: watched from the first call on.
                let (code, body) = call(&c.invoke(&format!("orders.{other}"), "x"), &[]).await;
                assert_eq!(code, 200, "{body}");
                assert_eq!(pod(&body), "orders-b");
                // `orders` alone means the caller's namespace, whose table has no orders.
                let (code, body) = call(&c.invoke("orders", "x"), &[]).await;
                let msg = invoke_error(code, &body);
                assert!(
                    msg.contains(&format!("app 'orders' not found in namespace '{ns}'")),
                    "{msg}"
                );

                // A full URL is called as in standalone mode.
                let app = App::start("fqdn").await;
                let (code, body) = call(
                    &c.invoke(&format!("http://127.0.0.1:{}", app.port), "direct"),
                    &[],
                )
                .await;
                assert_eq!((code, pod(&body)), (200, "fqdn".to_owned()), "{body}");
                drop(c);
            }
        })
        .await;
        delete_namespace(&client, &other).await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster (make e2e)"]
async fn an_endpoint_change_reaches_the_sidecar_within_a_second() {
    with_temp_ns("resolve-change", |client, ns| async move {
        install_crds(&client).await;
        let one = peer("cart-one", "cart", &ns).await;
        apply_table(&client, &ns, &["cart"], json!([])).await;
        apply_service(&client, &ns, "cart").await;
        let ready = |r: bool| [(one.sidecar.internal, r)];
        apply_slice(&client, &ns, "cart-dapr-1", "cart", &ready(true)).await;
        let c = caller(&ns, &[]).await;
        c.wait_outbound("the caller's namespace to sync", 204, "").await;
        let url = c.invoke("cart", "x");
        assert_eq!(call(&url, &[]).await.0, 200);

        // Polls calls until `done` holds; the time from before the write to then.
        async fn until_call(url: &str, what: &str, sent: Instant, done: impl Fn(u16, &str) -> bool) -> Duration {
            loop {
                let (code, body) = call(url, &[]).await;
                if done(code, &body) {
                    return sent.elapsed();
                }
                assert!(sent.elapsed() < Duration::from_secs(10), "{what}: still {code} {body}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let mut times = Vec::new();
        for round in 0..3 {
            // The only endpoint becomes not ready: new calls get "no ready instance".
            let sent = Instant::now();
            apply_slice(&client, &ns, "cart-dapr-1", "cart", &ready(false)).await;
            let written = sent.elapsed();
            let gone = until_call(&url, "the endpoint to leave", sent, |code, body| {
                code == 500 && body.contains("has no ready instance")
            })
            .await;
            // It comes back.
            let sent = Instant::now();
            apply_slice(&client, &ns, "cart-dapr-1", "cart", &ready(true)).await;
            let back = until_call(&url, "the endpoint to return", sent, |code, _| code == 200).await;
            eprintln!(
                "endpoint change -> sidecar, round {round}: removal {gone:?}, return {back:?} (the API write itself took {written:?})"
            );
            times.push(gone);
            times.push(back);
        }
        // The slice deleted outright.
        let sent = Instant::now();
        Api::<EndpointSlice>::namespaced(client.clone(), &ns)
            .delete("cart-dapr-1", &DeleteParams::default())
            .await
            .unwrap();
        let deleted = until_call(&url, "the slice's deletion", sent, |code, body| {
            code == 500 && body.contains("has no ready instance")
        })
        .await;
        eprintln!("endpoint change -> sidecar: slice deleted {deleted:?}");
        times.push(deleted);
        let worst = times.iter().max().unwrap();
        assert!(*worst < Duration::from_secs(1), "an endpoint change took {worst:?}: {times:?}");

        // With two instances, the one removed gets no new request once the change is in.
        let two = peer("cart-two", "cart", &ns).await;
        apply_slice(&client, &ns, "cart-dapr-1", "cart", &ready(true)).await;
        apply_slice(&client, &ns, "cart-dapr-2", "cart", &[(two.sidecar.internal, true)]).await;
        eventually("both instances to serve", WAIT, || async {
            let mut pods = std::collections::BTreeSet::new();
            for _ in 0..20 {
                let (code, body) = call(&url, &[]).await;
                if code == 200 {
                    pods.insert(pod(&body));
                }
            }
            (pods.len() == 2).then_some(()).ok_or(format!("{pods:?}"))
        })
        .await;
        apply_slice(&client, &ns, "cart-dapr-2", "cart", &[(two.sidecar.internal, false)]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 0..40 {
            let (code, body) = call(&url, &[]).await;
            assert_eq!((code, pod(&body).as_str()), (200, "cart-one"), "call {i}: {body}");
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster (make e2e)"]
async fn unknown_apps_and_apps_without_instances_fail_fast_naming_app_and_namespace() {
    with_temp_ns("resolve-unknown", |client, ns| async move {
        install_crds(&client).await;
        // `web` has a Service with a selector and no pod: the EndpointSlice controller makes
        // its (empty) slice, and must copy the operator's labels onto it for the sidecar's
        // label-selected watch to see it.
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web-dapr", "namespace": ns, "labels": labels(&[])},
            "spec": {"clusterIP": "None", "selector": {"dapr.io/app-id": "web"}, "ports": [
                {"name": "dapr-internal", "port": 50002, "targetPort": 50002, "protocol": "TCP"}
            ]}
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), &ns)
            .patch("web-dapr", &apply(), &Patch::Apply(&svc))
            .await
            .unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let made = eventually("the EndpointSlice controller's slice for web-dapr", WAIT, || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web-dapr"))
                .await
                .map_err(|e| e.to_string())?;
            list.items.into_iter().next().ok_or_else(|| "none yet".to_owned())
        })
        .await;
        let l = made.labels();
        assert_eq!(
            l.get("endpointslice.kubernetes.io/managed-by").map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
        for (k, v) in OPERATOR_LABELS {
            assert_eq!(l.get(k).map(String::as_str), Some(v), "label {k} on {:?}", made.name_any());
        }

        apply_table(&client, &ns, &["cart", "web"], json!([])).await;
        let c = caller(&ns, &[]).await;
        c.wait_outbound("the caller's namespace to sync", 204, "").await;
        for (target, want) in [
            (
                "nope".to_owned(),
                format!("app 'nope' not found in namespace '{ns}': the RoutingTable 'ferry' has no such app (it lists cart, web)"),
            ),
            (
                "cart".to_owned(),
                format!("app 'cart' in namespace '{ns}' has no ready instance: Service cart-dapr has no ready endpoint"),
            ),
            (
                "web".to_owned(),
                format!("app 'web' in namespace '{ns}' has no ready instance: Service web-dapr"),
            ),
            (
                // A namespace that exists but has no RoutingTable.
                "cart.default".to_owned(),
                "app 'cart' not found in namespace 'default': the namespace has no RoutingTable 'ferry'".to_owned(),
            ),
        ] {
            // The first call to `default` waits for its first list; the rest answer at once.
            let started = Instant::now();
            let (code, body) = call(&c.invoke(&target, "x"), &[]).await;
            let took = started.elapsed();
            let msg = invoke_error(code, &body);
            assert!(msg.contains(&want), "{target}: {msg}");
            assert!(msg.contains(&format!("failed to invoke, id: {target}")), "{msg}");
            assert!(took < Duration::from_secs(3), "{target}: {took:?}");
            let started = Instant::now();
            call(&c.invoke(&target, "again"), &[]).await;
            assert!(started.elapsed() < Duration::from_millis(500), "{target}: the second call took {:?}", started.elapsed());
        }
    })
    .await;
}

// === losing the API server ===

/// A TCP proxy to the API server that the test can cut (closing every connection and
/// refusing new ones) and restore, on the same port.
struct ApiProxy {
    port: u16,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ApiProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let p = Self {
            port: free_port(),
            upstream,
            tasks: Arc::default(),
        };
        p.restore().await;
        p
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the proxy's port");
        let (upstream, tasks) = (self.upstream, self.tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes the listener and every connection through it.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// A copy of the admin kubeconfig that goes through this proxy (the API server's
    /// certificate names 127.0.0.1, so TLS still verifies).
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let text = fs::read_to_string(admin_kubeconfig()).unwrap();
        let mut kc: Value = serde_saphyr::from_str(&text).unwrap();
        for c in kc["clusters"].as_array_mut().unwrap() {
            c["cluster"]["server"] = json!(format!("https://127.0.0.1:{}", self.port));
        }
        let path = dir.join(format!("kubeconfig-proxy-{}", self.port));
        fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
        path
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The API server's address, from the admin kubeconfig.
fn api_server() -> SocketAddr {
    let text = fs::read_to_string(admin_kubeconfig()).unwrap();
    let kc: Value = serde_saphyr::from_str(&text).unwrap();
    let server = kc["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let uri: http::Uri = server.parse().unwrap();
    SocketAddr::new(
        uri.host().unwrap().parse().unwrap(),
        uri.port_u16().unwrap_or(443),
    )
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster (make e2e)"]
async fn a_sidecar_that_loses_the_api_server_keeps_serving_from_its_cache() {
    with_temp_ns("resolve-noapi", |client, ns| async move {
        install_crds(&client).await;
        let one = peer("cart-one", "cart", &ns).await;
        apply_table(&client, &ns, &["cart"], json!([])).await;
        apply_service(&client, &ns, "cart").await;
        apply_slice(
            &client,
            &ns,
            "cart-dapr-1",
            "cart",
            &[(one.sidecar.internal, true)],
        )
        .await;

        let proxy = ApiProxy::start(api_server()).await;
        let kubeconfig = proxy.kubeconfig(&std::env::temp_dir());
        let c = caller_with(&ns, &kubeconfig, &[]).await;
        c.wait_outbound("the caller's namespace to sync", 204, "")
            .await;
        let url = c.invoke("cart", "x");
        assert_eq!(pod(&call(&url, &[]).await.1), "cart-one");

        // The API server is gone for this sidecar.
        proxy.cut();
        let body = c
            .wait_outbound(
                "outbound health to report the lost watches",
                500,
                "disconnected (serving from cache)",
            )
            .await;
        eprintln!("outbound while the API server is away: {body}");
        assert!(body.contains("ERR_OUTBOUND_HEALTH_NOT_READY"), "{body}");
        // Readiness does not depend on the API server; calls are served from the cache.
        assert_eq!(c.healthz().await, 204);
        for i in 0..20 {
            let (code, body) = call(&url, &[]).await;
            assert_eq!(
                (code, pod(&body).as_str()),
                (200, "cart-one"),
                "call {i}: {body}"
            );
        }
        // Meanwhile the namespace changes: a second app appears.
        let two = peer("orders-one", "orders", &ns).await;
        apply_table(&client, &ns, &["cart", "orders"], json!([])).await;
        apply_service(&client, &ns, "orders").await;
        apply_slice(
            &client,
            &ns,
            "orders-dapr-1",
            "orders",
            &[(two.sidecar.internal, true)],
        )
        .await;
        let (code, body) = call(&c.invoke("orders", "x"), &[]).await;
        assert!(invoke_error(code, &body).contains("not found"), "{body}");
        assert_eq!(call(&url, &[]).await.0, 200);

        // It comes back: the watches list again and catch up.
        let back = Instant::now();
        proxy.restore().await;
        c.wait_outbound("outbound health to recover", 204, "").await;
        eprintln!(
            "outbound healthy again {:?} after the API server came back",
            back.elapsed()
        );
        let (code, body) = call(&c.invoke("orders", "x"), &[]).await;
        assert_eq!((code, pod(&body).as_str()), (200, "orders-one"), "{body}");
        let _ = fs::remove_file(kubeconfig);
    })
    .await;
}

// === HTTPEndpoints ===

/// A CA made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `sans` with usage `eku`: (certificate PEM, key PEM).
    fn leaf(&self, cn: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// What the external server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Vec<String>,
}

/// An "external" HTTPS server on 127.0.0.1 that requires a client certificate from `ca` and
/// `Authorization: <one of allowed>`; answers 200 with the path, else 401.
struct External {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    allowed: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl External {
    async fn start(ca: &Ca) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = ca.leaf(
            "external",
            &["127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let allowed: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, a) = (seen.clone(), allowed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, s, a) = (acceptor.clone(), s.clone(), a.clone());
                tokio::spawn(async move {
                    // A client without a certificate from the CA fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (s, a) = (s.clone(), a.clone());
                        async move {
                            let authorization: Vec<String> = req
                                .headers()
                                .get_all("authorization")
                                .iter()
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .collect();
                            let ok = authorization.len() == 1
                                && a.lock().unwrap().contains(&authorization[0]);
                            s.lock().unwrap().push(Seen {
                                path: req.uri().path().to_owned(),
                                authorization,
                            });
                            let (code, body) = if ok {
                                (
                                    200,
                                    format!(r#"{{"external":true,"path":"{}"}}"#, req.uri().path()),
                                )
                            } else {
                                (
                                    401,
                                    r#"{"error":"missing or wrong authorization"}"#.to_owned(),
                                )
                            };
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            port,
            seen,
            allowed,
            task,
        }
    }

    fn allow(&self, token: &str) {
        *self.allowed.lock().unwrap() = vec![token.to_owned()];
    }

    fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn apply_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(name, &apply(), &Patch::Apply(&secret))
        .await
        .unwrap_or_else(|e| panic!("cannot apply Secret {name}: {e}"));
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster (make e2e)"]
async fn http_endpoints_get_secret_headers_and_client_tls_from_the_cluster() {
    with_temp_ns("resolve-ext", |client, ns| async move {
        install_crds(&client).await;
        let ca = Ca::new("ferry e2e external CA");
        let (client_cert, client_key) =
            ca.leaf("ferry-caller", &["ferry-caller"], ExtendedKeyUsagePurpose::ClientAuth);
        let ext = External::start(&ca).await;
        ext.allow("Bearer one");
        apply_secret(&client, &ns, "ext-token", &[("token", "Bearer one")]).await;
        apply_secret(&client, &ns, "ext-tls", &[("ca.crt", &ca.pem), ("tls.key", &client_key)])
            .await;
        // The endpoint whose key is inline: the sidecar reads it from the HTTPEndpoint itself.
        let inline: HttpEndpoint = serde_json::from_value(json!({
            "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
            "metadata": {"name": "ext-inline", "namespace": ns},
            "spec": {
                "baseUrl": format!("https://127.0.0.1:{}/inline", ext.port),
                "headers": [{"name": "Authorization", "secretKeyRef": {"name": "ext-token", "key": "token"}}],
                "clientTLS": {
                    "rootCA": {"secretKeyRef": {"name": "ext-tls", "key": "ca.crt"}},
                    "certificate": {"value": client_cert},
                    "privateKey": {"value": client_key}
                }
            }
        }))
        .unwrap();
        Api::<HttpEndpoint>::namespaced(client.clone(), &ns)
            .patch("ext-inline", &apply(), &Patch::Apply(&inline))
            .await
            .unwrap();
        let plain = App::start("plain").await;
        let tls = |key: Value| {
            json!({
                "rootCA": {"secretKeyRef": {"name": "ext-tls", "key": "ca.crt"}},
                "certificate": {"value": client_cert},
                "privateKey": key,
            })
        };
        let auth = json!([{"name": "Authorization", "secretKeyRef": {"name": "ext-token", "key": "token"}}]);
        let endpoints = json!([
            {"name": "ext", "baseUrl": format!("https://127.0.0.1:{}/api", ext.port),
             "headers": auth, "clientTLS": tls(json!({"secretKeyRef": {"name": "ext-tls", "key": "tls.key"}})),
             "ready": true},
            {"name": "ext-inline", "baseUrl": format!("https://127.0.0.1:{}/inline", ext.port),
             "headers": auth, "clientTLS": tls(json!({"inline": true})), "ready": true},
            {"name": "no-cert", "baseUrl": format!("https://127.0.0.1:{}/api", ext.port),
             "headers": auth, "clientTLS": {"rootCA": {"secretKeyRef": {"name": "ext-tls", "key": "ca.crt"}}},
             "ready": true},
            {"name": "broken", "baseUrl": "ftp://nowhere", "ready": false, "reason": "InvalidBaseURL"},
            {"name": "no-secret", "baseUrl": format!("http://127.0.0.1:{}", plain.port),
             "headers": [{"name": "X-Key", "secretKeyRef": {"name": "absent", "key": "k"}}], "ready": true},
            {"name": "shadow", "baseUrl": format!("https://127.0.0.1:{}/cluster", ext.port), "ready": true},
        ]);
        // `ext` is also an app ID: the HTTPEndpoint wins, as in standalone mode.
        apply_table(&client, &ns, &["ext"], endpoints).await;

        // `shadow` is also defined in a --resources-path file, which wins.
        let dir = std::env::temp_dir().join(format!("ferry-e2e-resolution-res-{ns}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("shadow.yaml"),
            format!(
                "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: shadow\nspec:\n  baseUrl: http://127.0.0.1:{}/file\n",
                plain.port
            ),
        )
        .unwrap();
        let c = caller(
            &ns,
            &["--kube-secret-refresh-seconds", "1", "--resources-path", dir.to_str().unwrap()],
        )
        .await;

        // The secret header, over mTLS, replacing the caller's own Authorization.
        let (code, body) = eventually("the cluster's HTTPEndpoint ext to be usable", WAIT, || async {
            let (code, body) =
                call(&c.invoke("ext", "items/1"), &[("authorization", "from the caller")]).await;
            (code == 200).then_some((code, body.clone())).ok_or(format!("{code} {body}"))
        })
        .await;
        assert_eq!(code, 200);
        assert!(body.contains(r#""path":"/api/items/1""#), "{body}");
        let seen = ext.last().unwrap();
        assert_eq!(seen.authorization, vec!["Bearer one"], "{seen:?}");
        assert_eq!(seen.path, "/api/items/1");

        // The inline private key, read from the HTTPEndpoint object.
        let (code, body) = call(&c.invoke("ext-inline", "x"), &[]).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""path":"/inline/x""#), "{body}");

        // Without a client certificate the server refuses the handshake.
        let (code, body) = call(&c.invoke("no-cert", "x"), &[]).await;
        let msg = invoke_error(code, &body);
        assert!(msg.contains("error invoking https://127.0.0.1:"), "{msg}");

        // Not ready, or a Secret that does not exist: a 500 naming the endpoint and why.
        let (code, body) = call(&c.invoke("broken", "x"), &[]).await;
        let msg = invoke_error(code, &body);
        assert!(
            msg.contains("HTTPEndpoint 'broken' cannot be used: it is not ready (InvalidBaseURL)"),
            "{msg}"
        );
        let (code, body) = call(&c.invoke("no-secret", "x"), &[]).await;
        let msg = invoke_error(code, &body);
        assert!(
            msg.contains("HTTPEndpoint 'no-secret' cannot be used: Secret \"absent\""),
            "{msg}"
        );
        assert!(msg.contains("does not exist"), "{msg}");

        // The --resources-path file wins over the cluster on a name clash.
        let (code, body) = call(&c.invoke("shadow", "x"), &[]).await;
        assert_eq!((code, pod(&body).as_str()), (200, "plain"), "{body}");

        // Metadata lists the usable ones.
        let (code, meta) = http_get(
            &format!("http://127.0.0.1:{}/v1.0/metadata", c.public),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(code, 200);
        let meta: Value = serde_json::from_str(&meta).unwrap();
        let names: Vec<&str> = meta["httpEndpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, vec!["ext", "ext-inline", "no-cert", "shadow"]);

        // The Secret rotates: the next reads pick the new value up.
        ext.allow("Bearer two");
        let rotated = Instant::now();
        apply_secret(&client, &ns, "ext-token", &[("token", "Bearer two")]).await;
        eventually("the rotated Secret to be used", WAIT, || async {
            let (code, body) = call(&c.invoke("ext", "after"), &[]).await;
            (code == 200).then_some(()).ok_or(format!("{code} {body} {:?}", ext.last()))
        })
        .await;
        eprintln!("rotated Secret used {:?} after the write", rotated.elapsed());
        assert_eq!(ext.last().unwrap().authorization, vec!["Bearer two"]);

        let _ = fs::remove_dir_all(&dir);
        drop(c);
    })
    .await;
}
