//! Injection warnings as Events: what the injector had to say about a pod's annotations (an old
//! or misspelt name, a Dapr feature Ferry ignores), shown by `kubectl describe pod`.
//!
//! kubectl prints admission warnings to whoever creates a pod, but a Deployment's pods are
//! created by the ReplicaSet controller, which shows them to nobody. So the injector records
//! them in the pod's annotation `ferry.dev/injection-warnings` (one per line), and this
//! controller makes them one Warning Event `InjectionWarnings` on the pod, with its UID (at
//! admission a `generateName` pod has neither name nor UID, and `kubectl describe pod` selects
//! Events by name, namespace and UID). The admission path stays free of API calls.
//!
//! Each pod is reported once. The Event's name is derived from the pod's UID, so a create that
//! meets an existing Event (409: reported before a restart, or by another replica) is the
//! same as success; the UIDs already reported are remembered so that a pod's later changes
//! cost no call. kube-rs's `Recorder` names Events by the clock, and would report every such
//! pod again after each restart of the operator.

#[cfg(test)]
mod scenarios;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use ferry_api::annotations::INJECTION_WARNINGS;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod},
        events::v1::Event,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Resource, ResourceExt, api::PostParams, runtime::controller::Action};
use tracing::{Span, debug, field, instrument};

use crate::{
    REPORTER,
    context::{Context, RESYNC, ReconcileError},
    metrics::ControllerName,
};

pub const CONTROLLER: ControllerName = ControllerName::InjectionWarnings;

/// The Events' reason, fixed (it is also a metric label).
pub const REASON: &str = "InjectionWarnings";

/// Event notes are limited to 1 kB by the API server.
const MAX_NOTE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the injection-warnings Event of pod {namespace}/{pod}: {source}")]
    Create {
        namespace: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create_event",
        }
    }
}

/// What this controller alone keeps: its replica's name for the Events, and the UIDs of the
/// pods reported, by namespace.
pub struct State {
    instance: String,
    reported: Mutex<HashMap<String, HashSet<String>>>,
}

impl State {
    pub fn new(instance: String) -> Self {
        Self {
            instance,
            reported: Mutex::default(),
        }
    }
}

/// The warnings a pod carries: the annotation's non-empty lines.
pub fn warnings_of(pod: &Pod) -> Vec<&str> {
    pod.annotations()
        .get(INJECTION_WARNINGS)
        .map(|v| v.lines().map(str::trim).filter(|l| !l.is_empty()).collect())
        .unwrap_or_default()
}

/// The warnings as one Event note: as many whole warnings as fit in 1 kB, then how many more
/// there are and where they are, so that none is dropped silently.
pub fn note(warnings: &[&str]) -> String {
    let total = warnings.iter().map(|w| w.len() + 2).sum::<usize>();
    if total <= MAX_NOTE + 2 {
        return warnings.join("; ");
    }
    let rest = |n: usize| format!("; and {n} more in the pod's annotation {INJECTION_WARNINGS}");
    // Room for the longest ending.
    let budget = MAX_NOTE - rest(warnings.len()).len();
    let mut note = String::new();
    let mut shown = 0;
    for w in warnings {
        let sep = if shown == 0 { 0 } else { 2 };
        if note.len() + sep + w.len() > budget {
            break;
        }
        if shown > 0 {
            note.push_str("; ");
        }
        note.push_str(w);
        shown += 1;
    }
    if shown == 0 {
        // One warning longer than a note (the injector keeps them far shorter).
        return format!(
            "{} injection warning(s): see the pod's annotation {INJECTION_WARNINGS}",
            warnings.len()
        );
    }
    note.push_str(&rest(warnings.len() - shown));
    note
}

/// The Event's name: unique to the pod's UID (a pod of the same name made again is another
/// pod), within the 253 characters of an object name.
pub fn event_name(pod_name: &str, uid: &str) -> String {
    let suffix = format!(".{uid}");
    let mut name: String = pod_name
        .chars()
        .take(253usize.saturating_sub(suffix.len()))
        .collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name + &suffix
}

/// The Event for `pod`, or `None` when it has nothing to report (no warnings, no UID yet, or
/// being deleted).
pub fn event(pod: &Pod, instance: &str, now: Timestamp) -> Option<Event> {
    let warnings = warnings_of(pod);
    let (name, uid) = (pod.metadata.name.as_deref()?, pod.metadata.uid.as_deref()?);
    if warnings.is_empty() || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    Some(Event {
        metadata: ObjectMeta {
            name: Some(event_name(name, uid)),
            namespace: pod.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".to_owned()),
        reason: Some(REASON.to_owned()),
        action: Some("Inject".to_owned()),
        note: Some(note(&warnings)),
        regarding: Some(pod.object_ref(&())),
        reporting_controller: Some(REPORTER.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        ..Event::default()
    })
}

/// Reports the pods of a namespace not reported before.
#[instrument(skip_all, fields(namespace = field::Empty))]
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context<State>>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let namespace = ns.name_any();
    Span::current().record("namespace", namespace.as_str());
    let mut pods = ctx.stores.pods_in(&namespace);
    // In a fixed order (the cache has none), for the logs and the tests.
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let warned: HashSet<String> = pods
        .iter()
        .filter(|p| !warnings_of(p).is_empty())
        .filter_map(|p| p.uid())
        .collect();
    let pending: Vec<Event> = {
        let mut reported = ctx.state.reported.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the pods that are gone (or no longer carry warnings).
        let done = reported.entry(namespace.clone()).or_default();
        done.retain(|uid| warned.contains(uid));
        let now = Timestamp::now();
        let pending = pods
            .iter()
            .filter(|p| p.uid().is_some_and(|uid| !done.contains(&uid)))
            .filter_map(|p| event(p, &ctx.state.instance, now))
            .collect();
        if done.is_empty() {
            reported.remove(&namespace);
        }
        pending
    };

    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut first_error = None;
    for ev in pending {
        let regarding = ev.regarding.clone().unwrap_or_default();
        let (pod, uid) = (
            regarding.name.unwrap_or_default(),
            regarding.uid.unwrap_or_default(),
        );
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                ctx.metrics.report(CONTROLLER, REASON);
                debug!(%pod, "injection warnings reported");
            }
            // Reported already, by us before a restart or by another replica.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(%pod, "injection warnings were reported before");
            }
            // Nothing is created in a namespace being deleted, and nobody would read it.
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {
            }
            Err(source) => {
                first_error.get_or_insert(Error::Create {
                    namespace: namespace.clone(),
                    pod,
                    source,
                });
                continue;
            }
        }
        ctx.state
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(namespace.clone())
            .or_default()
            .insert(uid);
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            ctx.backoff.reset(CONTROLLER, &namespace);
            Ok(Action::requeue(RESYNC))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(annotation: Option<&str>) -> Pod {
        let mut p = json!({
            "metadata": {"name": "cart-7d9f-x2k4q", "namespace": "shop", "uid": "u-1",
                         "labels": {"dapr.io/app-id": "cart"}},
        });
        if let Some(a) = annotation {
            p["metadata"]["annotations"] = json!({INJECTION_WARNINGS: a});
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn a_pod_with_warnings_gets_one_warning_event_with_its_uid() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let ev = event(&pod(Some("first\nsecond\n")), "op-1", now).unwrap();
        assert_eq!(ev.metadata.name.as_deref(), Some("cart-7d9f-x2k4q.u-1"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reason.as_deref(), Some(REASON));
        assert_eq!(ev.note.as_deref(), Some("first; second"));
        let r = ev.regarding.unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("Pod"), Some("cart-7d9f-x2k4q"), Some("u-1"))
        );
        assert_eq!(r.namespace.as_deref(), Some("shop"));
        assert!(event(&pod(None), "op-1", now).is_none());
        assert!(event(&pod(Some(" \n")), "op-1", now).is_none());
    }

    #[test]
    fn a_long_list_fits_the_note_and_counts_the_rest() {
        let lines: Vec<String> = (0..20)
            .map(|i| format!("w{i:02} {}", "x".repeat(96)))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let n = note(&refs);
        assert!(n.len() <= MAX_NOTE, "{}", n.len());
        let shown = n.matches("; w").count() + 1;
        assert!(shown >= 8, "{n}");
        assert!(
            n.ends_with(&format!(
                "; and {} more in the pod's annotation ferry.dev/injection-warnings",
                20 - shown
            )),
            "{n}"
        );
        assert_eq!(note(&["a", "b"]), "a; b");
        let huge = "y".repeat(2000);
        assert_eq!(
            note(&[&huge]),
            "1 injection warning(s): see the pod's annotation ferry.dev/injection-warnings"
        );
    }

    #[test]
    fn event_names_stay_valid_object_names() {
        assert_eq!(event_name("p", "u"), "p.u");
        let long = format!("{}-", "a".repeat(260));
        let name = event_name(&long, "0b6f6d0c-1d6d-4a28-9a51-3f1e7c8d9e0f");
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.ends_with(".0b6f6d0c-1d6d-4a28-9a51-3f1e7c8d9e0f"));
        assert!(!name.contains("-."), "{name}");
    }
}
