//! The integration-test harness: real `ferryd` processes, test apps served in the test's own
//! runtime, and real clients (hyper, raw sockets, curl).
//!
//! * [`Mesh`] is one private `FERRY_HOME`, so tests that run in parallel never see each other's
//!   sidecars. [`Mesh::sidecar`] spawns `ferryd` and finds its ports through the registry entry
//!   that carries the child's pid; the child is killed when the [`Sidecar`] is dropped, panics
//!   included.
//! * [`TestApp`] is a hyper server whose workhorse route echoes what it received as JSON;
//!   [`RawApp`] writes hand-made bytes for what hyper would refuse to send (stale lengths,
//!   resets, hop-by-hop response headers).
//! * Every wait has a deadline, so a hang fails the test instead of blocking the suite.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{Notify, mpsc},
    task::JoinHandle,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How long any single step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

/// Dapr's answer when a request names no target, byte for byte.
/// The sidecar's 404 body when a request names no target: Dapr's text, then `hint` (what is
/// missing and the URL that works).
pub fn no_target_body(hint: &str) -> String {
    serde_json::json!({
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": format!("failed getting app id either from the URL path or the header dapr-app-id: {hint}"),
    })
    .to_string()
}

pub fn ferryd() -> &'static str {
    env!("CARGO_BIN_EXE_ferryd")
}

/// Awaits `f`, failing the test if it takes longer than [`STEP`].
pub async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

// === Mesh and Sidecar ===

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// One private registry root (`FERRY_HOME`) shared by the sidecars of one test.
pub struct Mesh {
    pub home: PathBuf,
}

impl Mesh {
    pub fn new(test: &str) -> Self {
        let home = std::env::temp_dir().join(format!(
            "ferry-it-{test}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&home);
        fs::create_dir_all(&home).expect("create the test's FERRY_HOME");
        Self { home }
    }

    pub fn registry(&self) -> PathBuf {
        self.home.join("registry")
    }

    /// A sidecar for `app_id`; add flags, then `start()` (waits for healthz 204) or
    /// `start_unready()` (waits for registration only).
    pub fn sidecar(&self, app_id: &str) -> SidecarBuilder<'_> {
        SidecarBuilder {
            mesh: self,
            app_id: app_id.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Writes a file into the test's directory and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.home.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.home);
    }
}

pub struct SidecarBuilder<'a> {
    mesh: &'a Mesh,
    app_id: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl SidecarBuilder<'_> {
    pub fn app_port(self, port: u16) -> Self {
        self.args(&["--app-port", &port.to_string()])
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Spawns and waits until `/v1.0/healthz` answers 204.
    pub async fn start(self) -> Sidecar {
        let sc = self.start_unready().await;
        sc.wait_healthy().await;
        sc
    }

    /// Spawns and waits until the sidecar has registered (its ports are known).
    pub async fn start_unready(self) -> Sidecar {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let log = self.mesh.home.join(format!("{}-{n}.log", self.app_id));
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(ferryd())
            // A clean environment: no FERRY_* or NAMESPACE from the machine, no POD_NAME.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.mesh.home)
            .env("FERRY_HOME", &self.mesh.home)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args([
                "--app-id",
                &self.app_id,
                "--dapr-http-port",
                "0",
                "--dapr-grpc-port",
                "0",
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn ferryd");
        let mut sc = Sidecar {
            pid: child.id(),
            child,
            app_id: self.app_id,
            http: 0,
            grpc: 0,
            internal: SocketAddr::from(([127, 0, 0, 1], 0)),
            entry_path: PathBuf::new(),
            log,
        };
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = sc.child.try_wait().unwrap() {
                panic!(
                    "ferryd for {} exited early ({status}):\n{}",
                    sc.app_id,
                    sc.log_text()
                );
            }
            if let Some((path, entry)) = find_entry(&self.mesh.registry(), sc.pid) {
                sc.http = entry["http_port"].as_u64().unwrap() as u16;
                sc.grpc = entry["grpc_port"].as_u64().unwrap() as u16;
                sc.internal = entry["internal_address"].as_str().unwrap().parse().unwrap();
                sc.entry_path = path;
                return sc;
            }
            assert!(
                Instant::now() < deadline,
                "ferryd for {} did not register:\n{}",
                sc.app_id,
                sc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The registry entry written by process `pid`.
fn find_entry(dir: &Path, pid: u32) -> Option<(PathBuf, Value)> {
    for de in fs::read_dir(dir).ok()? {
        let path = de.ok()?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(bytes) = fs::read(&path) else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if v["pid"].as_u64() == Some(pid as u64) {
            return Some((path, v));
        }
    }
    None
}

/// A running `ferryd`; killed (SIGKILL) on drop.
pub struct Sidecar {
    child: Child,
    pub pid: u32,
    pub app_id: String,
    /// The HTTP API port.
    pub http: u16,
    /// The gRPC API port.
    pub grpc: u16,
    /// The sidecar-to-sidecar address.
    pub internal: SocketAddr,
    pub entry_path: PathBuf,
    log: PathBuf,
}

impl Sidecar {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http, path_and_query)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                try_send(get_req(&self.url("/v1.0/healthz"))),
            )
            .await
                && r.status == StatusCode::NO_CONTENT
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {} never became healthy:\n{}",
                self.app_id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as a crash would: no clean-up, the registry file stays behind unlocked.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.exited().await
    }

    /// SIGTERM, without waiting.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the exit status.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "ferryd ignored SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- log of ferryd {} (pid {}) ---\n{}",
                self.app_id,
                self.pid,
                self.log_text()
            );
        }
    }
}

/// App `b-app` behind sidecar `b`, and sidecar `a` without an app: the usual topology.
pub struct Pair {
    pub a: Sidecar,
    pub b: Sidecar,
    pub app: TestApp,
    pub mesh: Mesh,
}

impl Pair {
    pub async fn start(test: &str) -> Self {
        Self::start_with(test, &[]).await
    }

    /// As [`Pair::start`], with extra flags for sidecar `a`.
    pub async fn start_with(test: &str, a_args: &[&str]) -> Self {
        let mesh = Mesh::new(test);
        let app = TestApp::start("b-app").await;
        let b = mesh.sidecar("b").app_port(app.port).start().await;
        let a = mesh.sidecar("a").args(a_args).start().await;
        Self { a, b, app, mesh }
    }
}

/// A port that is bound but not listening: connections to it are refused until the socket is
/// turned into a listener, and no other process can take it meanwhile.
pub fn reserve_port() -> (TcpSocket, u16) {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// The machine's host name as the sidecar reads it (for `X-Forwarded-Host` and `Forwarded`).
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

// === HTTP client ===

/// A response read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.text()))
    }

    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "expected an echo, got: {}", self.text());
        Echo(self.json())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// Asserts a sidecar-made invoke error with this status; returns its message.
    pub fn invoke_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert_eq!(v["errorCode"], "ERR_DIRECT_INVOKE", "{v}");
        v["message"].as_str().unwrap().to_owned()
    }
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}

/// A request body of unknown length (sent chunked), fed through the returned sender.
pub fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// A request body of unknown length made of `data` in 64 KiB frames.
pub fn chunked_body(data: Bytes) -> Body {
    let stream = futures_util::stream::unfold(0usize, move |off| {
        let data = data.clone();
        async move {
            if off >= data.len() {
                return None;
            }
            let end = (off + 64 * 1024).min(data.len());
            Some((Ok::<_, BoxError>(Frame::data(data.slice(off..end))), end))
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

pub fn get_req(url: &str) -> Request<Body> {
    Request::get(url).body(empty()).unwrap()
}

/// Sends and reads the whole response; a transport error is returned, not a panic.
pub async fn try_send(req: Request<Body>) -> Result<Resp, BoxError> {
    let resp = client().request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Sends and reads the whole response, failing the test on a transport error or a hang.
pub async fn send(req: Request<Body>) -> Resp {
    let what = format!("{} {}", req.method(), req.uri());
    step(&what, try_send(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

pub async fn get(url: &str) -> Resp {
    send(get_req(url)).await
}

/// A request with headers (in order, repeats allowed) and a fixed-length body.
pub async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = if body.is_empty() {
        empty()
    } else {
        full(body.to_owned())
    };
    send(b.body(body).unwrap()).await
}

// === What the echo route saw ===

/// The echo route's JSON: `app`, `method`, `path` (raw path and query), `version`, `headers`
/// (`[[name, value], ...]` in order), `body_len`, `body_hash`, `body` (when small).
#[derive(Debug, Clone)]
pub struct Echo(pub Value);

impl Echo {
    pub fn app(&self) -> &str {
        self.0["app"].as_str().unwrap()
    }

    pub fn method(&self) -> &str {
        self.0["method"].as_str().unwrap()
    }

    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap()
    }

    pub fn body(&self) -> &str {
        self.0["body"].as_str().unwrap_or_default()
    }

    pub fn body_len(&self) -> u64 {
        self.0["body_len"].as_u64().unwrap()
    }

    pub fn body_hash(&self) -> u64 {
        self.0["body_hash"].as_u64().unwrap()
    }

    /// Every value of a header, in order (names compared case-insensitively).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|p| p[1].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(all.len() <= 1, "{name} has several values: {all:?}");
        all.into_iter().next()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.header_all(name).is_empty()
    }
}

// === Bodies with known content ===

/// FNV-1a, to compare large bodies without printing them.
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Deterministic, non-repeating-looking bytes: byte `i` of a body of any length.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

// === Test apps ===

/// What a test app records, for tests that look at timing or at requests with no echo.
#[derive(Default)]
pub struct AppState {
    pub name: String,
    /// Every request's echo, in arrival order.
    pub requests: Mutex<Vec<Echo>>,
    /// When each SSE event was handed to hyper.
    pub sse_sent: Mutex<Vec<Instant>>,
    /// `/stream-echo` saw its first data chunk.
    pub first_chunk: Notify,
    /// `/slow/<ms>` has started waiting.
    pub slow_started: Notify,
}

/// A hyper test app on 127.0.0.1 (HTTP/1.1 and h2c), stopped on drop. Routes:
///
/// * `/status/<code>`: that status, `application/problem+json`, `x-custom`, two `set-cookie`;
/// * `/big/<n>`: n known bytes with a Content-Length; `/bigchunked/<n>`: the same, chunked;
/// * `/sse`: 10 `data:` events 200 ms apart; `/redirect`: 301 with Location;
/// * `/slow/<ms>`: answers after ms; `/stream-echo`: reads the body frame by frame;
/// * `/no-ct`: a body without Content-Type; `/traceparent`: answers with its own traceparent;
/// * `/abort`: starts a chunked body, then fails it (the connection is cut);
/// * anything else: the echo.
pub struct TestApp {
    pub port: u16,
    pub state: Arc<AppState>,
    task: JoinHandle<()>,
}

/// The traceparent `/traceparent` answers with.
pub const APP_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

impl TestApp {
    pub async fn start(name: &str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, l, None)
    }

    /// Serves on a listener the test made (for a port reserved before the app starts).
    pub fn serve(
        name: &str,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(AppState {
            name: name.to_owned(),
            ..Default::default()
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, tls) = (st.clone(), tls.clone());
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let svc = service_fn(move |req| route(st.clone(), false, req));
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            let client_cert = tls.get_ref().1.peer_certificates().is_some();
                            let svc = service_fn(move |req| route(st.clone(), client_cert, req));
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                });
            }
        });
        Self { port, state, task }
    }

    pub fn requests(&self) -> Vec<Echo> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(status: u16, headers: &[(&str, &str)], body: Body) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

fn stream_of<S>(s: S) -> Body
where
    S: futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static,
{
    StreamBody::new(s).boxed_unsync()
}

/// `n` known bytes in 64 KiB frames.
fn big_body(n: usize) -> Body {
    stream_of(futures_util::stream::unfold(
        0usize,
        move |off| async move {
            if off >= n {
                return None;
            }
            let len = (n - off).min(64 * 1024);
            Some((Ok(Frame::data(Bytes::from(pattern(off, len)))), off + len))
        },
    ))
}

async fn route(
    st: Arc<AppState>,
    client_cert: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let seg: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let arg = seg.get(1).copied().unwrap_or_default();
    let resp = match seg[0] {
        "status" => {
            let code: u16 = arg.parse().unwrap();
            let body = format!(r#"{{"app":"{}","status":{code}}}"#, st.name);
            let mut r = respond(
                code,
                &[
                    ("content-type", "application/problem+json"),
                    ("x-custom", "kept"),
                    ("set-cookie", "a=1; Path=/"),
                    ("set-cookie", "b=2; HttpOnly"),
                ],
                full(body),
            );
            // Record it too, so tests can tell the app answered.
            st.requests
                .lock()
                .unwrap()
                .push(Echo(echo_json(&st, &req, client_cert, &[])));
            r.headers_mut().insert("x-app", st.name.parse().unwrap());
            r
        }
        "big" => {
            let n: usize = arg.parse().unwrap();
            respond(
                200,
                &[
                    ("content-length", &n.to_string()),
                    ("content-type", "application/octet-stream"),
                ],
                big_body(n),
            )
        }
        "bigchunked" => respond(
            200,
            &[("content-type", "application/octet-stream")],
            big_body(arg.parse().unwrap()),
        ),
        "sse" => {
            let st = st.clone();
            let events = futures_util::stream::unfold(0u32, move |i| {
                let st = st.clone();
                async move {
                    if i == 10 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    st.sse_sent.lock().unwrap().push(Instant::now());
                    let ev = Bytes::from(format!("data: {i}\n\n"));
                    Some((Ok(Frame::data(ev)), i + 1))
                }
            });
            respond(
                200,
                &[
                    ("content-type", "text/event-stream"),
                    ("cache-control", "no-cache"),
                ],
                stream_of(events),
            )
        }
        "redirect" => respond(
            301,
            &[("location", "http://127.0.0.1:9/elsewhere")],
            full("moved"),
        ),
        "slow" => {
            st.slow_started.notify_one();
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap())).await;
            respond(200, &[], full("slow done"))
        }
        "stream-echo" => {
            let mut body = req.into_body();
            let (mut n, mut data) = (0usize, Vec::new());
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(d) = frame.data_ref() {
                    if n == 0 && !d.is_empty() {
                        st.first_chunk.notify_one();
                    }
                    n += d.len();
                    data.extend_from_slice(d);
                }
            }
            let v = json!({"body_len": n, "body_hash": hash(&data)});
            respond(
                200,
                &[("content-type", "application/json")],
                full(v.to_string()),
            )
        }
        "no-ct" => respond(200, &[], full("plain")),
        "traceparent" => respond(200, &[("traceparent", APP_TRACEPARENT)], full("traced")),
        "abort" => {
            let frames = futures_util::stream::iter((0..4).map(|i| {
                if i < 3 {
                    Ok(Frame::data(Bytes::from(vec![b'x'; 1024])))
                } else {
                    Err::<Frame<Bytes>, BoxError>("the app gives up mid-body".into())
                }
            }));
            respond(200, &[], stream_of(frames))
        }
        _ => {
            let (parts, body) = req.into_parts();
            let data = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let req = Request::from_parts(parts, ());
            let v = echo_json(&st, &req, client_cert, &data);
            st.requests.lock().unwrap().push(Echo(v.clone()));
            respond(
                200,
                &[("content-type", "application/json")],
                full(v.to_string()),
            )
        }
    };
    Ok(resp)
}

fn echo_json<B>(st: &AppState, req: &Request<B>, client_cert: bool, data: &[u8]) -> Value {
    let headers: Vec<Value> = req
        .headers()
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    json!({
        "app": st.name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", req.version()),
        "headers": headers,
        "body_len": data.len(),
        "body_hash": hash(data),
        "body": if data.len() <= 64 * 1024 { String::from_utf8_lossy(data).into_owned() } else { String::new() },
        "client_cert": client_cert,
    })
}

/// What a [`RawApp`] does with one request.
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// Close with a TCP reset (SO_LINGER 0) instead of a clean close.
    pub reset: bool,
}

/// A hand-written HTTP/1.1 server: one request per connection, answered with whatever bytes
/// the test chose (given the request head), then the connection is closed or reset.
pub struct RawApp {
    pub port: u16,
    task: JoinHandle<()>,
}

impl RawApp {
    pub async fn start<F>(reply: F) -> Self
    where
        F: Fn(&str) -> RawReply + Send + Sync + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let reply = Arc::new(reply);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                let reply = reply.clone();
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut s).await else {
                        return; // a readiness probe: connected and closed
                    };
                    let r = reply(&head);
                    let _ = s.write_all(&r.bytes).await;
                    let _ = s.flush().await;
                    if r.reset {
                        let _ = s.set_zero_linger();
                        drop(s);
                    } else {
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request head (and its Content-Length body, discarded); `None` on EOF first.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut have = buf.len() - end;
    while have < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Some(head)
}

// === Raw client ===

/// What came back on a raw connection: the status (if any arrived) and everything read, until
/// the server closed the connection or reset it.
#[derive(Debug)]
pub struct RawOutcome {
    pub status: Option<u16>,
    pub head: String,
    pub body: Vec<u8>,
    pub reset: bool,
}

impl RawOutcome {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` (in the background, so a server that answers early is heard) and reads
/// until the server closes. Send `Connection: close` in well-formed requests.
pub async fn raw_exchange(port: u16, request: Vec<u8>) -> RawOutcome {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    // The write half stays open until the answer has been read: hyper may drop a connection
    // whose client half-closes before the response.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&request).await;
        let _ = w.flush().await;
        std::future::pending::<()>().await;
        drop(w);
    });
    let mut buf = Vec::new();
    let mut reset = false;
    step("reading a raw response", async {
        let mut chunk = [0u8; 16384];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    reset = true;
                    break;
                }
            }
        }
    })
    .await;
    writer.abort();
    parse_raw(&buf, reset)
}

fn parse_raw(buf: &[u8], reset: bool) -> RawOutcome {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        let head = String::from_utf8_lossy(buf).into_owned();
        return RawOutcome {
            status: status_of(&head),
            head,
            body: Vec::new(),
            reset,
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = &buf[end + 4..];
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    RawOutcome {
        status: status_of(&head),
        head,
        body,
        reset,
    }
}

fn status_of(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    if !line.starts_with("HTTP/") {
        return None;
    }
    line.split_whitespace().nth(1)?.parse().ok()
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..i]).unwrap_or("0");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        b = &b[i + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

// === curl ===

#[derive(Debug)]
pub struct CurlOut {
    pub status: u16,
    /// The status line, e.g. `HTTP/2 200`.
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl CurlOut {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Runs `curl -sS -i ARGS...` and parses the last response it printed.
pub async fn curl(args: &[&str]) -> CurlOut {
    let out = step(
        "curl",
        tokio::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Interim responses (100 Continue) come first; the last head is the answer.
    let mut rest = text.as_str();
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").expect("a response head");
        if body.starts_with("HTTP/") {
            rest = body;
            continue;
        }
        let mut lines = head.lines();
        let status_line = lines.next().unwrap().trim().to_owned();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        return CurlOut {
            status,
            status_line,
            headers,
            body: body.to_owned(),
        };
    }
}
