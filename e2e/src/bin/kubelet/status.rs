//! What the node knows about a pod ([`PodRecord`]) and the pod status it implies ([`build`]):
//! phase, conditions and container statuses, as the kubelet reports them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// One container's state, as a runtime would report it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
}

impl RunState {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        RunState::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: RunState,
    pub last_state: Option<RunState>,
    pub restart_count: i32,
    pub ready: bool,
    /// Running and past its startup probe (if any).
    pub started: bool,
    /// An init container with `restartPolicy: Always`.
    pub sidecar: bool,
    /// Exited, and the restart policy will start it again.
    pub will_restart: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str, sidecar: bool, waiting_reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: String::new(),
            container_id: None,
            state: RunState::waiting(waiting_reason, None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            sidecar,
            will_restart: false,
        }
    }

    /// Terminated for good: exited, with no restart coming.
    pub fn finished(&self) -> bool {
        self.exit_code().is_some() && !self.will_restart
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self.state {
            RunState::Terminated { exit_code, .. } => Some(exit_code),
            _ => None,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.exit_code() == Some(0)
    }

    /// Whether this container was ever started.
    pub fn ever_ran(&self) -> bool {
        !matches!(self.state, RunState::Waiting { .. }) || self.last_state.is_some()
    }
}

/// Everything the node knows about one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    pub init: Vec<ContainerRecord>,
    pub main: Vec<ContainerRecord>,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Timestamp,
    pub sandbox_ready: bool,
    /// Every init container completed (sidecars: started). Sticky once true.
    pub initialized: bool,
    /// An init container failed and the restart policy forbids another try.
    pub init_failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The pod phase: Pending until initialized and every container has run; Succeeded or Failed
/// once every container has terminated for good (by exit codes); Running otherwise.
pub fn phase(rec: &PodRecord) -> Phase {
    if rec.init_failed {
        return Phase::Failed;
    }
    if !rec.initialized || rec.main.iter().any(|c| !c.ever_ran()) {
        return Phase::Pending;
    }
    if rec.main.iter().all(ContainerRecord::finished) {
        return if rec.main.iter().all(ContainerRecord::succeeded) {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
    }
    Phase::Running
}

/// When each condition last changed status, so `lastTransitionTime` stays put while the
/// status does.
#[derive(Debug, Default, Clone)]
pub struct ConditionClock(BTreeMap<String, (String, Timestamp)>);

impl ConditionClock {
    /// Starts from the times already in the API (PodScheduled, from the binding).
    pub fn seed(&mut self, status: &PodStatus) {
        for c in status.conditions.iter().flatten() {
            if let Some(t) = &c.last_transition_time {
                self.0.insert(c.type_.clone(), (c.status.clone(), t.0));
            }
        }
    }

    fn stamp(&mut self, kind: &str, status: &str, now: Timestamp) -> Timestamp {
        let entry = self
            .0
            .entry(kind.to_owned())
            .or_insert_with(|| (status.to_owned(), now));
        if entry.0 != status {
            *entry = (status.to_owned(), now);
        }
        entry.1
    }
}

/// The pod status the record implies.
pub fn build(pod: &Pod, rec: &PodRecord, clock: &mut ConditionClock, now: Timestamp) -> PodStatus {
    let generation = pod.metadata.generation;
    let phase = phase(rec);
    let mut conditions = Vec::new();
    let mut condition = |kind: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        conditions.push(PodCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
            message,
            last_transition_time: Some(Time(clock.stamp(kind, status, now))),
            observed_generation: generation,
            ..Default::default()
        });
    };

    condition("PodReadyToStartContainers", rec.sandbox_ready, None, None);
    let incomplete: Vec<&str> = rec
        .init
        .iter()
        .filter(|c| !(if c.sidecar { c.started } else { c.succeeded() }))
        .map(|c| c.name.as_str())
        .collect();
    if rec.initialized || rec.init.is_empty() {
        condition("Initialized", true, None, None);
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        );
    }
    let unready: Vec<&str> = rec
        .main
        .iter()
        .chain(rec.init.iter().filter(|c| c.sidecar))
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let (containers_ready, reason, message) = if phase.is_terminal() {
        (false, Some("PodCompleted"), None)
    } else if unready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let gate = unmet_readiness_gate(pod);
    match (&gate, containers_ready) {
        (Some(gate), true) => condition(
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some(format!(
                "corresponding condition of pod readiness gate {gate:?} does not exist or is not True."
            )),
        ),
        _ => condition("Ready", containers_ready, reason, message.clone()),
    }
    condition("ContainersReady", containers_ready, reason, message);
    condition("PodScheduled", true, None, None);

    PodStatus {
        phase: Some(phase.as_str().to_owned()),
        conditions: Some(conditions),
        host_ip: Some(rec.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: rec.host_ip.clone(),
        }]),
        pod_ip: rec.pod_ip.clone(),
        pod_ips: rec.pod_ip.as_ref().map(|ip| vec![PodIP { ip: ip.clone() }]),
        start_time: Some(Time(rec.start_time)),
        observed_generation: generation,
        init_container_statuses: (!rec.init.is_empty())
            .then(|| rec.init.iter().map(container_status).collect()),
        container_statuses: Some(rec.main.iter().map(container_status).collect()),
        ..Default::default()
    }
}

fn unmet_readiness_gate(pod: &Pod) -> Option<String> {
    let gates = pod.spec.as_ref()?.readiness_gates.as_ref()?;
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    gates
        .iter()
        .find(|g| {
            !conditions
                .into_iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        })
        .map(|g| g.condition_type.clone())
}

fn container_status(c: &ContainerRecord) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(container_state(&c.state)),
        last_state: Some(
            c.last_state
                .as_ref()
                .map(container_state)
                .unwrap_or_default(),
        ),
        ..Default::default()
    }
}

fn container_state(state: &RunState) -> ContainerState {
    match state {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        RunState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        RunState::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                signal: *signal,
                reason: Some(reason.clone()),
                message: message.clone(),
                started_at: started_at.map(Time),
                finished_at: Some(Time(*finished_at)),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn running(name: &str, ready: bool) -> ContainerRecord {
        ContainerRecord {
            state: RunState::Running { started_at: ts(1) },
            ready,
            started: true,
            ..ContainerRecord::new(name, "ferry.test/testapp:1", false, "ContainerCreating")
        }
    }

    fn terminated(name: &str, code: i32) -> ContainerRecord {
        ContainerRecord {
            state: RunState::Terminated {
                exit_code: code,
                signal: None,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started_at: Some(ts(1)),
                finished_at: ts(2),
            },
            ..ContainerRecord::new(name, "img", false, "ContainerCreating")
        }
    }

    fn record(init: Vec<ContainerRecord>, main: Vec<ContainerRecord>) -> PodRecord {
        PodRecord {
            initialized: init
                .iter()
                .all(|c| c.succeeded() || (c.sidecar && c.started)),
            init,
            main,
            pod_ip: Some("10.88.0.2".into()),
            host_ip: "10.88.0.1".into(),
            start_time: ts(0),
            sandbox_ready: true,
            init_failed: false,
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "generation": 1},
            "spec": {"containers": [{"name": "app"}]}
        }))
        .unwrap()
    }

    fn condition<'a>(status: &'a PodStatus, kind: &str) -> &'a PodCondition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .unwrap()
    }

    #[test]
    fn phases() {
        let waiting = ContainerRecord::new("app", "img", false, "ImageNotMapped");
        assert_eq!(
            phase(&record(vec![], vec![waiting.clone()])),
            Phase::Pending
        );
        assert_eq!(
            phase(&record(vec![], vec![running("app", false)])),
            Phase::Running
        );
        assert_eq!(
            phase(&record(vec![], vec![running("a", true), waiting])),
            Phase::Pending
        );
        assert_eq!(
            phase(&record(vec![], vec![terminated("a", 0)])),
            Phase::Succeeded
        );
        assert_eq!(
            phase(&record(
                vec![],
                vec![terminated("a", 0), terminated("b", 1)]
            )),
            Phase::Failed
        );
        assert_eq!(
            phase(&record(
                vec![],
                vec![terminated("a", 0), running("b", true)]
            )),
            Phase::Running
        );
        let mut restarting = terminated("a", 3);
        restarting.will_restart = true;
        assert_eq!(phase(&record(vec![], vec![restarting])), Phase::Running);
        let mut unfinished_init = record(vec![running("init", false)], vec![]);
        unfinished_init.main = vec![ContainerRecord::new("app", "img", false, "PodInitializing")];
        assert_eq!(phase(&unfinished_init), Phase::Pending);
        let mut failed = record(vec![terminated("init", 1)], vec![]);
        failed.init_failed = true;
        assert_eq!(phase(&failed), Phase::Failed);
    }

    #[test]
    fn a_ready_pod() {
        let mut clock = ConditionClock::default();
        let rec = record(vec![], vec![running("app", true)]);
        let status = build(&pod(), &rec, &mut clock, ts(5));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.88.0.2"));
        assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, "10.88.0.2");
        assert_eq!(status.host_ip.as_deref(), Some("10.88.0.1"));
        assert_eq!(status.observed_generation, Some(1));
        for kind in [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        ] {
            assert_eq!(condition(&status, kind).status, "True", "{kind}");
        }
        let cs = &status.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert!(cs.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn unready_containers_are_named_and_transition_times_move_only_on_change() {
        let mut clock = ConditionClock::default();
        let mut rec = record(vec![], vec![running("app", false), running("side", true)]);
        let first = build(&pod(), &rec, &mut clock, ts(5));
        let ready = condition(&first, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [app]")
        );
        let again = build(&pod(), &rec, &mut clock, ts(9));
        assert_eq!(
            condition(&again, "Ready").last_transition_time,
            Some(Time(ts(5)))
        );
        rec.main[0].ready = true;
        let later = build(&pod(), &rec, &mut clock, ts(12));
        assert_eq!(condition(&later, "Ready").status, "True");
        assert_eq!(
            condition(&later, "Ready").last_transition_time,
            Some(Time(ts(12)))
        );
        assert_eq!(
            condition(&later, "PodScheduled").last_transition_time,
            Some(Time(ts(5)))
        );
    }

    #[test]
    fn unmapped_image_waits_with_its_reason() {
        let mut clock = ConditionClock::default();
        let mut waiting = ContainerRecord::new("app", "nginx", false, "ImageNotMapped");
        waiting.state = RunState::waiting("ImageNotMapped", Some("no rule for nginx".into()));
        let mut rec = record(vec![], vec![waiting]);
        rec.pod_ip = None;
        rec.sandbox_ready = false;
        let status = build(&pod(), &rec, &mut clock, ts(1));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.pod_ip, None);
        let w = status.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .waiting
            .clone()
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ImageNotMapped"));
        assert_eq!(w.message.as_deref(), Some("no rule for nginx"));
    }

    #[test]
    fn init_containers_and_sidecars() {
        let mut clock = ConditionClock::default();
        let mut sidecar = running("proxy", false);
        sidecar.sidecar = true;
        let mut rec = record(
            vec![terminated("setup", 0), sidecar],
            vec![running("app", true)],
        );
        let status = build(&pod(), &rec, &mut clock, ts(1));
        assert_eq!(condition(&status, "Initialized").status, "True");
        assert_eq!(
            condition(&status, "Ready").message.as_deref(),
            Some("containers with unready status: [proxy]")
        );
        assert_eq!(status.init_container_statuses.as_ref().unwrap().len(), 2);
        rec.initialized = false;
        rec.init[1].started = false;
        let status = build(&pod(), &rec, &mut clock, ts(2));
        assert_eq!(
            condition(&status, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [proxy]")
        );
    }

    #[test]
    fn completed_pods_are_not_ready() {
        let mut clock = ConditionClock::default();
        let rec = record(vec![], vec![terminated("job", 0)]);
        let status = build(&pod(), &rec, &mut clock, ts(1));
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        assert_eq!(
            condition(&status, "Ready").reason.as_deref(),
            Some("PodCompleted")
        );
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let mut clock = ConditionClock::default();
        let mut gated = pod();
        gated.spec.as_mut().unwrap().readiness_gates =
            Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
                condition_type: "example.com/lb".into(),
            }]);
        let rec = record(vec![], vec![running("app", true)]);
        let status = build(&gated, &rec, &mut clock, ts(1));
        assert_eq!(condition(&status, "ContainersReady").status, "True");
        assert_eq!(condition(&status, "Ready").status, "False");
    }
}
