//! One task per pod bound to this node: prepares the pod (images, network, volumes), runs init
//! containers in order and then the containers, restarts them as the restart policy says,
//! follows their probes, reports status, and on deletion stops the processes within the grace
//! period, removes the network and finishes the deletion.
//!
//! The task is level-triggered: after every event (a pod update, a process exit, a probe
//! result, a one-second tick) `reconcile` looks at the record and takes the next step, and
//! `publish` patches the status when it changed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus, Probe};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::context::{Context, FIELD_MANAGER};
use crate::downward::NodeFacts;
use crate::env::{self, EnvInputs};
use crate::events::{self, Kind};
use crate::images::ImageRule;
use crate::netns::{self, NetNames};
use crate::probes::{self, ProbeKind, ProbeTarget};
use crate::process::{self, LaunchSpec};
use crate::refs::{self, Referenced};
use crate::status::{self, ConditionClock, ContainerRecord, PodRecord, RunState};
use crate::volumes::{self, MaterializedVolume, PodVolumes};

const TICK: Duration = Duration::from_secs(1);
const VOLUME_REFRESH: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The kubelet never gives a process less than this between SIGTERM and SIGKILL.
const MIN_GRACE: Duration = Duration::from_secs(2);

/// What reaches a pod's task.
#[derive(Debug)]
pub enum PodEvent {
    /// The pod object changed.
    Updated(Arc<Pod>),
    /// The pod object is gone from the API (with its last state, when known).
    Gone(Option<Arc<Pod>>),
    /// The kubelet is stopping.
    Shutdown,
    Exited {
        container: String,
        instance: u64,
        exit_code: i32,
        signal: Option<i32>,
    },
    Probe {
        container: String,
        instance: u64,
        kind: ProbeKind,
        ok: bool,
        message: Option<String>,
    },
}

pub struct WorkerHandle {
    pub tx: mpsc::UnboundedSender<PodEvent>,
    pub task: JoinHandle<()>,
}

/// Starts the task for a pod; it sends the pod's UID on `done` when it has finished.
pub fn spawn(
    ctx: Arc<Context>,
    pod: Arc<Pod>,
    done: mpsc::UnboundedSender<String>,
) -> WorkerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Worker::new(ctx, pod, tx.clone(), rx);
    let uid = worker.uid.clone();
    let span = tracing::info_span!("pod", pod = %format!("{}/{}", worker.namespace, worker.name));
    let task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            worker.run().await;
            let _ = done.send(uid);
        },
        span,
    ));
    WorkerHandle { tx, task }
}

/// Why the task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The pod has a deletionTimestamp: stop, clean up, delete the object.
    Deleted,
    /// The object vanished (force deletion): stop and clean up.
    Gone,
    /// The kubelet stops: stop and clean up, leave the object.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Init,
    Sidecar,
    Main,
}

/// A running process of a container.
struct Proc {
    pid: u32,
    instance: u64,
    probes: Vec<JoinHandle<()>>,
    started: Instant,
    /// Why the kubelet is killing it (liveness or startup failure), for the exit message.
    killing: Option<String>,
    kill_at: Option<Instant>,
    /// The container's environment, which exec probes get too.
    env: BTreeMap<String, String>,
}

/// The kubelet's side of one container.
struct Slot {
    spec: Container,
    role: Role,
    index: usize,
    proc: Option<Proc>,
    /// Start (again) at or after this instant; `None`: do not start.
    start_at: Option<Instant>,
    backoff: Duration,
}

struct Network {
    names: Option<NetNames>,
    ip: Ipv4Addr,
}

struct Worker {
    ctx: Arc<Context>,
    pod: Arc<Pod>,
    uid: String,
    namespace: String,
    name: String,
    tx: mpsc::UnboundedSender<PodEvent>,
    rx: mpsc::UnboundedReceiver<PodEvent>,
    record: PodRecord,
    clock: ConditionClock,
    published: Option<PodStatus>,
    slots: Vec<Slot>,
    net: Option<Network>,
    volumes: PodVolumes,
    mounted: BTreeMap<String, MaterializedVolume>,
    refs: Referenced,
    prepared: bool,
    /// When preparation, a volume refresh or a Secret/ConfigMap re-read is next due.
    retry_at: Instant,
    retry_backoff: Duration,
    refresh_at: Instant,
    refs_stale: bool,
    /// The pod reached Succeeded or Failed and its sandbox is gone; only deletion remains.
    finished: bool,
    /// Found terminal at start-up (an earlier kubelet ran it): never run it again.
    dormant: bool,
    stopping: bool,
    gone: bool,
    shutdown: bool,
    instances: u64,
    last_blocked: Option<String>,
}

impl Worker {
    fn new(
        ctx: Arc<Context>,
        pod: Arc<Pod>,
        tx: mpsc::UnboundedSender<PodEvent>,
        rx: mpsc::UnboundedReceiver<PodEvent>,
    ) -> Self {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots = Vec::new();
        let mut init = Vec::new();
        for (index, c) in spec.init_containers.iter().flatten().enumerate() {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            let role = if sidecar { Role::Sidecar } else { Role::Init };
            init.push(ContainerRecord::new(
                &c.name,
                image_of(c),
                sidecar,
                "PodInitializing",
            ));
            slots.push(Slot::new(c.clone(), role, index));
        }
        let waiting = if init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let mut main = Vec::new();
        for (index, c) in spec.containers.iter().enumerate() {
            main.push(ContainerRecord::new(&c.name, image_of(c), false, waiting));
            slots.push(Slot::new(c.clone(), Role::Main, index));
        }
        let now = Instant::now();
        let previous_phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        let dormant = matches!(previous_phase.as_deref(), Some("Succeeded" | "Failed"));
        let mut clock = ConditionClock::default();
        if let Some(status) = &pod.status {
            clock.seed(status);
        }
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        Self {
            record: PodRecord {
                initialized: init.is_empty(),
                init,
                main,
                pod_ip: None,
                host_ip: ctx.node.ip.to_string(),
                start_time,
                sandbox_ready: false,
                init_failed: false,
            },
            volumes: PodVolumes::new(&ctx.pod_dir(&uid)),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
            ctx,
            pod,
            tx,
            rx,
            clock,
            published: None,
            slots,
            net: None,
            mounted: BTreeMap::new(),
            refs: Referenced::default(),
            prepared: false,
            retry_at: now,
            retry_backoff: Duration::ZERO,
            refresh_at: now + VOLUME_REFRESH,
            refs_stale: false,
            finished: false,
            dormant,
            stopping: false,
            gone: false,
            shutdown: false,
            instances: 0,
            last_blocked: None,
        }
    }

    async fn run(mut self) {
        tracing::info!(uid = %self.uid, "pod assigned to this node");
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(end) = self.end() {
                self.finish(end).await;
                return;
            }
            if !self.dormant {
                self.reconcile().await;
                self.publish().await;
            }
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => self.handle(event),
                    None => self.shutdown = true,
                },
                _ = tick.tick() => {}
            }
        }
    }

    fn end(&self) -> Option<End> {
        if self.shutdown {
            Some(End::Shutdown)
        } else if self.gone {
            Some(End::Gone)
        } else if self.pod.metadata.deletion_timestamp.is_some() {
            Some(End::Deleted)
        } else {
            None
        }
    }

    fn handle(&mut self, event: PodEvent) {
        match event {
            PodEvent::Updated(pod) => self.pod = pod,
            PodEvent::Gone(pod) => {
                if let Some(pod) = pod {
                    self.pod = pod;
                }
                self.gone = true;
            }
            PodEvent::Shutdown => self.shutdown = true,
            PodEvent::Exited {
                container,
                instance,
                exit_code,
                signal,
            } => self.on_exit(&container, instance, exit_code, signal),
            PodEvent::Probe {
                container,
                instance,
                kind,
                ok,
                message,
            } => self.on_probe(&container, instance, kind, ok, message),
        }
    }

    // ----- reconcile ---------------------------------------------------------------------

    async fn reconcile(&mut self) {
        if self.finished {
            return;
        }
        if status::phase(&self.record).is_terminal() {
            let phase = status::phase(&self.record);
            tracing::info!(phase = phase.as_str(), "pod completed");
            self.stop_all(Instant::now() + self.grace(None)).await;
            self.teardown().await;
            self.finished = true;
            return;
        }
        let now = Instant::now();
        if !self.prepared {
            if now < self.retry_at {
                return;
            }
            match self.prepare().await {
                Ok(()) => {
                    self.prepared = true;
                    self.retry_backoff = Duration::ZERO;
                    self.last_blocked = None;
                }
                Err((reason, message)) => {
                    self.retry_later();
                    if self.last_blocked.as_ref() != Some(&message) {
                        tracing::warn!(%reason, %message, "pod cannot start yet");
                        self.event(Kind::Warning, reason, message.clone());
                        self.last_blocked = Some(message);
                    }
                    return;
                }
            }
        }
        // After a CreateContainerConfigError, read Secrets and ConfigMaps again just before the
        // next attempt, so one created meanwhile is seen.
        let retry_due = self.refs_stale && (0..self.slots.len()).any(|i| self.due(i));
        if retry_due || now >= self.refresh_at {
            self.refresh_volumes().await;
        }
        self.kill_overdue();
        self.advance_init();
        if self.record.initialized {
            for i in 0..self.slots.len() {
                if self.slots[i].role != Role::Init && self.due(i) {
                    self.start(i);
                }
            }
        }
    }

    fn retry_later(&mut self) {
        self.retry_backoff = (self.retry_backoff * 2).clamp(FIRST_BACKOFF, Duration::from_secs(10));
        self.retry_at = Instant::now() + self.retry_backoff;
    }

    /// Images, network, referenced objects and volumes; on failure the containers wait with a
    /// reason saying why, and an event reason and message are returned.
    async fn prepare(&mut self) -> Result<(), (&'static str, String)> {
        // Images first: an unmapped image must never look like a running pod.
        let mut blocked = Vec::new();
        for i in 0..self.slots.len() {
            if let Err((reason, message)) = self.check_image(i) {
                blocked.push((reason, message.clone()));
                self.record_mut(i).state = RunState::waiting(reason, Some(message));
            }
        }
        if let Some((reason, _)) = blocked.first() {
            let messages: Vec<&str> = blocked.iter().map(|(_, m)| m.as_str()).collect();
            return Err((reason, messages.join("; ")));
        }
        if self.net.is_none() {
            let net = self.create_network().await.map_err(|e| {
                let message = self.wait_all("ContainerCreating", e);
                ("FailedCreatePodSandBox", message)
            })?;
            self.record.pod_ip = Some(net.ip.to_string());
            self.record.sandbox_ready = true;
            self.net = Some(net);
        }
        self.refresh_refs_and_volumes().await.map_err(|e| {
            let message = self.wait_all("ContainerCreating", e);
            ("FailedMount", message)
        })?;
        for i in 0..self.slots.len() {
            let reason = if self.record.initialized || self.slots[i].role != Role::Main {
                "ContainerCreating"
            } else {
                "PodInitializing"
            };
            self.record_mut(i).state = RunState::waiting(reason, None);
        }
        Ok(())
    }

    fn wait_all(&mut self, reason: &str, message: String) -> String {
        for i in 0..self.slots.len() {
            if self.slots[i].proc.is_none() {
                self.record_mut(i).state = RunState::waiting(reason, Some(message.clone()));
            }
        }
        message
    }

    /// The image's rule, and that its executable exists.
    fn check_image(&self, i: usize) -> Result<&ImageRule, (&'static str, String)> {
        let spec = &self.slots[i].spec;
        let image = image_of(spec);
        let Some(rule) = self.ctx.images.resolve(image) else {
            return Err((
                "ImageNotMapped",
                format!(
                    "image {image:?} has no rule in the image map {} (add one, or pass --image 'PATTERN=EXECUTABLE' to ferry-kubelet)",
                    self.ctx.images.source().display()
                ),
            ));
        };
        let uses_exec = !rule.honour_command || spec.command.as_ref().is_none_or(Vec::is_empty);
        if uses_exec && !rule.exec.is_file() {
            return Err((
                "ImageExecutableMissing",
                format!(
                    "image {image:?} maps (rule {:?} in {}) to {}, which does not exist; build it",
                    rule.pattern,
                    self.ctx.images.source().display(),
                    rule.exec.display()
                ),
            ));
        }
        Ok(rule)
    }

    async fn create_network(&mut self) -> Result<Network, String> {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            return Ok(Network {
                names: None,
                ip: self.ctx.node.ip,
            });
        }
        let previous: Option<Ipv4Addr> = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ip = self.ctx.allocate_ip(previous).map_err(|e| e.to_string())?;
        let names = NetNames::for_uid(&self.uid);
        match netns::create(&self.ctx.tools, &self.ctx.pod_network(), &names, ip).await {
            Ok(()) => {
                tracing::info!(netns = %names.netns, %ip, "pod network ready");
                Ok(Network {
                    names: Some(names),
                    ip,
                })
            }
            Err(e) => {
                self.ctx.release_ip(ip);
                Err(e.to_string())
            }
        }
    }

    async fn refresh_refs_and_volumes(&mut self) -> Result<(), String> {
        let wanted = refs::wanted(&self.pod);
        self.refs = refs::fetch(&self.ctx.client, &self.namespace, &wanted)
            .await
            .map_err(|e| e.to_string())?;
        self.refs_stale = false;
        let pod_ip = self.record.pod_ip.clone();
        let facts = NodeFacts {
            pod_ip: pod_ip.as_deref(),
            host_ip: &self.record.host_ip,
            allocatable: &self.ctx.allocatable,
        };
        self.mounted = self
            .volumes
            .sync(&self.ctx.client, &self.pod, &self.refs, &facts)
            .await
            .map_err(|e| e.to_string())?;
        self.refresh_at = Instant::now() + VOLUME_REFRESH;
        Ok(())
    }

    async fn refresh_volumes(&mut self) {
        if let Err(e) = self.refresh_refs_and_volumes().await {
            tracing::warn!(error = %e, "cannot refresh the pod's volumes; retrying");
            self.refresh_at = Instant::now() + FIRST_BACKOFF * 5;
        }
    }

    /// Runs init containers one after the other; a sidecar only needs to have started.
    fn advance_init(&mut self) {
        if self.record.initialized {
            return;
        }
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let rec = self.record_of(i);
            match slot.role {
                Role::Main => continue,
                Role::Init if rec.succeeded() => continue,
                Role::Sidecar if rec.started => continue,
                _ => {}
            }
            if self.due(i) {
                self.start(i);
            }
            return;
        }
        self.record.initialized = true;
        tracing::info!("pod initialized");
        for i in 0..self.slots.len() {
            if self.slots[i].role == Role::Main && self.slots[i].proc.is_none() {
                self.record_mut(i).state = RunState::waiting("ContainerCreating", None);
            }
        }
    }

    fn due(&self, i: usize) -> bool {
        let slot = &self.slots[i];
        !self.stopping
            && slot.proc.is_none()
            && slot.start_at.is_some_and(|at| Instant::now() >= at)
    }

    /// Starts container `i`; a failure leaves it waiting with the reason, to be tried again.
    fn start(&mut self, i: usize) {
        let name = self.slots[i].spec.name.clone();
        match self.launch(i) {
            Ok((proc, image_id)) => {
                let pid = proc.pid;
                let has_startup = self.slots[i].spec.startup_probe.is_some();
                let has_readiness = self.slots[i].spec.readiness_probe.is_some();
                let rec = self.record_mut(i);
                if rec.ever_ran() {
                    rec.restart_count += 1;
                    if let RunState::Terminated { .. } = rec.state {
                        rec.last_state = Some(rec.state.clone());
                    }
                }
                rec.state = RunState::Running {
                    started_at: Timestamp::now(),
                };
                rec.will_restart = false;
                rec.container_id = Some(format!("ferry-process://{pid}"));
                rec.image_id = image_id;
                rec.started = !has_startup;
                rec.ready = !has_startup && !has_readiness;
                let restarts = rec.restart_count;
                self.slots[i].proc = Some(proc);
                self.slots[i].start_at = None;
                tracing::info!(container = %name, pid, restarts, "container started");
                self.container_event(
                    i,
                    Kind::Normal,
                    "Started",
                    format!("Started container {name}"),
                );
                if has_startup {
                    self.spawn_probe(i, ProbeKind::Startup);
                } else {
                    self.spawn_probe(i, ProbeKind::Readiness);
                    self.spawn_probe(i, ProbeKind::Liveness);
                }
            }
            Err((reason, message)) => {
                tracing::warn!(container = %name, %reason, %message, "container cannot start");
                self.container_event(i, Kind::Warning, "Failed", format!("Error: {message}"));
                let slot = &mut self.slots[i];
                slot.backoff = (slot.backoff * 2).clamp(FIRST_BACKOFF, Duration::from_secs(10));
                slot.start_at = Some(Instant::now() + slot.backoff);
                self.record_mut(i).state = RunState::waiting(reason, Some(message));
                if reason == "CreateContainerConfigError" {
                    self.refs_stale = true;
                }
            }
        }
    }

    fn launch(&mut self, i: usize) -> Result<(Proc, String), (&'static str, String)> {
        let rule = self.check_image(i)?.clone();
        let container = self.slots[i].spec.clone();
        let pod_dir = self.ctx.pod_dir(&self.uid);
        let pod_ip = self.record.pod_ip.clone();
        let facts = NodeFacts {
            pod_ip: pod_ip.as_deref(),
            host_ip: &self.record.host_ip,
            allocatable: &self.ctx.allocatable,
        };
        let inputs = EnvInputs {
            pod: &self.pod,
            node: &facts,
            refs: &self.refs,
            api_host: &self.ctx.node.api_host,
            api_port: self.ctx.node.api_port,
            pod_dir: &pod_dir,
        };
        let config_error = |e: String| ("CreateContainerConfigError", e);
        let env =
            env::container_env(&container, &inputs).map_err(|e| config_error(e.to_string()))?;
        let command = env::expand_all(container.command.as_deref().unwrap_or_default(), &env);
        let args = env::expand_all(container.args.as_deref().unwrap_or_default(), &env);
        let launch = rule.launch(&command, &args);
        let mounts = volumes::container_mounts(&container, &self.mounted, &env)
            .map_err(|e| config_error(e.to_string()))?;
        let net = self.net.as_ref().expect("the network exists once prepared");
        let working_dir = container
            .working_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(Into::into)
            .or_else(|| rule.working_dir.clone())
            .unwrap_or_else(|| pod_dir.clone());
        let spec = LaunchSpec {
            netns: net.names.as_ref().map(|n| n.netns.clone()),
            hostname: net.names.as_ref().map(|_| env::hostname(&self.pod)),
            program: launch.program,
            args: launch.args,
            env: env.clone(),
            mounts,
            working_dir,
            log_path: self
                .ctx
                .log_dir(&self.namespace, &self.name, &self.uid)
                .join(format!("{}.log", container.name)),
        };
        let started = process::spawn(&self.ctx.tools, &spec)
            .map_err(|e| ("RunContainerError", e.to_string()))?;
        self.instances += 1;
        let instance = self.instances;
        let pid = started.pid;
        let mut child = started.child;
        let tx = self.tx.clone();
        let name = container.name.clone();
        tokio::spawn(async move {
            let (exit_code, signal) = match child.wait().await {
                Ok(status) => process::exit_code(status),
                Err(_) => (-1, None),
            };
            let _ = tx.send(PodEvent::Exited {
                container: name,
                instance,
                exit_code,
                signal,
            });
        });
        let image_id = format!("ferry-exec://{}", rule.exec.display());
        Ok((
            Proc {
                pid,
                instance,
                probes: Vec::new(),
                started: Instant::now(),
                killing: None,
                kill_at: None,
                env,
            },
            image_id,
        ))
    }

    fn spawn_probe(&mut self, i: usize, kind: ProbeKind) {
        let spec = &self.slots[i].spec;
        let probe: Option<&Probe> = match kind {
            ProbeKind::Startup => spec.startup_probe.as_ref(),
            ProbeKind::Readiness => spec.readiness_probe.as_ref(),
            ProbeKind::Liveness => spec.liveness_probe.as_ref(),
        };
        let (Some(probe), Some(net), Some(proc)) = (probe.cloned(), &self.net, &self.slots[i].proc)
        else {
            return;
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let target = ProbeTarget {
            host: IpAddr::V4(net.ip),
            ports,
            pid: proc.pid,
            env: proc.env.clone(),
            nsenter: self.ctx.tools.nsenter.clone(),
        };
        let tx = self.tx.clone();
        let container = spec.name.clone();
        let instance = proc.instance;
        let task = tokio::spawn(probes::run(kind, probe, target, move |ok, message| {
            let _ = tx.send(PodEvent::Probe {
                container: container.clone(),
                instance,
                kind,
                ok,
                message,
            });
        }));
        if let Some(proc) = &mut self.slots[i].proc {
            proc.probes.push(task);
        }
    }

    // ----- events ------------------------------------------------------------------------

    fn slot_of(&self, container: &str, instance: u64) -> Option<usize> {
        self.slots.iter().position(|s| {
            s.spec.name == container && s.proc.as_ref().is_some_and(|p| p.instance == instance)
        })
    }

    fn on_exit(&mut self, container: &str, instance: u64, exit_code: i32, signal: Option<i32>) {
        let Some(i) = self.slot_of(container, instance) else {
            return;
        };
        let proc = self.slots[i].proc.take().expect("slot_of found a process");
        for task in &proc.probes {
            task.abort();
        }
        let ran_for = proc.started.elapsed();
        let started_at = match self.record_of(i).state {
            RunState::Running { started_at } => Some(started_at),
            _ => None,
        };
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        let terminated = RunState::Terminated {
            exit_code,
            signal,
            reason: reason.to_owned(),
            message: proc.killing.clone(),
            started_at,
            finished_at: Timestamp::now(),
        };
        tracing::info!(container, exit_code, ?signal, "container exited");
        let restart = !self.stopping && self.should_restart(i, exit_code);
        let role = self.slots[i].role;
        let pod_label = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let slot = &mut self.slots[i];
        if ran_for >= MAX_BACKOFF {
            slot.backoff = Duration::ZERO;
        }
        let rec_state;
        let mut last_state = None;
        if restart {
            let delay = slot.backoff;
            slot.backoff = (slot.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
            slot.start_at = Some(Instant::now() + delay);
            if delay.is_zero() {
                rec_state = terminated;
            } else {
                let note =
                    format!("Back-off restarting failed container {container} in pod {pod_label}");
                self.container_event(i, Kind::Warning, "BackOff", note);
                last_state = Some(terminated);
                rec_state = RunState::waiting(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {}s restarting failed container={container} pod={pod_label}",
                        delay.as_secs()
                    )),
                );
            }
        } else {
            slot.start_at = None;
            rec_state = terminated;
            if role == Role::Init && exit_code != 0 && !self.stopping {
                self.record.init_failed = true;
            }
        }
        let rec = self.record_mut(i);
        rec.state = rec_state;
        if last_state.is_some() {
            rec.last_state = last_state;
        }
        rec.ready = false;
        rec.started = false;
        rec.will_restart = restart;
    }

    fn should_restart(&self, i: usize, exit_code: i32) -> bool {
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always");
        match self.slots[i].role {
            Role::Sidecar => true,
            Role::Init => exit_code != 0 && policy != "Never",
            Role::Main => match policy {
                "Never" => false,
                "OnFailure" => exit_code != 0,
                _ => true,
            },
        }
    }

    fn on_probe(
        &mut self,
        container: &str,
        instance: u64,
        kind: ProbeKind,
        ok: bool,
        message: Option<String>,
    ) {
        let Some(i) = self.slot_of(container, instance) else {
            return;
        };
        tracing::info!(
            container,
            probe = kind.as_str(),
            ok,
            message = message.as_deref().unwrap_or(""),
            "probe result changed"
        );
        if !ok {
            let mut probe = kind.as_str().to_owned();
            probe[..1].make_ascii_uppercase();
            let note = format!(
                "{probe} probe failed: {}",
                message.as_deref().unwrap_or_default()
            );
            self.container_event(i, Kind::Warning, "Unhealthy", note);
        }
        match (kind, ok) {
            (ProbeKind::Readiness, ready) => {
                if self.record_of(i).started {
                    self.record_mut(i).ready = ready;
                }
            }
            (ProbeKind::Startup, true) => {
                let has_readiness = self.slots[i].spec.readiness_probe.is_some();
                let rec = self.record_mut(i);
                rec.started = true;
                rec.ready = !has_readiness;
                self.spawn_probe(i, ProbeKind::Readiness);
                self.spawn_probe(i, ProbeKind::Liveness);
            }
            (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                let why = format!(
                    "Container {container} failed {} probe, will be restarted: {}",
                    kind.as_str(),
                    message.unwrap_or_default()
                );
                let probe = match kind {
                    ProbeKind::Startup => self.slots[i].spec.startup_probe.as_ref(),
                    _ => self.slots[i].spec.liveness_probe.as_ref(),
                };
                let grace = self.grace(probe.and_then(|p| p.termination_grace_period_seconds));
                tracing::warn!(container, %why, "killing container");
                self.container_event(i, Kind::Normal, "Killing", why.clone());
                if let Some(proc) = &mut self.slots[i].proc {
                    proc.killing = Some(why);
                    proc.kill_at = Some(Instant::now() + grace);
                    signal(proc.pid, Signal::SIGTERM);
                }
                self.record_mut(i).ready = false;
            }
            (ProbeKind::Liveness, true) => {}
        }
    }

    fn kill_overdue(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            if let Some(proc) = &mut slot.proc
                && proc.kill_at.is_some_and(|at| now >= at)
            {
                tracing::warn!(container = %slot.spec.name, "grace period over; SIGKILL");
                signal(proc.pid, Signal::SIGKILL);
                proc.kill_at = None;
            }
        }
    }

    // ----- status ------------------------------------------------------------------------

    async fn publish(&mut self) {
        let status = status::build(&self.pod, &self.record, &mut self.clock, Timestamp::now());
        if self.published.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let patch = Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            spec: None,
            status: Some(status.clone()),
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&self.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(
                    phase = status.phase.as_deref().unwrap_or(""),
                    "status published"
                );
                self.published = Some(status);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(error = %e, "cannot publish the pod status; retrying"),
        }
    }

    // ----- stopping ----------------------------------------------------------------------

    /// The grace period: the override, else the deletion's, else the pod's (at least 2 s).
    fn grace(&self, override_seconds: Option<i64>) -> Duration {
        let seconds = override_seconds
            .or(self.pod.metadata.deletion_grace_period_seconds)
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64).max(MIN_GRACE)
    }

    async fn finish(&mut self, end: End) {
        let mut grace = self.grace(None);
        if end == End::Shutdown {
            grace = grace.min(self.ctx.shutdown_grace).max(MIN_GRACE);
        }
        tracing::info!(?end, ?grace, "stopping the pod");
        self.stop_all(Instant::now() + grace).await;
        self.teardown().await;
        if end == End::Deleted {
            self.delete_object().await;
        }
        tracing::info!("pod stopped and cleaned up");
    }

    /// SIGTERM to the containers (first the main ones, then sidecars and init containers), then
    /// SIGKILL to whatever is left at the deadline.
    async fn stop_all(&mut self, deadline: Instant) {
        self.stopping = true;
        let running: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.proc.is_some())
            .map(|s| s.spec.name.clone())
            .collect();
        for name in running {
            self.event(
                Kind::Normal,
                "Killing",
                format!("Stopping container {name}"),
            );
        }
        for slot in &mut self.slots {
            slot.start_at = None;
            if let Some(proc) = &slot.proc {
                for task in &proc.probes {
                    task.abort();
                }
            }
        }
        for group in [&[Role::Main][..], &[Role::Sidecar, Role::Init][..]] {
            let pids: Vec<u32> = self
                .slots
                .iter()
                .rev()
                .filter(|s| group.contains(&s.role))
                .filter_map(|s| s.proc.as_ref().map(|p| p.pid))
                .collect();
            for pid in &pids {
                signal(*pid, Signal::SIGTERM);
            }
            self.wait_for_exits(|s| group.contains(&s.role), deadline)
                .await;
        }
        let left: Vec<(String, u32)> = self
            .slots
            .iter()
            .filter_map(|s| s.proc.as_ref().map(|p| (s.spec.name.clone(), p.pid)))
            .collect();
        for (name, pid) in &left {
            tracing::warn!(container = %name, pid, "still running after the grace period; SIGKILL");
            signal(*pid, Signal::SIGKILL);
        }
        if !left.is_empty() {
            self.wait_for_exits(|_| true, Instant::now() + Duration::from_secs(5))
                .await;
        }
    }

    async fn wait_for_exits(&mut self, which: impl Fn(&Slot) -> bool, deadline: Instant) {
        while self.slots.iter().any(|s| which(s) && s.proc.is_some()) {
            let event = tokio::time::timeout_at(deadline.into(), self.rx.recv()).await;
            match event {
                Ok(Some(event)) => self.handle(event),
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Removes the network, frees the address and deletes the volumes (logs stay).
    async fn teardown(&mut self) {
        if let Some(net) = self.net.take()
            && let Some(names) = &net.names
        {
            netns::destroy(&self.ctx.tools, &self.ctx.pod_network(), names, net.ip).await;
            self.ctx.release_ip(net.ip);
            tracing::info!(netns = %names.netns, ip = %net.ip, "pod network removed");
        }
        self.record.sandbox_ready = false;
        let dir = self.ctx.pod_dir(&self.uid);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the pod directory");
        }
    }

    /// What a kubelet does last: delete the object for good (grace period 0).
    async fn delete_object(&self) {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &params).await {
            Ok(_) => tracing::info!("pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, "cannot finish the pod's deletion"),
        }
    }

    // ----- helpers -----------------------------------------------------------------------

    fn event(&self, kind: Kind, reason: &str, note: String) {
        events::emit(&self.ctx.events, &self.pod, None, kind, reason, note);
    }

    /// An event about container `i`.
    fn container_event(&self, i: usize, kind: Kind, reason: &str, note: String) {
        let slot = &self.slots[i];
        let list = match slot.role {
            Role::Main => "containers",
            _ => "initContainers",
        };
        let path = format!("spec.{list}{{{}}}", slot.spec.name);
        events::emit(&self.ctx.events, &self.pod, Some(path), kind, reason, note);
    }

    fn record_of(&self, i: usize) -> &ContainerRecord {
        let slot = &self.slots[i];
        match slot.role {
            Role::Main => &self.record.main[slot.index],
            _ => &self.record.init[slot.index],
        }
    }

    fn record_mut(&mut self, i: usize) -> &mut ContainerRecord {
        let slot = &self.slots[i];
        match slot.role {
            Role::Main => &mut self.record.main[slot.index],
            _ => &mut self.record.init[slot.index],
        }
    }
}

impl Slot {
    fn new(spec: Container, role: Role, index: usize) -> Self {
        Self {
            spec,
            role,
            index,
            proc: None,
            start_at: Some(Instant::now()),
            backoff: Duration::ZERO,
        }
    }
}

fn image_of(c: &Container) -> &str {
    c.image.as_deref().unwrap_or_default()
}

fn signal(pid: u32, signal: Signal) {
    if let Err(e) = process::signal_group(pid, signal) {
        tracing::warn!(error = %e, "cannot signal a container");
    }
}
