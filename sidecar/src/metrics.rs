//! Prometheus metrics under Dapr's names (`dapr/pkg/diagnostics/service_monitoring.go`), served at `GET /metrics` when
//! `--enable-metrics` is given.
//!
//! Service invocation, as Dapr records it:
//!
//! | metric | labels | recorded by |
//! |---|---|---|
//! | `dapr_runtime_service_invocation_req_sent_total` | `app_id`, `dst_app_id`, `type` | caller, before a call to a peer sidecar or an HTTPEndpoint |
//! | `dapr_runtime_service_invocation_res_recv_total` | `app_id`, `src_app_id` (the app that answered), `status`, `type` | caller, when that call returns a response |
//! | `dapr_runtime_service_invocation_req_recv_total` | `app_id`, `src_app_id` (`dapr-caller-app-id`, else `unknown`) | callee |
//! | `dapr_runtime_service_invocation_res_sent_total` | `app_id`, `dst_app_id` (the caller), `status` | callee |
//!
//! Access control, as Dapr records it (callee; only when a policy is in force):
//!
//! | metric | labels |
//! |---|---|
//! | `dapr_runtime_acl_app_policy_action_allowed_total` | `app_id`, `trust_domain`, `namespace` of the caller (empty without a verified identity) |
//! | `dapr_runtime_acl_global_policy_action_allowed_total` | the same |
//! | `dapr_runtime_acl_app_policy_action_blocked_total` | the same |
//! | `dapr_runtime_acl_global_policy_action_blocked_total` | the same |
//!
//! Callers are verified identities (bounded by the mesh's apps); past [`MAX_PEERS`] distinct
//! ones the rest count under `_other`.
//!
//! Self-invocation records none of them (Dapr's `invokeLocal` does not either), and URL calls
//! are not recorded (Dapr would label them with the URL, which is unbounded). `status` is the
//! HTTP status, also for errors the callee sidecar makes (Dapr records gRPC code 13 there).
//! `type` is `unary` for every HTTP invocation, as in Dapr (`streaming` is its gRPC proxying).
//!
//! Hot path: a lookup of the peer in a snapshot map (no lock), then an atomic add; label sets
//! are built only the first time a peer, status or type is seen. Label values are app IDs,
//! HTTPEndpoint names, status codes and fixed words; any other peer name counts as `unknown`,
//! and past [`MAX_PEERS`] distinct peers the rest count as `_other`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use crate::acl::Scope;
use arc_swap::ArcSwap;
use ferry_api::{AppId, SpiffeId};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// At most this many distinct peer app IDs get series of their own.
pub const MAX_PEERS: usize = 512;
/// The label value for a caller without a (valid) `dapr-caller-app-id`.
pub const UNKNOWN_PEER: &str = "unknown";
/// The label value for peers past [`MAX_PEERS`].
pub const OTHER_PEERS: &str = "_other";

/// The Content-Type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SentLabels {
    app_id: String,
    dst_app_id: String,
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecvLabels {
    app_id: String,
    src_app_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResSentLabels {
    app_id: String,
    dst_app_id: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResRecvLabels {
    app_id: String,
    src_app_id: String,
    status: u16,
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AclLabels {
    app_id: String,
    trust_domain: String,
    namespace: String,
}

/// The four access-control counters of one caller: allowed by app, allowed by global, blocked
/// by app, blocked by global.
type AclCounters = [Counter; 4];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    app_id: String,
    status: u16,
}

/// A counter exposed without the `_total` suffix OpenMetrics gives counters, so that
/// `dapr_http_healthprobes_completed_count` keeps Dapr's exact name (typed `unknown`).
#[derive(Debug, Clone, Default)]
struct PlainCounter(Counter);

impl TypedMetric for PlainCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for PlainCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// How a request body travels: Dapr's `type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    /// A known length.
    Unary,
    /// Chunked or of unknown length.
    Streaming,
}

impl CallType {
    fn label(self) -> &'static str {
        match self {
            CallType::Unary => "unary",
            CallType::Streaming => "streaming",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Every metric the sidecar serves, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    app_id: String,
    registry: Registry,
    req_sent: Family<SentLabels, Counter>,
    req_recv: Family<RecvLabels, Counter>,
    res_sent: Family<ResSentLabels, Counter>,
    res_recv: Family<ResRecvLabels, Counter>,
    probes: Family<ProbeLabels, PlainCounter>,
    probe_statuses: StatusCounters<PlainCounter>,
    peers: ArcSwap<HashMap<Box<str>, Arc<Peer>>>,
    insert: Mutex<()>,
    acl: [Family<AclLabels, Counter>; 4],
    /// By the caller's SPIFFE ID (`""`: none).
    acl_callers: ArcSwap<HashMap<Box<str>, Arc<AclCounters>>>,
    acl_insert: Mutex<()>,
    cert_rotated: Counter,
    cert_rotation_failed: Family<FailLabels, Counter>,
    cert_expiry: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailLabels {
    app_id: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app_id: String,
}

/// The counters of one peer app ID, each made on first use.
#[derive(Debug)]
pub struct Peer {
    name: String,
    req_sent: [OnceLock<Counter>; 2],
    req_recv: OnceLock<Counter>,
    res_sent: StatusCounters<Counter>,
    res_recv: [StatusCounters<Counter>; 2],
}

/// Counters by status code: a snapshot map read without a lock, extended under one.
#[derive(Debug)]
struct StatusCounters<C> {
    map: ArcSwap<HashMap<u16, C>>,
    insert: Mutex<()>,
}

impl<C: Clone> StatusCounters<C> {
    fn new() -> Self {
        Self {
            map: ArcSwap::from_pointee(HashMap::new()),
            insert: Mutex::new(()),
        }
    }

    fn get(&self, status: u16, make: impl FnOnce() -> C) -> C {
        if let Some(c) = self.map.load().get(&status) {
            return c.clone();
        }
        let _g = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.map.load_full();
        if let Some(c) = current.get(&status) {
            return c.clone();
        }
        let c = make();
        let mut next = (*current).clone();
        next.insert(status, c.clone());
        self.map.store(Arc::new(next));
        c
    }
}

impl Metrics {
    pub fn new(app_id: &AppId) -> Self {
        let mut registry = Registry::default();
        let req_sent = Family::<SentLabels, Counter>::default();
        let req_recv = Family::<RecvLabels, Counter>::default();
        let res_sent = Family::<ResSentLabels, Counter>::default();
        let res_recv = Family::<ResRecvLabels, Counter>::default();
        let probes = Family::<ProbeLabels, PlainCounter>::default();
        // OpenMetrics adds `_total` to counter names.
        registry.register(
            "dapr_runtime_service_invocation_req_sent",
            "Number of requests sent to another app (peer sidecar or HTTPEndpoint)",
            req_sent.clone(),
        );
        registry.register(
            "dapr_runtime_service_invocation_req_recv",
            "Number of requests received from other apps' sidecars",
            req_recv.clone(),
        );
        registry.register(
            "dapr_runtime_service_invocation_res_sent",
            "Number of responses sent to other apps' sidecars",
            res_sent.clone(),
        );
        registry.register(
            "dapr_runtime_service_invocation_res_recv",
            "Number of responses received from other apps",
            res_recv.clone(),
        );
        registry.register(
            "dapr_http_healthprobes_completed_count",
            "Count of completed app health probes",
            probes.clone(),
        );
        // mTLS, under Dapr's names (`runtime/mtls/workload_cert_rotated_total`, `..._fail_total`)
        // and one of ours for the expiry.
        let app = AppLabels {
            app_id: app_id.to_string(),
        };
        let cert_rotated = Family::<AppLabels, Counter>::default();
        registry.register(
            "dapr_runtime_mtls_workload_cert_rotated",
            "The number of the successful workload certificate rotations",
            cert_rotated.clone(),
        );
        let cert_rotation_failed = Family::<FailLabels, Counter>::default();
        registry.register(
            "dapr_runtime_mtls_workload_cert_rotated_fail",
            "The number of the failed workload certificate rotations, by reason",
            cert_rotation_failed.clone(),
        );
        let cert_expiry = Family::<AppLabels, Gauge>::default();
        registry.register(
            "ferry_mtls_workload_cert_expiry_timestamp_seconds",
            "When the workload certificate expires (Unix time)",
            cert_expiry.clone(),
        );
        let (cert_rotated, cert_expiry) = (
            cert_rotated.get_or_create(&app).clone(),
            cert_expiry.get_or_create(&app).clone(),
        );
        let acl: [Family<AclLabels, Counter>; 4] = Default::default();
        for (family, (name, help)) in acl.iter().zip([
            (
                "dapr_runtime_acl_app_policy_action_allowed",
                "The number of requests allowed by the app specific action specified in the access control policy",
            ),
            (
                "dapr_runtime_acl_global_policy_action_allowed",
                "The number of requests allowed by the global action specified in the access control policy",
            ),
            (
                "dapr_runtime_acl_app_policy_action_blocked",
                "The number of requests blocked by the app specific action specified in the access control policy",
            ),
            (
                "dapr_runtime_acl_global_policy_action_blocked",
                "The number of requests blocked by the global action specified in the access control policy",
            ),
        ]) {
            registry.register(name, help, family.clone());
        }
        Self {
            app_id: app_id.to_string(),
            acl,
            acl_callers: ArcSwap::from_pointee(HashMap::new()),
            acl_insert: Mutex::new(()),
            registry,
            req_sent,
            req_recv,
            res_sent,
            res_recv,
            probes,
            probe_statuses: StatusCounters::new(),
            peers: ArcSwap::from_pointee(HashMap::new()),
            insert: Mutex::new(()),
            cert_rotated,
            cert_rotation_failed,
            cert_expiry,
        }
    }

    /// A workload certificate was obtained (the first, or a renewal), valid until `expiry`.
    pub fn cert_rotated(&self, expiry: std::time::SystemTime) {
        self.cert_rotated.inc();
        let secs = expiry
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.cert_expiry
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    /// Getting a certificate failed; `reason` is one of a few fixed words (Dapr's:
    /// `sentry_conn`, `sentry_token`, `sign`; ours: `invalid_cert`).
    pub fn cert_rotation_failed(&self, reason: &'static str) {
        self.cert_rotation_failed
            .get_or_create(&FailLabels {
                app_id: self.app_id.clone(),
                reason,
            })
            .inc();
    }

    /// The counters for a peer app ID (a target, or a caller named by `dapr-caller-app-id`).
    pub fn peer(&self, app_id: &str) -> Arc<Peer> {
        let snapshot = self.peers.load();
        if let Some(p) = snapshot.get(app_id) {
            return p.clone();
        }
        let name = if is_label_safe(app_id) {
            app_id
        } else {
            UNKNOWN_PEER
        };
        // Overflowing and invalid names find their shared series without the lock, too.
        let shared = snapshot.get(name).or_else(|| {
            (snapshot.len() >= MAX_PEERS)
                .then(|| snapshot.get(OTHER_PEERS))
                .flatten()
        });
        if let Some(p) = shared {
            return p.clone();
        }
        drop(snapshot);
        let _g = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.peers.load_full();
        if let Some(p) = current.get(name) {
            return p.clone();
        }
        let name = if current.len() >= MAX_PEERS {
            if let Some(p) = current.get(OTHER_PEERS) {
                return p.clone();
            }
            OTHER_PEERS
        } else {
            name
        };
        let peer = Arc::new(Peer {
            name: name.to_owned(),
            req_sent: Default::default(),
            req_recv: OnceLock::new(),
            res_sent: StatusCounters::new(),
            res_recv: [StatusCounters::new(), StatusCounters::new()],
        });
        let mut next = (*current).clone();
        next.insert(name.into(), peer.clone());
        self.peers.store(Arc::new(next));
        peer
    }

    /// Caller: a request is about to go to `peer`.
    pub fn req_sent(&self, peer: &Peer, kind: CallType) {
        peer.req_sent[kind.index()]
            .get_or_init(|| {
                self.req_sent.get_or_create_owned(&SentLabels {
                    app_id: self.app_id.clone(),
                    dst_app_id: peer.name.clone(),
                    r#type: kind.label(),
                })
            })
            .inc();
    }

    /// Caller: `peer` answered with `status`.
    pub fn res_recv(&self, peer: &Peer, status: u16, kind: CallType) {
        peer.res_recv[kind.index()]
            .get(status, || {
                self.res_recv.get_or_create_owned(&ResRecvLabels {
                    app_id: self.app_id.clone(),
                    src_app_id: peer.name.clone(),
                    status,
                    r#type: kind.label(),
                })
            })
            .inc();
    }

    /// Callee: a request from `peer` arrived.
    pub fn req_recv(&self, peer: &Peer) {
        peer.req_recv
            .get_or_init(|| {
                self.req_recv.get_or_create_owned(&RecvLabels {
                    app_id: self.app_id.clone(),
                    src_app_id: peer.name.clone(),
                })
            })
            .inc();
    }

    /// Callee: the answer to `peer` has `status`.
    pub fn res_sent(&self, peer: &Peer, status: u16) {
        peer.res_sent
            .get(status, || {
                self.res_sent.get_or_create_owned(&ResSentLabels {
                    app_id: self.app_id.clone(),
                    dst_app_id: peer.name.clone(),
                    status,
                })
            })
            .inc();
    }

    /// An app health probe completed with `status` (500 for a network error or timeout).
    pub fn health_probe(&self, status: u16) {
        self.probe_statuses
            .get(status, || {
                self.probes.get_or_create_owned(&ProbeLabels {
                    app_id: self.app_id.clone(),
                    status,
                })
            })
            .0
            .inc();
    }

    /// Callee: access control decided on a request of `caller` (`None`: no verified identity).
    pub fn acl(&self, caller: Option<&SpiffeId>, scope: Scope, allowed: bool) {
        let index = match (allowed, scope) {
            (true, Scope::App) => 0,
            (true, Scope::Global) => 1,
            (false, Scope::App) => 2,
            (false, Scope::Global) => 3,
        };
        self.acl_counters(caller)[index].inc();
    }

    fn acl_counters(&self, caller: Option<&SpiffeId>) -> Arc<AclCounters> {
        let key = caller.map(SpiffeId::uri).unwrap_or_default();
        let snapshot = self.acl_callers.load();
        if let Some(c) = snapshot.get(key.as_str()).or_else(|| {
            (snapshot.len() >= MAX_PEERS)
                .then(|| snapshot.get(OTHER_PEERS))
                .flatten()
        }) {
            return c.clone();
        }
        drop(snapshot);
        let _g = self.acl_insert.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.acl_callers.load_full();
        if let Some(c) = current.get(key.as_str()) {
            return c.clone();
        }
        let (key, labels) = if current.len() >= MAX_PEERS {
            if let Some(c) = current.get(OTHER_PEERS) {
                return c.clone();
            }
            let other = OTHER_PEERS.to_owned();
            (
                other.clone(),
                AclLabels {
                    app_id: other.clone(),
                    trust_domain: other.clone(),
                    namespace: other,
                },
            )
        } else {
            let labels = match caller {
                Some(id) => AclLabels {
                    app_id: id.app_id.to_string(),
                    trust_domain: id.trust_domain.to_string(),
                    namespace: id.namespace.to_string(),
                },
                None => AclLabels {
                    app_id: String::new(),
                    trust_domain: String::new(),
                    namespace: String::new(),
                },
            };
            (key, labels)
        };
        let counters: Arc<AclCounters> = Arc::new(std::array::from_fn(|i| {
            self.acl[i].get_or_create_owned(&labels)
        }));
        let mut next = (*current).clone();
        next.insert(key.into(), counters.clone());
        self.acl_callers.store(Arc::new(next));
        counters
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// An app ID or an HTTPEndpoint name (a DNS subdomain): at most 253 of `[A-Za-z0-9._-]`.
fn is_label_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&AppId::new("cart").unwrap())
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn names_and_labels_are_daprs() {
        let m = metrics();
        let orders = m.peer("orders");
        m.req_sent(&orders, CallType::Unary);
        m.req_sent(&orders, CallType::Unary);
        m.res_recv(&orders, 200, CallType::Unary);
        m.req_sent(&orders, CallType::Streaming);
        m.res_recv(&orders, 503, CallType::Streaming);
        let caller = m.peer("checkout");
        m.req_recv(&caller);
        m.res_sent(&caller, 404);
        m.health_probe(200);
        m.health_probe(200);
        m.health_probe(500);
        let text = m.encode();
        for want in [
            r#"dapr_runtime_service_invocation_req_sent_total{app_id="cart",dst_app_id="orders",type="unary"} 2"#,
            r#"dapr_runtime_service_invocation_req_sent_total{app_id="cart",dst_app_id="orders",type="streaming"} 1"#,
            r#"dapr_runtime_service_invocation_res_recv_total{app_id="cart",src_app_id="orders",status="200",type="unary"} 1"#,
            r#"dapr_runtime_service_invocation_res_recv_total{app_id="cart",src_app_id="orders",status="503",type="streaming"} 1"#,
            r#"dapr_runtime_service_invocation_req_recv_total{app_id="cart",src_app_id="checkout"} 1"#,
            r#"dapr_runtime_service_invocation_res_sent_total{app_id="cart",dst_app_id="checkout",status="404"} 1"#,
            r#"dapr_http_healthprobes_completed_count{app_id="cart",status="200"} 2"#,
            r#"dapr_http_healthprobes_completed_count{app_id="cart",status="500"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == want), "missing {want}:\n{text}");
        }
        assert!(
            line(&text, "dapr_runtime_service_invocation_req_recv_total{app_id=\"cart\",src_app_id=\"orders\"").is_none(),
            "series appear only once used:\n{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn acl_counters_are_daprs() {
        use ferry_api::{Namespace, TrustDomain};
        let m = metrics();
        let id = SpiffeId::new(
            TrustDomain::new("public").unwrap(),
            Namespace::new("shop").unwrap(),
            AppId::new("checkout").unwrap(),
        );
        m.acl(Some(&id), Scope::App, true);
        m.acl(Some(&id), Scope::App, true);
        m.acl(Some(&id), Scope::Global, false);
        m.acl(None, Scope::Global, false);
        let text = m.encode();
        for want in [
            r#"dapr_runtime_acl_app_policy_action_allowed_total{app_id="checkout",trust_domain="public",namespace="shop"} 2"#,
            r#"dapr_runtime_acl_global_policy_action_blocked_total{app_id="checkout",trust_domain="public",namespace="shop"} 1"#,
            r#"dapr_runtime_acl_global_policy_action_blocked_total{app_id="",trust_domain="",namespace=""} 1"#,
            r#"dapr_runtime_acl_global_policy_action_allowed_total{app_id="",trust_domain="",namespace=""} 0"#,
        ] {
            assert!(text.lines().any(|l| l == want), "missing {want}:\n{text}");
        }
    }

    #[test]
    fn the_same_peer_shares_counters() {
        let m = metrics();
        let a = m.peer("orders");
        let b = m.peer("orders");
        assert!(Arc::ptr_eq(&a, &b));
        m.req_recv(&a);
        m.req_recv(&b);
        assert!(m.encode().contains(
            r#"dapr_runtime_service_invocation_req_recv_total{app_id="cart",src_app_id="orders"} 2"#
        ));
    }

    #[test]
    fn labels_stay_bounded() {
        let m = metrics();
        m.req_recv(&m.peer("not a valid id\n\"quoted\""));
        m.req_recv(&m.peer(""));
        let text = m.encode();
        assert!(
            text.contains(
                r#"dapr_runtime_service_invocation_req_recv_total{app_id="cart",src_app_id="unknown"} 2"#
            ),
            "{text}"
        );
        for i in 0..MAX_PEERS + 50 {
            m.req_recv(&m.peer(&format!("app-{i}")));
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("dapr_runtime_service_invocation_req_recv_total{"))
            .count();
        assert_eq!(series, MAX_PEERS + 1, "the cap plus the overflow series");
        let overflow = line(
            &text,
            r#"dapr_runtime_service_invocation_req_recv_total{app_id="cart",src_app_id="_other"}"#,
        )
        .unwrap();
        // "unknown" took one of the slots: 511 named apps fit, 51 overflow.
        assert!(overflow.ends_with(" 51"), "{overflow}");
    }
}
