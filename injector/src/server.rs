//! The HTTP edges: the webhook router (`POST /mutate`), the admin router (`/livez`, `/readyz`,
//! `/metrics`), and the TLS listener. Routers are plain axum `Router`s, so tests call them
//! without sockets.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    admission,
    bootstrap::{BundleState, SharedBundleState},
    inject::InjectorConfig,
    metrics::Metrics,
    tls::CertStore,
};

/// The largest review accepted. The API server caps objects at about 1.5 MiB; a review carries
/// the object (and, for updates, the old one), so 4 MiB leaves room and no more.
pub const MAX_REVIEW_BYTES: usize = 4 << 20;
/// How long a client has to send the whole review once its head has arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake and a request head may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the webhook handler needs.
pub struct Webhook {
    pub config: InjectorConfig,
    pub metrics: Arc<Metrics>,
    /// How long a review's body may take to arrive ([`BODY_TIMEOUT`] in production).
    pub body_timeout: Duration,
}

/// `POST /mutate`. Everything else is 404 (or 405 for another verb on `/mutate`).
pub fn webhook_router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .with_state(webhook)
}

fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    let mut text = message.into();
    text.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

async fn mutate(State(webhook): State<Arc<Webhook>>, headers: HeaderMap, body: Body) -> Response {
    let error = |status: StatusCode, reason: &'static str, message: String| {
        webhook.metrics.admission("error", reason);
        tracing::warn!(reason, "refused an admission request: {message}");
        plain(status, message)
    };
    if !is_json(&headers) {
        let got = headers
            .get(header::CONTENT_TYPE)
            .map_or("none".to_owned(), |v| format!("{v:?}"));
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json (got {got})"),
        );
    }
    let limit = webhook.body_timeout;
    let read = tokio::time::timeout(limit, Limited::new(body, MAX_REVIEW_BYTES).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the review is larger than {MAX_REVIEW_BYTES} bytes"),
            );
        }
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("cannot read the request body: {e}"),
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {limit:?}"),
            );
        }
    };
    if bytes.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the request body is empty; an AdmissionReview was expected".into(),
        );
    }
    match admission::review(&bytes, &webhook.config) {
        Ok(answer) => {
            let v = answer.verdict;
            webhook.metrics.admission(v.decision, v.reason);
            let request = answer.review.response.as_ref().map(|r| r.uid.as_str());
            match &answer.message {
                Some(m) => tracing::info!(
                    uid = request,
                    decision = v.decision,
                    reason = v.reason,
                    "{m}"
                ),
                None => tracing::debug!(
                    uid = request,
                    decision = v.decision,
                    reason = v.reason,
                    "admitted"
                ),
            }
            match answer.to_json() {
                Ok(json) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    json,
                )
                    .into_response(),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unserializable_answer",
                    format!("cannot serialize the answer: {e}"),
                ),
            }
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.reason(), e.to_string()),
    }
}

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Admin {
    pub store: Arc<CertStore>,
    pub bundle: SharedBundleState,
    pub metrics: Arc<Metrics>,
}

impl Admin {
    /// `None` when ready, else why not.
    pub fn not_ready_because(&self) -> Option<String> {
        if !self.store.is_loaded() {
            return Some("no serving certificate loaded yet".into());
        }
        match &**self.bundle.load() {
            BundleState::NotManaged | BundleState::InPlace => None,
            BundleState::Pending(why) => Some(format!("the webhook's caBundle is not set: {why}")),
        }
    }
}

/// `/livez`, `/readyz` and `/metrics`, on plain HTTP.
pub fn admin_router(admin: Admin) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // Dapr's injector answers readiness and liveness on /healthz.
        .route("/healthz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

async fn readyz(State(admin): State<Admin>) -> Response {
    match admin.not_ready_because() {
        None => {
            admin.metrics.ready.set(1);
            plain(StatusCode::OK, "ok")
        }
        Some(why) => {
            admin.metrics.ready.set(0);
            plain(StatusCode::SERVICE_UNAVAILABLE, why)
        }
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    admin
        .metrics
        .ready
        .set(i64::from(admin.not_ready_because().is_none()));
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.encode(),
    )
        .into_response()
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until `shutdown` resolves; then
/// lets open requests finish (at most `grace`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after {grace:?}; closing them");
    }
}

/// Binds `addr`, naming `flag` when it cannot.
pub async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--{flag}): {e}"))
}
