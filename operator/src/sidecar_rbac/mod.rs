//! Sidecar RBAC: every sidecar's ServiceAccount gets exactly what the sidecar reads (see
//! [`desired`] for what and why).
//!
//! Two reconcilers over the same caches:
//!
//! - the cluster binding ([`run_cluster_binding`]): one ClusterRoleBinding for every
//!   ServiceAccount that runs a labelled pod. It has no object to key a kube-runtime controller
//!   on (the binding may not exist), so it is a small loop woken by the pod and binding caches,
//!   and every [`RESYNC`] all the same;
//! - per namespace ([`reconcile`]): the Role and RoleBinding for the Secrets (and inline keys)
//!   that the namespace's HTTPEndpoints name, owned by the namespace's RoutingTable so that they
//!   go with it. Triggered like the RoutingTable controller.
//!
//! The operator can write these only because it holds every permission it grants (Kubernetes
//! refuses privilege escalation): cluster-wide `get` on Secrets and HTTPEndpoints, and `bind` on
//! the sidecars' ClusterRole. It never reads a Secret.

pub mod desired;
#[cfg(test)]
mod scenarios;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    core::v1::Namespace,
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{controller::Action, reflector::ObjectRef},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Notify;
use tracing::{Span, debug, field, info, instrument};

use crate::{
    FIELD_MANAGER,
    context::{Context, RESYNC, ReconcileError, Stores, owner_reference},
    metrics::ControllerName,
};

pub use desired::{Names, NamespaceGrant, Step};

pub const CLUSTER: ControllerName = ControllerName::SidecarClusterBinding;
pub const SECRETS: ControllerName = ControllerName::SidecarSecrets;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        /// `namespace/name`, or the name of a cluster-scoped object.
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
        }
    }
}

/// What this controller alone needs: the names of what it writes.
pub struct State {
    pub names: Names,
}

fn full_name<K: Resource>(obj: &K) -> String {
    let m = obj.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
        None => m.name.clone().unwrap_or_default(),
    }
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(drop)
    .map_err(|source| Error::Apply {
        kind: <K as k8s_openapi::Resource>::KIND,
        name: full_name(obj),
        source,
    })
}

/// Deletes the live object `live` (only that one: the uid is a precondition).
async fn delete<K>(api: &Api<K>, live: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: live.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api
        .delete(&live.meta().name.clone().unwrap_or_default(), &dp)
        .await
    {
        Ok(_) => Ok(()),
        // Gone already, or replaced by another object of the name.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: <K as k8s_openapi::Resource>::KIND,
            name: full_name(live),
            source,
        }),
    }
}

/// Carries out `step` for one object: `live` is the cached object, `want` what should exist.
async fn carry_out<K>(
    api: &Api<K>,
    step: Step,
    live: Option<&K>,
    want: Option<&K>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    match (step, live, want) {
        (Step::Apply, _, Some(want)) => {
            debug!(kind, name = %full_name(want), "applying");
            apply(api, want).await
        }
        (Step::Replace, Some(live), Some(want)) => {
            info!(kind, name = %full_name(live), "it binds another role: replacing it");
            delete(api, live).await?;
            apply(api, want).await
        }
        (Step::Delete, Some(live), _) => {
            info!(kind, name = %full_name(live), "nothing left to grant: deleting it");
            delete(api, live).await
        }
        _ => Ok(()),
    }
}

/// Every ServiceAccount that runs a sidecar, from the pod cache.
pub fn accounts(stores: &Stores) -> Vec<desired::ServiceAccount> {
    let pods = stores.pods.state();
    desired::service_accounts(pods.iter().map(|p| &**p))
}

/// The Role and RoleBinding `namespace` should have, from what the caches hold now.
pub fn grant_for(stores: &Stores, namespace: &str, names: &Names) -> Option<NamespaceGrant> {
    let owner = stores
        .table(namespace)
        .filter(|rt| rt.metadata.deletion_timestamp.is_none())
        .and_then(|rt| owner_reference(&*rt));
    let pods = stores.pods_in(namespace);
    let accounts = desired::service_accounts(pods.iter().map(|p| &**p));
    let endpoints = stores.endpoints_in(namespace);
    let access = desired::secret_access(endpoints.iter().map(|e| &**e));
    desired::namespace_grant(namespace, names, &accounts, &access, owner)
}

/// The cluster-wide binding, once: applied when it differs from the cache, deleted when no
/// ServiceAccount runs a sidecar.
pub async fn reconcile_cluster_binding(ctx: &Context<State>) -> Result<(), Error> {
    let _timer = ctx.metrics.reconcile(CLUSTER);
    let names = &ctx.state.names;
    let accounts = accounts(&ctx.stores);
    let want = desired::cluster_role_binding(names, &accounts);
    let live = ctx
        .stores
        .sidecar_binding
        .get(&ObjectRef::new(&names.binding));
    let step = desired::step(live.as_deref(), want.as_ref());
    if step == Step::Apply {
        info!(
            binding = %names.binding,
            accounts = accounts.len(),
            "granting sidecars read access to RoutingTables and EndpointSlices"
        );
    }
    // On `Wait`, the binding's going wakes the loop, which then makes it anew.
    let api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    carry_out(&api, step, live.as_deref(), want.as_ref()).await
}

/// Runs the cluster binding's reconciles until dropped: on every wake-up, every [`RESYNC`], and
/// with backoff after a failure (wake-ups meanwhile are folded into one).
pub async fn run_cluster_binding(ctx: Arc<Context<State>>, wake: Arc<Notify>) {
    let key = ctx.state.names.binding.clone();
    loop {
        match reconcile_cluster_binding(&ctx).await {
            Ok(()) => {
                ctx.backoff.reset(CLUSTER, &key);
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(RESYNC) => {}
                }
            }
            Err(error) => tokio::time::sleep(ctx.retry_in(CLUSTER, &key, &error)).await,
        }
    }
}

/// The Role and RoleBinding of one namespace.
#[instrument(skip_all, fields(namespace = field::Empty))]
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context<State>>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(SECRETS);
    let namespace = ns.name_any();
    Span::current().record("namespace", namespace.as_str());
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let names = &ctx.state.names;
    let want = grant_for(&ctx.stores, &namespace, names);
    let role = ctx
        .stores
        .sidecar_roles
        .get(&ObjectRef::new(&names.secrets_role).within(&namespace));
    let binding = ctx
        .stores
        .sidecar_role_bindings
        .get(&ObjectRef::new(&names.secrets_role).within(&namespace));
    let role_step = desired::step(role.as_deref(), want.as_ref().map(|g| &g.role));
    let binding_step = desired::step(binding.as_deref(), want.as_ref().map(|g| &g.binding));
    if role_step == Step::Wait || binding_step == Step::Wait {
        // Both go with the RoutingTable; make them anew together once they are gone.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if let (Step::Apply, Some(g)) = (role_step, &want) {
        let rules = g.role.rules.iter().flatten();
        let granted: Vec<_> = rules
            .flat_map(|r| r.resource_names.iter().flatten())
            .collect();
        info!(
            ?granted,
            "granting the namespace's sidecars get on what its HTTPEndpoints name"
        );
    }
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), &namespace);
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &namespace);
    let (role_want, binding_want) = (
        want.as_ref().map(|g| &g.role),
        want.as_ref().map(|g| &g.binding),
    );
    if want.is_some() {
        // The Role first: a shrinking Role revokes at once, and a new binding never points at a
        // Role that is missing.
        carry_out(&roles, role_step, role.as_deref(), role_want).await?;
        carry_out(&bindings, binding_step, binding.as_deref(), binding_want).await?;
    } else {
        // The binding first, so that no binding is ever left pointing at nothing.
        carry_out(&bindings, binding_step, binding.as_deref(), binding_want).await?;
        carry_out(&roles, role_step, role.as_deref(), role_want).await?;
    }
    ctx.backoff.reset(SECRETS, &namespace);
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use ferry_api::{HttpEndpoint, RoutingTable};
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{reflector, watcher::Event};
    use serde_json::json;

    use super::*;

    fn pod(ns: &str, name: &str, account: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"dapr.io/app-id": name}},
            "spec": {"serviceAccountName": account, "containers": []},
        }))
        .unwrap()
    }

    fn endpoint(ns: &str, name: &str, secret: &str) -> HttpEndpoint {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"baseUrl": "https://x", "headers": [
                {"name": "A", "secretKeyRef": {"name": secret, "key": "k"}}]}
        }))
        .unwrap()
    }

    /// The caches fed with watch events, as the reflectors feed them.
    #[test]
    fn the_grants_follow_the_caches() {
        let (pods, mut pods_w) = reflector::store();
        let (endpoints, mut endpoints_w) = reflector::store();
        let (tables, mut tables_w) = reflector::store();
        let stores = Stores {
            pods,
            services: reflector::store().0,
            endpoints,
            tables,
            sidecar_roles: reflector::store().0,
            sidecar_role_bindings: reflector::store().0,
            sidecar_binding: reflector::store().0,
        };
        let names = Names::default();
        assert!(accounts(&stores).is_empty());
        assert_eq!(grant_for(&stores, "shop", &names), None);

        let cart = pod("shop", "cart-1", "cart");
        pods_w.apply_watcher_event(&Event::Apply(cart.clone()));
        pods_w.apply_watcher_event(&Event::Apply(pod("bank", "orders-1", "orders")));
        let account_names = |s: &Stores| -> Vec<String> {
            accounts(s)
                .into_iter()
                .map(|a| format!("{}/{}", a.namespace, a.name))
                .collect()
        };
        assert_eq!(account_names(&stores), ["bank/orders", "shop/cart"]);
        assert_eq!(
            grant_for(&stores, "shop", &names),
            None,
            "nothing named yet"
        );

        let ep = endpoint("shop", "api", "api-key");
        endpoints_w.apply_watcher_event(&Event::Apply(ep.clone()));
        endpoints_w.apply_watcher_event(&Event::Apply(endpoint("bank", "b", "bank-key")));
        let g = grant_for(&stores, "shop", &names).unwrap();
        let v = serde_json::to_value(&g.role).unwrap();
        assert_eq!(v["rules"][0]["resourceNames"], json!(["api-key"]));
        assert!(v["metadata"]["ownerReferences"].is_null(), "no table yet");
        let b = serde_json::to_value(&g.binding).unwrap();
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": "cart", "namespace": "shop"}])
        );

        // The RoutingTable appears: it owns them.
        let table: RoutingTable = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
            "metadata": {"name": "ferry", "namespace": "shop", "uid": "rt-1"},
            "spec": {}
        }))
        .unwrap();
        tables_w.apply_watcher_event(&Event::Apply(table));
        let g = grant_for(&stores, "shop", &names).unwrap();
        let owners = g.role.metadata.owner_references.unwrap();
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("RoutingTable", "rt-1")
        );

        // The reference goes, then the last pod: nothing is granted.
        endpoints_w.apply_watcher_event(&Event::Delete(ep));
        assert_eq!(grant_for(&stores, "shop", &names), None);
        pods_w.apply_watcher_event(&Event::Delete(cart));
        assert_eq!(account_names(&stores), ["bank/orders"]);
        assert!(grant_for(&stores, "bank", &names).is_some());
    }
}
