//! The downward API: pod fields and container resources as strings, for env vars and files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownwardError {
    #[error("fieldRef {0:?} is not supported (see the downward API's list of fields)")]
    UnsupportedField(String),
    #[error("resourceFieldRef {0:?} is not supported")]
    UnsupportedResource(String),
    #[error("quantity {0:?} is not a Kubernetes quantity such as 500m, 2 or 128Mi")]
    BadQuantity(String),
    #[error("resourceFieldRef names container {0:?}, which the pod does not have")]
    NoSuchContainer(String),
}

/// What the API object does not say yet but the node knows.
#[derive(Debug, Clone)]
pub struct NodeFacts<'a> {
    pub pod_ip: Option<&'a str>,
    pub host_ip: &'a str,
    /// Used for `limits.*` when a container sets no limit, as the kubelet does.
    pub allocatable: &'a BTreeMap<String, Quantity>,
}

/// The value of a `fieldRef.fieldPath`.
pub fn field(pod: &Pod, path: &str, node: &NodeFacts<'_>) -> Result<String, DownwardError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(lookup(&meta.labels, key));
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(lookup(&meta.annotations, key));
    }
    Ok(match path {
        "metadata.name" => text(&meta.name),
        "metadata.namespace" => text(&meta.namespace),
        "metadata.uid" => text(&meta.uid),
        "metadata.labels" => key_values(&meta.labels),
        "metadata.annotations" => key_values(&meta.annotations),
        "spec.nodeName" => text(&spec.and_then(|s| s.node_name.clone())),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        "status.podIP" | "status.podIPs" => node.pod_ip.unwrap_or_default().to_owned(),
        "status.hostIP" | "status.hostIPs" => node.host_ip.to_owned(),
        other => return Err(DownwardError::UnsupportedField(other.to_owned())),
    })
}

/// `metadata.labels['app']` → `app`.
fn subscript<'p>(path: &'p str, field: &str) -> Option<&'p str> {
    let rest = path
        .strip_prefix(field)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    rest.strip_prefix('\'')?.strip_suffix('\'')
}

fn lookup(map: &Option<BTreeMap<String, String>>, key: &str) -> String {
    map.as_ref()
        .and_then(|m| m.get(key))
        .cloned()
        .unwrap_or_default()
}

/// `key="value"` lines, sorted, as the kubelet writes them into downward API files.
fn key_values(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}\n", serde_json::Value::from(v.as_str())))
        .collect()
}

/// The value of a `resourceFieldRef` (`limits.cpu`, `requests.memory`, …), divided by
/// `divisor` and rounded up, as the kubelet computes it.
pub fn resource(
    container: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
    node: &NodeFacts<'_>,
) -> Result<String, DownwardError> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| DownwardError::UnsupportedResource(resource.to_owned()))?;
    let resources = container.resources.as_ref();
    let value = match kind {
        "limits" => resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name))
            .or_else(|| node.allocatable.get(name)),
        "requests" => resources
            .and_then(|r| r.requests.as_ref())
            .and_then(|l| l.get(name)),
        _ => return Err(DownwardError::UnsupportedResource(resource.to_owned())),
    };
    let value = match value {
        Some(q) => parse_quantity(&q.0)?,
        None if kind == "limits" => {
            return Err(DownwardError::UnsupportedResource(resource.to_owned()));
        }
        None => 0.0,
    };
    let divisor = match divisor {
        Some(q) => parse_quantity(&q.0)?,
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err(DownwardError::BadQuantity(divisor.to_string()));
    }
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

/// A Kubernetes quantity in base units: `500m` → 0.5, `2Gi` → 2147483648, `1e3` → 1000.
pub fn parse_quantity(s: &str) -> Result<f64, DownwardError> {
    let bad = || DownwardError::BadQuantity(s.to_owned());
    let s = s.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return Err(bad()),
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    Ok(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                annotations: Some([("a/b".to_owned(), "x\"y".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("ferry-node".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn facts(alloc: &BTreeMap<String, Quantity>) -> NodeFacts<'_> {
        NodeFacts {
            pod_ip: Some("10.88.0.2"),
            host_ip: "10.88.0.1",
            allocatable: alloc,
        }
    }

    #[test]
    fn pod_fields() {
        let alloc = BTreeMap::new();
        let f = |p: &str| field(&pod(), p, &facts(&alloc));
        assert_eq!(f("metadata.name").unwrap(), "web-1");
        assert_eq!(f("metadata.namespace").unwrap(), "shop");
        assert_eq!(f("metadata.uid").unwrap(), "u-1");
        assert_eq!(f("metadata.labels['app']").unwrap(), "web");
        assert_eq!(f("metadata.labels['nope']").unwrap(), "");
        assert_eq!(f("metadata.annotations['a/b']").unwrap(), "x\"y");
        assert_eq!(f("metadata.annotations").unwrap(), "a/b=\"x\\\"y\"\n");
        assert_eq!(f("spec.nodeName").unwrap(), "ferry-node");
        assert_eq!(f("spec.serviceAccountName").unwrap(), "default");
        assert_eq!(f("status.podIP").unwrap(), "10.88.0.2");
        assert_eq!(f("status.hostIPs").unwrap(), "10.88.0.1");
        assert!(f("spec.bogus").is_err());
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_quantity("128Mi").unwrap(), 134217728.0);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert_eq!(parse_quantity("1k").unwrap(), 1000.0);
        assert!(parse_quantity("12xb").is_err());
    }

    #[test]
    fn resources_round_up_and_fall_back_to_the_node() {
        let alloc: BTreeMap<String, Quantity> = [
            ("cpu".to_owned(), Quantity("16".into())),
            ("memory".to_owned(), Quantity("64Gi".into())),
        ]
        .into();
        let container = Container {
            resources: Some(ResourceRequirements {
                limits: Some([("cpu".to_owned(), Quantity("250m".into()))].into()),
                requests: Some([("memory".to_owned(), Quantity("64Mi".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = |name: &str, div: Option<&str>| {
            let div = div.map(|d| Quantity(d.into()));
            resource(&container, name, div.as_ref(), &facts(&alloc))
        };
        assert_eq!(r("limits.cpu", None).unwrap(), "1");
        assert_eq!(r("limits.cpu", Some("1m")).unwrap(), "250");
        assert_eq!(r("requests.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(r("limits.memory", Some("1Gi")).unwrap(), "64");
        assert_eq!(r("requests.cpu", None).unwrap(), "0");
        assert!(r("limits.gpu", None).is_err());
    }
}
