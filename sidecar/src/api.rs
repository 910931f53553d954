//! The HTTP API an app calls: health, metadata, and invocation for everything else (Dapr
//! registers invoke as the router's fallback, which is what makes the `dapr-app-id` header work
//! on any path).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use ferry_api::AppId;
use http::{HeaderValue, Method as Verb, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tower::Service;

use crate::{
    apphealth::AppHealth,
    auth,
    body::{self, Body, BoxError},
    config::Settings,
    endpoints::Endpoints,
    metrics::{self, Metrics},
    outbound::{Outbound, peers::Connect, resolve::Resolve},
};

/// What `/v1.0/healthz` reports.
#[derive(Debug, Default)]
pub struct Health {
    /// The app accepts connections (or there is no app port to wait for).
    pub app_ready: AtomicBool,
    /// Name resolution has loaded.
    pub outbound_ready: AtomicBool,
    /// When set, what `/v1.0/healthz/outbound` reports instead of `outbound_ready` (kubernetes
    /// mode: the sync state of the watches, which readiness must not depend on).
    pub outbound_check: OnceLock<OutboundCheck>,
    /// `PUT /v1.0/metadata/<key>` values.
    pub extended: Mutex<BTreeMap<String, String>>,
    /// With mTLS: the workload certificate, which readiness needs.
    pub identity: OnceLock<Arc<crate::identity::Identity>>,
}

/// Says whether outbound calls can be resolved, or what is missing.
pub struct OutboundCheck(pub Box<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for OutboundCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboundCheck")
    }
}

/// What the HTTP API and the public port serve: health and metadata here, invocation through
/// the caller's stack.
pub struct Api<R, C> {
    pub outbound: Outbound<R, C>,
    pub settings: Arc<Settings>,
    pub health: Arc<Health>,
    pub endpoints: Arc<ArcSwap<Endpoints>>,
    pub app_health: Option<Arc<AppHealth>>,
}

impl<R: Resolve, C: Connect> Api<R, C> {
    /// Routes one request on the HTTP API port, once its API token passes (`DAPR_API_TOKEN`);
    /// with `--enable-api-logging`, logs it once its response has been sent.
    pub async fn serve<B>(&self, mut req: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        if !auth::admit(
            self.settings.api_token.as_ref(),
            &method,
            &path,
            req.headers_mut(),
        ) {
            return auth::unauthorized();
        }
        if !self.settings.api_logging || is_health_check(req.uri().path()) {
            return self.route(req).await;
        }
        let start = std::time::Instant::now();
        let method = format!("{} {}", req.method(), req.uri().path());
        let useragent = req
            .headers()
            .get(http::header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let resp = self.route(req).await;
        let code = resp.status().as_u16();
        resp.map(|b| {
            body::counted(b, move |size| {
                // Dapr's record (`dapr/pkg/api/http/server.go`, useAPILogging): the same
                // message and field names, the duration in milliseconds.
                tracing::info!(
                    target: "ferry_sidecar::api_log",
                    method,
                    useragent = useragent.as_deref(),
                    code,
                    size,
                    duration = start.elapsed().as_millis() as u64,
                    "HTTP API Called"
                );
            })
        })
    }

    async fn route<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let route = routing_path(req.uri().path());
        match (req.method(), route.as_str()) {
            (&Verb::GET, "/v1.0/healthz") => self.healthz(req.uri().query()),
            (&Verb::GET, "/v1.0/healthz/outbound") => outbound(&self.health),
            (&Verb::GET, "/v1.0/metadata") => self.metadata(),
            (&Verb::PUT, key)
                if key.starts_with("/v1.0/metadata/") && key.len() > "/v1.0/metadata/".len() =>
            {
                let key = key["/v1.0/metadata/".len()..].to_owned();
                set_metadata(&self.health, key, req).await
            }
            _ => match self.outbound.clone().call(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            },
        }
    }

    /// Routes one request on the public port: health and metadata only.
    pub fn serve_public<B>(&self, req: &Request<B>) -> Response<Body> {
        let route = routing_path(req.uri().path());
        match (req.method(), route.as_str()) {
            (&Verb::GET, "/v1.0/healthz") => self.healthz(req.uri().query()),
            (&Verb::GET, "/v1.0/healthz/outbound") => outbound(&self.health),
            (&Verb::GET, "/v1.0/metadata") => self.metadata(),
            _ => json_error(
                StatusCode::NOT_FOUND,
                "ERR_NOT_FOUND",
                "only /v1.0/healthz, /v1.0/healthz/outbound and /v1.0/metadata are served on this port",
            ),
        }
    }

    fn healthz(&self, query: Option<&str>) -> Response<Body> {
        healthz(&self.settings.app_id, &self.health, query)
    }

    fn metadata(&self) -> Response<Body> {
        let mut resp = Response::new(body::full(self.metadata_doc().to_string()));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }

    /// `/v1.0/metadata`'s document (the gRPC API's `GetMetadata` answers the same).
    pub fn metadata_doc(&self) -> serde_json::Value {
        metadata(
            &self.settings,
            &self.endpoints.load(),
            self.app_health.as_deref(),
            &self.health,
        )
    }
}

/// Dapr leaves its health endpoints out of the API log (unless asked to log them).
fn is_health_check(path: &str) -> bool {
    matches!(
        routing_path(path).as_str(),
        "/v1.0/healthz" | "/v1.0/healthz/outbound"
    )
}

/// Routes one request on the metrics port: `GET /metrics` only.
pub fn serve_metrics<B>(metrics: &Metrics, req: &Request<B>) -> Response<Body> {
    if routing_path(req.uri().path()) != "/metrics" {
        return json_error(
            StatusCode::NOT_FOUND,
            "ERR_NOT_FOUND",
            "only GET /metrics is served on this port",
        );
    }
    if req.method() != Verb::GET && req.method() != Verb::HEAD {
        let mut r = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "ERR_METHOD_NOT_ALLOWED",
            "use GET /metrics",
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut resp = Response::new(body::full(metrics.encode()));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    resp
}

/// The path used to pick a route: repeated slashes collapsed, trailing slash dropped (the
/// request itself is not changed).
fn routing_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn healthz(app_id: &AppId, health: &Health, query: Option<&str>) -> Response<Body> {
    // Readiness first, then the app ID, as Dapr answers.
    let mut waiting = Vec::new();
    if !health.app_ready.load(Ordering::Acquire) {
        waiting.push("app channel");
    }
    if !health.outbound_ready.load(Ordering::Acquire) {
        waiting.push("name resolution");
    }
    let identity = health.identity.get().map(|i| i.check());
    if let Some(Err(_)) = &identity {
        waiting.push("mtls");
    }
    if !waiting.is_empty() {
        let mut message = format!("dapr is not ready: [{}]", waiting.join(" "));
        if let Some(Err(why)) = identity {
            message.push_str(": ");
            message.push_str(&why);
        }
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_HEALTH_NOT_READY",
            &message,
        );
    }
    if let Some(want) = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "appid")
            .map(|(_, v)| v.to_owned())
    }) && want != app_id.as_str()
    {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_HEALTH_APPID_NOT_MATCH",
            "dapr app-id does not match",
        );
    }
    no_content()
}

fn outbound(health: &Health) -> Response<Body> {
    let verdict = match health.outbound_check.get() {
        Some(check) => (check.0)(),
        None if health.outbound_ready.load(Ordering::Acquire) => Ok(()),
        None => Err(String::new()),
    };
    match verdict {
        Ok(()) => no_content(),
        Err(reason) => {
            // Dapr's text, then what is missing when we know it.
            let mut message = "dapr outbound is not ready".to_owned();
            if !reason.is_empty() {
                message.push_str(": ");
                message.push_str(&reason);
            }
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_OUTBOUND_HEALTH_NOT_READY",
                &message,
            )
        }
    }
}

fn metadata(
    settings: &Settings,
    endpoints: &Endpoints,
    app_health: Option<&AppHealth>,
    health: &Health,
) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = endpoints
        .names()
        .into_iter()
        .map(|n| serde_json::json!({ "name": n }))
        .collect();
    let mut extended = serde_json::Map::new();
    extended.insert("runtime".into(), "ferry".into());
    extended.insert(
        "daprRuntimeVersion".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    extended.insert("namespace".into(), settings.namespace.as_str().into());
    if let Some(identity) = health.identity.get() {
        let status = identity.status();
        if let Some(id) = status.spiffe_id {
            extended.insert("spiffeID".into(), id.to_string().into());
        }
        if let Some(expiry) = status.expiry {
            extended.insert(
                "certificateExpiry".into(),
                crate::identity::humantime(expiry).into(),
            );
        }
    }
    for (k, v) in health
        .extended
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        extended.insert(k.clone(), v.clone().into());
    }
    let mut doc = serde_json::json!({
        "id": settings.app_id.as_str(),
        "runtimeVersion": env!("CARGO_PKG_VERSION"),
        "enabledFeatures": [],
        "actors": [],
        "components": [],
        "httpEndpoints": endpoints,
        "subscriptions": [],
        "extended": extended,
    });
    if let Some(app) = &settings.app {
        let mut props = serde_json::json!({
            "port": app.port,
            "protocol": settings.app_protocol.as_str(),
            "channelAddress": app.address,
        });
        if let Some(n) = settings.max_concurrency {
            props["maxConcurrency"] = n.into();
        }
        if let Some(h) = app_health {
            let s = &h.settings;
            // Go duration strings, as Dapr writes them.
            props["health"] = serde_json::json!({
                "healthCheckPath": s.path,
                "healthProbeInterval": format!("{}s", s.interval.as_secs()),
                "healthProbeTimeout": format!("{}ms", s.timeout.as_millis()),
                "healthThreshold": s.threshold,
            });
        }
        doc["appConnectionProperties"] = props;
    }
    doc
}

async fn set_metadata<B>(health: &Health, key: String, req: Request<B>) -> Response<Body>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let value = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "ERR_METADATA_SET",
                "the metadata value must be at most 64 KiB",
            );
        }
    };
    health
        .extended
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, value);
    no_content()
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = Response::new(body::full(
        serde_json::json!({"errorCode": code, "message": message}).to_string(),
    ));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_paths() {
        assert_eq!(routing_path("/v1.0//healthz/"), "/v1.0/healthz");
        assert_eq!(routing_path("//"), "/");
        assert_eq!(routing_path("/v1.0/metadata"), "/v1.0/metadata");
    }

    #[tokio::test]
    async fn outbound_not_ready_has_daprs_text() {
        let resp = outbound(&Health::default());
        assert_eq!(resp.status(), 500);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            r#"{"errorCode":"ERR_OUTBOUND_HEALTH_NOT_READY","message":"dapr outbound is not ready"}"#
        );
    }

    #[tokio::test]
    async fn a_check_decides_outbound_and_says_what_is_missing() {
        let health = Health::default();
        health.outbound_ready.store(true, Ordering::Release);
        let verdict = Arc::new(Mutex::new(Err::<(), String>(
            "RoutingTable shop/ferry: not synced yet".into(),
        )));
        let v = verdict.clone();
        health
            .outbound_check
            .set(OutboundCheck(Box::new(move || v.lock().unwrap().clone())))
            .unwrap();
        let resp = outbound(&health);
        assert_eq!(resp.status(), 500);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errorCode"], "ERR_OUTBOUND_HEALTH_NOT_READY");
        assert_eq!(
            v["message"],
            "dapr outbound is not ready: RoutingTable shop/ferry: not synced yet"
        );
        *verdict.lock().unwrap() = Ok(());
        assert_eq!(outbound(&health).status(), 204);
    }
}
