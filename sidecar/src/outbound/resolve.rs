//! Resolution, injected into the caller's stack: app ID and namespace → live instances.
//! Standalone mode reads the registry directory ([`crate::registry`]), kubernetes mode watches
//! the API ([`crate::kubernetes::KubeResolver`]), tests bring their own.
//!
//! [`Resolving`] is the stack's step that asks: it resolves the target, says who calls whom
//! (`dapr-caller-*`, `dapr-callee-app-id`, `X-Forwarded-*`) and makes the request a peer
//! sidecar receives.

use std::{future::Future, sync::Arc, task::Poll};

use ferry_api::{AppId, Namespace};
use http::{HeaderValue, Request, Response, Uri};
use tower::Service;

pub use crate::invoke::ResolveError;
use crate::{
    body::{Body, Outgoing},
    invoke::{
        Cause, Invocation,
        headers::{self, ForwardedHeaders},
    },
    registry::RegistryResolver,
    stacks::{Answer, Step},
};

use super::{
    balance::Instances,
    call::{AppTarget, Routed},
};

/// Name resolution for app IDs.
pub trait Resolve: Send + Sync + 'static {
    /// The live instances of `app` in `ns`, or why there are none. `explicit` says whether the
    /// target named the namespace (`app.ns`) or it is the caller's own by default.
    fn resolve(
        &self,
        app: &AppId,
        ns: &Namespace,
        explicit: bool,
    ) -> impl Future<Output = Result<Arc<Instances>, ResolveError>> + Send;
    /// An instance could not be reached; the resolver may refresh what it knows.
    fn unreachable(&self) -> impl Future<Output = ()> + Send;
}

impl Resolve for RegistryResolver {
    async fn resolve(
        &self,
        app: &AppId,
        ns: &Namespace,
        explicit: bool,
    ) -> Result<Arc<Instances>, ResolveError> {
        RegistryResolver::resolve(self, app, ns, explicit).await
    }

    async fn unreachable(&self) {
        self.rescan().await;
    }
}

/// A call to an app ID, resolved: what the steps below resolution work with.
pub struct PeerCall {
    pub app: AppTarget,
    pub instances: Arc<Instances>,
    /// What the peer sidecar receives (origin-form URI; the peer's address is added per attempt).
    pub req: Request<Body>,
    /// The body's length is known: the request may go to another instance when the first
    /// could not be reached before anything was sent.
    pub fixed: bool,
    /// The whole body, when it is in memory (it can be sent again).
    pub whole: Option<bytes::Bytes>,
    /// Set once the body went over `--max-body-size`.
    pub tripped: Arc<std::sync::atomic::AtomicBool>,
}

/// Who this sidecar is, as the headers of its calls say it.
#[derive(Debug)]
pub struct Caller {
    pub id: HeaderValue,
    pub namespace: HeaderValue,
    pub forwarded: ForwardedHeaders,
}

impl Caller {
    pub fn new(id: &AppId, namespace: &Namespace, forwarded: ForwardedHeaders) -> Self {
        let hv = |s: &str| HeaderValue::from_str(s).expect("validated IDs are valid header values");
        Self {
            id: hv(id.as_str()),
            namespace: hv(namespace.as_str()),
            forwarded,
        }
    }
}

/// Resolves the target, then hands a [`PeerCall`] to `inner`.
pub struct Resolving<R, S> {
    resolver: Arc<R>,
    caller: Arc<Caller>,
    inner: S,
}

impl<R, S: Clone> Clone for Resolving<R, S> {
    fn clone(&self) -> Self {
        Self {
            resolver: self.resolver.clone(),
            caller: self.caller.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<R, S> Resolving<R, S> {
    pub fn new(resolver: Arc<R>, caller: Arc<Caller>, inner: S) -> Self {
        Self {
            resolver,
            caller,
            inner,
        }
    }
}

impl<R, S> Service<Routed<AppTarget>> for Resolving<R, S>
where
    R: Resolve,
    S: Step<PeerCall> + Clone + Send + 'static,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Routed<AppTarget>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Routed { target: app, inv } = call;
            let instances = this
                .resolver
                .resolve(&app.id, &app.ns, app.explicit)
                .await
                .map_err(|source| Cause::Resolve {
                    app: app.id.clone(),
                    namespace: app.ns.clone(),
                    source: Box::new(source),
                })?;
            // Origin form; the peer connection adds the peer's address for its protocol.
            let path_and_query = inv.path_and_query();
            let uri = Uri::try_from(path_and_query.as_str()).map_err(|e| Cause::InvalidUrl {
                url: path_and_query.clone(),
                reason: e.to_string(),
            })?;
            let Invocation {
                verb,
                mut headers,
                body,
                ..
            } = inv;
            let callee = instances.callee_headers(app.id.as_str());
            headers::set_identity(
                &mut headers,
                &this.caller.id,
                &this.caller.namespace,
                &callee.app_id,
            );
            this.caller.forwarded.append_to(&mut headers);
            let Outgoing {
                body,
                fixed,
                whole,
                tripped,
            } = body;
            let mut req = Request::new(body);
            *req.method_mut() = verb;
            *req.uri_mut() = uri;
            *req.headers_mut() = headers;
            let mut inner = this.inner;
            inner
                .call(PeerCall {
                    app,
                    instances,
                    req,
                    fixed,
                    whole,
                    tripped,
                })
                .await
        })
    }
}
