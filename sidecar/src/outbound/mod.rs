//! The caller's stack: an app's request to its own sidecar, to wherever it names.
//!
//! ```text
//! errors → target → route ─┬─ local:    the own app (inbound::app: health gate → limit → channel)
//!                          ├─ app ID:   resolve → metrics → answer → failover (balance) → peers (connect)
//!                          ├─ endpoint: metrics → external
//!                          └─ URL:      external
//! ```
//!
//! - [`Errors`]: this sidecar's failures become Dapr's error JSON (the one place:
//!   `InvokeError::into_response`).
//! - [`target::Target`]: what the request names and where that is; method normalization,
//!   body limit, header rules both ways, trace context. Makes a [`call::Call`].
//! - [`route::Route`]: one branch per kind of destination.
//! - [`resolve::Resolving`]: the app ID's instances (injected [`resolve::Resolve`]), and the
//!   headers that say who calls whom.
//! - [`metrics::Record`]: requests sent, responses received.
//! - [`answer::Answer`]: a callee sidecar's own errors become ours.
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
pub mod peers;
pub mod resolve;
pub mod route;
pub mod target;

use std::{convert::Infallible, task::Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use tower::Service;

use crate::{
    body::{Body, BoxError},
    invoke::InvokeError,
    upstream::BoxFuture,
};

/// The app-ID branch: resolve → metrics → answer → failover.
pub type Remote<R, C> =
    resolve::Resolving<R, metrics::Record<answer::Answer<failover::Failover<R, C>>>>;

/// The caller's stack, assembled.
pub type Outbound<R, C> = Errors<
    target::Target<
        route::Route<Remote<R, C>, metrics::Record<external::External>, external::External>,
    >,
>;

/// Answers this sidecar's own failures for the app.
#[derive(Debug, Clone)]
pub struct Errors<S> {
    inner: S,
}

impl<S> Errors<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> Service<Request<B>> for Errors<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = InvokeError>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let answer = self.inner.call(req);
        Box::pin(async move {
            Ok(answer.await.unwrap_or_else(|e| {
                tracing::debug!(target = e.target.as_deref().unwrap_or(""), kind = e.cause.kind().as_str(), error = %e.message(), "invocation failed");
                e.into_response()
            }))
        })
    }
}
