//! The Secrets and ConfigMaps a pod refers to (env, envFrom, volumes), read through the API.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

#[derive(Debug, thiserror::Error)]
pub enum RefsError {
    #[error("cannot read {kind} {namespace}/{name}: {source}")]
    Get {
        kind: Kind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    ConfigMap,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Secret => "secret",
            Kind::ConfigMap => "configmap",
        })
    }
}

/// An object's data: key → bytes.
pub type Data = BTreeMap<String, Vec<u8>>;

/// The data of each referenced object; `None` when the object does not exist.
#[derive(Debug, Default, Clone)]
pub struct Referenced {
    objects: BTreeMap<(Kind, String), Option<Data>>,
}

impl Referenced {
    /// The object's data, or `None` when it does not exist (or was never asked for).
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Data> {
        self.objects
            .get(&(kind, name.to_owned()))
            .and_then(Option::as_ref)
    }

    #[cfg(test)]
    pub fn insert(&mut self, kind: Kind, name: &str, data: &[(&str, &str)]) {
        let data = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        self.objects.insert((kind, name.to_owned()), Some(data));
    }
}

/// Every Secret and ConfigMap the pod's containers and volumes name.
pub fn wanted(pod: &Pod) -> BTreeSet<(Kind, String)> {
    let mut out = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for container in containers {
        container_refs(container, &mut out);
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.insert((Kind::Secret, name));
        }
        if let Some(cm) = &volume.config_map {
            out.insert((Kind::ConfigMap, cm.name.clone()));
        }
        let sources = volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten());
        for source in sources {
            if let Some(s) = &source.secret {
                out.insert((Kind::Secret, s.name.clone()));
            }
            if let Some(cm) = &source.config_map {
                out.insert((Kind::ConfigMap, cm.name.clone()));
            }
        }
    }
    out
}

fn container_refs(container: &Container, out: &mut BTreeSet<(Kind, String)>) {
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(s) = &from.secret_key_ref {
            out.insert((Kind::Secret, s.name.clone()));
        }
        if let Some(cm) = &from.config_map_key_ref {
            out.insert((Kind::ConfigMap, cm.name.clone()));
        }
    }
    for from in container.env_from.iter().flatten() {
        if let Some(s) = &from.secret_ref {
            out.insert((Kind::Secret, s.name.clone()));
        }
        if let Some(cm) = &from.config_map_ref {
            out.insert((Kind::ConfigMap, cm.name.clone()));
        }
    }
}

/// Reads every wanted object; a missing one is recorded as absent, not an error (whether that
/// matters depends on `optional`, which env and volume code decide).
pub async fn fetch(
    client: &Client,
    namespace: &str,
    wanted: &BTreeSet<(Kind, String)>,
) -> Result<Referenced, RefsError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut out = Referenced::default();
    for (kind, name) in wanted {
        let err = |source| RefsError::Get {
            kind: *kind,
            namespace: namespace.to_owned(),
            name: name.clone(),
            source,
        };
        let data = match kind {
            Kind::Secret => secrets.get_opt(name).await.map_err(err)?.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }),
            Kind::ConfigMap => config_maps.get_opt(name).await.map_err(err)?.map(|cm| {
                let text = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()));
                let binary = cm
                    .binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0));
                text.chain(binary).collect()
            }),
        };
        out.objects.insert((*kind, name.clone()), data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_names_from_env_env_from_and_volumes() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "cm-init"}}]}],
                "containers": [{"name": "c", "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                    {"name": "C", "value": "plain"}
                ], "envFrom": [{"secretRef": {"name": "s-from"}}]}],
                "volumes": [
                    {"name": "v1", "secret": {"secretName": "s-vol"}},
                    {"name": "v2", "configMap": {"name": "cm-vol"}},
                    {"name": "v3", "projected": {"sources": [
                        {"configMap": {"name": "kube-root-ca.crt"}},
                        {"serviceAccountToken": {"path": "token"}}
                    ]}}
                ]
            }
        }))
        .unwrap();
        let names: Vec<String> = wanted(&pod)
            .into_iter()
            .map(|(k, n)| format!("{k}/{n}"))
            .collect();
        assert_eq!(
            names,
            [
                "secret/s-env",
                "secret/s-from",
                "secret/s-vol",
                "configmap/cm-env",
                "configmap/cm-init",
                "configmap/cm-vol",
                "configmap/kube-root-ca.crt"
            ]
        );
    }
}
