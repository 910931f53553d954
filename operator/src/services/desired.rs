//! The Service `<app-id>-dapr` an app should have: a pure function of the app ID and the
//! annotations of its newest pod, shaped as Dapr's operator shapes it
//! (`dapr/pkg/operator/handlers/dapr_handler.go`), so tooling written for Dapr finds what it
//! expects.

use std::{collections::BTreeMap, fmt};

use ferry_api::{AppId, ports};
use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};

use crate::{FIELD_MANAGER, apps::LABEL_APP_ID};

pub const LABEL_ENABLED: &str = "dapr.io/enabled";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

pub const ANNOTATION_APP_ID: &str = "dapr.io/app-id";
pub const ANNOTATION_SVC_ANNOTATIONS: &str = "dapr.io/sidecar-svc-annotations";
pub const ANNOTATION_ENABLE_METRICS: &str = "dapr.io/enable-metrics";
pub const ANNOTATION_METRICS_PORT: &str = "dapr.io/metrics-port";
pub const ANNOTATION_GRPC_PORT: &str = "dapr.io/grpc-port";
pub const ANNOTATION_INTERNAL_GRPC_PORT: &str = "dapr.io/internal-grpc-port";

pub const PROMETHEUS_PROBE: &str = "prometheus.io/probe";
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";

/// The Service port that reaches the sidecar's HTTP API (Dapr's `dapr-http`, 80 → 3500).
pub const HTTP_PORT: u16 = 80;

/// At most this many problems are kept per app (a 10,000-pair annotation yields 10 and a count).
pub const MAX_PROBLEMS: usize = 10;

/// The name of an app's Service.
pub fn service_name(app: &AppId) -> String {
    format!("{app}-dapr")
}

/// The app a Service of ours serves: its `dapr.io/app-id` annotation, else its name less `-dapr`.
pub fn app_of_service(svc: &Service) -> Option<String> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_APP_ID).cloned())
        .or_else(|| {
            svc.metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_suffix("-dapr"))
                .map(str::to_owned)
        })
}

/// Whether the operator owns `svc`: it carries `app.kubernetes.io/managed-by: ferry-operator`.
pub fn is_ours(svc: &Service) -> bool {
    svc.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == FIELD_MANAGER)
}

/// The four sidecar ports of an app's Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarPorts {
    pub grpc: u16,
    pub internal: u16,
    pub metrics: u16,
}

impl Default for SidecarPorts {
    fn default() -> Self {
        Self {
            grpc: ports::GRPC_API,
            internal: ports::INTERNAL,
            metrics: ports::METRICS,
        }
    }
}

/// Something wrong in a pod's annotations. The Service is still made, without the bad part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A `dapr.io/sidecar-svc-annotations` entry that is not `key=value` with a non-empty key.
    MalformedPair { pair: String },
    /// An entry that would override an annotation the operator sets.
    ReservedKey { key: String },
    /// An entry whose key Kubernetes would refuse.
    InvalidKey { key: String, why: &'static str },
    /// A port annotation that is not a port number; the default is used.
    InvalidPort {
        annotation: &'static str,
        value: String,
    },
    /// Two ports of the Service would have the same number; the defaults are used.
    PortClash { port: u16 },
}

impl Problem {
    /// The Event reason for this kind of problem.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidPort { .. } | Self::PortClash { .. } => "InvalidPortAnnotation",
            _ => "InvalidServiceAnnotations",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MalformedPair { pair } => write!(
                f,
                "{ANNOTATION_SVC_ANNOTATIONS}: {:?} is not key=value; ignored",
                clip(pair)
            ),
            Self::ReservedKey { key } => write!(
                f,
                "{ANNOTATION_SVC_ANNOTATIONS}: {:?} is set by the operator and cannot be overridden; ignored",
                clip(key)
            ),
            Self::InvalidKey { key, why } => write!(
                f,
                "{ANNOTATION_SVC_ANNOTATIONS}: {:?} is not a valid annotation key ({why}); ignored",
                clip(key)
            ),
            Self::InvalidPort { annotation, value } => write!(
                f,
                "annotation {annotation}: {:?} is not a port (1-65535); using the default",
                clip(value)
            ),
            Self::PortClash { port } => write!(
                f,
                "the port annotations make two Service ports {port}; using the default ports"
            ),
        }
    }
}

/// Shortens user text quoted in messages (Event notes are limited to 1 kB).
pub fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The desired Service and what was wrong on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct AppService {
    pub service: Service,
    pub ports: SidecarPorts,
    /// The first [`MAX_PROBLEMS`] problems.
    pub problems: Vec<Problem>,
    /// How many more there were.
    pub more_problems: usize,
}

#[derive(Default)]
struct Problems {
    list: Vec<Problem>,
    more: usize,
}

impl Problems {
    fn push(&mut self, p: Problem) {
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(p);
        } else {
            self.more += 1;
        }
    }
}

/// The Service for `app` in `namespace`, from the annotations of the app's newest pod.
pub fn app_service(
    namespace: &str,
    app: &AppId,
    pod_annotations: &BTreeMap<String, String>,
    owner: Option<OwnerReference>,
) -> AppService {
    let mut problems = Problems::default();
    let metrics_enabled = pod_annotations
        .get(ANNOTATION_ENABLE_METRICS)
        .filter(|v| !v.trim().is_empty())
        .is_none_or(|v| is_truthy(v));
    let ports = sidecar_ports(pod_annotations, &mut problems);

    let mut annotations = BTreeMap::from([(ANNOTATION_APP_ID.to_owned(), app.to_string())]);
    if metrics_enabled {
        annotations.insert(PROMETHEUS_PROBE.into(), "true".into());
        annotations.insert(PROMETHEUS_SCRAPE.into(), "true".into());
        annotations.insert(PROMETHEUS_PORT.into(), ports.metrics.to_string());
        annotations.insert(PROMETHEUS_PATH.into(), "/".into());
    }
    if let Some(extra) = pod_annotations.get(ANNOTATION_SVC_ANNOTATIONS) {
        let reserved: Vec<String> = annotations.keys().cloned().collect();
        for (key, value) in parse_svc_annotations(extra, &mut problems) {
            if reserved.contains(&key) {
                problems.push(Problem::ReservedKey { key });
            } else {
                annotations.insert(key, value);
            }
        }
    }

    let labels = BTreeMap::from([
        (LABEL_ENABLED.to_owned(), "true".to_owned()),
        (LABEL_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
    ]);
    let port = |name: &str, port: u16, target: u16, app_protocol: &str| ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(target))),
        protocol: Some("TCP".to_owned()),
        app_protocol: Some(app_protocol.to_owned()),
        ..ServicePort::default()
    };
    let service = Service {
        metadata: ObjectMeta {
            name: Some(service_name(app)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(BTreeMap::from([(LABEL_APP_ID.to_owned(), app.to_string())])),
            ports: Some(vec![
                port("dapr-http", HTTP_PORT, ports::HTTP_API, "http"),
                port("dapr-grpc", ports.grpc, ports.grpc, "grpc"),
                port("dapr-internal", ports.internal, ports.internal, "grpc"),
                port("dapr-metrics", ports.metrics, ports.metrics, "http"),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    AppService {
        service,
        ports,
        problems: problems.list,
        more_problems: problems.more,
    }
}

fn sidecar_ports(annotations: &BTreeMap<String, String>, problems: &mut Problems) -> SidecarPorts {
    let defaults = SidecarPorts::default();
    let mut port = |annotation: &'static str, default: u16| match annotations
        .get(annotation)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        None => default,
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                problems.push(Problem::InvalidPort {
                    annotation,
                    value: v.to_owned(),
                });
                default
            }
        },
    };
    let chosen = SidecarPorts {
        grpc: port(ANNOTATION_GRPC_PORT, defaults.grpc),
        internal: port(ANNOTATION_INTERNAL_GRPC_PORT, defaults.internal),
        metrics: port(ANNOTATION_METRICS_PORT, defaults.metrics),
    };
    let all = [HTTP_PORT, chosen.grpc, chosen.internal, chosen.metrics];
    let clash = all
        .iter()
        .enumerate()
        .find(|(i, p)| all[i + 1..].contains(p))
        .map(|(_, p)| *p);
    match clash {
        Some(port) => {
            problems.push(Problem::PortClash { port });
            defaults
        }
        None => chosen,
    }
}

/// Parses `k1=v1,k2=v2` as Dapr does (each key and value trimmed), keeping only keys Kubernetes
/// accepts. Later duplicates win, as in Dapr.
fn parse_svc_annotations(text: &str, problems: &mut Problems) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in text.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            problems.push(Problem::MalformedPair {
                pair: pair.to_owned(),
            });
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            problems.push(Problem::MalformedPair {
                pair: pair.to_owned(),
            });
            continue;
        }
        if let Err(why) = check_annotation_key(key) {
            problems.push(Problem::InvalidKey {
                key: key.to_owned(),
                why,
            });
            continue;
        }
        out.retain(|(k, _)| k != key);
        out.push((key.to_owned(), value.trim().to_owned()));
    }
    out
}

/// Dapr's truthy values (`IsTruthy`, `dapr/utils/utils.go`).
fn is_truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "y" | "yes" | "true" | "t" | "on" | "1"
    )
}

/// A Kubernetes qualified name: `[prefix/]name`, the prefix a DNS-1123 subdomain of at most 253
/// characters, the name 1-63 characters of `[A-Za-z0-9_.-]` starting and ending alphanumeric.
pub fn check_annotation_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.first()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.last()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Err("the prefix must be a lowercase DNS subdomain");
        }
    }
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Err("the name must be 1-63 characters");
    }
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    if !b.first().is_some_and(alnum)
        || !b.last().is_some_and(alnum)
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(
            "the name must be alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        );
    }
    Ok(())
}

/// Whether `existing` already has everything `desired` sets (labels and annotations exactly,
/// the selector, clusterIP and ports, and the owner reference), so no write is needed. Anything
/// else (extra annotations someone added, defaulted fields) is left alone.
pub fn up_to_date(existing: &Service, desired: &Service) -> bool {
    let (e, d) = (&existing.metadata, &desired.metadata);
    let owners_ok = d.owner_references.iter().flatten().all(|want| {
        e.owner_references
            .iter()
            .flatten()
            .any(|have| have.uid == want.uid && have.controller == want.controller)
    });
    let (Some(es), Some(ds)) = (&existing.spec, &desired.spec) else {
        return false;
    };
    let ports_ok = {
        let norm = |ports: &Option<Vec<ServicePort>>| {
            ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.port,
                        p.target_port.clone(),
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.app_protocol.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        norm(&es.ports) == norm(&ds.ports)
    };
    e.labels == d.labels
        && e.annotations == d.annotations
        && owners_ok
        && es.cluster_ip == ds.cluster_ip
        && es.selector == ds.selector
        && ports_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> AppId {
        AppId::new(s).unwrap()
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_service_is_daprs() {
        let owner = OwnerReference {
            api_version: "ferry.dev/v1alpha1".into(),
            kind: "RoutingTable".into(),
            name: "ferry".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let d = app_service("shop", &id("cart"), &BTreeMap::new(), Some(owner));
        assert!(d.problems.is_empty());
        assert_eq!(
            serde_json::to_value(&d.service).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "cart-dapr",
                    "namespace": "shop",
                    "labels": {
                        "dapr.io/enabled": "true",
                        "app.kubernetes.io/managed-by": "ferry-operator"
                    },
                    "annotations": {
                        "dapr.io/app-id": "cart",
                        "prometheus.io/probe": "true",
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "9090",
                        "prometheus.io/path": "/"
                    },
                    "ownerReferences": [{
                        "apiVersion": "ferry.dev/v1alpha1",
                        "kind": "RoutingTable",
                        "name": "ferry",
                        "uid": "u-1",
                        "controller": true
                    }]
                },
                "spec": {
                    "clusterIP": "None",
                    "selector": {"dapr.io/app-id": "cart"},
                    "ports": [
                        {"name": "dapr-http", "port": 80, "targetPort": 3500, "protocol": "TCP", "appProtocol": "http"},
                        {"name": "dapr-grpc", "port": 50001, "targetPort": 50001, "protocol": "TCP", "appProtocol": "grpc"},
                        {"name": "dapr-internal", "port": 50002, "targetPort": 50002, "protocol": "TCP", "appProtocol": "grpc"},
                        {"name": "dapr-metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP", "appProtocol": "http"}
                    ]
                }
            })
        );
    }

    #[test]
    fn sidecar_svc_annotations_are_added_but_cannot_override() {
        let d = app_service(
            "shop",
            &id("cart"),
            &ann(&[(
                ANNOTATION_SVC_ANNOTATIONS,
                " team = payments ,broken, =x, prometheus.io/port=1, dapr.io/app-id=evil,\
                 Bad Key=1, example.com/owner=a=b,,",
            )]),
            None,
        );
        let a = d.service.metadata.annotations.unwrap();
        assert_eq!(a["team"], "payments");
        assert_eq!(a["example.com/owner"], "a=b");
        assert_eq!(a["prometheus.io/port"], "9090");
        assert_eq!(a["dapr.io/app-id"], "cart");
        assert!(!a.contains_key("Bad Key"));
        assert_eq!(
            d.problems,
            vec![
                Problem::MalformedPair {
                    pair: "broken".into()
                },
                Problem::MalformedPair { pair: "=x".into() },
                Problem::InvalidKey {
                    key: "Bad Key".into(),
                    why: "the name must be alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
                },
                Problem::ReservedKey {
                    key: "prometheus.io/port".into()
                },
                Problem::ReservedKey {
                    key: "dapr.io/app-id".into()
                },
            ]
        );
    }

    #[test]
    fn metrics_off_frees_the_prometheus_keys_and_ports_follow_annotations() {
        let d = app_service(
            "shop",
            &id("cart"),
            &ann(&[
                (ANNOTATION_ENABLE_METRICS, "false"),
                (ANNOTATION_METRICS_PORT, "9999"),
                (ANNOTATION_GRPC_PORT, "6001"),
                (ANNOTATION_SVC_ANNOTATIONS, "prometheus.io/scrape=false"),
            ]),
            None,
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let a = d.service.metadata.annotations.as_ref().unwrap();
        assert_eq!(a["prometheus.io/scrape"], "false");
        assert!(!a.contains_key(PROMETHEUS_PORT));
        assert_eq!(
            d.ports,
            SidecarPorts {
                grpc: 6001,
                internal: 50002,
                metrics: 9999
            }
        );
        let ports = d.service.spec.unwrap().ports.unwrap();
        assert_eq!(ports[1].port, 6001);
        assert_eq!(ports[3].target_port, Some(IntOrString::Int(9999)));
    }

    #[test]
    fn bad_ports_fall_back_to_the_defaults() {
        let d = app_service(
            "shop",
            &id("cart"),
            &ann(&[
                (ANNOTATION_METRICS_PORT, "70000"),
                (ANNOTATION_GRPC_PORT, "abc"),
            ]),
            None,
        );
        assert_eq!(d.ports, SidecarPorts::default());
        assert_eq!(d.problems.len(), 2);
        assert!(d.problems[0].to_string().contains("\"abc\" is not a port"));

        let clash = app_service(
            "shop",
            &id("cart"),
            &ann(&[(ANNOTATION_METRICS_PORT, "80")]),
            None,
        );
        assert_eq!(clash.ports, SidecarPorts::default());
        assert_eq!(clash.problems, vec![Problem::PortClash { port: 80 }]);
    }

    #[test]
    fn a_huge_annotation_gives_a_bounded_report() {
        let text = "nonsense,".repeat(10_000) + &"k".repeat(100_000);
        let d = app_service(
            "shop",
            &id("cart"),
            &ann(&[(ANNOTATION_SVC_ANNOTATIONS, &text)]),
            None,
        );
        assert_eq!(d.problems.len(), MAX_PROBLEMS);
        assert_eq!(d.more_problems, 10_001 - MAX_PROBLEMS);
        assert!(d.problems.iter().all(|p| p.to_string().len() < 200));
    }

    #[test]
    fn annotation_keys() {
        for ok in ["a", "team", "example.com/x", "a.b-c_d", "A9"] {
            assert!(check_annotation_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a b",
            "Example.com/x",
            "/x",
            "a/",
            &"k".repeat(64),
        ] {
            assert!(check_annotation_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn up_to_date_ignores_what_others_add() {
        let d = app_service("shop", &id("cart"), &BTreeMap::new(), None).service;
        let mut live = d.clone();
        live.metadata.resource_version = Some("5".into());
        let spec = live.spec.as_mut().unwrap();
        spec.cluster_ips = Some(vec!["None".into()]);
        spec.type_ = Some("ClusterIP".into());
        assert!(up_to_date(&live, &d));
        live.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("stale".into(), "x".into());
        assert!(!up_to_date(&live, &d), "an annotation we no longer set");
    }

    #[test]
    fn ownership_is_the_label() {
        let d = app_service("shop", &id("cart"), &BTreeMap::new(), None).service;
        assert!(is_ours(&d));
        assert_eq!(app_of_service(&d).as_deref(), Some("cart"));
        let mut theirs = d;
        theirs.metadata.labels = None;
        assert!(!is_ours(&theirs));
    }
}
