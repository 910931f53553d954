//! The first step of the caller's stack: what an app's HTTP request names (target, method) and
//! where that is ([`Destination`]), the checks that need nothing else, and the header rules
//! both ways. Every failure from here down is reported under the target the app named.

use std::{net::IpAddr, sync::Arc, task::Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use ferry_api::{AppId, Namespace};
use http::{Request, Response, Uri};
use http_body::Body as HttpBody;
use tower::Service;

use crate::{
    body::{self, Body, BoxError, Limited, find_too_large},
    config::FqdnSettings,
    endpoints::{Endpoints, Found},
    invoke::{
        Cause, Invocation, InvokeError, Method,
        error::chain,
        headers,
        target::{self, TargetName},
        trace,
    },
    stacks::Step,
    upstream::{BoxFuture, is_blocked},
};

use super::call::{AppTarget, Call, Destination};

/// What the target step knows of this sidecar.
pub struct TargetContext {
    pub app_id: AppId,
    pub namespace: Namespace,
    /// The HTTPEndpoints this sidecar may call (swapped whole when they change).
    pub endpoints: Arc<ArcSwap<Endpoints>>,
    pub fqdn: Option<FqdnSettings>,
    pub max_body: u64,
}

impl TargetContext {
    /// Where `target` is, in Dapr's order: a URL; else an HTTPEndpoint of the caller's
    /// namespace; else the caller itself; else an app ID.
    pub fn destination(&self, target: &str) -> Result<Destination, Cause> {
        let name = target::classify(target).map_err(Cause::InvalidAppId)?;
        match name {
            TargetName::Url(url) => {
                let Some(fqdn) = self.fqdn else {
                    return Err(Cause::FqdnDisabled);
                };
                let uri: Uri =
                    url.parse()
                        .map_err(|e: http::uri::InvalidUri| Cause::InvalidUrl {
                            url: url.clone(),
                            reason: e.to_string(),
                        })?;
                if uri.query().is_some() {
                    return Err(Cause::InvalidUrl {
                        url,
                        reason: "a target URL cannot carry a query; put it on the invoke request instead".into(),
                    });
                }
                let host = uri
                    .host()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                if let Ok(ip) = host.parse::<IpAddr>()
                    && is_blocked(ip)
                    && !fqdn.allow_link_local
                {
                    return Err(Cause::BlockedAddress {
                        host: host.to_owned(),
                    });
                }
                Ok(Destination::Url(url.trim_end_matches('/').to_owned()))
            }
            TargetName::App { id, namespace } => {
                let own_ns = namespace.as_ref().is_none_or(|n| *n == self.namespace);
                if own_ns {
                    match self.endpoints.load().find(id.as_str()) {
                        Some(Found::Usable(ep)) => return Ok(Destination::Endpoint(ep.clone())),
                        Some(Found::Unusable(reason)) => {
                            return Err(Cause::EndpointUnusable {
                                name: id.to_string(),
                                reason: reason.clone(),
                            });
                        }
                        None => {}
                    }
                    if id == self.app_id {
                        return Ok(Destination::Local);
                    }
                }
                let explicit = namespace.is_some();
                let ns = namespace.unwrap_or_else(|| self.namespace.clone());
                Ok(Destination::App(AppTarget { id, ns, explicit }))
            }
        }
    }
}

/// Turns an app's request into a [`Call`] for `inner`, and `inner`'s answer into the app's.
pub struct Target<S> {
    ctx: Arc<TargetContext>,
    inner: S,
}

impl<S: Clone> Clone for Target<S> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S> Target<S> {
    pub fn new(ctx: Arc<TargetContext>, inner: S) -> Self {
        Self { ctx, inner }
    }
}

impl<S, B> Service<Request<B>> for Target<S>
where
    S: Step<Call> + Clone + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = InvokeError;
    type Future = BoxFuture<Result<Response<Body>, InvokeError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), InvokeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let baggage = trace::baggage(&parts.headers)
                .map_err(|reason| InvokeError::untargeted(Cause::InvalidBaggage(reason)))?;
            let Some(found) = target::extract(&parts.headers, parts.uri.path()) else {
                return Err(InvokeError::no_target(parts.uri.path()));
            };
            let target = found.target;
            let fail = |cause: Cause| InvokeError::new(&target, cause);
            let method = Method::normalize(&found.method).map_err(|e| fail(e.into()))?;
            if parts.method == http::Method::CONNECT {
                return Err(fail(Cause::InvalidVerb(parts.method.to_string())));
            }
            let dest = this.ctx.destination(&target).map_err(fail)?;
            let max_body = this.ctx.max_body;
            if let Some(n) = body.size_hint().exact()
                && n > max_body
            {
                return Err(fail(Cause::BodyTooLarge { limit: max_body }));
            }
            let query = parts.uri.query().map(str::to_owned);
            headers::sanitize_request(&mut parts.headers);
            let span = trace::enter(&mut parts.headers);
            let body = body::outgoing(Limited::new(body, max_body))
                .await
                .map_err(|e| match find_too_large(&*e) {
                    Some(limit) => fail(Cause::BodyTooLarge { limit }),
                    None => fail(Cause::RequestBody(chain(&*e))),
                })?;
            let call = Call {
                dest,
                inv: Invocation {
                    verb: parts.method,
                    method,
                    query,
                    headers: parts.headers,
                    body,
                    // The app's own requests: access control is the callee's, never applied
                    // to self-invocation (as in Dapr).
                    caller: None,
                },
            };
            let mut inner = this.inner;
            let mut resp = inner.call(call).await.map_err(fail)?;
            headers::sanitize_response(resp.headers_mut());
            trace::on_response(resp.headers_mut(), span);
            trace::baggage_on_response(resp.headers_mut(), baggage);
            Ok(resp)
        })
    }
}
