//! App Services: a headless Service `<app-id>-dapr` for every app ID with live pods.
//!
//! The reconcile key is a namespace: its apps come and go with pods, so no single object stands
//! for an app. Each reconcile reads the caches (pods, Services, the RoutingTable), applies the
//! Services that are missing or out of date, and deletes those of ours whose app has had no pod
//! for the grace period.
//!
//! Ownership: a Service is ours when it carries `app.kubernetes.io/managed-by: ferry-operator`.
//! It also gets a controller owner reference to the namespace's RoutingTable (once that exists),
//! which the operator owns too: deleting the RoutingTable CRD on uninstall removes every app
//! Service by garbage collection, and `kubectl get svc -o yaml` says who made it. A Service with
//! the name but not the label is someone else's: it is never written; the clash is reported as
//! a Warning Event on a pod of the app and in the RoutingTable's status (see `routing`).

pub mod desired;
#[cfg(test)]
mod scenarios;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Namespace, Pod, Service},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::controller::Action,
};
use tracing::{Span, debug, field, info, instrument};

use crate::{
    FIELD_MANAGER, apps,
    context::{Context, RESYNC, ReconcileError, owner_reference},
    metrics::ControllerName,
    reports::{Report, Reporter},
};

pub const CONTROLLER: ControllerName = ControllerName::AppService;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot apply Service {namespace}/{name}: {source}")]
    Apply {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete Service {namespace}/{name}: {source}")]
    Delete {
        namespace: String,
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

/// What this controller alone keeps: how long a Service outlives its app's last pod, the
/// reporter of its Events, and what it remembers between reconciles: when each Service of ours
/// lost its last pod, by namespace and Service name. Kept in memory: after a restart or a change
/// of leader the grace period starts again, which errs on the side of keeping a Service.
pub struct State {
    grace: Duration,
    reporter: Reporter,
    orphaned_since: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl State {
    pub fn new(grace: Duration, reporter: Reporter) -> Self {
        Self {
            grace,
            reporter,
            orphaned_since: Mutex::default(),
        }
    }
}

/// What one reconcile of a namespace does.
#[derive(Debug, Default)]
pub struct Plan {
    /// Services to apply (missing or out of date).
    pub apply: Vec<Service>,
    /// Services of ours to delete, as (name, uid): their app has had no pod for the grace period.
    pub delete: Vec<(String, Option<String>)>,
    /// Every problem seen (the reporter publishes the new ones).
    pub reports: Vec<Report>,
    /// When to look again at the latest (a grace period running out, a Service being deleted).
    pub requeue: Duration,
}

/// Decides what to do about the app Services of `namespace`, from its live pods and Services.
/// `orphaned_since` is the namespace's grace timers; it is updated.
pub fn plan(
    namespace: &str,
    pods: &[Arc<Pod>],
    services: &[Arc<Service>],
    owner: Option<&OwnerReference>,
    orphaned_since: &mut HashMap<String, Instant>,
    grace: Duration,
    now: Instant,
) -> Plan {
    let found = apps::in_namespace(namespace, pods.iter().map(|p| &**p));
    let services: BTreeMap<String, &Service> =
        services.iter().map(|s| (s.name_any(), &**s)).collect();
    let mut plan = Plan {
        requeue: RESYNC,
        ..Plan::default()
    };
    for bad in &found.invalid {
        plan.reports.push(Report::warning(
            bad.pod.clone(),
            "InvalidAppID",
            format!(
                "label {}: {}; no Service is made for this pod",
                apps::LABEL_APP_ID,
                bad.error
            ),
        ));
    }

    for app in found.apps.values() {
        let want = desired::app_service(namespace, &app.id, &app.annotations, owner.cloned());
        let name = desired::service_name(&app.id);
        orphaned_since.remove(&name);
        if let Some(first) = want.problems.first() {
            let mut note = want
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if want.more_problems > 0 {
                note.push_str(&format!(" (and {} more)", want.more_problems));
            }
            plan.reports
                .push(Report::warning(app.pod.clone(), first.reason(), note));
        }
        match services.get(&name) {
            Some(existing) if !desired::is_ours(existing) => {
                plan.reports.push(Report::warning(
                    app.pod.clone(),
                    "ServiceConflict",
                    format!(
                        "Service {namespace}/{name} exists and is not managed by {FIELD_MANAGER} \
                         (no label {}={FIELD_MANAGER}); it is left as it is, so app {} has no \
                         Ferry Service. Rename or remove it.",
                        desired::LABEL_MANAGED_BY,
                        app.id
                    ),
                ));
            }
            Some(existing) if existing.metadata.deletion_timestamp.is_some() => {
                // Being deleted (by us or the garbage collector): make it again once it is gone.
                plan.requeue = plan.requeue.min(Duration::from_secs(1));
            }
            Some(existing) if desired::up_to_date(existing, &want.service) => {}
            _ => plan.apply.push(want.service),
        }
    }

    // Services of ours whose app has no live pod: deleted after the grace period.
    for (name, svc) in &services {
        if !desired::is_ours(svc) || svc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let app = desired::app_of_service(svc).unwrap_or_default();
        if found.apps.keys().any(|id| id.as_str() == app) {
            continue;
        }
        let since = *orphaned_since.entry(name.clone()).or_insert(now);
        let left = grace.saturating_sub(now.saturating_duration_since(since));
        if left.is_zero() {
            plan.delete.push((name.clone(), svc.uid()));
        } else {
            plan.requeue = plan.requeue.min(left);
        }
    }
    // Forget the timers of Services that are gone.
    orphaned_since.retain(|name, _| services.contains_key(name));
    plan
}

#[instrument(skip_all, fields(namespace = field::Empty))]
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context<State>>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let namespace = ns.name_any();
    Span::current().record("namespace", namespace.as_str());
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let owner = ctx
        .stores
        .table(&namespace)
        .filter(|rt| rt.metadata.deletion_timestamp.is_none())
        .and_then(|rt| owner_reference(&*rt));
    let plan = {
        let mut timers = ctx
            .state
            .orphaned_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let ns_timers = timers.entry(namespace.clone()).or_default();
        let plan = plan(
            &namespace,
            &ctx.stores.pods_in(&namespace),
            &ctx.stores.services_in(&namespace),
            owner.as_ref(),
            ns_timers,
            ctx.state.grace,
            Instant::now(),
        );
        if ns_timers.is_empty() {
            timers.remove(&namespace);
        }
        plan
    };

    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut first_error = None;
    for svc in &plan.apply {
        let name = svc.name_any();
        debug!(service = %name, "applying");
        if let Err(source) = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(svc),
            )
            .await
        {
            first_error.get_or_insert(Error::Apply {
                namespace: namespace.clone(),
                name,
                source,
            });
        }
    }
    for (name, uid) in &plan.delete {
        info!(service = %name, "no pod left after the grace period: deleting the Service");
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {}
            // Gone already, or replaced by another object of the name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(source) => {
                first_error.get_or_insert(Error::Delete {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    ctx.state
        .reporter
        .sync(&namespace, plan.reports, &ctx.metrics)
        .await;

    match first_error {
        Some(e) => Err(e),
        None => {
            ctx.backoff.reset(CONTROLLER, &namespace);
            Ok(Action::requeue(plan.requeue))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::fixtures::{annotated, pod};

    const GRACE: Duration = Duration::from_secs(30);

    fn arc<T>(v: Vec<T>) -> Vec<Arc<T>> {
        v.into_iter().map(Arc::new).collect()
    }

    /// A Service of ours for `app`, as the cache holds it (the scenarios use it too).
    pub(super) fn ours(app: &str) -> Service {
        let mut s = desired::app_service(
            "shop",
            &ferry_api::AppId::new(app).unwrap(),
            &Default::default(),
            None,
        )
        .service;
        s.metadata.uid = Some(format!("uid-{app}"));
        s
    }

    #[test]
    fn missing_services_are_applied_and_current_ones_left() {
        let pods = arc(vec![
            pod("shop", "cart-1", "cart", 1),
            pod("shop", "pay-1", "pay", 1),
        ]);
        let services = arc(vec![ours("pay")]);
        let mut timers = HashMap::new();
        let p = plan(
            "shop",
            &pods,
            &services,
            None,
            &mut timers,
            GRACE,
            Instant::now(),
        );
        let applied: Vec<String> = p.apply.iter().map(|s| s.name_any()).collect();
        assert_eq!(applied, ["cart-dapr"]);
        assert!(p.delete.is_empty() && p.reports.is_empty());
        assert_eq!(p.requeue, RESYNC);
    }

    #[test]
    fn someone_elses_service_is_never_written_and_the_clash_is_reported() {
        let pods = arc(vec![pod("shop", "cart-1", "cart", 1)]);
        let mut theirs = ours("cart");
        theirs.metadata.labels = None;
        let mut timers = HashMap::new();
        let p = plan(
            "shop",
            &pods,
            &arc(vec![theirs]),
            None,
            &mut timers,
            GRACE,
            Instant::now(),
        );
        assert!(p.apply.is_empty() && p.delete.is_empty());
        assert_eq!(p.reports.len(), 1);
        assert_eq!(p.reports[0].reason, "ServiceConflict");
        assert_eq!(p.reports[0].regarding.name.as_deref(), Some("cart-1"));
    }

    #[test]
    fn a_service_without_pods_goes_after_the_grace_period() {
        let services = arc(vec![ours("cart")]);
        let mut timers = HashMap::new();
        let t0 = Instant::now();
        let p = plan("shop", &[], &services, None, &mut timers, GRACE, t0);
        assert!(p.delete.is_empty());
        assert_eq!(p.requeue, GRACE);
        let p = plan(
            "shop",
            &[],
            &services,
            None,
            &mut timers,
            GRACE,
            t0 + GRACE / 2,
        );
        assert!(p.delete.is_empty());
        assert_eq!(p.requeue, GRACE / 2);
        let p = plan("shop", &[], &services, None, &mut timers, GRACE, t0 + GRACE);
        assert_eq!(
            p.delete,
            vec![("cart-dapr".to_owned(), Some("uid-cart".to_owned()))]
        );

        // A pod coming back stops the clock; the Service's going forgets it.
        let pods = arc(vec![pod("shop", "cart-2", "cart", 2)]);
        plan(
            "shop",
            &pods,
            &services,
            None,
            &mut timers,
            GRACE,
            t0 + GRACE,
        );
        assert!(timers.is_empty());
        plan("shop", &[], &services, None, &mut timers, GRACE, t0);
        plan("shop", &[], &[], None, &mut timers, GRACE, t0);
        assert!(timers.is_empty());
    }

    #[test]
    fn an_owner_reference_missing_from_the_live_service_is_added() {
        let owner = OwnerReference {
            api_version: "ferry.dev/v1alpha1".into(),
            kind: "RoutingTable".into(),
            name: "ferry".into(),
            uid: "rt-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let pods = arc(vec![pod("shop", "cart-1", "cart", 1)]);
        let mut timers = HashMap::new();
        let p = plan(
            "shop",
            &pods,
            &arc(vec![ours("cart")]),
            Some(&owner),
            &mut timers,
            GRACE,
            Instant::now(),
        );
        assert_eq!(p.apply.len(), 1);
        assert_eq!(p.apply[0].metadata.owner_references, Some(vec![owner]));
    }

    #[test]
    fn bad_ids_and_bad_annotations_are_reported_on_their_pods() {
        let pods = arc(vec![
            pod("shop", "bad-1", "Bad_ID", 1),
            annotated(
                pod("shop", "cart-1", "cart", 1),
                &[("dapr.io/grpc-port", "x")],
            ),
        ]);
        let mut timers = HashMap::new();
        let p = plan("shop", &pods, &[], None, &mut timers, GRACE, Instant::now());
        let reports: Vec<(&str, Option<&str>)> = p
            .reports
            .iter()
            .map(|r| (r.reason, r.regarding.name.as_deref()))
            .collect();
        assert_eq!(
            reports,
            [
                ("InvalidAppID", Some("bad-1")),
                ("InvalidPortAnnotation", Some("cart-1"))
            ]
        );
        assert_eq!(p.apply.len(), 1, "the app still gets its Service");
    }
}
