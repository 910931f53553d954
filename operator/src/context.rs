//! What every reconcile is given: the client, the caches, the metrics and a backoff, shared by
//! all controllers, and the `state` that one controller keeps for itself.
//!
//! The controllers depend on this module and [`runtime`](crate::runtime) depends on them; this
//! module depends on no controller.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_api::{http_endpoint::HttpEndpoint, routing_table::RoutingTable};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Client, Resource,
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use tracing::warn;

use ferry_api::routing_table::TABLE_NAME;

use crate::metrics::{ControllerName, Metrics};

/// How often every object is reconciled even without a change (a safety net for missed events).
pub const RESYNC: Duration = Duration::from_secs(300);

/// The caches every reconcile reads.
#[derive(Clone)]
pub struct Stores {
    /// Pods labelled `dapr.io/app-id`: metadata, phase and ServiceAccount only.
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub endpoints: Store<HttpEndpoint>,
    pub tables: Store<RoutingTable>,
    /// The sidecar Secrets Roles and RoleBindings (only those of the configured name) and the
    /// sidecar ClusterRoleBinding.
    pub sidecar_roles: Store<Role>,
    pub sidecar_role_bindings: Store<RoleBinding>,
    pub sidecar_binding: Store<ClusterRoleBinding>,
}

impl Stores {
    fn in_ns<K>(store: &Store<K>, namespace: &str) -> Vec<Arc<K>>
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Eq + Hash + Clone,
    {
        store.state_filter(|o| o.meta().namespace.as_deref() == Some(namespace))
    }

    pub fn pods_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        Self::in_ns(&self.pods, namespace)
    }

    pub fn services_in(&self, namespace: &str) -> Vec<Arc<Service>> {
        Self::in_ns(&self.services, namespace)
    }

    pub fn endpoints_in(&self, namespace: &str) -> Vec<Arc<HttpEndpoint>> {
        Self::in_ns(&self.endpoints, namespace)
    }

    pub fn table(&self, namespace: &str) -> Option<Arc<RoutingTable>> {
        self.tables
            .get(&ObjectRef::new(TABLE_NAME).within(namespace))
    }
}

/// Everything a reconcile needs. `state` is what only one controller keeps (its grace timers,
/// its Event reporter, the names it writes); the rest every controller has alike.
pub struct Context<S = ()> {
    pub client: Client,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    pub state: S,
}

impl<S> Context<S> {
    pub fn new(client: Client, stores: Stores, metrics: Arc<Metrics>, state: S) -> Self {
        Self {
            client,
            stores,
            metrics,
            backoff: Backoff::default(),
            state,
        }
    }

    /// What every controller does after a failed reconcile of `key`: counts the failure by its
    /// reason, logs it, and says when to try again (the key's next backoff).
    pub fn retry_in(
        &self,
        controller: ControllerName,
        key: &str,
        error: &impl ReconcileError,
    ) -> Duration {
        self.metrics.error(controller, error.metric_label());
        let delay = self.backoff.next(controller, key);
        warn!(key, %error, retry_in = ?delay, "{}", controller.subject());
        delay
    }
}

/// A controller's reconcile error: one variant per failing step.
pub trait ReconcileError: std::error::Error {
    /// The step that failed, as the fixed `reason` label of
    /// `ferry_operator_reconcile_errors_total`.
    fn metric_label(&self) -> &'static str;
}

/// The `error_policy` of every kube-runtime controller here: [`Context::retry_in`] for the
/// object's key ([`backoff_key`]), then requeue it.
pub fn error_policy<K, E, S>(
    controller: ControllerName,
) -> impl Fn(Arc<K>, &E, Arc<Context<S>>) -> Action
where
    K: Resource,
    E: ReconcileError,
{
    move |obj, error, ctx| Action::requeue(ctx.retry_in(controller, &backoff_key(&*obj), error))
}

/// What a backoff is kept by: `namespace/name`, or the name of a cluster-scoped object (a
/// namespace, for the namespace-keyed controllers).
pub fn backoff_key<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    match &meta.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// Per-object exponential backoff for `error_policy`: 1 s, 2 s, 4 s ... up to 5 minutes, reset
/// by a successful reconcile.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<(ControllerName, String), u32>>,
}

impl Backoff {
    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    pub fn next(&self, controller: ControllerName, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry((controller, key.to_owned())).or_insert(0);
        let delay = Self::BASE
            .saturating_mul(2u32.saturating_pow((*n).min(16)))
            .min(Self::MAX);
        *n = n.saturating_add(1);
        delay
    }

    pub fn reset(&self, controller: ControllerName, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !f.is_empty() {
            f.remove(&(controller, key.to_owned()));
        }
    }
}

/// A controller owner reference to `owner` (no `blockOwnerDeletion`: that would need the
/// `finalizers` permission on the owner, and nothing waits on it).
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    let meta = owner.meta();
    Some(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let b = Backoff::default();
        let c = ControllerName::AppService;
        let delays: Vec<u64> = (0..12).map(|_| b.next(c, "ns").as_secs()).collect();
        assert_eq!(&delays[..4], &[1, 2, 4, 8]);
        assert_eq!(delays[11], 300);
        b.reset(c, "ns");
        assert_eq!(b.next(c, "ns").as_secs(), 1);
        assert_eq!(b.next(c, "other").as_secs(), 1);
    }
}
