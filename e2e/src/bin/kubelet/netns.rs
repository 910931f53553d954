//! A pod's network: its own network namespace with `lo`, and `eth0` on the cluster bridge
//! through a veth pair, with the pod IP and a default route via the bridge address.

use std::net::Ipv4Addr;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd::{self, CmdError, Tools};

/// Names start with this; the start-up sweep removes every namespace that has it.
pub const NETNS_PREFIX: &str = "ferry-pod-";
/// Host ends of pod veths: `fpv` + 12 hex digits of the pod UID (15 characters, the limit).
const VETH_PREFIX: &str = "fpv";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("pod network namespace {netns}: cannot {step}: {source}")]
    Step {
        netns: String,
        step: &'static str,
        #[source]
        source: CmdError,
    },
}

/// Where pods attach: the bridge in the kubelet's own namespace, and its address.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

/// The names a pod's network parts get, derived from its UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNames {
    pub netns: String,
    pub veth: String,
}

impl NetNames {
    pub fn for_uid(uid: &str) -> Self {
        let short: String = uid
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(12)
            .collect::<String>()
            .to_ascii_lowercase();
        Self {
            netns: format!("{NETNS_PREFIX}{short}"),
            veth: format!("{VETH_PREFIX}{short}"),
        }
    }
}

/// Builds the namespace, veth and routes; on failure removes whatever it made.
pub async fn create(
    tools: &Tools,
    net: &PodNetwork,
    names: &NetNames,
    ip: Ipv4Addr,
) -> Result<(), NetnsError> {
    // Leftovers of an earlier, interrupted attempt for the same pod.
    destroy(tools, net, names, ip).await;
    let result = build(tools, net, names, ip).await;
    if result.is_err() {
        destroy(tools, net, names, ip).await;
    }
    result
}

async fn build(
    tools: &Tools,
    net: &PodNetwork,
    names: &NetNames,
    ip: Ipv4Addr,
) -> Result<(), NetnsError> {
    let ns = names.netns.as_str();
    let veth = names.veth.as_str();
    let address = format!("{ip}/{}", net.prefix);
    let gateway = net.gateway.to_string();
    let step = |step: &'static str| {
        move |source| NetnsError::Step {
            netns: ns.to_owned(),
            step,
            source,
        }
    };
    netns_admin(tools, ["netns", "add", ns])
        .await
        .map_err(step("create the namespace"))?;
    cmd::run(&tools.ip, ["-n", ns, "link", "set", "lo", "up"])
        .await
        .map_err(step("bring lo up"))?;
    cmd::run(
        &tools.ip,
        [
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )
    .await
    .map_err(step("create the veth pair"))?;
    // A gratuitous ARP when eth0 comes up, so neighbours forget the MAC of a pod that had this
    // address before (addresses are reused, lowest first).
    let arp_notify = "echo 1 > /proc/sys/net/ipv4/conf/eth0/arp_notify";
    let sh = tools.bash.display().to_string();
    if let Err(e) = cmd::run(&tools.ip, ["netns", "exec", ns, &sh, "-c", arp_notify]).await {
        tracing::warn!(netns = ns, error = %e, "cannot enable arp_notify; a reused pod IP may be unreachable for a few seconds");
    }
    cmd::run(
        &tools.ip,
        ["-n", ns, "addr", "add", &address, "dev", "eth0"],
    )
    .await
    .map_err(step("address eth0"))?;
    cmd::run(&tools.ip, ["-n", ns, "link", "set", "eth0", "up"])
        .await
        .map_err(step("bring eth0 up"))?;
    cmd::run(
        &tools.ip,
        ["-n", ns, "route", "add", "default", "via", &gateway],
    )
    .await
    .map_err(step("add the default route"))?;
    cmd::run(
        &tools.ip,
        ["link", "set", veth, "master", &net.bridge, "up"],
    )
    .await
    .map_err(step("attach the veth to the bridge"))?;
    Ok(())
}

/// `ip netns add|del` in the machine's mount namespace when we run in another one (see
/// [`Tools::host_mount_ns`]).
async fn netns_admin<const N: usize>(tools: &Tools, args: [&str; N]) -> Result<String, CmdError> {
    match &tools.host_mount_ns {
        Some(mount_ns) => {
            let mut full = vec![
                format!("--mount={}", mount_ns.path.display()),
                "--".to_owned(),
            ];
            full.push(tools.ip.display().to_string());
            full.extend(args.iter().map(|a| (*a).to_owned()));
            cmd::run(&tools.nsenter, &full).await
        }
        None => cmd::run(&tools.ip, args).await,
    }
}

/// Kills anything still in the namespace, then removes the veth, the namespace and the
/// bridge's neighbour entry. Absent parts are fine; other failures are logged.
pub async fn destroy(tools: &Tools, net: &PodNetwork, names: &NetNames, ip: Ipv4Addr) {
    let ns = names.netns.as_str();
    if let Ok(pids) = cmd::run(&tools.ip, ["netns", "pids", ns]).await {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            tracing::warn!(
                netns = ns,
                pid,
                "killing a process left in the pod namespace"
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    quietly(cmd::run(&tools.ip, ["link", "del", names.veth.as_str()]).await);
    quietly(netns_admin(tools, ["netns", "del", ns]).await);
    let ip = ip.to_string();
    let _ = cmd::run(
        &tools.ip,
        ["neigh", "del", ip.as_str(), "dev", net.bridge.as_str()],
    )
    .await;
}

fn quietly(result: Result<String, CmdError>) {
    if let Err(e) = result {
        let absent = matches!(&e, CmdError::Failed { stderr, .. }
            if stderr.contains("Cannot find device") || stderr.contains("No such file"));
        if !absent {
            tracing::warn!(error = %e, "pod network clean-up");
        }
    }
}

/// Removes every pod namespace and pod veth left by an earlier kubelet run.
pub async fn sweep(tools: &Tools, net: &PodNetwork) -> Result<usize, CmdError> {
    let listing = cmd::run(&tools.ip, ["netns", "list"]).await?;
    let stale: Vec<String> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NETNS_PREFIX))
        .map(str::to_owned)
        .collect();
    for netns in &stale {
        tracing::info!(%netns, "removing a pod network namespace left by an earlier run");
        let veth = format!("{VETH_PREFIX}{}", &netns[NETNS_PREFIX.len()..]);
        let names = NetNames {
            netns: netns.clone(),
            veth,
        };
        destroy(tools, net, &names, Ipv4Addr::UNSPECIFIED).await;
    }
    let links = cmd::run(&tools.ip, ["-o", "link", "show", "type", "veth"]).await?;
    for veth in links.lines().filter_map(veth_name) {
        if veth.starts_with(VETH_PREFIX) {
            quietly(cmd::run(&tools.ip, ["link", "del", veth]).await);
        }
    }
    Ok(stale.len())
}

/// `12: fpv0123@if2: <BROADCAST,…` → `fpv0123`.
fn veth_name(line: &str) -> Option<&str> {
    let name = line.split(": ").nth(1)?;
    Some(name.split('@').next().unwrap_or(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_interface_limit() {
        let n = NetNames::for_uid("3F2A9C1D-0b4e-4f7e-9a1c-2d3e4f5a6b7c");
        assert_eq!(n.netns, "ferry-pod-3f2a9c1d0b4e");
        assert_eq!(n.veth, "fpv3f2a9c1d0b4e");
        assert!(n.veth.len() <= 15);
    }

    #[test]
    fn reads_veth_names_from_ip_link() {
        assert_eq!(
            veth_name("12: fpv0123@if2: <BROADCAST,MULTICAST> mtu 1500"),
            Some("fpv0123")
        );
        assert_eq!(veth_name("garbage"), None);
    }
}
