//! Calls out of the mesh: to an HTTPEndpoint (its base URL, headers and TLS) or a full URL.
//! Never follows redirects; URL calls refuse link-local and metadata addresses (see
//! [`crate::upstream`]).

use std::{sync::Arc, task::Poll};

use http::Response;
use tower::Service;

use crate::{
    body::{self, Body, find_too_large},
    endpoints::Endpoint,
    invoke::{
        Cause, Invocation,
        error::{chain, find_in_chain},
    },
    stacks::Answer,
    upstream::{Blocked, Upstream},
};

use super::metrics::MetricPeer;

/// Where an external call goes.
pub enum ExternalTarget {
    Endpoint(Arc<Endpoint>),
    Url {
        client: Arc<dyn Upstream>,
        /// No trailing slash.
        base: String,
    },
}

pub struct ExternalCall {
    pub target: ExternalTarget,
    pub inv: Invocation,
}

impl MetricPeer for ExternalCall {
    /// HTTPEndpoints count under their name; URL calls are not counted (a URL is unbounded).
    fn metric_peer(&self) -> Option<&str> {
        match &self.target {
            ExternalTarget::Endpoint(ep) => Some(&ep.name),
            ExternalTarget::Url { .. } => None,
        }
    }
}

/// Sends an [`ExternalCall`] with the target's client.
#[derive(Debug, Clone, Copy, Default)]
pub struct External;

impl Service<ExternalCall> for External {
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ExternalCall) -> Self::Future {
        let ExternalCall { target, inv } = call;
        let (client, url) = match &target {
            ExternalTarget::Endpoint(ep) => (ep.client.clone(), inv.url(&ep.base_url)),
            ExternalTarget::Url { client, base } => (client.clone(), inv.url(base)),
        };
        Box::pin(async move {
            let head = inv.is_head();
            match client.send(inv.into_delivery().into_request(&url)?).await {
                Ok(resp) => Ok(body::frame_upstream(resp, head).await),
                Err(e) => {
                    if let Some(limit) = find_too_large(&*e) {
                        return Err(Cause::BodyTooLarge { limit });
                    }
                    if let Some(b) = find_in_chain::<Blocked>(&*e) {
                        return Err(Cause::BlockedAddress {
                            host: b.host.clone(),
                        });
                    }
                    Err(Cause::External {
                        url,
                        reason: chain(&*e),
                    })
                }
            }
        })
    }
}
