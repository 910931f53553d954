//! Kubernetes Events about pods, as a kubelet records them (`kubectl describe pod` shows them):
//! Scheduled, Started, Killing, Unhealthy, BackOff, Failed, FailedMount…

use k8s_openapi::api::core::v1::Pod;
use kube::Resource as _;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Who reports: the kubelet of this node.
pub fn recorder(client: kube::Client, node: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: "ferry-kubelet".to_owned(),
            instance: Some(node.to_owned()),
        },
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// Records the event in the background; a failure to record is only logged. `field_path` names
/// the container it is about (`spec.containers{app}`), as the kubelet's events do.
pub fn emit(
    recorder: &Recorder,
    pod: &Pod,
    field_path: Option<String>,
    kind: Kind,
    reason: &str,
    note: String,
) {
    let recorder = recorder.clone();
    let mut reference = pod.object_ref(&());
    reference.field_path = field_path;
    let event = Event {
        type_: match kind {
            Kind::Normal => EventType::Normal,
            Kind::Warning => EventType::Warning,
        },
        reason: reason.to_owned(),
        // Notes are limited to 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: reason.to_owned(),
        secondary: None,
    };
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, reason = %event.reason, "cannot record an event");
        }
    });
}
