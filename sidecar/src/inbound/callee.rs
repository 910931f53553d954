//! The callee stack's first step: a request on the internal port must be meant for this
//! sidecar's app (`ferry-callee: <app-id>.<namespace>`), so that a recycled pod IP never
//! delivers another app's traffic. Over mTLS, the caller's app ID and namespace headers are
//! set here from its verified certificate (`server.rs` puts its SPIFFE ID in the request's
//! extensions); access control comes after normalization.

use std::task::Poll;

use http::{HeaderValue, Request, Response};
use tower::Service;

use crate::{
    body::Body,
    invoke::{Cause, headers},
    stacks::{Answer, Step},
};

#[derive(Debug, Clone)]
pub struct CheckCallee<S> {
    /// `<app-id>.<namespace>`.
    own: HeaderValue,
    inner: S,
}

impl<S> CheckCallee<S> {
    pub fn new(own: HeaderValue, inner: S) -> Self {
        Self { own, inner }
    }
}

impl<S, B> Service<Request<B>> for CheckCallee<S>
where
    S: Step<Request<B>>,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let wanted = headers::take_callee(req.headers_mut());
        if wanted.as_ref() != Some(&self.own) {
            let cause = Cause::WrongCallee {
                wanted: wanted
                    .map(|w| String::from_utf8_lossy(w.as_bytes()).into_owned())
                    .unwrap_or_default(),
                own: String::from_utf8_lossy(self.own.as_bytes()).into_owned(),
            };
            return Box::pin(std::future::ready(Err(cause)));
        }
        if let Some(caller) = req.extensions().get::<ferry_api::SpiffeId>().cloned() {
            headers::set_verified_caller(req.headers_mut(), &caller);
        }
        self.inner.call(req)
    }
}
