//! A peer's answer: the app's passes as it is; an error the callee's sidecar made (marked
//! `ferry-error`) becomes this sidecar's own, re-issued under the caller's target.

use std::task::Poll;

use http::Response;
use http_body_util::BodyExt as _;
use tower::Service;

use crate::{
    body::Body,
    invoke::{Cause, headers},
    stacks::Answer,
};

use super::resolve::PeerCall;

/// At most this much of a callee error's body is read (it is a short JSON document).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// See the module docs.
#[derive(Clone)]
pub struct PeerAnswer<S> {
    inner: S,
}

impl<S> PeerAnswer<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<PeerCall> for PeerAnswer<S>
where
    S: Service<PeerCall, Response = Response<Body>, Error = Cause>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: PeerCall) -> Self::Future {
        let answer = self.inner.call(call);
        Box::pin(async move {
            let resp = answer.await?;
            match headers::callee_error(resp.headers()) {
                None => Ok(resp),
                Some(kind) => Err(callee_cause(resp, kind).await),
            }
        })
    }
}

/// The callee sidecar's error, with the message of its JSON body.
async fn callee_cause(resp: Response<Body>, kind: Option<crate::invoke::ErrorKind>) -> Cause {
    let status = resp.status();
    let bytes = match read_limited(resp.into_body(), MAX_ERROR_BODY).await {
        Some(b) => b,
        None => bytes::Bytes::new(),
    };
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    Cause::Callee {
        status,
        kind,
        message,
    }
}

/// At most `limit` bytes of `body`; `None` when it fails or is longer.
async fn read_limited(mut body: Body, limit: usize) -> Option<bytes::Bytes> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if out.len() + data.len() > limit {
                return None;
            }
            out.extend_from_slice(&data);
        }
    }
    Some(out.freeze())
}
