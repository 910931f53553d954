//! Caller-side metrics as a step of the stack: a request sent to a peer app or HTTPEndpoint,
//! and the response received from it (see [`crate::metrics`] for Dapr's names). Sits where a
//! callee sidecar's own errors are already errors, so only the app's answers count as
//! responses, as in Dapr.

use std::{sync::Arc, task::Poll};

use http::Response;
use tower::Service;

use crate::{
    body::Body,
    invoke::Cause,
    metrics::{CallType, Metrics},
    stacks::{Answer, Step},
};

/// The peer a request counts against: an app ID or an HTTPEndpoint name; `None`: not counted.
pub trait MetricPeer {
    fn metric_peer(&self) -> Option<&str>;
}

/// Counts requests sent and responses received; passes everything through unchanged.
pub struct Record<S> {
    metrics: Option<Arc<Metrics>>,
    inner: S,
}

impl<S: Clone> Clone for Record<S> {
    fn clone(&self) -> Self {
        Self {
            metrics: self.metrics.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S> Record<S> {
    pub fn new(metrics: Option<Arc<Metrics>>, inner: S) -> Self {
        Self { metrics, inner }
    }
}

impl<Req, S> Service<Req> for Record<S>
where
    Req: MetricPeer,
    S: Step<Req>,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (Some(m), Some(name)) = (&self.metrics, req.metric_peer()) else {
            return self.inner.call(req);
        };
        let (m, peer) = (m.clone(), m.peer(name));
        m.req_sent(&peer, CallType::Unary);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            m.res_recv(&peer, resp.status().as_u16(), CallType::Unary);
            Ok(resp)
        })
    }
}
