//! `ferry-bench resolver`: kubernetes-mode ferryd against a namespace of 10,000 endpoints across
//! 1,000 apps on the Tier-1 cluster: its memory per watched endpoint, and how long an endpoint
//! change takes to reach it. `bench/resolver.sh` (`make bench-resolver`) starts the cluster and
//! runs this inside its network namespace; the figures go to the "Resolver scale" section of
//! BENCHMARKS.md (see [`crate::resolver_report`]).
//!
//! Steps, in one fresh namespace:
//! 1. ferryd A starts in the empty namespace (its own: watched from the start); once synced, its
//!    RSS is sampled.
//! 2. The harness applies, server-side and a bounded number at a time, one Service and one
//!    EndpointSlice per app, then the RoutingTable listing them all. Once A holds every app, its
//!    RSS is sampled again; then ferryd B starts on the full namespace and is sampled once synced.
//! 3. Every app is called through both sidecars: each must resolve to its endpoints.
//! 4. One app's slice is flipped between not ready and ready, and each flip timed from the apply's
//!    response to the first call through A that shows it.

use std::{
    convert::Infallible,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use ferry_api::RoutingTable;
use futures_util::{StreamExt as _, stream};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{
    procfs,
    resolver_report::{Change, Figures, Memory, Meta, Sample},
    stats,
};

/// The field manager of everything the harness applies.
const MANAGER: &str = "ferry-bench";
/// The labels ferry-operator puts on app Services, which the EndpointSlice controller copies
/// onto their slices and the sidecar selects slices by.
const OPERATOR_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/managed-by", "ferry-operator"),
    ("dapr.io/enabled", "true"),
];
/// The port the fake endpoints claim (the conventional internal port).
const FAKE_PORT: u16 = 50002;
/// Fake endpoints are numbered into 10.100.0.0–10.199.255.255.
const MAX_ENDPOINTS: usize = 100 * 65_536;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between a poll's answer and the next poll.
const POLL_GAP: Duration = Duration::from_millis(1);
const SETTLE: Duration = Duration::from_secs(3);
const RSS_SAMPLES: usize = 5;
const RSS_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Options {
    pub ferryd: PathBuf,
    pub apps: usize,
    pub endpoints_per_app: usize,
    pub changes: usize,
    pub concurrency: usize,
    /// Logs and the sidecars' homes.
    pub dir: PathBuf,
    pub meta: Meta,
}

/// Runs the whole measurement (on its own tokio runtime).
pub fn run(o: &Options) -> anyhow::Result<Figures> {
    ensure!(o.apps >= 11, "--apps must be at least 11");
    ensure!(
        (1..=250).contains(&o.endpoints_per_app),
        "--endpoints-per-app must be 1 to 250"
    );
    ensure!(
        o.apps * o.endpoints_per_app <= MAX_ENDPOINTS,
        "too many endpoints for the fake address range"
    );
    ensure!(o.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(
        o.ferryd.is_file(),
        "{} does not exist: build it with `cargo build --release -p ferry-sidecar` (bench/resolver.sh does)",
        o.ferryd.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    rt.block_on(measure(o))
}

fn app_name(i: usize) -> String {
    format!("app-{i:04}")
}

/// A distinct address for endpoint `n` (below [`MAX_ENDPOINTS`]) in 10.100.0.0–10.199.255.255,
/// outside the cluster's pod (10.88.0.0/16) and service (10.96.0.0/16) ranges. The cluster's
/// network namespace has no route there, so a connection fails at once ("network is
/// unreachable"). (The API server refuses loopback addresses in EndpointSlices.)
fn fake_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

async fn measure(o: &Options) -> anyhow::Result<Figures> {
    let env = ferry_e2e::ClusterEnv::load()?;
    let kubeconfig = env.kubeconfig()?;
    let client = ferry_e2e::client()
        .await
        .context("cannot build a client for the Tier-1 cluster")?;
    ferry_e2e::install_crds(&client).await;
    let ns = format!("scale-{:06x}", std::process::id() & 0xff_ffff);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns, "labels": {"ferry.dev/bench": "resolver"}}
    }))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("cannot create namespace {ns}"))?;
    let outcome = in_namespace(o, &client, &kubeconfig, &ns).await;
    // The cluster is stopped afterwards anyway; this only keeps a kept cluster tidy.
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    outcome
}

async fn in_namespace(
    o: &Options,
    client: &Client,
    kubeconfig: &Path,
    ns: &str,
) -> anyhow::Result<Figures> {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    fs::create_dir_all(&o.dir).with_context(|| format!("cannot create {}", o.dir.display()))?;
    let probe = probe_server(ferry_e2e::ClusterEnv::load()?.bridge_ip()?).await?;

    // 1. The empty namespace.
    let mut a = Ferryd::spawn(o, "a", ns, kubeconfig)?;
    a.wait_synced(&http).await?;
    eprintln!("ferry-bench resolver: ferryd A synced on the empty namespace {ns}");
    let unknown = a.invoke(&http, "app-none").await?;
    ensure!(
        unknown.1.contains("has no RoutingTable"),
        "ferryd A, asked for an app in the empty namespace, answered {} {}",
        unknown.0,
        unknown.1
    );
    tokio::time::sleep(SETTLE).await;
    let (empty_rss, empty_hwm) = rss(&a).await?;
    eprintln!(
        "ferry-bench resolver: empty namespace: RSS {:.1} MiB",
        empty_rss as f64 / 1024.0
    );

    // 2. 1,000 apps, 10,000 endpoints.
    let started = Instant::now();
    populate(o, client, ns, probe).await?;
    let setup_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "ferry-bench resolver: applied {} Services, {} EndpointSlices and the RoutingTable in {setup_secs:.1} s",
        o.apps, o.apps
    );
    a.wait_all_apps(&http, o.apps).await?;
    tokio::time::sleep(SETTLE).await;
    let (grown_rss, grown_hwm) = rss(&a).await?;
    eprintln!(
        "ferry-bench resolver: ferryd A holds the {} apps: RSS {:.1} MiB",
        o.apps,
        grown_rss as f64 / 1024.0
    );
    let b_started = Instant::now();
    let mut b = Ferryd::spawn(o, "b", ns, kubeconfig)?;
    b.wait_synced(&http).await?;
    let fresh_sync_ms = b_started.elapsed().as_millis() as u64;
    b.wait_all_apps(&http, o.apps).await?;
    tokio::time::sleep(SETTLE).await;
    let (fresh_rss, fresh_hwm) = rss(&b).await?;
    eprintln!(
        "ferry-bench resolver: ferryd B started on the full namespace (synced after {fresh_sync_ms} ms): RSS {:.1} MiB",
        fresh_rss as f64 / 1024.0
    );

    // 3. Every app resolves, through both.
    for f in [&mut a, &mut b] {
        f.check_every_app(&http, o.apps).await?;
    }
    eprintln!(
        "ferry-bench resolver: all {} apps resolve through both sidecars",
        o.apps
    );
    drop(b);

    // 4. Endpoint changes.
    let (samples, poll_gap_us) = changes(o, client, ns, probe, &mut a, &http).await?;
    tokio::time::sleep(SETTLE).await;
    let (after_changes_rss, _) = rss(&a).await?;
    a.check_running()?;
    Ok(Figures {
        meta: o.meta.clone(),
        namespace: ns.to_owned(),
        apps: o.apps,
        endpoints_per_app: o.endpoints_per_app,
        setup_secs,
        concurrency: o.concurrency,
        fresh_sync_ms,
        memory: Memory {
            empty_rss,
            empty_hwm,
            grown_rss,
            grown_hwm,
            fresh_rss,
            fresh_hwm,
            after_changes_rss,
        },
        samples,
        poll_gap_us,
    })
}

/// `(VmRSS median, VmHWM last)` of `f` over several samples, in KiB.
async fn rss(f: &Ferryd) -> anyhow::Result<(u64, u64)> {
    let mut rss = Vec::new();
    let mut hwm = 0;
    for i in 0..RSS_SAMPLES {
        if i > 0 {
            tokio::time::sleep(RSS_INTERVAL).await;
        }
        let (r, h) = procfs::read_rss(f.child.id())
            .with_context(|| format!("cannot read the memory of ferryd {}", f.name))?;
        rss.push(r as f64);
        hwm = h;
    }
    Ok((stats::median(&rss).unwrap_or_default() as u64, hwm))
}

// === the objects ===

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn labels(extra: &[(&str, &str)]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in OPERATOR_LABELS.iter().chain(extra) {
        m.insert((*k).into(), (*v).into());
    }
    Value::Object(m)
}

fn service(ns: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("{app}-dapr"), "namespace": ns, "labels": labels(&[])},
        "spec": {"clusterIP": "None", "ports": [
            {"name": "dapr-internal", "port": 50002, "targetPort": 50002, "protocol": "TCP"}
        ]}
    })
}

fn slice(ns: &str, app: &str, endpoints: &[SocketAddr], ready: bool) -> Value {
    let port = endpoints.first().map_or(FAKE_PORT, SocketAddr::port);
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{app}-dapr-1"), "namespace": ns, "labels": labels(&[
            ("kubernetes.io/service-name", &format!("{app}-dapr")),
            ("endpointslice.kubernetes.io/managed-by", "bench.ferry.dev"),
        ])},
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|a| json!({
            "addresses": [a.ip().to_string()], "conditions": {"ready": ready}
        })).collect::<Vec<_>>(),
        "ports": [
            {"name": "dapr-http", "port": 3500, "protocol": "TCP"},
            {"name": "dapr-internal", "port": port, "protocol": "TCP"}
        ]
    })
}

fn table(ns: &str, apps: usize) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
        "metadata": {"name": "ferry", "namespace": ns},
        "spec": {
            "apps": (0..apps).map(|i| json!({
                "id": app_name(i), "service": format!("{}-dapr", app_name(i)),
                "ports": {"http": 80, "grpc": 50001, "internal": 50002, "metrics": 9090}
            })).collect::<Vec<_>>(),
            "httpEndpoints": [],
        }
    })
}

/// The endpoints of app `i`, fake ones, except that app 0's first is the probe listener (and
/// its port is the listener's).
fn endpoints(o: &Options, i: usize, probe: SocketAddr) -> Vec<SocketAddr> {
    let port = if i == 0 { probe.port() } else { FAKE_PORT };
    (0..o.endpoints_per_app)
        .map(|j| match (i, j) {
            (0, 0) => probe,
            _ => SocketAddr::from((fake_ip(i * o.endpoints_per_app + j), port)),
        })
        .collect()
}

/// Applies `objects` (name, object) through `api`, `concurrency` at a time.
async fn apply_all<K>(
    api: &Api<K>,
    what: &str,
    objects: Vec<(String, Value)>,
    concurrency: usize,
) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = apply_params();
    let results: Vec<anyhow::Result<()>> = stream::iter(objects)
        .map(|(name, obj)| {
            let (api, params) = (api, &params);
            async move {
                api.patch(&name, params, &Patch::Apply(&obj))
                    .await
                    .map(|_| ())
                    .with_context(|| format!("cannot apply {what} {name}"))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The Services, then the EndpointSlices, then the RoutingTable (as the operator's table comes
/// once its Services exist).
async fn populate(o: &Options, client: &Client, ns: &str, probe: SocketAddr) -> anyhow::Result<()> {
    let services: Vec<(String, Value)> = (0..o.apps)
        .map(|i| (format!("{}-dapr", app_name(i)), service(ns, &app_name(i))))
        .collect();
    apply_all(
        &Api::<Service>::namespaced(client.clone(), ns),
        "Service",
        services,
        o.concurrency,
    )
    .await?;
    let slices: Vec<(String, Value)> = (0..o.apps)
        .map(|i| {
            let app = app_name(i);
            (
                format!("{app}-dapr-1"),
                slice(ns, &app, &endpoints(o, i, probe), true),
            )
        })
        .collect();
    apply_all(
        &Api::<EndpointSlice>::namespaced(client.clone(), ns),
        "EndpointSlice",
        slices,
        o.concurrency,
    )
    .await?;
    Api::<RoutingTable>::namespaced(client.clone(), ns)
        .patch("ferry", &apply_params(), &Patch::Apply(&table(ns, o.apps)))
        .await
        .with_context(|| format!("cannot apply RoutingTable {ns}/ferry"))?;
    Ok(())
}

// === endpoint changes ===

/// `o.changes` flips of app 0's slice, alternately not ready and ready; the samples and the
/// median gap between polls.
async fn changes(
    o: &Options,
    client: &Client,
    ns: &str,
    probe: SocketAddr,
    a: &mut Ferryd,
    http: &Http,
) -> anyhow::Result<(Vec<Sample>, u64)> {
    let app = app_name(0);
    let eps = endpoints(o, 0, probe);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let name = format!("{app}-dapr-1");
    // Warm up: the connection to the listener is made before anything is timed.
    let mut answered = 0;
    for _ in 0..200 {
        let (code, body) = a.invoke(http, &app).await?;
        ensure!(
            classify(&app, code, &body) == Answer::Resolved,
            "{app} does not resolve through ferryd A: {code} {body}"
        );
        answered += usize::from(code == 200);
        if answered == 5 {
            break;
        }
    }
    ensure!(
        answered == 5,
        "the probe listener at {probe} never answered a call to {app} through ferryd A"
    );
    let mut samples = Vec::with_capacity(o.changes);
    let mut gaps = Vec::new();
    for k in 0..o.changes {
        let change = if k % 2 == 0 {
            Change::NotReady
        } else {
            Change::Ready
        };
        // 20–80 ms apart, varied so that changes do not fall into step with anything periodic.
        tokio::time::sleep(Duration::from_millis(20 + (k as u64 * 37) % 61)).await;
        let object = slice(ns, &app, &eps, change == Change::Ready);
        let t0 = Instant::now();
        slices
            .patch(&name, &apply_params(), &Patch::Apply(&object))
            .await
            .with_context(|| format!("cannot apply EndpointSlice {name}"))?;
        let t1 = Instant::now();
        let mut polls = 0u32;
        loop {
            let (code, body) = a.invoke(http, &app).await?;
            let now = Instant::now();
            polls += 1;
            let (new, old) = match change {
                Change::NotReady => (Answer::NoReadyInstance, Answer::Resolved),
                Change::Ready => (Answer::Resolved, Answer::NoReadyInstance),
            };
            let answer = classify(&app, code, &body);
            if answer == new {
                samples.push(Sample {
                    change,
                    write_us: (t1 - t0).as_micros() as u64,
                    propagation_us: (now - t1).as_micros() as u64,
                    polls,
                });
                break;
            }
            ensure!(
                answer == old,
                "change {k} ({change:?}): a call to {app} through ferryd A answered {code} {body}"
            );
            if now - t1 > CHANGE_TIMEOUT {
                a.check_running()?;
                bail!(
                    "change {k} ({change:?}) of {name} had not reached ferryd A {CHANGE_TIMEOUT:?} after the write; it still answers {code} {body}"
                );
            }
            // tokio's timer has 1 ms ticks (a 1 ms sleep lasts up to 2 ms): the thread's own
            // sleep is closer to the 1 ms wanted.
            let pause = Instant::now();
            tokio::task::block_in_place(|| std::thread::sleep(POLL_GAP));
            gaps.push(pause.elapsed().as_micros() as f64);
        }
        if (k + 1).is_multiple_of(50) {
            eprintln!("ferry-bench resolver: {} endpoint changes timed", k + 1);
        }
    }
    let gap = stats::median(&gaps).unwrap_or_default() as u64;
    Ok((samples, gap))
}

/// The probe listener on `ip` (the bridge's address, a pod IP on this node): HTTP/1.1 and
/// HTTP/2 without TLS, as a sidecar's internal port; every request gets 200. Returns its
/// address.
async fn probe_server(ip: std::net::IpAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0))
        .await
        .with_context(|| format!("cannot bind the probe listener on {ip}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"probe\n"))))
                });
                // Both protocols, as a sidecar's internal port: calls with small bodies
                // arrive over HTTP/1.1, streamed ones over HTTP/2.
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

// === ferryd ===

/// What a call through ferryd says about an app's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// It went to one of them: the listener's answer (200), or a failed connection to a fake
    /// one (after ferryd's retries on other instances).
    Resolved,
    /// The app is known and has no ready endpoint.
    NoReadyInstance,
    /// Anything else (unknown app, not synced, ...).
    Other,
}

fn classify(app: &str, code: u16, body: &str) -> Answer {
    if code == 200
        || (code == 500 && body.contains(&format!("cannot connect to the sidecar of {app} at")))
    {
        Answer::Resolved
    } else if code == 500 && body.contains("has no ready instance") {
        Answer::NoReadyInstance
    } else {
        Answer::Other
    }
}

type Http = HttpClient<HttpConnector, Empty<Bytes>>;

/// One GET: status and body.
async fn get(http: &Http, url: &str) -> anyhow::Result<(u16, String)> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let fut = async {
        let resp = http.get(uri).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(r) => r.with_context(|| format!("GET {url}")),
        Err(_) => bail!("GET {url} timed out after 10 s"),
    }
}

/// A kubernetes-mode ferryd without an app, killed on drop.
struct Ferryd {
    name: String,
    child: Child,
    log: PathBuf,
    http: u16,
    public: u16,
}

impl Ferryd {
    fn spawn(o: &Options, name: &str, ns: &str, kubeconfig: &Path) -> anyhow::Result<Self> {
        let (http, public, internal) = (
            ferry_e2e::free_port(),
            ferry_e2e::free_port(),
            ferry_e2e::free_port(),
        );
        let home = o.dir.join(format!("home-{name}"));
        fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
        let log = o.dir.join(format!("ferryd-{name}.log"));
        let out =
            fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(&o.ferryd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("KUBECONFIG", kubeconfig)
            .args([
                "--mode",
                "kubernetes",
                "--app-id",
                &format!("bench-{name}"),
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
            .args(["--dapr-internal-grpc-listen-address", "127.0.0.1"])
            .args(["--dapr-graceful-shutdown-seconds", "0"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", o.ferryd.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            http,
            public,
        })
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "ferryd {} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// Until `/v1.0/healthz` and `/v1.0/healthz/outbound` (both watches listed) answer 204.
    async fn wait_synced(&mut self, http: &Http) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for path in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
            let url = format!("http://127.0.0.1:{}{path}", self.public);
            loop {
                self.check_running()?;
                let last = match get(http, &url).await {
                    Ok((204, _)) => break,
                    Ok((code, body)) => format!("{code} {body}"),
                    Err(e) => format!("{e:#}"),
                };
                if Instant::now() > deadline {
                    bail!(
                        "ferryd {}: {path} still answers {last} after {READY_TIMEOUT:?}",
                        self.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }

    /// One call to `app`, through this sidecar.
    async fn invoke(&self, http: &Http, app: &str) -> anyhow::Result<(u16, String)> {
        get(
            http,
            &format!(
                "http://127.0.0.1:{}/v1.0/invoke/{app}/method/probe",
                self.http
            ),
        )
        .await
    }

    /// Whether a call to `app` shows that it resolves to its endpoints. `Err` carries the
    /// answer otherwise.
    async fn resolves(&self, http: &Http, app: &str) -> anyhow::Result<Result<(), String>> {
        let (code, body) = self.invoke(http, app).await?;
        Ok(if classify(app, code, &body) == Answer::Resolved {
            Ok(())
        } else {
            Err(format!("{code} {body}"))
        })
    }

    /// Until the table's apps are all known (a call to an unknown app lists them) and the apps
    /// written last resolve. Calls only a few apps: the memory is sampled next.
    async fn wait_all_apps(&mut self, http: &Http, apps: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let listed = format!("and {} more", apps - 10);
        loop {
            self.check_running()?;
            let (code, body) = self.invoke(http, "app-none").await?;
            let mut last = format!("app-none: {code} {body}");
            if body.contains(&listed) {
                let mut all = true;
                for i in (apps - 5)..apps {
                    if let Err(answer) = self.resolves(http, &app_name(i)).await? {
                        last = format!("{}: {answer}", app_name(i));
                        all = false;
                        break;
                    }
                }
                if all {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "ferryd {} did not get to hold the {apps} apps within {SYNC_TIMEOUT:?}; last answer: {last}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every app resolves.
    async fn check_every_app(&mut self, http: &Http, apps: usize) -> anyhow::Result<()> {
        let this = &*self;
        let failures: Vec<String> = stream::iter(0..apps)
            .map(|i| async move {
                let app = app_name(i);
                match this.resolves(http, &app).await {
                    Ok(Ok(())) => None,
                    Ok(Err(answer)) => Some(format!("{app}: {answer}")),
                    Err(e) => Some(format!("{app}: {e:#}")),
                }
            })
            .buffer_unordered(8)
            .filter_map(|f| async move { f })
            .collect()
            .await;
        self.check_running()?;
        if !failures.is_empty() {
            bail!(
                "{} of {apps} apps do not resolve through ferryd {}; the first: {}",
                failures.len(),
                self.name,
                failures[..failures.len().min(3)].join("; ")
            );
        }
        Ok(())
    }
}

impl Drop for Ferryd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_endpoints_are_distinct_and_outside_the_clusters_ranges() {
        let all: std::collections::BTreeSet<Ipv4Addr> = (0..20_000).map(fake_ip).collect();
        assert_eq!(all.len(), 20_000);
        assert!(all.iter().all(|ip| (100..200).contains(&ip.octets()[1])));
        assert_eq!(fake_ip(0), Ipv4Addr::new(10, 100, 0, 0));
        assert_eq!(fake_ip(65_536 + 257), Ipv4Addr::new(10, 101, 1, 1));
        assert_eq!(fake_ip(MAX_ENDPOINTS - 1), Ipv4Addr::new(10, 199, 255, 255));
    }

    #[test]
    fn answers_are_classified() {
        let refused = r#"{"errorCode":"ERR_DIRECT_INVOKE","message":"error invoking remote app: cannot connect to the sidecar of app-0001 at 10.100.0.10:50002: Network is unreachable (os error 101)"}"#;
        assert_eq!(classify("app-0001", 500, refused), Answer::Resolved);
        assert_eq!(classify("app-0002", 500, refused), Answer::Other);
        assert_eq!(classify("app-0000", 200, "probe"), Answer::Resolved);
        let none = "app 'app-0000' in namespace 'x' has no ready instance: Service app-0000-dapr";
        assert_eq!(classify("app-0000", 500, none), Answer::NoReadyInstance);
        assert_eq!(
            classify("app-0000", 500, "not found in namespace"),
            Answer::Other
        );
    }

    #[test]
    fn objects_carry_the_operators_labels() {
        let s = slice(
            "ns",
            "app-0001",
            &[SocketAddr::from(([10, 100, 0, 10], FAKE_PORT))],
            false,
        );
        assert_eq!(
            s["metadata"]["labels"]["kubernetes.io/service-name"],
            "app-0001-dapr"
        );
        assert_eq!(s["metadata"]["labels"]["dapr.io/enabled"], "true");
        assert_eq!(s["endpoints"][0]["conditions"]["ready"], false);
        assert_eq!(
            s["ports"][1],
            json!({"name": "dapr-internal", "port": 50002, "protocol": "TCP"})
        );
        let t = table("ns", 1000);
        assert_eq!(t["spec"]["apps"].as_array().map(Vec::len), Some(1000));
        assert_eq!(t["spec"]["apps"][999]["service"], "app-0999-dapr");
    }
}
