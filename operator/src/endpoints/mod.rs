//! HTTPEndpoint validation: each HTTPEndpoint gets a `Ready` condition (True with reason `Valid`,
//! or False with the first problem's reason) for its current generation, written by server-side
//! apply on the status subresource, and an Event whenever that condition changes.

#[cfg(test)]
mod scenarios;
pub mod validate;

use std::sync::Arc;

use ferry_api::http_endpoint::{
    API_VERSION, CONDITION_READY, HttpEndpoint, HttpEndpointStatus, KIND,
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

pub use validate::{Reason, Verdict, validate};

pub const CONTROLLER: ControllerName = ControllerName::HttpEndpoint;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTPEndpoint has no namespace")]
    NoNamespace,
    #[error("cannot write the status of HTTPEndpoint {namespace}/{name}: {source}")]
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

/// The `Ready` condition for `verdict` at `generation`, keeping the transition time of
/// `previous` when the status did not change.
pub fn ready_condition(
    verdict: &Verdict,
    generation: Option<i64>,
    previous: Option<&Condition>,
    now: Timestamp,
) -> Condition {
    let status = if verdict.ready() { "True" } else { "False" };
    let last_transition_time = previous
        .filter(|p| p.status == status)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: CONDITION_READY.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.as_str().to_owned(),
        // Condition messages are limited to 32 kB; ours are far shorter, clip all the same.
        message: clip_note(verdict.message.clone()),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Whether the stored status already says what `verdict` says for `generation`.
pub fn status_current(
    status: Option<&HttpEndpointStatus>,
    verdict: &Verdict,
    generation: Option<i64>,
) -> bool {
    let Some(status) = status else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY);
    status.observed_generation == generation
        && ready.is_some_and(|c| {
            c.status == if verdict.ready() { "True" } else { "False" }
                && c.reason == verdict.reason.as_str()
                && c.message == clip_note(verdict.message.clone())
                && c.observed_generation == generation
        })
}

#[instrument(skip_all, fields(namespace = field::Empty, name = field::Empty))]
pub async fn reconcile(ep: Arc<HttpEndpoint>, ctx: Arc<Context<State>>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = ep.name_any();
    let namespace = ep.namespace().ok_or(Error::NoNamespace)?;
    Span::current().record("namespace", namespace.as_str());
    Span::current().record("name", name.as_str());
    if ep.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let verdict = validate(&ep);
    let generation = ep.metadata.generation;
    if status_current(ep.status.as_ref(), &verdict, generation) {
        ctx.backoff.reset(CONTROLLER, &backoff_key(&*ep));
        return Ok(Action::requeue(RESYNC));
    }
    let previous = ep
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
        "status": HttpEndpointStatus {
            observed_generation: generation,
            conditions: vec![condition.clone()],
        },
    });
    let api: Api<HttpEndpoint> = Api::namespaced(ctx.client.clone(), &namespace);
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
        info!(ready = %condition.status, reason = %condition.reason, "HTTPEndpoint validated");
        let report = Report {
            regarding: ep.object_ref(&()),
            warning: !verdict.ready(),
            reason: verdict.reason.as_str(),
            note: clip_note(verdict.message.clone()),
        };
        ctx.state.reporter.publish(report, &ctx.metrics).await;
    }
    ctx.backoff.reset(CONTROLLER, &backoff_key(&*ep));
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(reason: Reason, message: &str) -> Verdict {
        Verdict {
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn the_condition_keeps_its_transition_time_while_the_status_holds() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let bad = ready_condition(&verdict(Reason::InvalidHeader, "h"), Some(1), None, t0);
        assert_eq!(bad.status, "False");
        assert_eq!(bad.reason, "InvalidHeader");
        assert_eq!(bad.last_transition_time, Time(t0));
        let still_bad = ready_condition(
            &verdict(Reason::InvalidBaseURL, "u"),
            Some(2),
            Some(&bad),
            t1,
        );
        assert_eq!(still_bad.last_transition_time, Time(t0));
        let good = ready_condition(&verdict(Reason::Valid, "ok"), Some(3), Some(&still_bad), t1);
        assert_eq!(good.status, "True");
        assert_eq!(good.last_transition_time, Time(t1));
        assert_eq!(good.observed_generation, Some(3));
    }

    #[test]
    fn status_is_current_only_for_the_same_generation_and_verdict() {
        let v = verdict(Reason::Valid, "ok");
        let c = ready_condition(&v, Some(2), None, Timestamp::now());
        let status = HttpEndpointStatus {
            observed_generation: Some(2),
            conditions: vec![c],
        };
        assert!(status_current(Some(&status), &v, Some(2)));
        assert!(!status_current(Some(&status), &v, Some(3)));
        assert!(!status_current(
            Some(&status),
            &verdict(Reason::InvalidTLS, "x"),
            Some(2)
        ));
        assert!(!status_current(None, &v, Some(2)));
    }
}
