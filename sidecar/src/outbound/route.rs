//! Sends each [`Call`] down the branch of the stack for its destination: the own app, an app
//! ID, an HTTPEndpoint, or a URL.

use std::{sync::Arc, task::Poll};

use http::Response;
use tower::Service;

use crate::{
    body::Body,
    inbound::app::App,
    invoke::{Cause, headers},
    stacks::{Answer, Step},
    upstream::Upstream,
};

use super::{
    call::{AppTarget, Call, Destination, Routed},
    external::{ExternalCall, ExternalTarget},
    resolve::Caller,
};

/// The branches, shared by every clone of [`Route`].
pub struct Branches<Remote, Endpoint, Url> {
    /// This sidecar's own app (self-invocation), when it has one.
    pub local: Option<App>,
    pub caller: Arc<Caller>,
    pub remote: Remote,
    pub endpoint: Endpoint,
    /// URL calls; `None` when they are turned off.
    pub url: Option<(Arc<dyn Upstream>, Url)>,
}

pub struct Route<Remote, Endpoint, Url> {
    branches: Arc<Branches<Remote, Endpoint, Url>>,
}

impl<Remote, Endpoint, Url> Clone for Route<Remote, Endpoint, Url> {
    fn clone(&self) -> Self {
        Self {
            branches: self.branches.clone(),
        }
    }
}

impl<Remote, Endpoint, Url> Route<Remote, Endpoint, Url> {
    pub fn new(branches: Branches<Remote, Endpoint, Url>) -> Self {
        Self {
            branches: Arc::new(branches),
        }
    }
}

impl<Remote, Endpoint, Url> Service<Call> for Route<Remote, Endpoint, Url>
where
    Remote: Step<Routed<AppTarget>> + Clone + Send + Sync + 'static,
    Endpoint: Step<ExternalCall> + Clone + Send + Sync + 'static,
    Url: Step<ExternalCall> + Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Answer {
        let b = &*self.branches;
        let Call { dest, mut inv } = call;
        match dest {
            Destination::Local => {
                let Some(app) = &b.local else {
                    return Box::pin(std::future::ready(Err(Cause::NoLocalAppChannel)));
                };
                let caller = &b.caller;
                headers::set_identity(&mut inv.headers, &caller.id, &caller.namespace, &caller.id);
                let delivered = app.clone().call(inv.into_delivery());
                Box::pin(async move {
                    delivered.await.map_err(|c| match c {
                        Cause::NoAppChannel => Cause::NoLocalAppChannel,
                        c => c,
                    })
                })
            }
            Destination::App(target) => b.remote.clone().call(Routed { target, inv }),
            Destination::Endpoint(ep) => {
                headers::set_endpoint_headers(&mut inv.headers, &ep.headers);
                b.endpoint.clone().call(ExternalCall {
                    target: ExternalTarget::Endpoint(ep),
                    inv,
                })
            }
            Destination::Url(base) => match &b.url {
                Some((client, url)) => url.clone().call(ExternalCall {
                    target: ExternalTarget::Url {
                        client: client.clone(),
                        base,
                    },
                    inv,
                }),
                None => Box::pin(std::future::ready(Err(Cause::FqdnDisabled))),
            },
        }
    }
}
