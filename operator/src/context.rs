//! What every reconcile is given: the client, the caches, the metrics and a backoff, shared by
//! all controllers, and the `state` that one controller keeps for itself.
//!
//! The controllers depend on this module and [`runtime`](crate::runtime) depends on them; this
//! module depends on no controller (only on `routing::desired` for the table's name).

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
    runtime::reflector::{ObjectRef, Store},
};

use crate::{
    metrics::{ControllerName, Metrics},
    routing::desired::TABLE_NAME,
};

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
