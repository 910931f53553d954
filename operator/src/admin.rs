//! The admin server: `/livez`, `/readyz` and `/metrics`.
//!
//! Readiness: the leader is ready once the caches its controllers read (Pods, Services,
//! HTTPEndpoints, RoutingTables, Namespaces) have synced; a follower is ready while it can read
//! the Lease, that is while it could take over. So a rollout of several replicas progresses, and a
//! replica cut off from the API server is taken out of the Service.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} for the admin server: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What `/readyz` and the `leader`/`ready` gauges report; shared by the elector and the
/// controllers.
#[derive(Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct HealthInner {
    leader: AtomicBool,
    lease_reachable: AtomicBool,
    caches_synced: AtomicBool,
    /// `--ca`: this replica also serves the CA.
    ca_enabled: AtomicBool,
    ca_ready: AtomicBool,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::default(),
            metrics,
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.store(leader, Ordering::SeqCst);
        self.metrics.leader.set(i64::from(leader));
        self.update();
    }

    pub fn set_lease_reachable(&self, ok: bool) {
        self.inner.lease_reachable.store(ok, Ordering::SeqCst);
        self.update();
    }

    pub fn set_caches_synced(&self, synced: bool) {
        self.inner.caches_synced.store(synced, Ordering::SeqCst);
        self.update();
    }

    /// This replica serves the CA: it is ready only while the CA is.
    pub fn enable_ca(&self) {
        self.inner.ca_enabled.store(true, Ordering::SeqCst);
        self.update();
    }

    pub fn set_ca_ready(&self, ready: bool) {
        self.inner.ca_ready.store(ready, Ordering::SeqCst);
        self.update();
    }

    pub fn is_leader(&self) -> bool {
        self.inner.leader.load(Ordering::SeqCst)
    }

    /// Why the replica is not ready, or `None` when it is.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        let i = &self.inner;
        if i.ca_enabled.load(Ordering::SeqCst) && !i.ca_ready.load(Ordering::SeqCst) {
            return Some("ca: no usable signing material yet (see the log)");
        }
        if i.leader.load(Ordering::SeqCst) {
            (!i.caches_synced.load(Ordering::SeqCst)).then_some("leader: caches not synced yet")
        } else {
            (!i.lease_reachable.load(Ordering::SeqCst))
                .then_some("follower: cannot read the leader Lease")
        }
    }

    fn update(&self) {
        self.metrics
            .ready
            .set(i64::from(self.not_ready_because().is_none()));
    }
}

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: Arc<Metrics>,
}

pub fn router(health: Health, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AdminState { health, metrics })
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let role = if s.health.is_leader() {
        "leader"
    } else {
        "follower"
    };
    match s.health.not_ready_because() {
        None => (StatusCode::OK, format!("ok ({role})\n")),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_handler(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Binds the admin address (so a taken port fails start-up, not later).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_role() {
        let m = Arc::new(Metrics::default());
        let h = Health::new(m.clone());
        assert!(h.not_ready_because().is_some(), "nothing known yet");
        h.set_lease_reachable(true);
        assert_eq!(
            h.not_ready_because(),
            None,
            "a follower that sees the Lease"
        );
        h.set_leader(true);
        assert!(
            h.not_ready_because().is_some(),
            "a leader before its caches"
        );
        h.set_caches_synced(true);
        assert_eq!(h.not_ready_because(), None);
        assert!(m.encode().contains("ferry_operator_ready 1"));
        h.enable_ca();
        assert_eq!(
            h.not_ready_because(),
            Some("ca: no usable signing material yet (see the log)")
        );
        h.set_ca_ready(true);
        assert_eq!(h.not_ready_because(), None);
    }
}
