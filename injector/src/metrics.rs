//! Prometheus metrics. Every label comes from a fixed vocabulary: a decision and a reason name,
//! never a pod, namespace or message.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `inject`, `skip`, `deny` or `error`.
    pub decision: &'static str,
    /// A skip reason (`SkipReason::as_str`), `invalid_annotation` for a denial, or the review
    /// problem for an error (`ReviewError::reason`); `patched` for an injection.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `files` or `secret`.
    pub source: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
}

pub struct Metrics {
    pub admissions: Family<AdmissionLabels, Counter>,
    pub certificate_reloads: Family<ReloadLabels, Counter>,
    /// When the served certificate expires (Unix seconds); 0 before one is loaded.
    pub certificate_not_after: Gauge,
    /// 1 while `/readyz` answers 200.
    pub ready: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry_injector");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission reviews answered, by decision and reason",
            admissions.clone(),
        );
        let certificate_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate (re)loads, by source and result",
            certificate_reloads.clone(),
        );
        let certificate_not_after = Gauge::default();
        registry.register(
            "certificate_not_after_seconds",
            "Expiry of the serving certificate, in Unix seconds",
            certificate_not_after.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the injector is ready to admit pods",
            ready.clone(),
        );
        Self {
            admissions,
            certificate_reloads,
            certificate_not_after,
            ready,
            registry,
        }
    }
}

impl Metrics {
    pub fn admission(&self, decision: &'static str, reason: &'static str) {
        self.admissions
            .get_or_create(&AdmissionLabels { decision, reason })
            .inc();
    }

    pub fn reload(&self, source: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.certificate_reloads
            .get_or_create(&ReloadLabels { source, result })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
