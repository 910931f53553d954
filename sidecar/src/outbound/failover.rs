//! Attempts: a call goes to an instance picked by [`super::balance`] (not tried yet), over a
//! connection from [`super::peers`]. A request whose length is known goes to another instance
//! when one cannot be reached, up to [`MAX_ATTEMPTS`]; one of unknown length gets exactly one
//! attempt (it is never buffered). Between attempts the target is resolved again: the failed
//! instance may have left, another may have come; when every known instance has failed, the
//! resolver may refresh first.

use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering, task::Poll};

use http::Response;
use tower::Service;

use crate::{
    body::{self, Body, find_too_large},
    invoke::{Cause, error::chain, headers},
    stacks::Answer,
};

use super::{
    balance::InFlight,
    metrics::MetricPeer,
    peers::{Connect, Peer, PeerPool, Replay},
    resolve::{PeerCall, Resolve},
};

/// At most this many attempts for a fixed-length request whose connection failed.
pub const MAX_ATTEMPTS: usize = 3;

impl MetricPeer for PeerCall {
    fn metric_peer(&self) -> Option<&str> {
        Some(self.app.id.as_str())
    }
}

struct Shared<R, C> {
    resolver: Arc<R>,
    peers: PeerPool<C>,
    max_body: u64,
}

/// See the module docs.
pub struct Failover<R, C> {
    shared: Arc<Shared<R, C>>,
}

impl<R, C> Clone for Failover<R, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<R, C> Failover<R, C> {
    pub fn new(resolver: Arc<R>, peers: PeerPool<C>, max_body: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                resolver,
                peers,
                max_body,
            }),
        }
    }
}

impl<R: Resolve, C: Connect> Service<PeerCall> for Failover<R, C> {
    type Response = Response<Body>;
    type Error = Cause;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: PeerCall) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.attempt(call).await })
    }
}

impl<R: Resolve, C: Connect> Shared<R, C> {
    async fn attempt(&self, call: PeerCall) -> Result<Response<Body>, Cause> {
        let PeerCall {
            app,
            mut instances,
            mut req,
            fixed,
            whole,
            tripped,
        } = call;
        let id = &app.id;
        let streamed = whole.is_none();
        let attempts = if fixed { MAX_ATTEMPTS } else { 1 };
        let mut last_error = None;
        // At most MAX_ATTEMPTS addresses: no allocation beyond the first failure.
        let mut tried: Vec<SocketAddr> = Vec::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                if instances.untried(&tried) == 0 {
                    self.resolver.unreachable().await;
                }
                if let Ok(fresh) = self.resolver.resolve(id, &app.ns, app.explicit).await {
                    instances = fresh;
                }
            }
            // An instance not tried yet; when all have been, any (it may have come back).
            let Some(backend) = instances
                .pick(&tried)
                .or_else(|| instances.pick(&[]))
                .cloned()
            else {
                break;
            };
            let addr = backend.addr;
            tried.push(addr);
            // Counted from here (connecting included, so a burst spreads over the instances)
            // until the response body ends; dropped with the request if this attempt fails.
            let load = InFlight::start(backend);
            // The callee checks that the request is meant for it: app ID and namespace.
            let callee = instances.callee_headers(id.as_str()).tag;
            headers::set_callee(req.headers_mut(), callee.clone());
            let peer = Peer { addr, callee };
            let conn = match self.peers.checkout(peer.clone(), streamed).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(peer = %addr, error = %e, attempt, "cannot reach a peer sidecar");
                    last_error = Some(format!(
                        "cannot connect to the sidecar of {id} at {addr}: {e}"
                    ));
                    continue;
                }
            };
            let replay = match &whole {
                Some(bytes) if conn.reused() => Replay::of(&req, bytes),
                _ => None,
            };
            match conn.send(req, replay).await {
                Ok(resp) => return Ok(resp.map(|b| body::holding(body::boxed(b), load))),
                Err(mut e) => {
                    self.peers.evict(&peer);
                    if let Some(limit) = find_too_large(e.error()) {
                        return Err(Cause::BodyTooLarge { limit });
                    }
                    if tripped.load(Ordering::Acquire) {
                        return Err(Cause::BodyTooLarge {
                            limit: self.max_body,
                        });
                    }
                    let error = format!("sidecar of {id} at {addr}: {}", chain(e.error()));
                    match e.take_message() {
                        // Not sent at all: safe to try elsewhere.
                        Some(back) if fixed => req = back,
                        _ => return Err(Cause::Remote(error)),
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(Cause::Remote(last_error.unwrap_or_else(|| {
            format!("no instance of {id} is available")
        })))
    }
}
