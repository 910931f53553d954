//! Watches every pod: binds pending, unassigned pods to this node (there is no scheduler) and
//! hands each pod bound here to its own [`worker`](crate::worker) task.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt as _};
use tokio::sync::{mpsc, watch};

use crate::context::Context;
use crate::events;
use crate::worker::{self, PodEvent, WorkerHandle};

/// Why an unassigned pod is not bound here; `None` when it should be.
pub fn unbindable(pod: &Pod, node_labels: &BTreeMap<String, String>) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("it is being deleted".to_owned());
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if !matches!(phase, None | Some("Pending")) {
        return Some(format!("its phase is {}", phase.unwrap_or_default()));
    }
    let spec = pod.spec.as_ref()?;
    if spec
        .scheduling_gates
        .as_ref()
        .is_some_and(|g| !g.is_empty())
    {
        return Some("it has scheduling gates".to_owned());
    }
    let mismatch = spec
        .node_selector
        .iter()
        .flatten()
        .find(|(k, v)| node_labels.get(*k) != Some(*v));
    mismatch.map(|(k, v)| format!("its nodeSelector {k}={v} does not match the node's labels"))
}

struct Manager {
    ctx: Arc<Context>,
    node_labels: BTreeMap<String, String>,
    workers: HashMap<String, WorkerHandle>,
    /// Pods whose task has finished (deleted or gone): never start them again.
    finished: HashSet<String>,
    /// UIDs listed since the watch (re)started, to find pods that vanished meanwhile.
    relist: Option<HashSet<String>>,
    done_tx: mpsc::UnboundedSender<String>,
    skipped: HashMap<String, String>,
}

/// Runs until `stop` turns true, then stops every pod and returns once all are cleaned up.
pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut manager = Manager {
        node_labels: crate::node::desired_node(&ctx.node)
            .metadata
            .labels
            .unwrap_or_default(),
        ctx,
        workers: HashMap::new(),
        finished: HashSet::new(),
        relist: None,
        done_tx,
        skipped: HashMap::new(),
    };
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => manager.on_event(event),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
            Some(uid) = done_rx.recv() => {
                manager.workers.remove(&uid);
                manager.finished.insert(uid);
            }
            _ = stop.changed() => break,
        }
    }
    tracing::info!(pods = manager.workers.len(), "stopping every pod");
    for handle in manager.workers.values() {
        let _ = handle.tx.send(PodEvent::Shutdown);
    }
    for (_, handle) in manager.workers.drain() {
        let _ = handle.task.await;
    }
}

impl Manager {
    fn on_event(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => self.relist = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (&mut self.relist, pod.uid()) {
                    seen.insert(uid);
                }
                self.observe(pod);
            }
            Event::InitDone => {
                if let Some(seen) = self.relist.take() {
                    for (uid, handle) in &self.workers {
                        if !seen.contains(uid) {
                            let _ = handle.tx.send(PodEvent::Gone(None));
                        }
                    }
                }
            }
            Event::Apply(pod) => self.observe(pod),
            Event::Delete(pod) => {
                let Some(uid) = pod.uid() else { return };
                self.skipped.remove(&uid);
                self.finished.remove(&uid);
                if let Some(handle) = self.workers.get(&uid) {
                    let _ = handle.tx.send(PodEvent::Gone(Some(Arc::new(pod))));
                }
            }
        }
    }

    fn observe(&mut self, pod: Pod) {
        let Some(uid) = pod.uid() else {
            return;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() {
            match unbindable(&pod, &self.node_labels) {
                None => {
                    self.skipped.remove(&uid);
                    tokio::spawn(bind(self.ctx.clone(), pod));
                }
                Some(why) => {
                    if self.skipped.get(&uid) != Some(&why) {
                        tracing::info!(pod = %key(&pod), %why, "not binding the pod");
                        self.skipped.insert(uid, why);
                    }
                }
            }
            return;
        }
        if node != self.ctx.node.name {
            return;
        }
        let pod = Arc::new(pod);
        if let Some(handle) = self.workers.get(&uid) {
            let _ = handle.tx.send(PodEvent::Updated(pod));
        } else if !self.finished.contains(&uid) {
            let handle = worker::spawn(self.ctx.clone(), pod, self.done_tx.clone());
            self.workers.insert(uid, handle);
        }
    }
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Binds the pod to this node through the `binding` subresource, as a scheduler does.
async fn bind(ctx: Arc<Context>, pod: Pod) {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.uid(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(ctx.node.name.clone()),
            ..Default::default()
        },
    };
    let result: Result<serde_json::Value, kube::Error> = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await;
    match result {
        Ok(_) => {
            tracing::info!(pod = %format!("{namespace}/{name}"), node = %ctx.node.name, "pod bound");
            let note = format!(
                "Successfully assigned {namespace}/{name} to {}",
                ctx.node.name
            );
            events::emit(
                &ctx.events,
                &pod,
                None,
                events::Kind::Normal,
                "Scheduled",
                note,
            );
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            tracing::debug!(pod = %format!("{namespace}/{name}"), reason = %e.message, "pod not bound");
        }
        Err(e) => {
            tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "cannot bind the pod")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        [("kubernetes.io/os".to_owned(), "linux".to_owned())].into()
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut value = serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "c"}]},
        });
        if let (Some(spec), Some(extra)) = (value["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn binds_plain_pending_pods() {
        assert_eq!(unbindable(&pod(serde_json::json!({})), &labels()), None);
        assert_eq!(
            unbindable(
                &pod(serde_json::json!({"nodeSelector": {"kubernetes.io/os": "linux"}})),
                &labels()
            ),
            None
        );
    }

    #[test]
    fn leaves_gated_mismatched_and_deleted_pods() {
        let gated = pod(serde_json::json!({"schedulingGates": [{"name": "wait"}]}));
        assert!(unbindable(&gated, &labels()).is_some());
        let elsewhere = pod(serde_json::json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            unbindable(&elsewhere, &labels()).as_deref(),
            Some("its nodeSelector disk=ssd does not match the node's labels")
        );
        let mut deleted = pod(serde_json::json!({}));
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert!(unbindable(&deleted, &labels()).is_some());
    }
}
