//! What every part of the kubelet shares: the API client, the node's settings, the image map,
//! the pod address pool and the host tools.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;

use crate::cmd::Tools;
use crate::images::ImageMap;
use crate::ipam::{Cidr, Ipam};
use crate::netns::PodNetwork;

/// The kubelet's field manager for every write.
pub const FIELD_MANAGER: &str = "ferry-kubelet";

/// The node as the cluster sees it.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The bridge address: the node IP, every pod's gateway and hostIP.
    pub ip: Ipv4Addr,
    pub bridge: String,
    pub pod_cidr: Cidr,
    /// Where pods reach the API server (`KUBERNETES_SERVICE_HOST`/`PORT`).
    pub api_host: String,
    pub api_port: u16,
}

pub struct Context {
    pub client: Client,
    pub node: NodeConfig,
    pub images: ImageMap,
    pub ipam: Mutex<Ipam>,
    pub tools: Tools,
    /// Absolute; holds `pods/<uid>/` (volumes) and `pods/<ns>_<name>_<uid>/` (logs).
    pub run_dir: PathBuf,
    /// The most a pod gets to stop when the kubelet itself stops.
    pub shutdown_grace: Duration,
    pub allocatable: BTreeMap<String, Quantity>,
    pub events: kube::runtime::events::Recorder,
}

impl Context {
    pub fn pod_network(&self) -> PodNetwork {
        PodNetwork {
            bridge: self.node.bridge.clone(),
            gateway: self.node.ip,
            prefix: self.node.pod_cidr.prefix(),
        }
    }

    /// `<run-dir>/pods/<uid>`: the pod's volumes and its processes' default working directory.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.run_dir.join("pods").join(uid)
    }

    /// `<run-dir>/pods/<namespace>_<name>_<uid>`: the pod's container logs.
    pub fn log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.run_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"))
    }

    pub fn allocate_ip(
        &self,
        preferred: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, crate::ipam::IpamError> {
        self.ipam
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate(preferred)
    }

    pub fn release_ip(&self, ip: Ipv4Addr) {
        self.ipam
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(ip);
    }
}

/// A generous node: far more than the Tier-1 tests ask for, so nothing is refused for size.
pub fn allocatable() -> BTreeMap<String, Quantity> {
    [
        ("cpu", "16"),
        ("memory", "64Gi"),
        ("pods", "250"),
        ("ephemeral-storage", "100Gi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
    .collect()
}

/// `path` made absolute against `cwd`.
pub fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    }
}
