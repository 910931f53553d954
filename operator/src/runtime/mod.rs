//! What the leader runs: the caches (reflectors) and the controllers over them.
//!
//! The namespace-keyed controllers (app Services, RoutingTables, sidecar Secrets Roles,
//! injection-warnings Events) are triggered from our own reflectors rather than from separate
//! watches: a reflector first updates its cache and only then sends the object's namespace to
//! the controllers, so a reconcile never reads a cache that has not yet seen the change that
//! triggered it. A re-list (after a dropped
//! watch) triggers every namespace, since deletions missed meanwhile carry no namespace. Each
//! reflector triggers only the controllers that read its cache; the sidecar ClusterRoleBinding,
//! which has no namespace, is woken instead.
//!
//! [`run`] is three steps: start the caches (`caches`, which trigger through `triggers`), and
//! once they have listed, build the controllers over them (`Controllers::new`) and run them
//! (`Controllers::run`), each with its own [`Context`].

mod caches;
mod triggers;

use std::{fmt::Debug, sync::Arc, time::Duration};

use ferry_api::{Configuration, http_endpoint::HttpEndpoint};
use futures_util::{StreamExt, future};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Resource,
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Recorder, Reporter as EventReporter},
        reflector::ObjectRef,
        watcher,
    },
};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::{
    REPORTER,
    admin::Health,
    configurations,
    context::{Context, Stores, error_policy},
    endpoints, injection_warnings,
    metrics::{ControllerName, Metrics},
    reports::Reporter,
    routing, services, sidecar_rbac,
};
use caches::Inputs;
use triggers::NsInput;

#[derive(Debug, Clone)]
pub struct Settings {
    pub service_grace: Duration,
    /// The `reportingInstance` of Events (this replica's identity).
    pub instance: String,
    pub sidecar_names: sidecar_rbac::Names,
}

/// Runs the caches and controllers until the future is dropped (on losing the lease or on
/// shutdown). Marks `health` synced once every cache has listed.
pub async fn run(client: Client, metrics: Arc<Metrics>, health: Health, settings: Settings) {
    let (stores, inputs, caches) = caches::start(&client, &settings.sidecar_names);
    let contexts = Contexts::new(&client, &stores, &metrics, &settings);
    let controllers = async move {
        // Reconciling before the caches are complete could delete Services whose pods are
        // simply not listed yet (or revoke a sidecar's access).
        caches::synced(&stores).await;
        info!("caches synced: starting the controllers");
        Controllers::new(&client, inputs)
            .run(contexts, health)
            .await;
    };
    future::join(caches, controllers).await;
}

/// Each controller's context: the shared parts, and the state only it keeps.
struct Contexts {
    services: Arc<Context<services::State>>,
    routing: Arc<Context>,
    sidecar_rbac: Arc<Context<sidecar_rbac::State>>,
    endpoints: Arc<Context<endpoints::State>>,
    configurations: Arc<Context<configurations::State>>,
    injection_warnings: Arc<Context<injection_warnings::State>>,
}

impl Contexts {
    fn new(client: &Client, stores: &Stores, metrics: &Arc<Metrics>, settings: &Settings) -> Self {
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
        let grace = settings.service_grace;
        let names = settings.sidecar_names.clone();
        Self {
            services: context(
                client,
                stores,
                metrics,
                services::State::new(grace, recorder(ControllerName::AppService)),
            ),
            routing: context(client, stores, metrics, ()),
            sidecar_rbac: context(client, stores, metrics, sidecar_rbac::State { names }),
            endpoints: context(
                client,
                stores,
                metrics,
                endpoints::State {
                    reporter: recorder(ControllerName::HttpEndpoint),
                },
            ),
            configurations: context(
                client,
                stores,
                metrics,
                configurations::State {
                    reporter: recorder(ControllerName::Configuration),
                },
            ),
            injection_warnings: context(
                client,
                stores,
                metrics,
                injection_warnings::State::new(settings.instance.clone()),
            ),
        }
    }
}

fn context<S>(
    client: &Client,
    stores: &Stores,
    metrics: &Arc<Metrics>,
    state: S,
) -> Arc<Context<S>> {
    Arc::new(Context::new(
        client.clone(),
        stores.clone(),
        metrics.clone(),
        state,
    ))
}

/// The kube-runtime controllers, built over the caches' triggers, and the cluster binding's
/// wake-up.
struct Controllers {
    services: Controller<Namespace>,
    routing: Controller<Namespace>,
    sidecar_rbac: Controller<Namespace>,
    endpoints: Controller<HttpEndpoint>,
    configurations: Controller<Configuration>,
    injection_warnings: Controller<Namespace>,
    cluster_binding: Arc<Notify>,
}

impl Controllers {
    fn new(client: &Client, inputs: Inputs) -> Self {
        let by_namespace = |input: NsInput| {
            Controller::new(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            )
            .reconcile_on(input.namespaces)
            .reconcile_all_on(input.relists)
            .with_config(controller::Config::default().concurrency(8))
        };
        Self {
            services: by_namespace(inputs.services),
            routing: by_namespace(inputs.routing),
            sidecar_rbac: by_namespace(inputs.sidecar_rbac),
            endpoints: Controller::new(
                Api::<HttpEndpoint>::all(client.clone()),
                watcher::Config::default(),
            )
            .with_config(controller::Config::default().concurrency(8)),
            configurations: Controller::new(
                Api::<Configuration>::all(client.clone()),
                watcher::Config::default(),
            )
            .with_config(controller::Config::default().concurrency(4)),
            injection_warnings: by_namespace(inputs.injection_warnings),
            cluster_binding: inputs.cluster_binding,
        }
    }

    /// Runs every controller until dropped; marks `health` synced once their own caches (of
    /// Namespaces and HTTPEndpoints) have listed too.
    async fn run(self, contexts: Contexts, health: Health) {
        let own_caches = (
            self.services.store(),
            self.routing.store(),
            self.sidecar_rbac.store(),
            self.endpoints.store(),
            self.injection_warnings.store(),
        );
        let synced = async move {
            let _ = future::join5(
                own_caches.0.wait_until_ready(),
                own_caches.1.wait_until_ready(),
                own_caches.2.wait_until_ready(),
                own_caches.3.wait_until_ready(),
                own_caches.4.wait_until_ready(),
            )
            .await;
            info!("all caches synced: ready");
            health.set_caches_synced(true);
        };
        let services = self
            .services
            .run(
                services::reconcile,
                error_policy(services::CONTROLLER),
                contexts.services,
            )
            .for_each(log_result);
        let routing = self
            .routing
            .run(
                routing::reconcile,
                error_policy(routing::CONTROLLER),
                contexts.routing,
            )
            .for_each(log_result);
        let sidecar_rbac = self
            .sidecar_rbac
            .run(
                sidecar_rbac::reconcile,
                error_policy(sidecar_rbac::SECRETS),
                contexts.sidecar_rbac.clone(),
            )
            .for_each(log_result);
        let cluster_binding =
            sidecar_rbac::run_cluster_binding(contexts.sidecar_rbac, self.cluster_binding);
        let endpoints = self
            .endpoints
            .run(
                endpoints::reconcile,
                error_policy(endpoints::CONTROLLER),
                contexts.endpoints,
            )
            .for_each(log_result);
        let configurations = self
            .configurations
            .run(
                configurations::reconcile,
                error_policy(configurations::CONTROLLER),
                contexts.configurations,
            )
            .for_each(log_result);
        let injection_warnings = self
            .injection_warnings
            .run(
                injection_warnings::reconcile,
                error_policy(injection_warnings::CONTROLLER),
                contexts.injection_warnings,
            )
            .for_each(log_result);
        future::join4(
            synced,
            future::join3(services, routing, sidecar_rbac),
            future::join3(cluster_binding, endpoints, injection_warnings),
            configurations,
        )
        .await;
    }
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
