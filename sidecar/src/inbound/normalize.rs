//! What a peer sidecar sends, made into a [`Delivery`]: the method must be canonical (the
//! caller normalized it; the same function checks it here, so the path access control sees is
//! the path the app gets), the body within `--max-body-size`, the framing headers recomputed,
//! and the trace continued.

use std::task::Poll;

use bytes::Bytes;
use ferry_api::SpiffeId;
use http::{Request, Response};
use http_body::Body as HttpBody;
use tower::Service;

use crate::{
    body::{self, Body, BoxError, Limited, find_too_large},
    invoke::{Cause, Invocation, Method, error::chain, headers, trace},
    stacks::{Answer, Step},
};

use super::app::Delivery;

#[derive(Debug, Clone)]
pub struct Normalize<S> {
    max_body: u64,
    inner: S,
}

impl<S> Normalize<S> {
    pub fn new(max_body: u64, inner: S) -> Self {
        Self { max_body, inner }
    }
}

impl<S, B> Service<Request<B>> for Normalize<S>
where
    S: Step<Delivery> + Clone + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let max_body = self.max_body;
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let wire = parts
                .uri
                .path()
                .strip_prefix('/')
                .unwrap_or(parts.uri.path());
            let method = Method::from_wire(wire)?;
            if let Some(n) = body.size_hint().exact()
                && n > max_body
            {
                return Err(Cause::BodyTooLarge { limit: max_body });
            }
            headers::for_app(&mut parts.headers);
            trace::enter(&mut parts.headers);
            let query = parts.uri.query().map(str::to_owned);
            let body = body::outgoing(Limited::new(body, max_body))
                .await
                .map_err(|e| match find_too_large(&*e) {
                    Some(limit) => Cause::BodyTooLarge { limit },
                    None => Cause::RequestBody(chain(&*e)),
                })?;
            inner
                .call(Invocation {
                    verb: parts.method,
                    method,
                    query,
                    headers: parts.headers,
                    body: body.body,
                    caller: parts.extensions.remove::<SpiffeId>(),
                })
                .await
        })
    }
}
