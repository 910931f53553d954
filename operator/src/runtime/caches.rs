//! The caches: one reflector per kind the reconciles read, each stripping what no reconcile
//! needs and triggering the controllers that read it (see the module doc of `runtime`).

use std::{fmt::Debug, sync::Arc};

use ferry_api::{http_endpoint::HttpEndpoint, routing_table::RoutingTable};
use futures_util::{StreamExt, future};
use k8s_openapi::api::{
    core::v1::{Pod, PodSpec, PodStatus, Service},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::triggers::{NsInput, Triggers, ns_trigger};
use crate::{
    apps::LABEL_APP_ID, context::Stores, services::desired::LABEL_MANAGED_BY,
    sidecar_rbac::desired::Names,
};

/// What the caches feed the controllers with.
pub struct Inputs {
    pub services: NsInput,
    pub routing: NsInput,
    pub sidecar_rbac: NsInput,
    pub injection_warnings: NsInput,
    /// Wakes the sidecar ClusterRoleBinding's loop.
    pub cluster_binding: Arc<Notify>,
}

/// The caches, empty, what they trigger, and the reflectors that fill them (they run until the
/// future is dropped).
pub fn start(
    client: &Client,
    names: &Names,
) -> (Stores, Inputs, impl Future<Output = ()> + Send + use<>) {
    let (pods, pods_w) = reflector::store();
    let (svcs, svcs_w) = reflector::store();
    let (eps, eps_w) = reflector::store();
    let (tables, tables_w) = reflector::store();
    let (roles, roles_w) = reflector::store();
    let (role_bindings, role_bindings_w) = reflector::store();
    let (binding, binding_w) = reflector::store();
    let (svc_t, services) = ns_trigger();
    let (rt_t, routing) = ns_trigger();
    let (rbac_t, sidecar_rbac) = ns_trigger();
    let (warn_t, injection_warnings) = ns_trigger();
    let wake_binding = Arc::new(Notify::new());

    let reflectors = future::join(
        future::join4(
            reflect(
                "Pod",
                Api::<Pod>::all(client.clone()),
                watcher::Config::default().labels(LABEL_APP_ID),
                pods_w,
                strip_pod,
                Triggers::new(&[&svc_t, &rt_t, &rbac_t, &warn_t], &[&wake_binding]),
            ),
            reflect(
                "Service",
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
                svcs_w,
                strip_service,
                Triggers::new(&[&svc_t, &rt_t], &[]),
            ),
            reflect(
                "HTTPEndpoint",
                Api::<HttpEndpoint>::all(client.clone()),
                watcher::Config::default(),
                eps_w,
                strip_endpoint,
                Triggers::new(&[&rt_t, &rbac_t], &[]),
            ),
            reflect(
                "RoutingTable",
                Api::<RoutingTable>::all(client.clone()),
                watcher::Config::default().labels(&format!(
                    "{}={}",
                    LABEL_MANAGED_BY,
                    crate::FIELD_MANAGER
                )),
                tables_w,
                strip_table,
                // The table owns the app Services and the sidecar Roles.
                Triggers::new(&[&svc_t, &rt_t, &rbac_t], &[]),
            ),
        ),
        future::join3(
            reflect(
                "Role",
                Api::<Role>::all(client.clone()),
                named(&names.secrets_role),
                roles_w,
                strip_meta,
                Triggers::new(&[&rbac_t], &[]),
            ),
            reflect(
                "RoleBinding",
                Api::<RoleBinding>::all(client.clone()),
                named(&names.secrets_role),
                role_bindings_w,
                strip_meta,
                Triggers::new(&[&rbac_t], &[]),
            ),
            reflect(
                "ClusterRoleBinding",
                Api::<ClusterRoleBinding>::all(client.clone()),
                named(&names.binding),
                binding_w,
                strip_meta,
                Triggers::new(&[], &[&wake_binding]),
            ),
        ),
    );

    let stores = Stores {
        pods,
        services: svcs,
        endpoints: eps,
        tables,
        sidecar_roles: roles,
        sidecar_role_bindings: role_bindings,
        sidecar_binding: binding,
    };
    let inputs = Inputs {
        services,
        routing,
        sidecar_rbac,
        injection_warnings,
        cluster_binding: wake_binding,
    };
    (stores, inputs, async move {
        reflectors.await;
    })
}

/// Waits until every cache has listed once.
pub async fn synced(stores: &Stores) {
    let _ = future::join(
        future::join4(
            stores.pods.wait_until_ready(),
            stores.services.wait_until_ready(),
            stores.endpoints.wait_until_ready(),
            stores.tables.wait_until_ready(),
        ),
        future::join3(
            stores.sidecar_roles.wait_until_ready(),
            stores.sidecar_role_bindings.wait_until_ready(),
            stores.sidecar_binding.wait_until_ready(),
        ),
    )
    .await;
}

/// Runs a reflector for `K` into `writer`, triggering the namespace of every change.
async fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    strip: fn(&mut K),
    triggers: Triggers,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, config).default_backoff().modify(strip);
    reflector::reflector(writer, stream)
        .for_each(|event| {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    triggers.changed(o.namespace());
                }
                Ok(watcher::Event::InitDone) => {
                    debug!(kind, "cache (re)listed");
                    triggers.relist();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => warn!(kind, error = %e, "watch failed; retrying"),
            }
            future::ready(())
        })
        .await;
}

fn strip_pod(pod: &mut Pod) {
    // The sidecar RBAC needs the ServiceAccount the pod runs as; nothing else of the spec.
    let account = pod.spec.take().and_then(|s| s.service_account_name);
    pod.spec = account.map(|a| PodSpec {
        service_account_name: Some(a),
        ..PodSpec::default()
    });
    pod.metadata.managed_fields = None;
    let phase = pod.status.take().and_then(|s| s.phase);
    pod.status = phase.map(|phase| PodStatus {
        phase: Some(phase),
        ..PodStatus::default()
    });
}

fn strip_service(svc: &mut Service) {
    svc.metadata.managed_fields = None;
    svc.status = None;
}

fn strip_endpoint(ep: &mut HttpEndpoint) {
    ep.metadata.managed_fields = None;
}

fn strip_table(rt: &mut RoutingTable) {
    rt.metadata.managed_fields = None;
}

fn strip_meta<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// Only the objects of one name, wherever they are: the operator may list and watch no other
/// (RBAC limits it by `resourceNames`, which a `metadata.name` field selector satisfies).
fn named(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_cached_with_their_service_account_only() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"dapr.io/app-id": "a"}},
            "spec": {"serviceAccountName": "cart", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        }))
        .unwrap();
        strip_pod(&mut pod);
        assert_eq!(
            pod.spec,
            Some(PodSpec {
                service_account_name: Some("cart".into()),
                ..PodSpec::default()
            })
        );
        let status = pod.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.pod_ip.is_none());
    }
}
