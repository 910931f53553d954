//! A sidecar's two stacks, built from the validated settings and what is injected: the
//! resolver, the peer connector, the app channel, the URL client. `server.rs` puts the stacks
//! on sockets; tests join a caller's and a callee's in memory.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Response;
use tower::Service;

use crate::{
    apphealth::AppHealth,
    body::Body,
    config::Settings,
    endpoints::Endpoints,
    inbound::{self, Inbound, app},
    invoke::Cause,
    invoke::headers::ForwardedHeaders,
    metrics::Metrics,
    outbound::{
        Outbound,
        answer::PeerAnswer,
        external::External,
        failover::Failover,
        metrics::Record,
        peers::PeerPool,
        resolve::{Caller, Resolve, Resolving},
        route::{Branches, Route},
        target::{Target, TargetContext},
    },
    respond::Errors,
    upstream::{AppChannel, BoxFuture, Upstream},
};

/// What the steps below the stacks' tops answer: the response, or why there is none.
pub type Answer = BoxFuture<Result<Response<Body>, Cause>>;

/// A step of a stack below its top: a request in, an [`Answer`] out. Every step is always
/// ready (`poll_ready` returns at once): the stacks apply no back-pressure through readiness;
/// the app's concurrency limit queues inside its call, as Dapr's does.
pub trait Step<Req>:
    Service<Req, Response = Response<Body>, Error = Cause, Future = Answer>
{
}

impl<Req, S> Step<Req> for S where
    S: Service<Req, Response = Response<Body>, Error = Cause, Future = Answer>
{
}

/// What a sidecar is built from.
pub struct Parts<R, C> {
    pub settings: Arc<Settings>,
    pub resolver: Arc<R>,
    /// How peers' internal ports are reached.
    pub connect: C,
    /// The own app, when there is one.
    pub app: Option<AppChannel>,
    /// The client of URL calls; `None`: turned off.
    pub fqdn: Option<Arc<dyn Upstream>>,
    /// The HTTPEndpoints this sidecar may call; swapped whole when they change.
    pub endpoints: Arc<ArcSwap<Endpoints>>,
    /// For `X-Forwarded-Host` and `Forwarded`.
    pub hostname: String,
    pub app_health: Option<Arc<AppHealth>>,
    pub metrics: Option<Arc<Metrics>>,
    /// The access-control policy, swapped whole when the Configuration changes.
    pub access: inbound::access::Policy,
}

/// The caller's stack (an app's requests to its sidecar) and the callee's (peers' requests for
/// the app).
pub struct Sidecar<R, C> {
    pub outbound: Outbound<R, C>,
    pub inbound: Inbound,
}

impl<R: Resolve, C: crate::outbound::peers::Connect> Sidecar<R, C> {
    pub fn new(p: Parts<R, C>) -> Self {
        let s = &p.settings;
        let app = p
            .app
            .map(|channel| app::app(channel, p.app_health.clone(), s.max_concurrency));
        let caller = Arc::new(Caller::new(
            &s.app_id,
            &s.namespace,
            ForwardedHeaders::new(s.host_ip, &p.hostname),
        ));
        let remote = Resolving::new(
            p.resolver.clone(),
            caller.clone(),
            Record::new(
                p.metrics.clone(),
                PeerAnswer::new(Failover::new(
                    p.resolver,
                    PeerPool::new(p.connect),
                    s.max_body,
                )),
            ),
        );
        let target = Arc::new(TargetContext {
            app_id: s.app_id.clone(),
            namespace: s.namespace.clone(),
            endpoints: p.endpoints,
            fqdn: if p.fqdn.is_some() { s.fqdn } else { None },
            max_body: s.max_body,
        });
        let route = Route::new(Branches {
            local: app.clone(),
            caller,
            remote,
            endpoint: Record::new(p.metrics.clone(), External),
            url: p.fqdn.map(|client| (client, External)),
        });
        Self {
            outbound: Errors::new(Target::new(target, route)),
            inbound: inbound::stack(
                &s.app_id,
                &s.namespace,
                s.max_body,
                p.metrics,
                p.access,
                app,
            ),
        }
    }
}
