//! Prometheus metrics. Labels are bounded: a controller name and a fixed error reason, never an
//! object name.

use std::time::{Duration, Instant};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// The controllers this operator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControllerName {
    AppService,
    HttpEndpoint,
    RoutingTable,
    /// The ClusterRoleBinding that lets sidecars read RoutingTables and EndpointSlices.
    SidecarClusterBinding,
    /// The per-namespace Role and RoleBinding for the Secrets sidecars read.
    SidecarSecrets,
    /// The Events that show the injector's warnings on pods.
    InjectionWarnings,
    Configuration,
}

impl EncodeLabelValue for ControllerName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        self.as_str().encode(encoder)
    }
}

impl ControllerName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppService => "app_service",
            Self::HttpEndpoint => "http_endpoint",
            Self::RoutingTable => "routing_table",
            Self::SidecarClusterBinding => "sidecar_cluster_binding",
            Self::SidecarSecrets => "sidecar_secrets",
            Self::InjectionWarnings => "injection_warnings",
            Self::Configuration => "configuration",
        }
    }

    /// What the controller keeps, as its log lines name it.
    pub fn subject(self) -> &'static str {
        match self {
            Self::AppService => "app Services",
            Self::HttpEndpoint => "HTTPEndpoint",
            Self::RoutingTable => "RoutingTable",
            Self::SidecarClusterBinding => "sidecar ClusterRoleBinding",
            Self::SidecarSecrets => "sidecar Secrets Role",
            Self::InjectionWarnings => "injection-warnings Events",
            Self::Configuration => "Configuration",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: ControllerName,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: ControllerName,
    /// A fixed, per-variant label (`ReconcileError::metric_label`).
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReportLabels {
    pub controller: ControllerName,
    /// An Event reason (a fixed vocabulary: `InvalidAppID`, `ServiceConflict`, ...).
    pub reason: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The CA's metrics, with Dapr Sentry's names (`pkg/sentry/monitoring`).
pub struct CaMetrics {
    pub requests: Counter,
    pub signed: Counter,
    pub failures: Family<FailureLabels, Counter>,
    pub issuer_changed: Counter,
    pub issuer_expiry: Gauge,
    pub server_cert_failed: Counter,
    /// Passes that could not publish the trust bundle (Ferry's own).
    pub bundle_errors: Counter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    /// `req_id_validation` (the proof of identity was refused) or `cert_sign` (the request or
    /// its CSR is unusable), as Dapr's Sentry labels them.
    pub reason: &'static str,
}

impl CaMetrics {
    fn new() -> Self {
        Self {
            requests: Counter::default(),
            signed: Counter::default(),
            failures: Family::default(),
            issuer_changed: Counter::default(),
            issuer_expiry: Gauge::default(),
            server_cert_failed: Counter::default(),
            bundle_errors: Counter::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "cert_sign_request_received",
            "Certificate signing requests received",
            m.requests.clone(),
        );
        r.register("cert_sign_success", "Certificates signed", m.signed.clone());
        r.register(
            "cert_sign_failure",
            "Certificate signing requests refused, by reason",
            m.failures.clone(),
        );
        r.register(
            "issuercert_changed",
            "Times the issuer was replaced from the Secret",
            m.issuer_changed.clone(),
        );
        r.register(
            "issuercert_expiry_timestamp",
            "When the issuer certificate expires (Unix seconds)",
            m.issuer_expiry.clone(),
        );
        r.register(
            "servercert_issue_failed",
            "Failures to renew the CA's own serving certificate",
            m.server_cert_failed.clone(),
        );
    }

    fn register_own(&self, r: &mut Registry) {
        let m = self;
        r.register(
            "ca_trust_bundle_publish_errors",
            "Passes that could not publish the dapr-trust-bundle ConfigMaps",
            m.bundle_errors.clone(),
        );
    }

    pub fn outcome(&self, o: ferry_identity::sentry::Outcome) {
        use ferry_identity::sentry::Outcome;
        self.requests.inc();
        let reason = match o {
            Outcome::Signed => {
                self.signed.inc();
                return;
            }
            Outcome::Refused => "req_id_validation",
            Outcome::Invalid => "cert_sign",
        };
        self.failures.get_or_create(&FailureLabels { reason }).inc();
    }

    pub fn issuer_loaded(&self, a: &ferry_identity::ca::Authority) {
        if let Some(t) = a.issuer_not_after() {
            self.issuer_expiry.set(crate::ca::unix_seconds(t));
        }
    }
}

pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    /// Problems found in the cluster's objects (bad annotations, name clashes, invalid
    /// HTTPEndpoints), counted when they are first reported.
    pub reports: Family<ReportLabels, Counter>,
    pub leader: Gauge,
    pub ready: Gauge,
    pub ca: CaMetrics,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let ca = CaMetrics::new();
        // Dapr's names for the CA's metrics; the operator's own under ferry_operator_.
        ca.register(root.sub_registry_with_prefix("dapr_sentry"));
        let registry = root.sub_registry_with_prefix("ferry_operator");
        ca.register_own(registry);
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations =
            Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let reports = Family::<ReportLabels, Counter>::default();
        let leader = Gauge::default();
        let ready = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took, by controller",
            durations.clone(),
        );
        registry.register(
            "reports",
            "Problems in the cluster's objects reported as Events, by controller and reason",
            reports.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register("ready", "1 while /readyz answers 200", ready.clone());
        Self {
            reconciles,
            errors,
            durations,
            reports,
            leader,
            ready,
            ca,
            registry: root,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and measures it until the returned guard is dropped.
    pub fn reconcile(&self, controller: ControllerName) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    pub fn error(&self, controller: ControllerName, reason: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { controller, reason })
            .inc();
    }

    pub fn report(&self, controller: ControllerName, reason: &'static str) {
        self.reports
            .get_or_create(&ReportLabels { controller, reason })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: ControllerName,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let elapsed: Duration = self.start.elapsed();
        self.metrics
            .durations
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_reconciles_errors_and_durations() {
        let m = Metrics::default();
        drop(m.reconcile(ControllerName::AppService));
        m.error(ControllerName::RoutingTable, "apply");
        m.leader.set(1);
        let text = m.encode();
        assert!(
            text.contains("ferry_operator_reconciles_total{controller=\"app_service\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_operator_reconcile_errors_total{controller=\"routing_table\",reason=\"apply\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "ferry_operator_reconcile_duration_seconds_count{controller=\"app_service\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("ferry_operator_leader 1"), "{text}");
    }
}
