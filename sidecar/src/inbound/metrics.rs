//! Callee-side metrics as a step of the stack: a request received from a caller (named by
//! `dapr-caller-app-id`), and the status answered to it, errors of this sidecar included.

use std::{sync::Arc, task::Poll};

use http::{Request, Response};
use tower::Service;

use crate::{
    body::Body,
    invoke::{Cause, headers},
    metrics::{Metrics, UNKNOWN_PEER},
    stacks::{Answer, Step},
};

#[derive(Debug, Clone)]
pub struct Record<S> {
    metrics: Option<Arc<Metrics>>,
    inner: S,
}

impl<S> Record<S> {
    pub fn new(metrics: Option<Arc<Metrics>>, inner: S) -> Self {
        Self { metrics, inner }
    }
}

impl<S, B> Service<Request<B>> for Record<S>
where
    S: Step<Request<B>>,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Answer {
        let Some(m) = self.metrics.clone() else {
            return self.inner.call(req);
        };
        let peer = m.peer(headers::caller_app_id(req.headers()).unwrap_or(UNKNOWN_PEER));
        m.req_recv(&peer);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let result = answer.await;
            let status = match &result {
                Ok(resp) => resp.status(),
                Err(cause) => cause.status(),
            };
            m.res_sent(&peer, status.as_u16());
            result
        })
    }
}
