//! The callee's stack: a peer sidecar's request for this sidecar's app, on the internal port.
//!
//! ```text
//! errors → callee → metrics → normalize → access → app: health gate → concurrency limit → app channel
//! ```
//!
//! - [`Errors`](crate::respond::Errors) turns this sidecar's failures into responses for the calling sidecar, marked
//!   `ferry-error` so it can tell them from the app's (the one place: `InvokeError`).
//! - [`callee::CheckCallee`]: the request is meant for this app.
//! - [`metrics::Record`]: requests received, responses sent.
//! - [`normalize::Normalize`]: canonical method, body limit, header rules, trace.
//! - [`access::Access`]: access control (`spec.accessControl`) on the normalized method, with
//!   the verified caller from the request's extensions.
//! - [`app`]: the health gate, the concurrency limit and the app channel, shared with the
//!   caller's stack (self-invocation).
//!
//! Where the coming features go: mTLS terminates in `server.rs`'s accept loop and hands the
//! verified peer identity (`ferry_api::SpiffeId`) to this stack in the request's extensions,
//! where `normalize` takes it for `access`; `APP_API_TOKEN` is set by the app channel; spans open in a layer next to `metrics`; a gRPC
//! app is another kind of app channel.

pub mod access;
pub mod app;
pub mod callee;
pub mod metrics;
pub mod normalize;

use std::sync::Arc;

use ferry_api::{AppId, Namespace};
use http::HeaderValue;

use crate::{metrics::Metrics, respond::Errors};

/// The callee's stack, assembled.
pub type Inbound = Errors<
    callee::CheckCallee<metrics::Record<normalize::Normalize<access::Access<app::Deliver>>>>,
>;

/// Builds the callee's stack of `app_id` in `namespace` over its app (`None`: no app port).
pub fn stack(
    app_id: &AppId,
    namespace: &Namespace,
    max_body: u64,
    metrics: Option<Arc<Metrics>>,
    policy: access::Policy,
    app: Option<app::App>,
) -> Inbound {
    let own = HeaderValue::from_str(&format!("{app_id}.{namespace}"))
        .expect("validated IDs are valid header values");
    Errors::new(callee::CheckCallee::new(
        own,
        metrics::Record::new(
            metrics.clone(),
            normalize::Normalize::new(
                max_body,
                access::Access::new(policy, metrics, app::Deliver::new(app)),
            ),
        ),
    ))
}
