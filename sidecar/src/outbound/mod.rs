//! The caller's stack: an app's request to its own sidecar, to wherever it names.
//!
//! ```text
//! errors → target → route ─┬─ local:    the own app (inbound::app: health gate → limit → channel)
//!                          ├─ app ID:   resolve → metrics → answer → failover (balance) → peers (connect)
//!                          ├─ endpoint: metrics → external
//!                          └─ URL:      external
//! ```
//!
//! - [`Errors`](crate::respond::Errors): this sidecar's failures become Dapr's error JSON (the one place:
//!   `InvokeError::into_response`).
//! - [`target::Target`]: what the request names and where that is; method normalization,
//!   body limit, header rules both ways, trace context. Makes a [`call::Call`].
//! - [`route::Route`]: one branch per kind of destination.
//! - [`resolve::Resolving`]: the app ID's instances (injected [`resolve::Resolve`]), and the
//!   headers that say who calls whom.
//! - [`metrics::Record`]: requests sent, responses received.
//! - [`answer::PeerAnswer`]: a callee sidecar's own errors become ours.
//! - [`failover::Failover`]: attempts over instances picked by [`balance`], on connections
//!   from [`peers`] (injected [`peers::Connect`]).
//! - [`external::External`]: HTTPEndpoints and URLs.
//!
//! Where the coming features go: the API token check is a layer in front of `target` (on the
//! HTTP API); a gRPC API builds the same [`call::Call`] and enters at `route`, with its own
//! error mapping instead of `errors`; resiliency (timeouts, retries on status codes, circuit
//! breakers, per target) wraps the `app ID` and `endpoint` branches between `route` and
//! `resolve`; spans open in a layer next to `target` and metrics are the `metrics` layers;
//! mTLS with the callee's expected identity is a [`peers::Connect`].

pub mod answer;
pub mod balance;
pub mod call;
pub mod external;
pub mod failover;
pub mod metrics;
pub mod mtls;
pub mod peers;
pub mod resolve;
pub mod route;
pub mod target;

use crate::respond::Errors;

/// The app-ID branch: resolve → metrics → answer → failover.
pub type Remote<R, C> =
    resolve::Resolving<R, metrics::Record<answer::PeerAnswer<failover::Failover<R, C>>>>;

/// The caller's stack, assembled.
pub type Outbound<R, C> = Errors<
    target::Target<
        route::Route<Remote<R, C>, metrics::Record<external::External>, external::External>,
    >,
>;
