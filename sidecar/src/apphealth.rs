//! App health checks (as Dapr's `dapr/pkg/apphealth/health.go`): probe the app on an interval;
//! after `threshold` failures in a row the app is unhealthy and requests for it are refused
//! until one probe succeeds.
//!
//! As in Dapr (`pkg/apphealth`), the app starts *unhealthy* (the failure count starts at the
//! threshold) and the first probe runs at once, so nothing reaches an app that has not yet
//! answered a probe.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;

use crate::{body, config::AppHealthSettings, metrics::Metrics, upstream::AppChannel};

/// The app's health as the probes last saw it. Reading it is one atomic load.
#[derive(Debug)]
pub struct AppHealth {
    failures: AtomicU32,
    pub settings: AppHealthSettings,
}

/// A change of state, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    BecameHealthy,
    BecameUnhealthy,
}

impl AppHealth {
    /// Unhealthy until the first probe succeeds.
    pub fn new(settings: AppHealthSettings) -> Self {
        Self {
            failures: AtomicU32::new(settings.threshold),
            settings,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.failures.load(Ordering::Acquire) < self.settings.threshold
    }

    /// Records one probe's outcome; says when the state changed.
    pub fn report(&self, healthy: bool) -> Option<Change> {
        let threshold = self.settings.threshold;
        if healthy {
            let before = self.failures.swap(0, Ordering::AcqRel);
            return (before >= threshold).then_some(Change::BecameHealthy);
        }
        // Counts up to the threshold and stays there (no overflow, however long it fails).
        let before = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some(f.saturating_add(1).min(threshold))
            })
            .unwrap_or(threshold);
        (before < threshold && before + 1 == threshold).then_some(Change::BecameUnhealthy)
    }
}

/// What one probe saw: the app's status, or none (connection failed or timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome(pub Option<StatusCode>);

impl Outcome {
    pub fn healthy(self) -> bool {
        self.0.is_some_and(|s| s.is_success())
    }

    /// The `status` label Dapr records: the app's status, 500 for a network error or timeout.
    pub fn status_label(self) -> u16 {
        self.0.map_or(500, |s| s.as_u16())
    }
}

/// Probes until the task is dropped: at once, then every interval (a slow probe delays the
/// next one rather than overlapping it).
pub async fn probe_forever(health: Arc<AppHealth>, app: AppChannel, metrics: Option<Arc<Metrics>>) {
    let uri: Uri = match format!("{}{}", app.base, health.settings.path).parse() {
        Ok(u) => u,
        Err(e) => {
            // The path was checked at start-up; this cannot happen, but never probe blindly.
            tracing::error!(error = %e, "cannot build the app health probe URL; probes are off");
            return;
        }
    };
    let mut tick = tokio::time::interval(health.settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = probe(&app, &uri, health.settings.timeout).await;
        if let Some(m) = &metrics {
            m.health_probe(outcome.status_label());
        }
        match health.report(outcome.healthy()) {
            Some(Change::BecameHealthy) => tracing::info!(url = %uri, "app entered healthy status"),
            Some(Change::BecameUnhealthy) => tracing::warn!(
                url = %uri,
                failures = health.settings.threshold,
                status = ?outcome.0,
                "app entered unhealthy status; requests for it are refused until a probe succeeds"
            ),
            None => tracing::debug!(url = %uri, status = ?outcome.0, "app health probe"),
        }
    }
}

/// One GET of the health path, its body drained, within `timeout`.
async fn probe(app: &AppChannel, uri: &Uri, timeout: Duration) -> Outcome {
    let mut req = Request::new(body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri.clone();
    let exchange = async {
        let resp = app.send(req).await.ok()?;
        let status = resp.status();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame.ok()?;
        }
        Some(status)
    };
    Outcome(tokio::time::timeout(timeout, exchange).await.ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(threshold: u32) -> AppHealth {
        AppHealth::new(AppHealthSettings {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            threshold,
        })
    }

    #[test]
    fn starts_unhealthy_and_one_success_heals() {
        let h = health(3);
        assert!(!h.is_healthy());
        // Failing from the start is no change: it was never healthy.
        assert_eq!(h.report(false), None);
        assert!(!h.is_healthy());
        assert_eq!(h.report(true), Some(Change::BecameHealthy));
        assert!(h.is_healthy());
        assert_eq!(h.report(true), None);
    }

    #[test]
    fn threshold_failures_in_a_row_make_it_unhealthy() {
        let h = health(3);
        h.report(true);
        assert_eq!(h.report(false), None);
        assert_eq!(h.report(false), None);
        assert!(h.is_healthy(), "two failures are below the threshold of 3");
        assert_eq!(h.report(false), Some(Change::BecameUnhealthy));
        assert!(!h.is_healthy());
        for _ in 0..10 {
            assert_eq!(h.report(false), None, "reported once");
        }
        assert_eq!(h.report(true), Some(Change::BecameHealthy));
    }

    #[test]
    fn a_success_resets_the_count() {
        let h = health(2);
        h.report(true);
        h.report(false);
        h.report(true);
        assert_eq!(h.report(false), None);
        assert!(h.is_healthy(), "failures must be consecutive");
        assert_eq!(h.report(false), Some(Change::BecameUnhealthy));
    }

    #[test]
    fn threshold_one() {
        let h = health(1);
        assert!(!h.is_healthy());
        assert_eq!(h.report(true), Some(Change::BecameHealthy));
        assert_eq!(h.report(false), Some(Change::BecameUnhealthy));
        assert_eq!(h.report(false), None);
    }

    #[test]
    fn outcomes() {
        assert!(Outcome(Some(StatusCode::OK)).healthy());
        assert!(Outcome(Some(StatusCode::NO_CONTENT)).healthy());
        assert!(!Outcome(Some(StatusCode::MOVED_PERMANENTLY)).healthy());
        assert!(!Outcome(Some(StatusCode::SERVICE_UNAVAILABLE)).healthy());
        assert!(!Outcome(None).healthy());
        assert_eq!(Outcome(None).status_label(), 500);
        assert_eq!(Outcome(Some(StatusCode::IM_A_TEAPOT)).status_label(), 418);
    }

    #[tokio::test]
    async fn probes_a_real_app_and_times_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // An app that answers 503 to the first connection and never answers the second.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown")
                .await
                .unwrap();
            drop(s);
            let (_hang, _) = l.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let app = AppChannel::new(crate::config::AppProtocol::Http, "127.0.0.1", port);
        let uri: Uri = format!("{}/healthz", app.base).parse().unwrap();
        let first = probe(&app, &uri, Duration::from_secs(5)).await;
        assert_eq!(first, Outcome(Some(StatusCode::SERVICE_UNAVAILABLE)));
        let second = probe(&app, &uri, Duration::from_millis(200)).await;
        assert_eq!(second, Outcome(None), "a probe that hangs is a failure");
    }
}
