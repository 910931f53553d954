//! The Node object: registered at start-up, its Ready condition and its Lease in
//! `kube-node-lease` renewed every 10 seconds, marked not ready when the kubelet stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use tokio::sync::watch;

use crate::context::{Context, FIELD_MANAGER, NodeConfig};

const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;
pub const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot read the API server's version: {0}")]
    Version(#[source] kube::Error),
    #[error("cannot register node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot update the status of node {node}: {source}")]
    Status {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot renew lease {LEASE_NAMESPACE}/{node}: {source}")]
    Lease {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// The Node's labels and spec.
pub fn desired_node(cfg: &NodeConfig) -> Node {
    let arch = arch();
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", cfg.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(cfg.pod_cidr.to_string()),
            pod_cidrs: Some(vec![cfg.pod_cidr.to_string()]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Node's status; `ready` false once the kubelet is stopping.
pub fn desired_status(
    cfg: &NodeConfig,
    info: &NodeSystemInfo,
    allocatable: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    ready: bool,
    since: Timestamp,
    now: Timestamp,
) -> NodeStatus {
    let condition = |kind: &str, status: bool, reason: &str, message: &str| NodeCondition {
        type_: kind.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    };
    let ready_condition = if ready {
        condition(
            "Ready",
            true,
            "KubeletReady",
            "ferry process kubelet is posting ready status",
        )
    } else {
        condition(
            "Ready",
            false,
            "KubeletNotReady",
            "ferry process kubelet stopped",
        )
    };
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_owned(),
                address: cfg.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_owned(),
                address: cfg.name.clone(),
            },
        ]),
        capacity: Some(allocatable.clone()),
        allocatable: Some(allocatable.clone()),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            ready_condition,
        ]),
        // Nothing listens there: logs and exec are not served (see the log files instead).
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 0 }),
        }),
        node_info: Some(info.clone()),
        ..Default::default()
    }
}

/// The node's Lease, owned by the Node so it goes with it.
pub fn desired_lease(cfg: &NodeConfig, node_uid: &str, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: cfg.name.clone(),
                uid: node_uid.to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn os_image() -> String {
    read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".to_owned())
}

/// The registered node; keeps what the heartbeat needs.
pub struct RegisteredNode {
    ctx: Arc<Context>,
    uid: String,
    info: NodeSystemInfo,
    ready_since: Timestamp,
}

/// Creates or updates the Node (server-side apply) and posts a Ready status and Lease.
pub async fn register(ctx: Arc<Context>) -> Result<RegisteredNode, NodeError> {
    let version = ctx
        .client
        .apiserver_version()
        .await
        .map_err(NodeError::Version)?;
    let info = NodeSystemInfo {
        architecture: arch().to_owned(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: format!("ferry-process://{}", env!("CARGO_PKG_VERSION")),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        kube_proxy_version: String::new(),
        kubelet_version: version.git_version,
        machine_id: read_trimmed("/etc/machine-id"),
        operating_system: "linux".to_owned(),
        os_image: os_image(),
        system_uuid: String::new(),
        swap: None,
    };
    let mut registered = RegisteredNode {
        uid: String::new(),
        ctx,
        info,
        ready_since: Timestamp::now(),
    };
    registered.apply_node().await?;
    registered.heartbeat(true).await?;
    tracing::info!(node = %registered.ctx.node.name, ip = %registered.ctx.node.ip, "node registered");
    Ok(registered)
}

impl RegisteredNode {
    /// Creates or updates the Node object (server-side apply) and remembers its UID.
    async fn apply_node(&mut self) -> Result<(), NodeError> {
        let ctx = &self.ctx;
        let api: Api<Node> = Api::all(ctx.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let node = api
            .patch(
                &ctx.node.name,
                &params,
                &Patch::Apply(desired_node(&ctx.node)),
            )
            .await
            .map_err(|source| NodeError::Register {
                node: ctx.node.name.clone(),
                source,
            })?;
        self.uid = node.metadata.uid.unwrap_or_default();
        Ok(())
    }

    /// Posts the node status and renews the lease.
    pub async fn heartbeat(&mut self, ready: bool) -> Result<(), NodeError> {
        let ctx = &self.ctx;
        let now = Timestamp::now();
        let status = desired_status(
            &ctx.node,
            &self.info,
            &ctx.allocatable,
            ready,
            self.ready_since,
            now,
        );
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let patch = Node {
            metadata: ObjectMeta {
                name: Some(ctx.node.name.clone()),
                ..Default::default()
            },
            spec: None,
            status: Some(status),
        };
        nodes
            .patch_status(&ctx.node.name, &params, &Patch::Apply(patch))
            .await
            .map_err(|source| NodeError::Status {
                node: ctx.node.name.clone(),
                source,
            })?;
        if ready {
            let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
            leases
                .patch(
                    &ctx.node.name,
                    &params,
                    &Patch::Apply(desired_lease(&ctx.node, &self.uid, now)),
                )
                .await
                .map_err(|source| NodeError::Lease {
                    node: ctx.node.name.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Heartbeats until `stop` turns true, then marks the node not ready.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let result = match self.heartbeat(true).await {
                        // Someone deleted the Node: register it again.
                        Err(NodeError::Status { source: kube::Error::Api(e), .. }) if e.code == 404 => {
                            tracing::warn!("the Node object is gone; registering it again");
                            match self.apply_node().await {
                                Ok(()) => self.heartbeat(true).await,
                                Err(e) => Err(e),
                            }
                        }
                        other => other,
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "node heartbeat failed; retrying at the next one");
                    }
                }
                _ = stop.changed() => break,
            }
        }
        self.ready_since = Timestamp::now();
        if let Err(e) = self.heartbeat(false).await {
            tracing::warn!(error = %e, "cannot mark the node not ready");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig {
            name: "ferry-node".into(),
            ip: "10.88.0.1".parse().unwrap(),
            bridge: "ferry-br0".into(),
            pod_cidr: "10.88.0.0/16".parse().unwrap(),
            api_host: "10.88.0.1".into(),
            api_port: 6443,
        }
    }

    #[test]
    fn node_carries_the_pod_cidr_and_standard_labels() {
        let node = desired_node(&cfg());
        let spec = node.spec.unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.88.0.0/16"));
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "ferry-node");
        assert_eq!(labels["kubernetes.io/os"], "linux");
    }

    #[test]
    fn status_reports_address_and_readiness() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let alloc = crate::context::allocatable();
        let status = desired_status(&cfg(), &NodeSystemInfo::default(), &alloc, true, t, t);
        assert_eq!(status.addresses.as_ref().unwrap()[0].address, "10.88.0.1");
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.allocatable.as_ref().unwrap()["pods"].0, "250");
        let stopped = desired_status(&cfg(), &NodeSystemInfo::default(), &alloc, false, t, t);
        let ready = stopped
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
    }

    #[test]
    fn lease_is_owned_by_the_node() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let lease = desired_lease(&cfg(), "uid-1", t);
        assert_eq!(lease.metadata.namespace.as_deref(), Some("kube-node-lease"));
        assert_eq!(lease.metadata.owner_references.unwrap()[0].uid, "uid-1");
        assert_eq!(lease.spec.unwrap().lease_duration_seconds, Some(40));
    }
}
