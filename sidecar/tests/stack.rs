//! The in-memory test level: a caller's and a callee's stacks joined without sockets.
//!
//! Each sidecar is built by `stacks::Sidecar::new` exactly as `server.rs` builds it, with three
//! things that live in the test: the resolver ([`Names`]), the apps ([`echo_app`] and friends,
//! `Upstream`s), and the peer connector ([`Pipes`]), which serves the callee's real inbound stack
//! over an in-memory pipe with hyper, HTTP/1.1 and HTTP/2 as between real sidecars. What needs
//! sockets and processes (ports, signals, the registry, real clients) stays in the other suites.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use ferry_api::{AppId, Namespace, SpiffeId};
use ferry_sidecar::{
    SidecarArgs,
    body::{self, Body, BoxError},
    endpoints::{Endpoint, Endpoints},
    inbound::{Inbound, access::Policy},
    invoke::ResolveError,
    outbound::{
        Outbound,
        balance::Instances,
        peers::{Connect, Peer},
        resolve::Resolve,
    },
    stacks::{Parts, Sidecar},
    upstream::{AppChannel, upstream_fn},
};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

const STEP: Duration = Duration::from_secs(10);

async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

// === the resolver ===

/// App IDs → instances, as the test says; counts the refreshes the stack asks for.
#[derive(Default)]
struct Names {
    apps: Mutex<HashMap<(String, String), Arc<Instances>>>,
    refreshes: AtomicUsize,
}

impl Names {
    fn set(&self, app: &str, ns: &str, addrs: &[SocketAddr]) {
        let mut apps = self.apps.lock().unwrap();
        let key = (ns.to_owned(), app.to_owned());
        let prev = apps.get(&key).cloned();
        apps.insert(
            key,
            Arc::new(Instances::rebuilt(
                ns.to_owned(),
                addrs.to_vec(),
                prev.as_deref(),
            )),
        );
    }
}

impl Resolve for Names {
    async fn resolve(
        &self,
        app: &AppId,
        ns: &Namespace,
        _explicit: bool,
    ) -> Result<Arc<Instances>, ResolveError> {
        self.apps
            .lock()
            .unwrap()
            .get(&(ns.to_string(), app.to_string()))
            .cloned()
            .ok_or_else(|| ResolveError::NotRegistered {
                app: app.clone(),
                namespace: ns.clone(),
                dir: "in-memory".into(),
            })
    }

    async fn unreachable(&self) {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
    }
}

// === the connector ===

/// Peer addresses → callee stacks, reached over in-memory pipes; an address without a stack
/// refuses the connection. Counts connection attempts per address.
#[derive(Clone, Default)]
struct Pipes {
    callees: Arc<Mutex<HashMap<SocketAddr, Inbound>>>,
    attempts: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    /// The identity each new connection's peer has, as server.rs hands a verified mTLS
    /// identity to the callee's stack (`None`: plaintext, no identity).
    peer_id: Arc<Mutex<Option<SpiffeId>>>,
}

impl Pipes {
    fn serve(&self, addr: SocketAddr, inbound: Inbound) {
        self.callees.lock().unwrap().insert(addr, inbound);
    }

    fn attempts(&self, addr: SocketAddr) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .get(&addr)
            .copied()
            .unwrap_or(0)
    }
}

impl Connect for Pipes {
    type Io = TokioIo<tokio::io::DuplexStream>;

    async fn connect(&self, peer: &Peer) -> io::Result<Self::Io> {
        let addr = peer.addr;
        *self.attempts.lock().unwrap().entry(addr).or_default() += 1;
        let Some(inbound) = self.callees.lock().unwrap().get(&addr).cloned() else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing serves {addr}"),
            ));
        };
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let peer_id = self.peer_id.lock().unwrap().clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                if let Some(id) = &peer_id {
                    req.extensions_mut().insert(id.clone());
                }
                inbound.clone().call(req)
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20);
            let _ = builder.serve_connection(TokioIo::new(theirs), svc).await;
        });
        Ok(TokioIo::new(ours))
    }
}

// === apps ===

/// What an app saw, and how it answered.
type Seen = mpsc::UnboundedSender<Value>;

/// Answers every request with JSON of what it received, and headers an app must not get
/// through: a hop-by-hop one and a forged `ferry-error`.
fn echo_app(name: &'static str, seen: Option<Seen>) -> AppChannel {
    AppChannel::in_memory(upstream_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .keys()
                .map(|k| {
                    let all: Vec<Value> = parts
                        .headers
                        .get_all(k)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
                        .collect();
                    (k.to_string(), Value::Array(all))
                })
                .collect();
            let echo = json!({
                "app": name,
                "verb": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            if let Some(s) = seen {
                let _ = s.send(echo.clone());
            }
            let text = echo.to_string();
            let length = text.len();
            let mut resp = Response::new(body::full(text));
            *resp.status_mut() = StatusCode::CREATED;
            let h = resp.headers_mut();
            h.insert("content-length", length.into());
            h.insert("x-app", HeaderValue::from_static(name));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("ferry-error", HeaderValue::from_static("forged"));
            Ok::<_, BoxError>(resp)
        }
    }))
}

// === sidecars ===

fn settings(args: &[&str]) -> Arc<ferry_sidecar::Settings> {
    let mut all = vec!["ferryd"];
    all.extend_from_slice(args);
    Arc::new(
        SidecarArgs::try_parse_from(all)
            .unwrap()
            .settings_with(None)
            .unwrap(),
    )
}

struct Mesh {
    names: Arc<Names>,
    pipes: Pipes,
}

impl Mesh {
    fn new() -> Self {
        Self {
            names: Arc::default(),
            pipes: Pipes::default(),
        }
    }

    fn sidecar(&self, args: &[&str], app: Option<AppChannel>) -> Sidecar<Names, Pipes> {
        self.sidecar_with(args, app, Endpoints::default())
    }

    fn sidecar_with(
        &self,
        args: &[&str],
        app: Option<AppChannel>,
        endpoints: Endpoints,
    ) -> Sidecar<Names, Pipes> {
        self.sidecar_full(args, app, endpoints, Arc::new(ArcSwapOption::empty()))
    }

    fn sidecar_full(
        &self,
        args: &[&str],
        app: Option<AppChannel>,
        endpoints: Endpoints,
        access: Policy,
    ) -> Sidecar<Names, Pipes> {
        Sidecar::new(Parts {
            settings: settings(args),
            resolver: self.names.clone(),
            connect: self.pipes.clone(),
            app,
            fqdn: None,
            endpoints: Arc::new(ArcSwap::from_pointee(endpoints)),
            hostname: "caller-pod".into(),
            app_health: None,
            metrics: None,
            access,
        })
    }

    /// A callee sidecar serving `app` at `addr`, registered under its app ID and namespace.
    fn callee(&self, addr: &str, args: &[&str], app: Option<AppChannel>) -> SocketAddr {
        self.callee_with(addr, args, app, Arc::new(ArcSwapOption::empty()))
    }

    /// [`Mesh::callee`] under an access-control policy.
    fn callee_with(
        &self,
        addr: &str,
        args: &[&str],
        app: Option<AppChannel>,
        policy: Policy,
    ) -> SocketAddr {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = settings(args);
        let sidecar = self.sidecar_full(args, app, Endpoints::default(), policy);
        self.pipes.serve(addr, sidecar.inbound);
        self.names
            .set(s.app_id.as_str(), s.namespace.as_str(), &[addr]);
        addr
    }
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn message(&self) -> String {
        self.json()["message"].as_str().unwrap().to_owned()
    }
}

async fn call(out: &Outbound<Names, Pipes>, req: Request<Body>) -> Answer {
    let resp = step("the call", out.clone().oneshot(req)).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = step("the answer's body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn req(verb: &str, uri: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
    let mut r = Request::new(body);
    *r.method_mut() = verb.parse().unwrap();
    *r.uri_mut() = uri.parse().unwrap();
    for (k, v) in headers {
        r.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

fn header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default()
}

const CHECKOUT: &[&str] = &["--app-id", "checkout", "--namespace", "shop"];
const CART: &[&str] = &["--app-id", "cart", "--namespace", "shop"];

// === targets, headers, identity ===

#[tokio::test]
async fn a_call_by_app_id_reaches_the_app_with_the_sidecars_headers_and_comes_back_unchanged() {
    let mesh = Mesh::new();
    let (seen, mut saw) = mpsc::unbounded_channel();
    mesh.callee("10.0.0.2:50002", CART, Some(echo_app("cart", Some(seen))));
    let caller = mesh.sidecar(CHECKOUT, None);
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let a = call(
        &caller.outbound,
        req(
            "PUT",
            "/v1.0/invoke/cart/method/orders/7?x=1&y=%20",
            &[
                ("traceparent", trace),
                ("dapr-caller-app-id", "evil"),
                ("dapr-callee-app-id", "evil"),
                ("ferry-callee", "payments.prod"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("x-forwarded-for", "10.9.9.9"),
                ("x-multi", "a"),
                ("x-multi", "b"),
            ],
            body::full("the body"),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    assert_eq!(a.headers["x-app"], "cart");
    assert!(
        a.headers.get("keep-alive").is_none(),
        "hop-by-hop never comes back"
    );
    assert!(
        a.headers.get("ferry-error").is_none(),
        "an app cannot forge ferry-error"
    );
    assert_eq!(a.headers["content-length"], a.body.len().to_string());
    let echo = a.json();
    assert_eq!(
        saw.try_recv().unwrap(),
        echo,
        "the body is the app's, byte for byte"
    );

    assert_eq!(echo["verb"], "PUT");
    assert_eq!(echo["path"], "/orders/7");
    assert_eq!(echo["query"], "x=1&y=%20");
    assert_eq!(echo["body"], "the body");
    assert_eq!(header(&echo, "dapr-caller-app-id"), ["checkout"]);
    assert_eq!(header(&echo, "dapr-caller-namespace"), ["shop"]);
    assert_eq!(header(&echo, "dapr-callee-app-id"), ["cart"]);
    assert!(
        header(&echo, "ferry-callee").is_empty(),
        "the callee takes its tag off"
    );
    assert!(header(&echo, "x-hop").is_empty());
    assert_eq!(header(&echo, "x-multi"), ["a", "b"]);
    assert_eq!(header(&echo, "x-forwarded-for"), ["10.9.9.9", "127.0.0.1"]);
    assert_eq!(header(&echo, "x-forwarded-host"), ["caller-pod"]);
    // Each hop has its own span in the caller's trace.
    let tp = header(&echo, "traceparent")[0];
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert_ne!(tp, trace);
    assert!(a.headers.contains_key("traceparent"));
}

#[tokio::test]
async fn every_form_of_target_finds_its_destination() {
    let mesh = Mesh::new();
    let (seen, mut saw) = mpsc::unbounded_channel();
    mesh.callee(
        "10.0.0.2:50002",
        CART,
        Some(echo_app("cart", Some(seen.clone()))),
    );
    mesh.callee(
        "10.0.1.2:50002",
        &["--app-id", "cart", "--namespace", "other"],
        Some(echo_app("cart-in-other", Some(seen.clone()))),
    );
    let weather = Endpoint {
        name: "weather".into(),
        base_url: "http://weather.example/api".into(),
        headers: vec![(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("k1"),
        )],
        client: upstream_fn({
            let seen = seen.clone();
            move |req: Request<Body>| {
                let _ = seen.send(json!({"app": "weather", "uri": req.uri().to_string(),
                    "key": req.headers()["x-api-key"].to_str().unwrap()}));
                async { Ok::<_, BoxError>(Response::new(body::full("sunny"))) }
            }
        }),
    };
    let caller = mesh.sidecar_with(
        CHECKOUT,
        Some(echo_app("checkout", Some(seen))),
        Endpoints::new([Arc::new(weather)], []),
    );
    let out = &caller.outbound;

    // The dapr-app-id header, on any path.
    let a = call(
        out,
        req("GET", "/a/b", &[("dapr-app-id", "cart")], body::empty()),
    )
    .await;
    assert_eq!(a.json()["app"], "cart");
    assert_eq!(saw.try_recv().unwrap()["path"], "/a/b");
    // Basic auth with user dapr-app-id.
    let auth = format!("Basic {}", base64_of("dapr-app-id:cart"));
    let a = call(
        out,
        req("GET", "/x", &[("authorization", &auth)], body::empty()),
    )
    .await;
    assert_eq!(a.json()["app"], "cart");
    saw.try_recv().unwrap();
    // app.namespace.
    let a = call(
        out,
        req(
            "GET",
            "/v1.0/invoke/cart.other/method/m",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(a.json()["app"], "cart-in-other");
    saw.try_recv().unwrap();
    // The caller itself: its own app, with its own identity.
    let a = call(
        out,
        req(
            "GET",
            "/v1.0/invoke/checkout/method/self",
            &[],
            body::empty(),
        ),
    )
    .await;
    let echo = a.json();
    assert_eq!(echo["app"], "checkout");
    assert_eq!(header(&echo, "dapr-caller-app-id"), ["checkout"]);
    assert_eq!(header(&echo, "dapr-callee-app-id"), ["checkout"]);
    saw.try_recv().unwrap();
    // An HTTPEndpoint: its base URL and its own headers, over the caller's.
    let a = call(
        out,
        req(
            "GET",
            "/v1.0/invoke/weather/method/today?c=1",
            &[("x-api-key", "mine")],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(a.body, "sunny");
    let seen = saw.try_recv().unwrap();
    assert_eq!(seen["uri"], "http://weather.example/api/today?c=1");
    assert_eq!(seen["key"], "k1");
    assert!(saw.try_recv().is_err(), "one call, one arrival");
}

#[tokio::test]
async fn requests_the_stack_refuses_get_daprs_errors() {
    let mesh = Mesh::new();
    let caller = mesh.sidecar(CHECKOUT, None);
    let out = &caller.outbound;

    let a = call(out, req("GET", "/nothing/here", &[], body::empty())).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.body,
        r#"{"errorCode":"ERR_DIRECT_INVOKE","message":"failed getting app id either from the URL path or the header dapr-app-id: name the app in the path, /v1.0/invoke/<app-id>/method/nothing/here, or in a dapr-app-id header"}"#
    );
    let a = call(
        out,
        req("GET", "/v1.0/invoke/a.b.c/method/x", &[], body::empty()),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        a.message(),
        "failed to invoke, id: a.b.c, err: invalid app id a.b.c: a target is <app-id>, <app-id>.<namespace>, an HTTPEndpoint name or an http(s):// URL, with at most one '.'"
    );
    let a = call(
        out,
        req("GET", "/v1.0/invoke/cart/method/a%23b", &[], body::empty()),
    )
    .await;
    assert_eq!(
        a.message(),
        "failed to invoke, id: cart, err: rpc error: code = InvalidArgument desc = invalid method: method contains forbidden character: \"a#b\""
    );
    let a = call(
        out,
        req(
            "GET",
            "/v1.0/invoke/http%3A%2F%2Fexample.com/method/x",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert!(
        a.message().contains("FQDN invocation is turned off"),
        "{}",
        a.message()
    );
    let a = call(
        out,
        req("GET", "/v1.0/invoke/cart/method/x", &[], body::empty()),
    )
    .await;
    assert_eq!(
        a.message(),
        "failed to invoke, id: cart, err: failed to resolve address for 'cart' in namespace 'shop': no running sidecar has registered app ID 'cart' in namespace 'shop' under in-memory (start it with: ferry run --app-id cart ...)"
    );
    let a = call(
        out,
        req("GET", "/v1.0/invoke/checkout/method/x", &[], body::empty()),
    )
    .await;
    assert!(
        a.message()
            .contains("cannot invoke local endpoint: app channel not initialized"),
        "{}",
        a.message()
    );
    let a = call(
        out,
        req(
            "GET",
            "/v1.0/invoke/cart/method/x",
            &[("baggage", "no-equals-sign")],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["errorCode"], "ERR_MALFORMED_REQUEST");
}

// === normalization ===

#[tokio::test]
async fn the_method_is_normalized_once_and_the_callee_takes_only_that_form() {
    let mesh = Mesh::new();
    let (seen, mut saw) = mpsc::unbounded_channel();
    mesh.callee("10.0.0.2:50002", CART, Some(echo_app("cart", Some(seen))));
    let caller = mesh.sidecar(CHECKOUT, None);
    for (sent, delivered) in [
        ("public%23/../admin", "/admin"),
        ("a/./b//c/", "/a/b/c/"),
        ("../../etc/passwd", "/etc/passwd"),
        ("x%252Fy", "/x%2Fy"),
    ] {
        let uri = format!("/v1.0/invoke/cart/method/{sent}");
        let a = call(&caller.outbound, req("GET", &uri, &[], body::empty())).await;
        assert_eq!(a.status, StatusCode::CREATED, "{sent}: {:?}", a.body);
        assert_eq!(saw.try_recv().unwrap()["path"], delivered, "{sent}");
    }

    // A peer that sends a method that is not canonical is refused, and says so to the caller's
    // sidecar (marked as the callee sidecar's own error).
    let callee = mesh.sidecar(CART, Some(echo_app("cart", None)));
    let resp = callee
        .inbound
        .oneshot(req(
            "GET",
            "/a/../b",
            &[("ferry-callee", "cart.shop")],
            body::empty(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.headers()["ferry-error"], "invalid-method");
    assert!(saw.try_recv().is_err(), "the app never saw it");
}

// === the callee's own errors ===

#[tokio::test]
async fn a_request_for_another_app_never_reaches_this_one() {
    let mesh = Mesh::new();
    let (seen, mut saw) = mpsc::unbounded_channel();
    // The resolver's table is stale: `orders` is listed at the address where cart runs now.
    let addr = mesh.callee("10.0.0.2:50002", CART, Some(echo_app("cart", Some(seen))));
    mesh.names.set("orders", "shop", &[addr]);
    let caller = mesh.sidecar(CHECKOUT, None);
    let a = call(
        &caller.outbound,
        req(
            "POST",
            "/v1.0/invoke/orders/method/pay",
            &[],
            body::full("1"),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        a.message(),
        r#"failed to invoke, id: orders, err: rpc error: code = Internal desc = request was meant for app "orders.shop", but this sidecar serves "cart.shop""#
    );
    assert!(
        a.headers.get("ferry-error").is_none(),
        "the mark stays between sidecars"
    );
    assert!(
        saw.try_recv().is_err(),
        "cart's app never saw orders' request"
    );
}

#[tokio::test]
async fn the_callee_sidecars_errors_come_back_under_the_callers_target() {
    let mesh = Mesh::new();
    mesh.callee("10.0.0.2:50002", CART, None);
    mesh.callee(
        "10.0.0.3:50002",
        &[
            "--app-id",
            "small",
            "--namespace",
            "shop",
            "--max-body-size",
            "4",
        ],
        Some(echo_app("small", None)),
    );
    let caller = mesh.sidecar(CHECKOUT, None);
    let a = call(
        &caller.outbound,
        req("GET", "/v1.0/invoke/cart/method/x", &[], body::empty()),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        a.message(),
        "failed to invoke, id: cart, err: rpc error: code = Internal desc = app channel is not initialized (the callee sidecar was started without --app-port)"
    );
    let a = call(
        &caller.outbound,
        req(
            "POST",
            "/v1.0/invoke/small/method/x",
            &[],
            body::full("12345"),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        a.message().contains(
            "request body is larger than the limit of 4 bytes (raise it with --max-body-size)"
        ),
        "{}",
        a.message()
    );
}

// === attempts ===

#[tokio::test]
async fn a_request_of_known_length_goes_to_another_instance_when_one_cannot_be_reached() {
    let mesh = Mesh::new();
    let (seen, mut saw) = mpsc::unbounded_channel();
    let live = mesh.callee("10.0.0.2:50002", CART, Some(echo_app("cart", Some(seen))));
    let dead: Vec<SocketAddr> = vec![
        "10.0.0.8:50002".parse().unwrap(),
        "10.0.0.9:50002".parse().unwrap(),
    ];
    mesh.names.set("cart", "shop", &[dead[0], live, dead[1]]);
    let caller = mesh.sidecar(CHECKOUT, None);
    for n in 0..6 {
        let a = call(
            &caller.outbound,
            req(
                "POST",
                "/v1.0/invoke/cart/method/x",
                &[],
                body::full(format!("call {n}")),
            ),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "call {n}: {:?}", a.body);
        assert_eq!(saw.try_recv().unwrap()["body"], format!("call {n}"));
    }
    assert!(saw.try_recv().is_err(), "each call arrived once");
    assert!(
        mesh.pipes.attempts(dead[0]) + mesh.pipes.attempts(dead[1]) > 0,
        "the dead instances were tried"
    );
}

#[tokio::test]
async fn attempts_stop_at_three_and_a_streamed_body_gets_one() {
    let mesh = Mesh::new();
    let dead: Vec<SocketAddr> = vec![
        "10.0.0.8:50002".parse().unwrap(),
        "10.0.0.9:50002".parse().unwrap(),
    ];
    mesh.names.set("cart", "shop", &dead);
    let caller = mesh.sidecar(CHECKOUT, None);

    let a = call(
        &caller.outbound,
        req("POST", "/v1.0/invoke/cart/method/x", &[], body::full("b")),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        a.message().contains(
            "error invoking remote app: cannot connect to the sidecar of cart at 10.0.0."
        ),
        "{}",
        a.message()
    );
    let tried = mesh.pipes.attempts(dead[0]) + mesh.pipes.attempts(dead[1]);
    assert_eq!(tried, 3, "MAX_ATTEMPTS");
    assert_eq!(
        mesh.pipes
            .attempts(dead[0])
            .min(mesh.pipes.attempts(dead[1])),
        1,
        "both instances before either again"
    );
    assert!(
        mesh.names.refreshes.load(Ordering::SeqCst) >= 1,
        "every instance failed: the resolver was asked to refresh"
    );

    let (tx, streamed) = channel_body();
    drop(tx);
    let a = call(
        &caller.outbound,
        req("POST", "/v1.0/invoke/cart/method/x", &[], streamed),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let after = mesh.pipes.attempts(dead[0]) + mesh.pipes.attempts(dead[1]);
    assert_eq!(
        after - tried,
        1,
        "a body of unknown length is never sent twice"
    );
}

// === streaming and back-pressure ===

fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

const CHUNK: usize = 64 * 1024;
const TOTAL_CHUNKS: usize = 256; // 16 MiB

/// Waits until `count` stops growing (it has moved at least once), and returns it.
async fn settled(count: &AtomicUsize) -> usize {
    step("the first chunk", async {
        while count.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut last = count.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Sends [`TOTAL_CHUNKS`] numbered chunks into `tx`, counting those taken.
fn produce(tx: mpsc::Sender<Bytes>, taken: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        for i in 0..TOTAL_CHUNKS {
            if tx
                .send(Bytes::from(vec![(i % 251) as u8; CHUNK]))
                .await
                .is_err()
            {
                return;
            }
            taken.fetch_add(1, Ordering::SeqCst);
        }
    });
}

fn check_chunks(data: &[u8]) {
    assert_eq!(data.len(), CHUNK * TOTAL_CHUNKS);
    for (i, c) in data.chunks(CHUNK).enumerate() {
        assert!(
            c.iter().all(|b| *b == (i % 251) as u8),
            "chunk {i} is intact"
        );
    }
}

#[tokio::test]
async fn a_request_body_streams_at_the_apps_pace() {
    let mesh = Mesh::new();
    // The app takes the body but reads it only when told.
    let (bodies, mut arrived) = mpsc::unbounded_channel::<Body>();
    let app = AppChannel::in_memory(upstream_fn(move |req: Request<Body>| {
        let _ = bodies.send(req.into_body());
        async { Ok::<_, BoxError>(Response::new(body::empty())) }
    }));
    mesh.callee(
        "10.0.0.2:50002",
        &[
            "--app-id",
            "cart",
            "--namespace",
            "shop",
            "--max-body-size",
            "64Mi",
        ],
        Some(app),
    );
    let caller = mesh.sidecar(
        &[
            "--app-id",
            "checkout",
            "--namespace",
            "shop",
            "--max-body-size",
            "64Mi",
        ],
        None,
    );
    let (tx, streamed) = channel_body();
    let taken = Arc::new(AtomicUsize::new(0));
    produce(tx, taken.clone());
    // Spawned as made (not inside an async block, where rustc cannot prove the stack's future
    // Send for the boxed error's erased lifetime: rust-lang/rust#110338).
    let answer = tokio::spawn(caller.outbound.clone().oneshot(req(
        "POST",
        "/v1.0/invoke/cart/method/upload",
        &[],
        streamed,
    )));
    let body = step("the body reaches the app", arrived.recv())
        .await
        .unwrap();
    let buffered = settled(&taken).await;
    assert!(
        buffered * CHUNK < 4 << 20,
        "the caller must stop taking the body while the app does not read: {buffered} chunks taken"
    );
    let data = step("the app reads the body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    check_chunks(&data);
    let resp = step("the answer", answer).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_response_body_streams_at_the_callers_pace() {
    let mesh = Mesh::new();
    let taken = Arc::new(AtomicUsize::new(0));
    let app = AppChannel::in_memory(upstream_fn({
        let taken = taken.clone();
        move |_req: Request<Body>| {
            let (tx, streamed) = channel_body();
            produce(tx, taken.clone());
            async move { Ok::<_, BoxError>(Response::new(streamed)) }
        }
    }));
    mesh.callee("10.0.0.2:50002", CART, Some(app));
    let caller = mesh.sidecar(CHECKOUT, None);
    let resp = step(
        "the answer's head",
        caller.outbound.clone().oneshot(req(
            "GET",
            "/v1.0/invoke/cart/method/download",
            &[],
            body::empty(),
        )),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers().get("content-length").is_none(),
        "an answer of unknown length streams"
    );
    let buffered = settled(&taken).await;
    assert!(
        buffered * CHUNK < 4 << 20,
        "the sidecars must stop taking the answer while the caller does not read: {buffered} chunks taken"
    );
    let data = step("the caller reads the answer", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    check_chunks(&data);
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

// === access control ===

fn spiffe(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn policy(yaml: &str) -> Policy {
    let spec: ferry_api::configuration::AccessControlSpec = serde_saphyr::from_str(yaml).unwrap();
    let acl = ferry_sidecar::acl::Acl::compile(&spec, true)
        .unwrap()
        .unwrap();
    Arc::new(ArcSwapOption::from_pointee(acl))
}

const CART_POLICY: &str = r#"
defaultAction: deny
trustDomain: public
policies:
- appId: checkout
  defaultAction: deny
  trustDomain: public
  namespace: shop
  operations:
  - name: /orders/*
    httpVerb: ['GET']
    action: allow
"#;

#[tokio::test]
async fn access_control_judges_the_verified_caller_and_its_403_crosses_as_daprs() {
    let mesh = Mesh::new();
    let (seen, mut saw) = mpsc::unbounded_channel();
    let rules = policy(CART_POLICY);
    mesh.callee_with(
        "10.0.0.2:50002",
        CART,
        Some(echo_app("cart", Some(seen))),
        rules.clone(),
    );
    *mesh.pipes.peer_id.lock().unwrap() = Some(spiffe("spiffe://public/ns/shop/checkout"));
    let caller = mesh.sidecar(CHECKOUT, None);

    let a = call(
        &caller.outbound,
        req(
            "GET",
            "/v1.0/invoke/cart/method/Orders/7",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(a.status, 201, "the echo app answers: {:?}", a.body);
    assert_eq!(saw.recv().await.unwrap()["path"], "/Orders/7");

    let denied = call(
        &caller.outbound,
        req(
            "POST",
            "/v1.0/invoke/cart/method/orders/7",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.headers["content-type"], "application/json");
    assert!(
        !denied.headers.contains_key("ferry-error"),
        "the mark stays between sidecars"
    );
    assert_eq!(
        denied.json(),
        json!({
            "errorCode": "ERR_DIRECT_INVOKE",
            "message": "failed to invoke, id: cart, err: rpc error: code = PermissionDenied desc = access control policy has denied access to id: spiffe://public/ns/shop/checkout operation: orders/7 verb: POST",
        })
    );
    // `..` cannot walk from an allowed route onto a denied one: the path judged is the path
    // delivered (`orders/../admin` is `admin`).
    let dots = call(
        &caller.outbound,
        req(
            "GET",
            "/v1.0/invoke/cart/method/orders/%2e%2e/admin",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(dots.status, 403, "{:?}", dots.body);
    assert!(
        dots.message().ends_with("operation: admin verb: GET"),
        "{}",
        dots.message()
    );
    assert!(
        saw.try_recv().is_err(),
        "denied requests never reach the app"
    );

    // Another caller identity: no policy of its own, so the global default (deny).
    *mesh.pipes.peer_id.lock().unwrap() = Some(spiffe("spiffe://public/ns/shop/mallory"));
    let other = mesh.sidecar(&["--app-id", "mallory", "--namespace", "shop"], None);
    let a = call(
        &other.outbound,
        req(
            "GET",
            "/v1.0/invoke/cart/method/orders/7",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(a.status, 403);
    // The same app ID from another trust domain does not get checkout's policy.
    *mesh.pipes.peer_id.lock().unwrap() = Some(spiffe("spiffe://other/ns/shop/checkout"));
    let foreign = mesh.sidecar(CHECKOUT, None);
    let a = call(
        &foreign.outbound,
        req(
            "GET",
            "/v1.0/invoke/cart/method/orders/7",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(saw.try_recv().is_err());

    // The policy is swapped at runtime: the next request is judged by the new one.
    rules.store(None);
    let a = call(
        &foreign.outbound,
        req(
            "POST",
            "/v1.0/invoke/cart/method/orders/7",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(a.status, 201, "the echo app answers: {:?}", a.body);
}

#[tokio::test]
async fn without_an_identity_only_the_global_default_applies() {
    let mesh = Mesh::new();
    let (seen, mut saw) = mpsc::unbounded_channel();
    mesh.callee_with(
        "10.0.0.2:50002",
        CART,
        Some(echo_app("cart", Some(seen))),
        policy(CART_POLICY),
    );
    let caller = mesh.sidecar(CHECKOUT, None);
    let a = call(
        &caller.outbound,
        req(
            "GET",
            "/v1.0/invoke/cart/method/orders/7",
            &[],
            body::empty(),
        ),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.message(),
        "failed to invoke, id: cart, err: rpc error: code = PermissionDenied desc = access control policy has denied access to id:  operation: orders/7 verb: GET"
    );
    assert!(saw.try_recv().is_err());
    // Self-invocation is never judged (as in Dapr): the app's own calls reach it.
    let own = mesh.sidecar_full(
        CART,
        Some(echo_app("cart", None)),
        Endpoints::default(),
        policy(CART_POLICY),
    );
    let a = call(
        &own.outbound,
        req("POST", "/v1.0/invoke/cart/method/admin", &[], body::empty()),
    )
    .await;
    assert_eq!(a.status, 201, "the echo app answers: {:?}", a.body);
}
