//! RoutingTables: one per namespace that has apps or HTTPEndpoints, named [`desired::TABLE_NAME`].
//!
//! The reconcile key is a namespace. It is triggered by every change to the namespace's pods,
//! Services, HTTPEndpoints and RoutingTable, always after the cache it reads has taken the change
//! in (see `runtime`), so the table follows the namespace within a watch round trip. The spec is
//! applied only when it differs from the cached one; the status (`observedGeneration`,
//! `syncedAt`, counts, conditions) whenever the spec was written or the status is behind.

pub mod desired;
#[cfg(test)]
mod scenarios;

use std::{sync::Arc, time::Duration};

use ferry_api::routing_table::{
    API_VERSION, CONDITION_SYNCED, KIND, RoutingTable, RoutingTableStatus,
};
use k8s_openapi::{
    api::core::v1::Namespace,
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::{Span, debug, field, info, instrument};

use crate::{
    FIELD_MANAGER, apps,
    context::{Context, RESYNC, ReconcileError, Stores},
    metrics::ControllerName,
    services::desired::LABEL_MANAGED_BY,
};

pub use desired::{TABLE_NAME, Table};

pub const CONTROLLER: ControllerName = ControllerName::RoutingTable;

/// The condition that says whether every app has its Service (no name clash).
pub const CONDITION_APP_SERVICES: &str = "AppServices";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot apply RoutingTable {namespace}/{TABLE_NAME}: {source}")]
    Apply {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write the status of RoutingTable {namespace}/{TABLE_NAME}: {source}")]
    Status {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete RoutingTable {namespace}/{TABLE_NAME}: {source}")]
    Delete {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Status { .. } => "status",
            Self::Delete { .. } => "delete",
        }
    }
}

/// The RoutingTable object applied for `table` (spec and ownership marks only).
pub fn table_object(namespace: &str, table: &Table) -> RoutingTable {
    RoutingTable {
        metadata: ObjectMeta {
            name: Some(TABLE_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some([(LABEL_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: table.spec.clone(),
        status: None,
    }
}

/// The status for `table` at `generation`, keeping condition transition times from `previous`.
pub fn status(
    table: &Table,
    generation: Option<i64>,
    previous: Option<&RoutingTableStatus>,
    now: Timestamp,
) -> RoutingTableStatus {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let apps = table.spec.apps.len();
    let endpoints = table.spec.http_endpoints.len();
    let not_ready = table
        .spec
        .http_endpoints
        .iter()
        .filter(|e| !e.ready)
        .count();
    let synced = condition(
        CONDITION_SYNCED,
        true,
        "Synced",
        format!("{apps} apps, {endpoints} HTTPEndpoints ({not_ready} not ready)"),
        generation,
        previous,
        now,
    );
    let services = if table.conflicts.is_empty() {
        condition(
            CONDITION_APP_SERVICES,
            true,
            "Managed",
            "every app has its Service".to_owned(),
            generation,
            previous,
            now,
        )
    } else {
        let list: Vec<String> = table
            .conflicts
            .iter()
            .take(10)
            .map(|(app, svc)| format!("{svc} (app {app})"))
            .collect();
        let more = table.conflicts.len().saturating_sub(list.len());
        let mut message = format!(
            "Services exist that {FIELD_MANAGER} does not manage; left alone, their apps are not \
             listed: {}",
            list.join(", ")
        );
        if more > 0 {
            message.push_str(&format!(" and {more} more"));
        }
        condition(
            CONDITION_APP_SERVICES,
            false,
            "ServiceConflict",
            message,
            generation,
            previous,
            now,
        )
    };
    RoutingTableStatus {
        observed_generation: generation,
        synced_at: Some(Time(now)),
        apps: count(apps),
        http_endpoints: count(endpoints),
        conditions: vec![synced, services],
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&RoutingTableStatus>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether `have` says what `want` says, apart from the times.
fn status_matches(have: Option<&RoutingTableStatus>, want: &RoutingTableStatus) -> bool {
    let Some(have) = have else { return false };
    let strip = |s: &RoutingTableStatus| {
        s.conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                    c.observed_generation,
                )
            })
            .collect::<Vec<_>>()
    };
    have.observed_generation == want.observed_generation
        && have.apps == want.apps
        && have.http_endpoints == want.http_endpoints
        && strip(have) == strip(want)
}

/// The table for `namespace` from what the caches hold now.
pub fn desired_for(stores: &Stores, namespace: &str) -> Option<Table> {
    let pods = stores.pods_in(namespace);
    let found = apps::in_namespace(namespace, pods.iter().map(|p| &**p));
    let services = stores.services_in(namespace);
    let endpoints = stores.endpoints_in(namespace);
    desired::table(
        &found,
        services.iter().map(|s| &**s),
        endpoints.iter().map(|e| &**e),
    )
}

#[instrument(skip_all, fields(namespace = field::Empty))]
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let namespace = ns.name_any();
    Span::current().record("namespace", namespace.as_str());
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let want = desired_for(&ctx.stores, &namespace);
    let current = ctx.stores.table(&namespace);
    let api: Api<RoutingTable> = Api::namespaced(ctx.client.clone(), &namespace);

    let Some(want) = want else {
        if let Some(cur) = current.filter(|c| c.metadata.deletion_timestamp.is_none()) {
            info!("nothing left in the namespace: deleting its RoutingTable");
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: cur.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(TABLE_NAME, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(source) => return Err(Error::Delete { namespace, source }),
            }
        }
        ctx.backoff.reset(CONTROLLER, &namespace);
        return Ok(Action::requeue(RESYNC));
    };

    if current
        .as_ref()
        .is_some_and(|c| c.metadata.deletion_timestamp.is_some())
    {
        // Being deleted (by someone): write it anew once it is gone.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let object = table_object(&namespace, &want);
    let spec_current = current.as_ref().is_some_and(|c| {
        c.spec == object.spec && c.labels().get(LABEL_MANAGED_BY) == Some(&FIELD_MANAGER.to_owned())
    });
    let (generation, previous) = if spec_current {
        let c = current.as_ref().expect("spec_current implies a table");
        (c.metadata.generation, c.status.clone())
    } else {
        debug!(
            apps = want.spec.apps.len(),
            endpoints = want.spec.http_endpoints.len(),
            conflicts = want.conflicts.len(),
            "applying"
        );
        let applied = api
            .patch(
                TABLE_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .map_err(|source| Error::Apply {
                namespace: namespace.clone(),
                source,
            })?;
        (applied.metadata.generation, applied.status)
    };
    let status = status(&want, generation, previous.as_ref(), Timestamp::now());
    if spec_current && status_matches(previous.as_ref(), &status) {
        ctx.backoff.reset(CONTROLLER, &namespace);
        return Ok(Action::requeue(RESYNC));
    }
    let patch = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": TABLE_NAME},
        "status": status,
    });
    api.patch_status(
        TABLE_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status {
        namespace: namespace.clone(),
        source,
    })?;
    ctx.backoff.reset(CONTROLLER, &namespace);
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(conflicts: &[(&str, &str)]) -> Table {
        Table {
            spec: Default::default(),
            conflicts: conflicts
                .iter()
                .map(|(a, s)| ((*a).to_owned(), (*s).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn status_reports_generation_counts_and_conflicts() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let s = status(&table(&[]), Some(4), None, t0);
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.synced_at, Some(Time(t0)));
        assert_eq!(s.conditions[0].type_, "Synced");
        assert_eq!(s.conditions[1].status, "True");

        let t1 = Timestamp::from_second(2_000).unwrap();
        let clash = status(&table(&[("cart", "cart-dapr")]), Some(5), Some(&s), t1);
        let c = &clash.conditions[1];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ServiceConflict")
        );
        assert!(c.message.contains("cart-dapr (app cart)"), "{}", c.message);
        assert_eq!(c.last_transition_time, Time(t1));
        assert_eq!(clash.conditions[0].last_transition_time, Time(t0));

        assert!(status_matches(
            Some(&clash),
            &status(&table(&[("cart", "cart-dapr")]), Some(5), Some(&clash), t1)
        ));
        assert!(!status_matches(Some(&clash), &s));
    }

    /// The caches fed with watch events, as the reflectors feed them.
    #[test]
    fn the_table_follows_the_caches() {
        use kube::runtime::{reflector, watcher::Event};

        use crate::{apps::fixtures::pod, services::desired as svc};

        let (pods, mut pods_w) = reflector::store();
        let (services, mut services_w) = reflector::store();
        let (endpoints, mut endpoints_w) = reflector::store();
        let (tables, _tables_w) = reflector::store();
        let stores = Stores {
            pods,
            services,
            endpoints,
            tables,
            sidecar_roles: reflector::store().0,
            sidecar_role_bindings: reflector::store().0,
            sidecar_binding: reflector::store().0,
        };
        assert_eq!(desired_for(&stores, "shop"), None);

        let cart = pod("shop", "cart-1", "cart", 1);
        pods_w.apply_watcher_event(&Event::Apply(cart.clone()));
        pods_w.apply_watcher_event(&Event::Apply(pod("other", "x-1", "x", 1)));
        let ep: ferry_api::HttpEndpoint = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"baseUrl": "https://x"}
        }))
        .unwrap();
        endpoints_w.apply_watcher_event(&Event::Apply(ep.clone()));
        let t = desired_for(&stores, "shop").unwrap();
        assert_eq!(t.spec.apps.len(), 1);
        assert_eq!(t.spec.http_endpoints.len(), 1);

        // The last pod goes, its Service (ours) stays for the grace period: so does the table.
        let service = svc::app_service(
            "shop",
            &ferry_api::AppId::new("cart").unwrap(),
            &Default::default(),
            None,
        )
        .service;
        services_w.apply_watcher_event(&Event::Apply(service.clone()));
        pods_w.apply_watcher_event(&Event::Delete(cart));
        endpoints_w.apply_watcher_event(&Event::Delete(ep));
        let t = desired_for(&stores, "shop").unwrap();
        assert!(t.spec.apps.is_empty() && t.spec.http_endpoints.is_empty());

        services_w.apply_watcher_event(&Event::Delete(service));
        assert_eq!(desired_for(&stores, "shop"), None);
        assert!(desired_for(&stores, "other").is_some());
    }

    #[test]
    fn the_object_is_marked_as_ours() {
        let o = table_object("shop", &table(&[]));
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["apiVersion"], "ferry.dev/v1alpha1");
        assert_eq!(v["metadata"]["name"], "ferry");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "ferry-operator"
        );
    }
}
