//! A container's environment, resolved as the kubelet does: `envFrom`, then `env` (values
//! expanded with `$(VAR)`, sources resolved), then the API server's service variables, plus
//! what a container runtime adds (`HOSTNAME`, `PATH`, `HOME`) and `FERRY_POD_DIR`.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EnvVarSource, Pod};

use crate::downward::{self, DownwardError, NodeFacts};
use crate::refs::{Kind, Referenced};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: Kind, name: String },
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        kind: Kind,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("env {var}: {source}")]
    Downward {
        var: String,
        #[source]
        source: DownwardError,
    },
    #[error("env {var}: this kind of valueFrom is not supported by the process kubelet")]
    Unsupported { var: String },
}

/// Everything besides the container that its environment depends on.
#[derive(Debug, Clone)]
pub struct EnvInputs<'a> {
    pub pod: &'a Pod,
    pub node: &'a NodeFacts<'a>,
    pub refs: &'a Referenced,
    /// Where pods reach the API server (no kube-proxy: the bridge address, never a ClusterIP).
    pub api_host: &'a str,
    pub api_port: u16,
    pub pod_dir: &'a Path,
}

/// The variables the kubelet sets for the `kubernetes` Service in every container.
pub fn service_env(host: &str, port: u16) -> BTreeMap<String, String> {
    let url = format!("tcp://{host}:{port}");
    [
        ("KUBERNETES_SERVICE_HOST", host.to_owned()),
        ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
        ("KUBERNETES_PORT", url.clone()),
        (&format!("KUBERNETES_PORT_{port}_TCP"), url),
        (
            &format!("KUBERNETES_PORT_{port}_TCP_PROTO"),
            "tcp".to_owned(),
        ),
        (
            &format!("KUBERNETES_PORT_{port}_TCP_PORT"),
            port.to_string(),
        ),
        (&format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The pod's hostname: `spec.hostname`, else its name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    name.chars().take(63).collect()
}

/// The container's full environment.
pub fn container_env(
    container: &Container,
    inputs: &EnvInputs<'_>,
) -> Result<BTreeMap<String, String>, EnvError> {
    let namespace = inputs.pod.metadata.namespace.clone().unwrap_or_default();
    let services = service_env(inputs.api_host, inputs.api_port);
    let mut declared: BTreeMap<String, String> = BTreeMap::new();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
            (Kind::ConfigMap, r.name.as_str(), r.optional)
        } else if let Some(r) = &from.secret_ref {
            (Kind::Secret, r.name.as_str(), r.optional)
        } else {
            continue;
        };
        match inputs.refs.get(kind, name) {
            Some(data) => {
                for (key, value) in data {
                    let var = format!("{prefix}{key}");
                    if !var.is_empty() && !var.contains('=') {
                        declared.insert(var, String::from_utf8_lossy(value).into_owned());
                    }
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(EnvError::NotFound {
                    kind,
                    name: name.to_owned(),
                });
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) if !value.is_empty() => expand(value, |name| {
                declared.get(name).or_else(|| services.get(name)).cloned()
            }),
            (_, Some(from)) => {
                match source_value(&var.name, from, container, inputs, &namespace)? {
                    Some(value) => value,
                    None => continue,
                }
            }
            _ => String::new(),
        };
        declared.insert(var.name.clone(), value);
    }

    let mut env: BTreeMap<String, String> = [
        ("PATH", DEFAULT_PATH.to_owned()),
        ("HOME", "/root".to_owned()),
        ("HOSTNAME", hostname(inputs.pod)),
        ("FERRY_POD_DIR", inputs.pod_dir.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(services);
    env.extend(declared);
    Ok(env)
}

/// The value of one `valueFrom`; `None` when an optional reference is absent (the variable is
/// then not set at all, as with the kubelet).
fn source_value(
    var: &str,
    from: &EnvVarSource,
    container: &Container,
    inputs: &EnvInputs<'_>,
    namespace: &str,
) -> Result<Option<String>, EnvError> {
    let downward_err = |source| EnvError::Downward {
        var: var.to_owned(),
        source,
    };
    if let Some(f) = &from.field_ref {
        return downward::field(inputs.pod, &f.field_path, inputs.node)
            .map(Some)
            .map_err(downward_err);
    }
    if let Some(r) = &from.resource_field_ref {
        let target = match r.container_name.as_deref() {
            None | Some("") => container,
            Some(name) => find_container(inputs.pod, name)
                .ok_or_else(|| downward_err(DownwardError::NoSuchContainer(name.to_owned())))?,
        };
        return downward::resource(target, &r.resource, r.divisor.as_ref(), inputs.node)
            .map(Some)
            .map_err(downward_err);
    }
    let (kind, name, key, optional) = if let Some(r) = &from.config_map_key_ref {
        (Kind::ConfigMap, &r.name, &r.key, r.optional)
    } else if let Some(r) = &from.secret_key_ref {
        (Kind::Secret, &r.name, &r.key, r.optional)
    } else {
        return Err(EnvError::Unsupported {
            var: var.to_owned(),
        });
    };
    let optional = optional == Some(true);
    let Some(data) = inputs.refs.get(kind, name) else {
        return if optional {
            Ok(None)
        } else {
            Err(EnvError::NotFound {
                kind,
                name: name.clone(),
            })
        };
    };
    match data.get(key) {
        Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
        None if optional => Ok(None),
        None => Err(EnvError::MissingKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.clone(),
            key: key.clone(),
        }),
    }
}

fn find_container<'p>(pod: &'p Pod, name: &str) -> Option<&'p Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// Kubernetes' `$(VAR)` expansion: a defined `VAR` is replaced, an undefined reference stays
/// as written, `$$` is a literal `$`, and an unterminated `$(` is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            None => {
                out.push('$');
                rest = "";
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(other) => {
                out.push('$');
                out.push(other);
                rest = chars.as_str();
            }
        }
    }
    out.push_str(rest);
    out
}

/// Expands `$(VAR)` in command or args with the container's final environment.
pub fn expand_all(list: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    list.iter()
        .map(|item| expand(item, |name| env.get(name).cloned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn expands_like_kubernetes() {
        let v = vars(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &v), "1-two");
        assert_eq!(expand("$(MISSING)", &v), "$(MISSING)");
        assert_eq!(expand("$$(A)", &v), "$(A)");
        assert_eq!(expand("$$", &v), "$");
        assert_eq!(expand("a$", &v), "a$");
        assert_eq!(expand("$(A", &v), "$(A");
        assert_eq!(expand("$x$(A)", &v), "$x1");
        assert_eq!(expand("$é", &v), "$é");
        assert_eq!(expand("no refs", &v), "no refs");
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "ferry-node", "containers": containers}
        }))
        .unwrap()
    }

    fn resolve(pod: &Pod, refs: &Referenced) -> Result<BTreeMap<String, String>, EnvError> {
        let alloc: BTreeMap<String, Quantity> = [("cpu".to_owned(), Quantity("16".into()))].into();
        let node = NodeFacts {
            pod_ip: Some("10.88.0.7"),
            host_ip: "10.88.0.1",
            allocatable: &alloc,
        };
        let inputs = EnvInputs {
            pod,
            node: &node,
            refs,
            api_host: "10.88.0.1",
            api_port: 6443,
            pod_dir: Path::new("/run/pods/u-1"),
        };
        container_env(&pod.spec.as_ref().unwrap().containers[0], &inputs)
    }

    #[test]
    fn resolves_every_source() {
        let pod = pod(serde_json::json!([{
            "name": "app",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "absent", "optional": true}}],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
                {"name": "URL", "value": "http://$(POD_IP):$(CFG_PORT)/$(UNDEFINED)"},
                {"name": "API", "value": "$(KUBERNETES_SERVICE_HOST)"},
                {"name": "EMPTY"}
            ]
        }]));
        let mut refs = Referenced::default();
        refs.insert(Kind::ConfigMap, "cfg", &[("PORT", "8080")]);
        refs.insert(Kind::Secret, "creds", &[("password", "hunter2")]);
        let env = resolve(&pod, &refs).unwrap();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("POD_NAME"), Some("web-1"));
        assert_eq!(get("POD_IP"), Some("10.88.0.7"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("CPU"), Some("16"));
        assert_eq!(get("PASSWORD"), Some("hunter2"));
        assert_eq!(get("MAYBE"), None);
        assert_eq!(get("CFG_PORT"), Some("8080"));
        assert_eq!(get("URL"), Some("http://10.88.0.7:8080/$(UNDEFINED)"));
        assert_eq!(get("API"), Some("10.88.0.1"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("HOSTNAME"), Some("web-1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("6443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.88.0.1:6443"));
        assert_eq!(get("KUBERNETES_PORT_6443_TCP_ADDR"), Some("10.88.0.1"));
        assert_eq!(get("FERRY_POD_DIR"), Some("/run/pods/u-1"));
        assert!(get("PATH").is_some());
    }

    #[test]
    fn missing_required_references_are_errors() {
        let refs = Referenced::default();
        let pod1 = pod(serde_json::json!([{"name": "app",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}]));
        assert_eq!(
            resolve(&pod1, &refs).unwrap_err().to_string(),
            "secret \"creds\" not found"
        );
        let mut refs = Referenced::default();
        refs.insert(Kind::ConfigMap, "cfg", &[]);
        let pod2 = pod(serde_json::json!([{"name": "app",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}]));
        assert_eq!(
            resolve(&pod2, &refs).unwrap_err().to_string(),
            "couldn't find key k in configmap shop/cfg"
        );
        let pod3 =
            pod(serde_json::json!([{"name": "app", "envFrom": [{"secretRef": {"name": "gone"}}]}]));
        assert!(resolve(&pod3, &refs).is_err());
    }

    #[test]
    fn container_env_overrides_runtime_defaults() {
        let pod = pod(serde_json::json!([{"name": "app", "env": [
            {"name": "PATH", "value": "/opt/bin"},
            {"name": "KUBERNETES_SERVICE_HOST", "value": "elsewhere"}
        ]}]));
        let env = resolve(&pod, &Referenced::default()).unwrap();
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "elsewhere");
    }

    #[test]
    fn expands_args_with_the_final_env() {
        let env: BTreeMap<String, String> = [("PORT".to_owned(), "9000".to_owned())].into();
        assert_eq!(
            expand_all(&["--port=$(PORT)".to_owned(), "$(NOPE)".to_owned()], &env),
            ["--port=9000", "$(NOPE)"]
        );
    }
}
