//! Well-known header names (all lowercase, as `http::HeaderName` wants them).

/// Names the target app on any path of the HTTP API; never forwarded.
pub const DAPR_APP_ID: &str = "dapr-app-id";
/// Set by the sidecar: the calling app's ID.
pub const DAPR_CALLER_APP_ID: &str = "dapr-caller-app-id";
/// Set by the sidecar: the calling app's namespace.
pub const DAPR_CALLER_NAMESPACE: &str = "dapr-caller-namespace";
/// Set by the sidecar: the called app's ID.
pub const DAPR_CALLEE_APP_ID: &str = "dapr-callee-app-id";
/// API token (app to sidecar) and app token (sidecar to app).
pub const DAPR_API_TOKEN: &str = "dapr-api-token";

/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const BAGGAGE: &str = "baggage";

/// Sidecar to sidecar: `<app-id>.<namespace>` the request is meant for. The callee refuses a
/// request meant for another app (a recycled address must not receive another app's traffic).
pub const FERRY_CALLEE: &str = "ferry-callee";
/// Sidecar to sidecar: set on responses the callee sidecar made itself (not its app), so that the
/// caller can tell them from app answers. The value is the error kind.
pub const FERRY_ERROR: &str = "ferry-error";

/// The env vars an app gets from its sidecar.
pub mod env {
    pub const DAPR_HTTP_PORT: &str = "DAPR_HTTP_PORT";
    pub const DAPR_GRPC_PORT: &str = "DAPR_GRPC_PORT";
    pub const APP_ID: &str = "APP_ID";
    pub const APP_PORT: &str = "APP_PORT";
}
