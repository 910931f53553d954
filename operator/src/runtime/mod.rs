//! What the leader runs: the caches (reflectors) and the three controllers over them.
//!
//! The namespace-keyed controllers (app Services, RoutingTables) are triggered from our own
//! reflectors rather than from separate watches: a reflector first updates its cache and only
//! then sends the object's namespace to the controllers, so a reconcile never reads a cache that
//! has not yet seen the change that triggered it. A re-list (after a dropped watch) triggers every
//! namespace, since deletions missed meanwhile carry no namespace. Each reflector triggers only
//! the controllers that read its cache; the sidecar ClusterRoleBinding, which has no namespace,
//! is woken instead.

use std::{fmt::Debug, sync::Arc, time::Duration};

use ferry_api::{http_endpoint::HttpEndpoint, routing_table::RoutingTable};
use futures_util::{Stream, StreamExt, future};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, PodSpec, PodStatus, Service},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Recorder, Reporter as EventReporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::{
    REPORTER,
    admin::Health,
    apps::LABEL_APP_ID,
    context::{Context, Stores, error_policy},
    endpoints,
    metrics::{ControllerName, Metrics},
    reports::Reporter,
    routing, services, sidecar_rbac,
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub service_grace: Duration,
    /// The `reportingInstance` of Events (this replica's identity).
    pub instance: String,
    pub sidecar_names: sidecar_rbac::Names,
}

/// One namespace-keyed controller's inputs: a namespace to reconcile, or all of them.
#[derive(Clone)]
struct NsTrigger {
    namespace: mpsc::UnboundedSender<ObjectRef<Namespace>>,
    relist: mpsc::UnboundedSender<()>,
}

/// Fans a change out to the controllers that read the cache it changed.
#[derive(Clone, Default)]
struct Triggers {
    namespaced: Vec<NsTrigger>,
    /// Controllers without a namespace: woken on every change (wake-ups coalesce).
    wake: Vec<Arc<Notify>>,
}

impl Triggers {
    fn new(namespaced: &[&NsTrigger], wake: &[&Arc<Notify>]) -> Self {
        Self {
            namespaced: namespaced.iter().map(|t| (*t).clone()).collect(),
            wake: wake.iter().map(|w| Arc::clone(w)).collect(),
        }
    }

    fn changed(&self, ns: Option<String>) {
        if let Some(ns) = ns {
            for t in &self.namespaced {
                let _ = t.namespace.send(ObjectRef::new(&ns));
            }
        }
        self.wake();
    }

    fn relist(&self) {
        for t in &self.namespaced {
            let _ = t.relist.send(());
        }
        self.wake();
    }

    fn wake(&self) {
        for w in &self.wake {
            w.notify_one();
        }
    }
}

/// A namespace-keyed controller's trigger and the streams it is fed by.
fn ns_trigger() -> (
    NsTrigger,
    impl Stream<Item = ObjectRef<Namespace>> + Send,
    impl Stream<Item = ()> + Send,
) {
    let (namespace, ns_rx) = mpsc::unbounded_channel();
    let (relist, relist_rx) = mpsc::unbounded_channel();
    (
        NsTrigger { namespace, relist },
        receiver_stream(ns_rx),
        receiver_stream(relist_rx),
    )
}

fn receiver_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
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

/// Runs the caches and controllers until the future is dropped (on losing the lease or on
/// shutdown). Marks `health` synced once every cache has listed.
pub async fn run(client: Client, metrics: Arc<Metrics>, health: Health, settings: Settings) {
    let (pods, pods_w) = reflector::store();
    let (svcs, svcs_w) = reflector::store();
    let (eps, eps_w) = reflector::store();
    let (tables, tables_w) = reflector::store();
    let (roles, roles_w) = reflector::store();
    let (role_bindings, role_bindings_w) = reflector::store();
    let (binding, binding_w) = reflector::store();
    let (svc_t, svc_ns, svc_relist) = ns_trigger();
    let (rt_t, rt_ns, rt_relist) = ns_trigger();
    let (rbac_t, rbac_ns, rbac_relist) = ns_trigger();
    let wake_binding = Arc::new(Notify::new());
    let names = &settings.sidecar_names;

    let reflectors = future::join(
        future::join4(
            reflect(
                "Pod",
                Api::<Pod>::all(client.clone()),
                watcher::Config::default().labels(LABEL_APP_ID),
                pods_w,
                strip_pod,
                Triggers::new(&[&svc_t, &rt_t, &rbac_t], &[&wake_binding]),
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
                    services::desired::LABEL_MANAGED_BY,
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
    let recorder = |c: ControllerName| {
        Reporter::new(
            Recorder::new(
                client.clone(),
                EventReporter {
                    controller: REPORTER.to_owned(),
                    instance: Some(settings.instance.clone()),
                },
            ),
            c,
        )
    };
    let svc_ctx = Arc::new(Context::new(
        client.clone(),
        stores.clone(),
        metrics.clone(),
        services::State::new(settings.service_grace, recorder(ControllerName::AppService)),
    ));
    let rt_ctx = Arc::new(Context::new(
        client.clone(),
        stores.clone(),
        metrics.clone(),
        (),
    ));
    let rbac_ctx = Arc::new(Context::new(
        client.clone(),
        stores.clone(),
        metrics.clone(),
        sidecar_rbac::State {
            names: settings.sidecar_names.clone(),
        },
    ));
    let ep_ctx = Arc::new(Context::new(
        client.clone(),
        stores.clone(),
        metrics.clone(),
        endpoints::State {
            reporter: recorder(ControllerName::HttpEndpoint),
        },
    ));

    let controllers = async move {
        // Reconciling before the caches are complete could delete Services whose pods are
        // simply not listed yet (or revoke a sidecar's access).
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
        info!("caches synced: starting the controllers");
        let namespaces = || Api::<Namespace>::all(client.clone());
        let svc_ctrl = Controller::new(namespaces(), watcher::Config::default())
            .reconcile_on(svc_ns)
            .reconcile_all_on(svc_relist)
            .with_config(controller::Config::default().concurrency(8));
        let rt_ctrl = Controller::new(namespaces(), watcher::Config::default())
            .reconcile_on(rt_ns)
            .reconcile_all_on(rt_relist)
            .with_config(controller::Config::default().concurrency(8));
        let rbac_ctrl = Controller::new(namespaces(), watcher::Config::default())
            .reconcile_on(rbac_ns)
            .reconcile_all_on(rbac_relist)
            .with_config(controller::Config::default().concurrency(8));
        let ep_ctrl = Controller::new(
            Api::<HttpEndpoint>::all(client.clone()),
            watcher::Config::default(),
        )
        .with_config(controller::Config::default().concurrency(8));
        let own_caches = (
            svc_ctrl.store(),
            rt_ctrl.store(),
            rbac_ctrl.store(),
            ep_ctrl.store(),
        );
        let synced = async move {
            let _ = future::join4(
                own_caches.0.wait_until_ready(),
                own_caches.1.wait_until_ready(),
                own_caches.2.wait_until_ready(),
                own_caches.3.wait_until_ready(),
            )
            .await;
            info!("all caches synced: ready");
            health.set_caches_synced(true);
        };
        let svc_run = svc_ctrl
            .run(
                services::reconcile,
                error_policy(services::CONTROLLER),
                svc_ctx,
            )
            .for_each(log_result);
        let rt_run = rt_ctrl
            .run(
                routing::reconcile,
                error_policy(routing::CONTROLLER),
                rt_ctx,
            )
            .for_each(log_result);
        let rbac_run = rbac_ctrl
            .run(
                sidecar_rbac::reconcile,
                error_policy(sidecar_rbac::SECRETS),
                rbac_ctx.clone(),
            )
            .for_each(log_result);
        let binding_run = sidecar_rbac::run_cluster_binding(rbac_ctx, wake_binding);
        let ep_run = ep_ctrl
            .run(
                endpoints::reconcile,
                error_policy(endpoints::CONTROLLER),
                ep_ctx,
            )
            .for_each(log_result);
        future::join3(
            synced,
            future::join3(svc_run, rt_run, rbac_run),
            future::join(binding_run, ep_run),
        )
        .await;
    };
    future::join(reflectors, controllers).await;
}

async fn log_result<K, E1, E2>(r: Result<(ObjectRef<K>, Action), controller::Error<E1, E2>>)
where
    K: Resource,
    K::DynamicType: Debug,
    E1: std::error::Error,
    E2: std::error::Error,
{
    match r {
        Ok((obj, _)) => debug!(object = %obj, "reconciled"),
        // Already counted and logged by error_policy.
        Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(controller::Error::ObjectNotFound(obj)) => {
            debug!(object = %obj, "trigger for an object not in the cache")
        }
        Err(e) => warn!(error = %e, "controller"),
    }
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
