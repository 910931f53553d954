//! The invocation paths: caller side (an app's request to its sidecar) and callee side (a peer
//! sidecar's request for this sidecar's app).

use std::{
    error::Error as StdError,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use arc_swap::ArcSwap;
use ferry_api::{AppId, Namespace, headers as names};
use http::{
    HeaderMap, HeaderValue, Request, Response, Uri,
    header::{CONTENT_LENGTH, HOST},
    request,
};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use tokio::sync::Semaphore;

use crate::{
    apphealth::AppHealth,
    balance::{InFlight, Instances},
    body::{self, Body, Limited, Outgoing, find_too_large},
    endpoints::{Endpoint, Endpoints, Found},
    invoke::{
        Cause, InvokeError, Method,
        headers::{self, ForwardedHeaders},
        target::{self, TargetError, TargetName},
        trace,
    },
    metrics::{CallType, Metrics, Peer},
    peers::{PeerPool, Replay},
    registry::RegistryResolver,
    upstream::{AppChannel, Blocked, HttpClient, is_blocked},
};

/// Name resolution for app IDs: standalone reads the registry directory; kubernetes mode
/// watches the API ([`crate::kubernetes::KubeResolver`]).
pub trait Resolve: Send + Sync + 'static {
    /// The live instances of `app` in `ns`, or why there are none. `explicit` says whether the
    /// target named the namespace (`app.ns`) or it is the caller's own by default.
    fn resolve(
        &self,
        app: &AppId,
        ns: &Namespace,
        explicit: bool,
    ) -> impl Future<Output = Result<Arc<Instances>, String>> + Send;
    /// An instance could not be reached; the resolver may refresh what it knows.
    fn unreachable(&self) -> impl Future<Output = ()> + Send;
}

impl Resolve for RegistryResolver {
    async fn resolve(
        &self,
        app: &AppId,
        ns: &Namespace,
        explicit: bool,
    ) -> Result<Arc<Instances>, String> {
        RegistryResolver::resolve(self, app, ns, explicit).await
    }

    async fn unreachable(&self) {
        self.rescan().await;
    }
}

/// At most this many attempts for a fixed-length request whose connection failed.
const MAX_ATTEMPTS: usize = 3;

/// Everything a sidecar needs to serve requests; shared by all connections.
pub struct Sidecar<R> {
    pub app_id: AppId,
    pub namespace: Namespace,
    id_value: HeaderValue,
    ns_value: HeaderValue,
    callee_tag: HeaderValue,
    pub app: Option<AppChannel>,
    resolver: Arc<R>,
    peers: PeerPool,
    /// `None` when URL calls are turned off.
    fqdn: Option<HttpClient>,
    allow_link_local: bool,
    pub endpoints: ArcSwap<Endpoints>,
    pub max_body: u64,
    forwarded: ForwardedHeaders,
    pub started: Instant,
    /// `--enable-app-health-check`: requests for the app are refused while it is unhealthy.
    pub app_health: Option<Arc<AppHealth>>,
    /// `--app-max-concurrency`: one slot per request being delivered to the app.
    app_slots: Option<Arc<Semaphore>>,
    pub max_concurrency: Option<u32>,
    metrics: Option<Arc<Metrics>>,
}

/// What a sidecar is configured with.
pub struct SidecarParts<R> {
    pub app_id: AppId,
    pub namespace: Namespace,
    pub app: Option<AppChannel>,
    pub resolver: Arc<R>,
    pub fqdn: Option<HttpClient>,
    pub allow_link_local: bool,
    pub endpoints: Endpoints,
    pub max_body: u64,
    pub host_ip: IpAddr,
    pub hostname: String,
    pub app_health: Option<Arc<AppHealth>>,
    /// `None`: no limit.
    pub max_concurrency: Option<u32>,
    pub metrics: Option<Arc<Metrics>>,
}

/// Where a request goes.
enum Destination {
    Local,
    Remote {
        id: AppId,
        ns: Namespace,
        explicit: bool,
    },
    Endpoint(Arc<Endpoint>),
    Url(String),
}

impl<R: Resolve> Sidecar<R> {
    pub fn new(p: SidecarParts<R>) -> Self {
        let hv = |s: &str| HeaderValue::from_str(s).expect("validated IDs are valid header values");
        Self {
            id_value: hv(p.app_id.as_str()),
            ns_value: hv(p.namespace.as_str()),
            callee_tag: hv(&format!("{}.{}", p.app_id, p.namespace)),
            app_id: p.app_id,
            namespace: p.namespace,
            app: p.app,
            resolver: p.resolver,
            peers: PeerPool::default(),
            fqdn: p.fqdn,
            allow_link_local: p.allow_link_local,
            endpoints: ArcSwap::from_pointee(p.endpoints),
            max_body: p.max_body,
            forwarded: ForwardedHeaders::new(p.host_ip, &p.hostname),
            started: Instant::now(),
            app_health: p.app_health,
            app_slots: p
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            max_concurrency: p.max_concurrency,
            metrics: p.metrics,
        }
    }

    pub fn resolver(&self) -> &Arc<R> {
        &self.resolver
    }

    // === caller side ===

    /// Serves an app's invocation request.
    pub async fn invoke(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        match self.try_invoke(parts, body).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(target = e.target.as_deref().unwrap_or(""), kind = e.cause.kind(), error = %e.message(), "invocation failed");
                e.into_response()
            }
        }
    }

    async fn try_invoke(
        &self,
        mut parts: request::Parts,
        body: Incoming,
    ) -> Result<Response<Body>, InvokeError> {
        let baggage = trace::baggage(&parts.headers)
            .map_err(|reason| InvokeError::untargeted(Cause::InvalidBaggage(reason)))?;
        let Some(found) = target::extract(&parts.headers, parts.uri.path()) else {
            return Err(InvokeError::no_target());
        };
        let target = found.target;
        let fail = |cause: Cause| InvokeError::new(&target, cause);
        let method = Method::normalize(&found.method).map_err(|e| fail(e.into()))?;
        if parts.method == http::Method::CONNECT {
            return Err(fail(Cause::InvalidVerb(parts.method.to_string())));
        }
        let dest = self.destination(&target).map_err(fail)?;
        if let Some(n) = body.size_hint().exact()
            && n > self.max_body
        {
            return Err(fail(Cause::BodyTooLarge {
                limit: self.max_body,
            }));
        }
        let query = parts.uri.query().map(str::to_owned);
        headers::sanitize_request(&mut parts.headers);
        let span = trace::enter(&mut parts.headers);
        let body = body::outgoing(Limited::new(body, self.max_body))
            .await
            .map_err(|e| match find_too_large(&*e) {
                Some(limit) => fail(Cause::BodyTooLarge { limit }),
                None => fail(Cause::RequestBody(chain(&*e))),
            })?;

        let mut resp = match dest {
            Destination::Local => {
                headers::set_identity(
                    &mut parts.headers,
                    &self.id_value,
                    &self.ns_value,
                    &self.id_value,
                );
                self.deliver(
                    parts.method,
                    &method,
                    query.as_deref(),
                    parts.headers,
                    body.body,
                )
                .await
                .map_err(|c| match c {
                    Cause::NoAppChannel => fail(Cause::NoLocalAppChannel),
                    c => fail(c),
                })?
            }
            Destination::Remote { id, ns, explicit } => {
                self.call_remote(
                    &target,
                    &id,
                    &ns,
                    explicit,
                    parts,
                    &method,
                    query.as_deref(),
                    body,
                )
                .await?
            }
            Destination::Endpoint(ep) => {
                for (name, value) in &ep.headers {
                    parts.headers.insert(name.clone(), value.clone());
                }
                let peer = self.record_sent(&ep.name);
                let resp = self
                    .call_external(
                        &target,
                        &ep.client,
                        &ep.base_url,
                        parts,
                        &method,
                        query.as_deref(),
                        body,
                    )
                    .await?;
                self.record_received(peer.as_deref(), resp.status());
                resp
            }
            Destination::Url(base) => {
                let client = self
                    .fqdn
                    .as_ref()
                    .ok_or_else(|| fail(Cause::FqdnDisabled))?;
                self.call_external(
                    &target,
                    client,
                    &base,
                    parts,
                    &method,
                    query.as_deref(),
                    body,
                )
                .await?
            }
        };
        headers::sanitize_response(resp.headers_mut());
        trace::on_response(resp.headers_mut(), span);
        trace::baggage_on_response(resp.headers_mut(), baggage);
        Ok(resp)
    }

    fn destination(&self, target: &str) -> Result<Destination, Cause> {
        let name = target::classify(target)
            .map_err(|TargetError::InvalidAppId(t)| Cause::InvalidAppId(t))?;
        match name {
            TargetName::Url(url) => {
                if self.fqdn.is_none() {
                    return Err(Cause::FqdnDisabled);
                }
                let uri: Uri =
                    url.parse()
                        .map_err(|e: http::uri::InvalidUri| Cause::InvalidUrl {
                            url: url.clone(),
                            reason: e.to_string(),
                        })?;
                if uri.query().is_some() {
                    return Err(Cause::InvalidUrl {
                        url,
                        reason: "a target URL cannot carry a query; put it on the invoke request instead".into(),
                    });
                }
                let host = uri
                    .host()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                if let Ok(ip) = host.parse::<IpAddr>()
                    && is_blocked(ip)
                    && !self.allow_link_local
                {
                    return Err(Cause::BlockedAddress {
                        host: host.to_owned(),
                    });
                }
                Ok(Destination::Url(url.trim_end_matches('/').to_owned()))
            }
            TargetName::App { id, namespace } => {
                let own_ns = namespace.as_ref().is_none_or(|n| *n == self.namespace);
                if own_ns {
                    match self.endpoints.load().find(id.as_str()) {
                        Some(Found::Usable(ep)) => return Ok(Destination::Endpoint(ep.clone())),
                        Some(Found::Unusable(reason)) => {
                            return Err(Cause::EndpointUnusable {
                                name: id.to_string(),
                                reason: reason.to_owned(),
                            });
                        }
                        None => {}
                    }
                    if id == self.app_id {
                        return Ok(Destination::Local);
                    }
                }
                let explicit = namespace.is_some();
                let ns = namespace.unwrap_or_else(|| self.namespace.clone());
                Ok(Destination::Remote { id, ns, explicit })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_remote(
        &self,
        target: &str,
        id: &AppId,
        ns: &Namespace,
        explicit: bool,
        mut parts: request::Parts,
        method: &Method,
        query: Option<&str>,
        body: Outgoing,
    ) -> Result<Response<Body>, InvokeError> {
        let fail = |cause: Cause| InvokeError::new(target, cause);
        let instances = self
            .resolver
            .resolve(id, ns, explicit)
            .await
            .map_err(|reason| {
                fail(Cause::Resolve {
                    app: id.to_string(),
                    namespace: ns.to_string(),
                    reason,
                })
            })?;
        let peer = self.record_sent(id.as_str());
        let callee = instances.callee_headers(id.as_str());
        headers::set_identity(
            &mut parts.headers,
            &self.id_value,
            &self.ns_value,
            &callee.app_id,
        );
        self.forwarded.append_to(&mut parts.headers);

        // A request whose length is known can go to another instance when the first cannot be
        // reached; one of unknown length gets exactly one attempt (it is never buffered).
        let Outgoing {
            body,
            fixed,
            whole,
            tripped,
        } = body;
        let streamed = whole.is_none();
        let attempts = if fixed { MAX_ATTEMPTS } else { 1 };
        let path_and_query = match query {
            Some(q) => format!("{}?{q}", method.path()),
            None => method.path(),
        };
        // Origin form; `peers` adds the peer's address for the protocol it picks.
        parts.uri = Uri::try_from(path_and_query.as_str()).map_err(|e| {
            fail(Cause::InvalidUrl {
                url: path_and_query.clone(),
                reason: e.to_string(),
            })
        })?;
        let mut req = Request::from_parts(parts, body);
        let mut last_error = None;
        let mut instances = instances;
        // At most MAX_ATTEMPTS addresses: no allocation beyond the first failure.
        let mut tried: Vec<SocketAddr> = Vec::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                // Look again: the failed instance may have left the snapshot, another may have
                // come. When every known instance has failed, the resolver may refresh first.
                if instances.untried(&tried) == 0 {
                    self.resolver.unreachable().await;
                }
                if let Ok(fresh) = self.resolver.resolve(id, ns, explicit).await {
                    instances = fresh;
                }
            }
            // An instance not tried yet; when all have been, any (it may have come back).
            let Some(backend) = instances
                .pick(&tried)
                .or_else(|| instances.pick(&[]))
                .cloned()
            else {
                break;
            };
            let addr = backend.addr;
            tried.push(addr);
            // Counted from here (connecting included, so a burst spreads over the instances)
            // until the response body ends; dropped with the request if this attempt fails.
            let load = InFlight::start(backend);
            // The callee checks that the request is meant for it: app ID and namespace.
            req.headers_mut().insert(
                names::FERRY_CALLEE,
                instances.callee_headers(id.as_str()).tag,
            );
            let conn = match self.peers.checkout(addr, streamed).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(peer = %addr, error = %e, attempt, "cannot reach a peer sidecar");
                    last_error = Some(format!(
                        "cannot connect to the sidecar of {id} at {addr}: {e}"
                    ));
                    continue;
                }
            };
            let replay = match &whole {
                Some(bytes) if conn.reused() => Replay::of(&req, bytes),
                _ => None,
            };
            match conn.send(req, replay).await {
                Ok(resp) => return self.peer_answer(target, resp, peer.as_deref(), load).await,
                Err(mut e) => {
                    self.peers.evict(addr);
                    if let Some(limit) = find_too_large(e.error()) {
                        return Err(fail(Cause::BodyTooLarge { limit }));
                    }
                    if tripped.load(std::sync::atomic::Ordering::Acquire) {
                        return Err(fail(Cause::BodyTooLarge {
                            limit: self.max_body,
                        }));
                    }
                    let error = format!("sidecar of {id} at {addr}: {}", chain(e.error()));
                    match e.take_message() {
                        // Not sent at all: safe to try elsewhere.
                        Some(back) if fixed => req = back,
                        _ => return Err(fail(Cause::Remote(error))),
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(fail(Cause::Remote(last_error.unwrap_or_else(|| {
            format!("no instance of {id} is available")
        }))))
    }

    /// Turns a peer's answer into ours: its own errors are re-issued under our target, the
    /// app's answers pass as they are.
    async fn peer_answer(
        &self,
        target: &str,
        resp: Response<Incoming>,
        peer: Option<&Peer>,
        load: InFlight,
    ) -> Result<Response<Body>, InvokeError> {
        if let Some(kind) = resp.headers().get(names::FERRY_ERROR) {
            let kind = String::from_utf8_lossy(kind.as_bytes()).into_owned();
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(InvokeError::new(
                target,
                Cause::Callee {
                    status,
                    kind,
                    message,
                },
            ));
        }
        // Only the app's answers count as responses received (as in Dapr, where a callee
        // sidecar's own failure is an error, not a response).
        self.record_received(peer, resp.status());
        Ok(resp.map(|b| body::holding(body::boxed(b), load)))
    }

    /// Caller-side metrics: a request is about to go to `dst`; returns its counters.
    fn record_sent(&self, dst: &str) -> Option<Arc<Peer>> {
        let m = self.metrics.as_ref()?;
        let peer = m.peer(dst);
        m.req_sent(&peer, CallType::Unary);
        Some(peer)
    }

    fn record_received(&self, peer: Option<&Peer>, status: http::StatusCode) {
        if let (Some(m), Some(peer)) = (&self.metrics, peer) {
            m.res_recv(peer, status.as_u16(), CallType::Unary);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_external(
        &self,
        target: &str,
        client: &HttpClient,
        base: &str,
        parts: request::Parts,
        method: &Method,
        query: Option<&str>,
        body: Outgoing,
    ) -> Result<Response<Body>, InvokeError> {
        let fail = |cause: Cause| InvokeError::new(target, cause);
        let url = join_url(base, method, query);
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| {
            fail(Cause::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })
        })?;
        let head = parts.method == http::Method::HEAD;
        let mut req = Request::from_parts(parts, body.body);
        *req.uri_mut() = uri;
        match client.request(req).await {
            Ok(resp) => Ok(body::frame_upstream(resp, head).await),
            Err(e) => {
                if let Some(limit) = find_too_large(&e) {
                    return Err(fail(Cause::BodyTooLarge { limit }));
                }
                if let Some(b) = find_in_chain::<Blocked>(&e) {
                    return Err(fail(Cause::BlockedAddress {
                        host: b.host.clone(),
                    }));
                }
                Err(fail(Cause::External {
                    url,
                    reason: chain(&e),
                }))
            }
        }
    }

    // === callee side ===

    /// Serves a peer sidecar's request for this sidecar's app.
    pub async fn inbound(&self, req: Request<Incoming>) -> Response<Body> {
        let mut caller = None;
        let resp = match self.try_inbound(req, &mut caller).await {
            Ok(resp) => resp,
            Err(cause) => {
                tracing::debug!(kind = cause.kind(), error = %cause, "inbound request failed");
                InvokeError::callee(cause).into_response()
            }
        };
        if let (Some(m), Some(caller)) = (&self.metrics, caller) {
            m.res_sent(&caller, resp.status().as_u16());
        }
        resp
    }

    /// `caller` is set (when metrics are on) once the request is known to be for this app.
    async fn try_inbound(
        &self,
        req: Request<Incoming>,
        caller: &mut Option<Arc<Peer>>,
    ) -> Result<Response<Body>, Cause> {
        let (mut parts, body) = req.into_parts();
        let wanted = parts.headers.remove(names::FERRY_CALLEE);
        if wanted.as_ref() != Some(&self.callee_tag) {
            return Err(Cause::WrongCallee {
                wanted: wanted
                    .map(|w| String::from_utf8_lossy(w.as_bytes()).into_owned())
                    .unwrap_or_default(),
                own: String::from_utf8_lossy(self.callee_tag.as_bytes()).into_owned(),
            });
        }
        if let Some(m) = &self.metrics {
            let src = parts
                .headers
                .get(names::DAPR_CALLER_APP_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(crate::metrics::UNKNOWN_PEER);
            let peer = m.peer(src);
            m.req_recv(&peer);
            *caller = Some(peer);
        }
        let wire = parts
            .uri
            .path()
            .strip_prefix('/')
            .unwrap_or(parts.uri.path());
        let method = Method::from_wire(wire)?;
        if let Some(n) = body.size_hint().exact()
            && n > self.max_body
        {
            return Err(Cause::BodyTooLarge {
                limit: self.max_body,
            });
        }
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(HOST);
        parts.headers.remove(CONTENT_LENGTH);
        trace::enter(&mut parts.headers);
        let query = parts.uri.query().map(str::to_owned);
        let body = body::outgoing(Limited::new(body, self.max_body))
            .await
            .map_err(|e| match find_too_large(&*e) {
                Some(limit) => Cause::BodyTooLarge { limit },
                None => Cause::RequestBody(chain(&*e)),
            })?;
        self.deliver(
            parts.method,
            &method,
            query.as_deref(),
            parts.headers,
            body.body,
        )
        .await
    }

    /// Calls this sidecar's own app.
    async fn deliver(
        &self,
        verb: http::Method,
        method: &Method,
        query: Option<&str>,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response<Body>, Cause> {
        let app = self.app.as_ref().ok_or(Cause::NoAppChannel)?;
        if let Some(h) = &self.app_health
            && !h.is_healthy()
        {
            return Err(Cause::AppUnhealthy);
        }
        // Queue for a slot (no 429, as in Dapr). Waiting is cancelled with the request: when
        // the caller goes away this future is dropped, and the slot with it.
        let slot = match &self.app_slots {
            Some(slots) => Some(
                slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the app's semaphore is never closed"),
            ),
            None => None,
        };
        let url = join_url(&app.base, method, query);
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| Cause::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let head = verb == http::Method::HEAD;
        let mut req = Request::new(body);
        *req.method_mut() = verb.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        match app.send(req).await {
            Ok(resp) => {
                let mut resp = body::frame_upstream(resp, head).await;
                headers::sanitize_response(resp.headers_mut());
                // Only this sidecar may mark an answer as its own error.
                resp.headers_mut().remove(names::FERRY_ERROR);
                Ok(match slot {
                    Some(slot) => resp.map(|b| body::holding(b, slot)),
                    None => resp,
                })
            }
            Err(e) => {
                if let Some(limit) = find_too_large(&e) {
                    return Err(Cause::BodyTooLarge { limit });
                }
                Err(Cause::AppChannel(format!("{verb} {url}: {}", chain(&e))))
            }
        }
    }
}

/// `base` + `/method` + `?query`.
fn join_url(base: &str, method: &Method, query: Option<&str>) -> String {
    let mut url = String::with_capacity(base.len() + method.as_str().len() + 2);
    url.push_str(base);
    url.push_str(&method.path());
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// An error and its sources, joined with ": ".
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

fn find_in_chain<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|inner| inner.downcast_ref::<T>())
        {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    //! The callee path's gates (`--app-max-concurrency`, `--enable-app-health-check`) against
    //! an in-process app whose response bodies the test feeds by hand.

    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::sync::mpsc;

    use super::*;
    use crate::config::AppHealthSettings;

    /// These tests never look another app up.
    struct NoResolver;

    impl Resolve for NoResolver {
        async fn resolve(
            &self,
            _app: &AppId,
            _ns: &Namespace,
            _explicit: bool,
        ) -> Result<Arc<Instances>, String> {
            Err("no resolution in these tests".into())
        }

        async fn unreachable(&self) {}
    }

    /// Each request's path, with the sender that feeds its response body.
    type Arrival = (String, mpsc::Sender<Bytes>);

    async fn gated_app() -> (u16, mpsc::UnboundedReceiver<Arrival>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (arrivals, rx) = mpsc::unbounded_channel::<Arrival>();
        tokio::spawn(async move {
            loop {
                let (stream, _) = l.accept().await.unwrap();
                let arrivals = arrivals.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (tx, rx) = mpsc::channel::<Bytes>(1);
                        let _ = arrivals.send((req.uri().path().to_owned(), tx));
                        let body = StreamBody::new(futures_util::stream::unfold(
                            rx,
                            |mut rx| async move {
                                rx.recv().await.map(|b| {
                                    (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx)
                                })
                            },
                        ));
                        async move { Ok::<_, std::convert::Infallible>(Response::new(body)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (port, rx)
    }

    fn sidecar(
        app_port: u16,
        max_concurrency: Option<u32>,
        app_health: Option<Arc<AppHealth>>,
    ) -> Sidecar<NoResolver> {
        Sidecar::new(SidecarParts {
            app_id: AppId::new("cart").unwrap(),
            namespace: Namespace::default(),
            app: Some(AppChannel::new(
                crate::config::AppProtocol::Http,
                "127.0.0.1",
                app_port,
            )),
            resolver: Arc::new(NoResolver),
            fqdn: None,
            allow_link_local: false,
            endpoints: Endpoints::default(),
            max_body: 1 << 20,
            host_ip: "127.0.0.1".parse().unwrap(),
            hostname: "test".into(),
            app_health,
            max_concurrency,
            metrics: None,
        })
    }

    async fn deliver(sc: &Sidecar<NoResolver>, path: &str) -> Result<Response<Body>, Cause> {
        let method = Method::normalize(path.as_bytes()).unwrap();
        sc.deliver(
            http::Method::GET,
            &method,
            None,
            HeaderMap::new(),
            body::empty(),
        )
        .await
    }

    #[tokio::test]
    async fn a_slot_is_held_until_the_body_is_read_and_waiters_can_give_up() {
        let (port, mut arrivals) = gated_app().await;
        let sc = sidecar(port, Some(1), None);

        // 1 gets the only slot; its body stays open.
        let first = deliver(&sc, "one").await.unwrap();
        let (path, feed_one) = arrivals.recv().await.unwrap();
        assert_eq!(path, "/one");

        // 2 queues (no 429) and is never sent while 1's body is open.
        let mut second = Box::pin(deliver(&sc, "two"));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut second)
                .await
                .is_err(),
            "the second request must wait for the slot"
        );
        assert!(arrivals.try_recv().is_err(), "the app must not see it yet");
        // The caller gives up: its place in the queue goes with it.
        drop(second);

        // 1's body ends: the slot is free for 3, and 2 was never sent.
        feed_one.send(Bytes::from_static(b"done")).await.unwrap();
        drop(feed_one);
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "done");
        let third = tokio::time::timeout(Duration::from_secs(10), deliver(&sc, "three"))
            .await
            .expect("the slot was released")
            .unwrap();
        let (path, feed_three) = arrivals.recv().await.unwrap();
        assert_eq!(
            path, "/three",
            "the cancelled request never reached the app"
        );

        // A dropped (unread) body frees the slot too.
        drop(third);
        drop(feed_three);
        let _fourth = tokio::time::timeout(Duration::from_secs(10), deliver(&sc, "four"))
            .await
            .expect("dropping the body released the slot")
            .unwrap();
        assert_eq!(arrivals.recv().await.unwrap().0, "/four");
    }

    #[tokio::test]
    async fn without_a_limit_requests_do_not_wait() {
        let (port, mut arrivals) = gated_app().await;
        let sc = sidecar(port, None, None);
        let _one = deliver(&sc, "one").await.unwrap();
        let _two = tokio::time::timeout(Duration::from_secs(10), deliver(&sc, "two"))
            .await
            .expect("no limit: the second request goes at once")
            .unwrap();
        assert_eq!(arrivals.recv().await.unwrap().0, "/one");
        assert_eq!(arrivals.recv().await.unwrap().0, "/two");
    }

    #[tokio::test]
    async fn an_unhealthy_app_is_not_called() {
        let (port, mut arrivals) = gated_app().await;
        let health = Arc::new(AppHealth::new(AppHealthSettings {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            threshold: 1,
        }));
        let sc = sidecar(port, Some(1), Some(health.clone()));
        // Unhealthy until a probe succeeds (as in Dapr).
        let err = deliver(&sc, "early").await.unwrap_err();
        assert!(matches!(err, Cause::AppUnhealthy), "{err:?}");
        assert!(
            InvokeError::new("cart", err)
                .message()
                .contains("app is not in a healthy state")
        );
        health.report(true);
        let _ok = deliver(&sc, "now").await.unwrap();
        assert_eq!(
            arrivals.recv().await.unwrap().0,
            "/now",
            "only the healthy call arrived"
        );
        health.report(false);
        assert!(matches!(
            deliver(&sc, "again").await.unwrap_err(),
            Cause::AppUnhealthy
        ));
        assert!(arrivals.try_recv().is_err());
    }
}
