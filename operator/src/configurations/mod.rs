//! Configuration validation: each Configuration gets a `Ready` condition for its current
//! generation (True with reason `Valid`, or False with reason `InvalidAccessControl` and every
//! problem of its `spec.accessControl`, each naming its field), written by server-side apply on
//! the status subresource, and an Event whenever that condition changes. The check is the one
//! the sidecars apply ([`AccessControlSpec::validate`]), so a Configuration marked Ready is one
//! every sidecar that names it will take; one marked not Ready leaves their last good policy in
//! force.

#[cfg(test)]
mod scenarios;

use std::sync::Arc;

use ferry_api::{
    Configuration,
    configuration::{CONDITION_READY, ConfigurationStatus, KIND},
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::{Span, field, info, instrument};

use crate::{
    FIELD_MANAGER,
    context::{Context, RESYNC, ReconcileError, backoff_key},
    metrics::ControllerName,
    reports::{Report, Reporter, clip_note},
};

pub const CONTROLLER: ControllerName = ControllerName::Configuration;

const API_VERSION: &str = "dapr.io/v1alpha1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Configuration has no namespace")]
    NoNamespace,
    #[error("cannot write the status of Configuration {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::NoNamespace => "no_namespace",
            Self::Status { .. } => "status",
        }
    }
}

/// What this controller alone keeps: the reporter of its Events.
pub struct State {
    pub reporter: Reporter,
}

/// The judgement of one Configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    /// `Valid` or `InvalidAccessControl`.
    pub reason: &'static str,
    pub message: String,
}

/// Judges a Configuration (pure).
pub fn validate(c: &Configuration) -> Verdict {
    let Some(ac) = &c.spec.access_control else {
        return Verdict {
            ready: true,
            reason: "Valid",
            message: "no access control: every caller is allowed".into(),
        };
    };
    match ac.validate() {
        Ok(()) if ac.is_empty() => Verdict {
            ready: true,
            reason: "Valid",
            message: "empty access control: every caller is allowed".into(),
        },
        Ok(()) => Verdict {
            ready: true,
            reason: "Valid",
            message: format!(
                "access control: {} policies, default action {}",
                ac.policies.len(),
                ac.default_action
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .map(str::to_lowercase)
                    .unwrap_or_else(|| "deny (none given)".into()),
            ),
        },
        Err(e) => Verdict {
            ready: false,
            reason: "InvalidAccessControl",
            message: format!(
                "{e}; sidecars that name this Configuration keep their last good policy"
            ),
        },
    }
}

/// The `Ready` condition for `verdict` at `generation`, keeping the transition time of
/// `previous` when the status did not change.
pub fn ready_condition(
    verdict: &Verdict,
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: Timestamp,
) -> Condition {
    let status = if verdict.ready { "True" } else { "False" };
    let last_transition_time = previous
        .filter(|p| p.status == status)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: CONDITION_READY.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.to_owned(),
        message: clip_note(verdict.message.clone()),
        observed_generation: generation,
        last_transition_time,
    }
}

fn status_current(
    status: Option<&ConfigurationStatus>,
    verdict: &Verdict,
    generation: Option<i64>,
) -> bool {
    let Some(status) = status else {
        return false;
    };
    status.observed_generation == generation
        && status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
            .is_some_and(|c| {
                c.status == if verdict.ready { "True" } else { "False" }
                    && c.reason == verdict.reason
                    && c.message == clip_note(verdict.message.clone())
                    && c.observed_generation == generation
            })
}

#[instrument(skip_all, fields(namespace = field::Empty, name = field::Empty))]
pub async fn reconcile(c: Arc<Configuration>, ctx: Arc<Context<State>>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = c.name_any();
    let namespace = c.namespace().ok_or(Error::NoNamespace)?;
    Span::current().record("namespace", namespace.as_str());
    Span::current().record("name", name.as_str());
    if c.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let verdict = validate(&c);
    let generation = c.metadata.generation;
    if status_current(c.status.as_ref(), &verdict, generation) {
        ctx.backoff.reset(CONTROLLER, &backoff_key(&*c));
        return Ok(Action::requeue(RESYNC));
    }
    let previous = c
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_READY));
    let condition = ready_condition(&verdict, generation, previous, Timestamp::now());
    let changed = previous.is_none_or(|p| {
        p.status != condition.status
            || p.reason != condition.reason
            || p.message != condition.message
    });
    let patch = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "status": ConfigurationStatus {
            observed_generation: generation,
            conditions: vec![condition.clone()],
        },
    });
    let api: Api<Configuration> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    })?;
    if changed {
        info!(ready = %condition.status, reason = %condition.reason, "Configuration validated");
        let report = Report {
            regarding: c.object_ref(&()),
            warning: !verdict.ready,
            reason: verdict.reason,
            note: clip_note(verdict.message.clone()),
        };
        ctx.state.reporter.publish(report, &ctx.metrics).await;
    }
    ctx.backoff.reset(CONTROLLER, &backoff_key(&*c));
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(spec: serde_json::Value) -> Configuration {
        serde_json::from_value(json!({"metadata": {"name": "c"}, "spec": spec})).unwrap()
    }

    #[test]
    fn verdicts() {
        let v = validate(&config(json!({"tracing": {"samplingRate": "1"}})));
        assert_eq!((v.ready, v.reason), (true, "Valid"));
        let v = validate(&config(json!({"accessControl": {
            "defaultAction": "Deny",
            "policies": [{"appId": "a", "trustDomain": "public", "namespace": "shop"}],
        }})));
        assert_eq!((v.ready, v.reason), (true, "Valid"));
        assert_eq!(v.message, "access control: 1 policies, default action deny");
        let v = validate(&config(json!({"accessControl": {
            "policies": [{"appId": "a", "namespace": "shop"}],
        }})));
        assert_eq!((v.ready, v.reason), (false, "InvalidAccessControl"));
        assert_eq!(
            v.message,
            r#"invalid access control spec: spec.accessControl.policies[0] (appId "a"): trustDomain is missing; set it to the calling app's trust domain (public unless its Configuration names another); sidecars that name this Configuration keep their last good policy"#
        );
    }

    #[test]
    fn the_condition_keeps_its_transition_time_while_the_status_holds() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let bad = Verdict {
            ready: false,
            reason: "InvalidAccessControl",
            message: "m".into(),
        };
        let c0 = ready_condition(&bad, Some(1), None, t0);
        let c1 = ready_condition(&bad, Some(2), Some(&c0), t1);
        assert_eq!(c1.last_transition_time, Time(t0));
        let good = Verdict {
            ready: true,
            reason: "Valid",
            message: "ok".into(),
        };
        let c2 = ready_condition(&good, Some(3), Some(&c1), t1);
        assert_eq!(
            (c2.status.as_str(), c2.last_transition_time.clone()),
            ("True", Time(t1))
        );
        let status = ConfigurationStatus {
            observed_generation: Some(3),
            conditions: vec![c2],
        };
        assert!(status_current(Some(&status), &good, Some(3)));
        assert!(!status_current(Some(&status), &good, Some(4)));
        assert!(!status_current(Some(&status), &bad, Some(3)));
    }
}
