//! Access control on the callee's stack, between [`Normalize`](super::normalize::Normalize) and
//! the app: it judges the normalized method that is delivered, with the caller's verified
//! identity (none without mTLS: only the global `defaultAction` applies, as in Dapr). A denial
//! is [`Cause::AccessDenied`]: 403 for the calling sidecar, marked as this sidecar's own, and
//! the app is not called.
//!
//! The policy is a snapshot swapped whole when the Configuration changes (its file in
//! standalone mode, the resource in kubernetes mode): one atomic load per request, no lock.

use std::{sync::Arc, task::Poll};

use arc_swap::ArcSwapOption;
use http::Response;
use tower::Service;

use crate::{
    acl::{self, Acl},
    body::Body,
    invoke::Cause,
    metrics::Metrics,
    stacks::{Answer, Step},
};

use super::app::Delivery;

/// The policy in force: `None` when the Configuration has no access control.
pub type Policy = Arc<ArcSwapOption<Acl>>;

#[derive(Debug, Clone)]
pub struct Access<S> {
    policy: Policy,
    metrics: Option<Arc<Metrics>>,
    inner: S,
}

impl<S> Access<S> {
    pub fn new(policy: Policy, metrics: Option<Arc<Metrics>>, inner: S) -> Self {
        Self {
            policy,
            metrics,
            inner,
        }
    }
}

impl<S> Service<Delivery> for Access<S>
where
    S: Step<Delivery>,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, d: Delivery) -> Answer {
        let guard = self.policy.load();
        let Some(acl) = guard.as_deref() else {
            return self.inner.call(d);
        };
        let verb = d.verb.as_str();
        let verdict = acl.check(d.caller.as_ref(), d.method.as_str(), Some(verb));
        if let Some(m) = &self.metrics {
            m.acl(d.caller.as_ref(), verdict.scope, verdict.allowed);
        }
        if verdict.allowed {
            drop(guard);
            return self.inner.call(d);
        }
        let message = acl::denial(d.caller.as_ref(), d.method.as_str(), verb);
        Box::pin(std::future::ready(Err(Cause::AccessDenied(message))))
    }
}
