//! The top step of both stacks: a failure becomes a response, in this one place (the texts
//! and statuses are [`InvokeError::into_response`]'s).

use std::{convert::Infallible, task::Poll};

use http::{Request, Response};
use tower::Service;

use crate::{
    body::Body,
    invoke::{Cause, InvokeError},
    upstream::BoxFuture,
};

/// A failure the top of a stack answers with a response.
pub trait Respond {
    fn respond(self) -> Response<Body>;
}

/// The caller's stack: Dapr's error JSON for the app.
impl Respond for InvokeError {
    fn respond(self) -> Response<Body> {
        tracing::debug!(target = self.target.as_deref().unwrap_or(""), kind = self.cause.kind().as_str(), error = %self.message(), "invocation failed");
        self.into_response()
    }
}

/// The callee's stack: what reaches its top is the callee sidecar's own failure, answered for
/// the calling sidecar and marked `ferry-error` so that it can tell it from the app's answers.
impl Respond for Cause {
    fn respond(self) -> Response<Body> {
        tracing::debug!(kind = self.kind().as_str(), error = %self, "inbound request failed");
        InvokeError::callee(self).into_response()
    }
}

/// Answers `inner`'s failures; never fails itself.
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
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Respond,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let answer = self.inner.call(req);
        Box::pin(async move { Ok(answer.await.unwrap_or_else(Respond::respond)) })
    }
}
