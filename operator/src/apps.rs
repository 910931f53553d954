//! Which app IDs a namespace has: a pure reading of its pods.
//!
//! A pod belongs to app `<id>` through its label `dapr.io/app-id` (the injector sets it). Only
//! live pods count: not terminating, not finished (`Succeeded`/`Failed`). When an app's pods
//! disagree on their annotations (during a rollout), the newest pod wins, since that is where
//! the rollout is heading.

use std::collections::BTreeMap;

use ferry_api::{AppId, AppIdError};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Resource;

pub const LABEL_APP_ID: &str = "dapr.io/app-id";

/// An app ID with live pods.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub id: AppId,
    /// The annotations of its newest live pod.
    pub annotations: BTreeMap<String, String>,
    /// A pod to attach Events to (the newest).
    pub pod: ObjectReference,
    pub pods: usize,
}

/// A pod whose `dapr.io/app-id` label cannot name a Service.
#[derive(Debug, Clone, PartialEq)]
pub struct BadAppId {
    pub pod: ObjectReference,
    pub error: AppIdError,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Apps {
    pub apps: BTreeMap<AppId, App>,
    pub invalid: Vec<BadAppId>,
}

/// Whether a pod counts as a running instance of its app.
pub fn is_live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// The app ID of a pod, validated for Kubernetes (`<id>-dapr` must be a DNS-1123 label).
pub fn app_id_of(pod: &Pod) -> Option<Result<AppId, AppIdError>> {
    let raw = pod.metadata.labels.as_ref()?.get(LABEL_APP_ID)?;
    Some(AppId::new(raw.as_str()).and_then(|id| id.check_kubernetes().map(|()| id)))
}

/// The apps of `namespace`, from any set of pods (others are ignored).
pub fn in_namespace<'a>(namespace: &str, pods: impl IntoIterator<Item = &'a Pod>) -> Apps {
    let mut newest: BTreeMap<AppId, (&Pod, usize)> = BTreeMap::new();
    let mut invalid = Vec::new();
    for pod in pods {
        if pod.metadata.namespace.as_deref() != Some(namespace) || !is_live(pod) {
            continue;
        }
        match app_id_of(pod) {
            None => {}
            Some(Err(error)) => invalid.push(BadAppId {
                pod: pod.object_ref(&()),
                error,
            }),
            Some(Ok(id)) => {
                let entry = newest.entry(id).or_insert((pod, 0));
                entry.1 += 1;
                if age_key(pod) > age_key(entry.0) {
                    entry.0 = pod;
                }
            }
        }
    }
    invalid.sort_by(|a, b| a.pod.name.cmp(&b.pod.name));
    let apps = newest
        .into_iter()
        .map(|(id, (pod, pods))| {
            let app = App {
                id: id.clone(),
                annotations: pod.metadata.annotations.clone().unwrap_or_default(),
                pod: pod.object_ref(&()),
                pods,
            };
            (id, app)
        })
        .collect();
    Apps { apps, invalid }
}

/// Orders pods by creation time, then name, so "newest" is deterministic.
fn age_key(pod: &Pod) -> (Option<i64>, Option<&str>) {
    (
        pod.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        pod.metadata.name.as_deref(),
    )
}

#[cfg(test)]
pub(crate) mod fixtures {
    use k8s_openapi::api::core::v1::PodStatus;
    use serde_json::json;

    use super::*;

    pub fn pod(ns: &str, name: &str, app: &str, created: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("uid-{name}"),
                "labels": {LABEL_APP_ID: app},
                "creationTimestamp": k8s_openapi::jiff::Timestamp::from_second(created).unwrap().to_string(),
            },
        }))
        .unwrap()
    }

    pub fn annotated(mut pod: Pod, annotations: &[(&str, &str)]) -> Pod {
        pod.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        pod
    }

    pub fn phase(mut pod: Pod, phase: &str) -> Pod {
        pod.status = Some(PodStatus {
            phase: Some(phase.to_owned()),
            ..PodStatus::default()
        });
        pod
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::{fixtures::*, *};

    #[test]
    fn groups_live_pods_by_app_and_takes_the_newest() {
        let pods = [
            annotated(pod("shop", "cart-1", "cart", 100), &[("v", "old")]),
            annotated(pod("shop", "cart-2", "cart", 200), &[("v", "new")]),
            pod("shop", "pay-1", "pay", 100),
            pod("other", "cart-x", "cart", 300),
            phase(pod("shop", "job-1", "batch", 100), "Succeeded"),
        ];
        let apps = in_namespace("shop", &pods);
        let ids: Vec<&str> = apps.apps.keys().map(AppId::as_str).collect();
        assert_eq!(ids, ["cart", "pay"]);
        let cart = &apps.apps[&AppId::new("cart").unwrap()];
        assert_eq!(cart.pods, 2);
        assert_eq!(cart.annotations["v"], "new");
        assert_eq!(cart.pod.name.as_deref(), Some("cart-2"));
        assert!(apps.invalid.is_empty());
    }

    #[test]
    fn terminating_pods_do_not_count() {
        let mut p = pod("shop", "cart-1", "cart", 100);
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(in_namespace("shop", &[p]).apps.is_empty());
    }

    #[test]
    fn ids_that_cannot_name_a_service_are_reported() {
        let pods = [
            pod("shop", "a", "Cart", 1),
            pod("shop", "b", &"x".repeat(59), 1),
            pod("shop", "c", "", 1),
            pod("shop", "d", "my_app", 1),
        ];
        let apps = in_namespace("shop", &pods);
        assert!(apps.apps.is_empty());
        let errors: Vec<_> = apps.invalid.iter().map(|b| &b.error).collect();
        assert!(matches!(errors[0], AppIdError::NotDnsLabel(_)));
        assert!(matches!(errors[1], AppIdError::TooLong(_)));
        assert!(matches!(errors[2], AppIdError::Empty));
        assert!(matches!(
            errors[3],
            AppIdError::BadEdge(_) | AppIdError::NotDnsLabel(_)
        ));
    }
}
