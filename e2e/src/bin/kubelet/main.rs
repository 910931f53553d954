//! `ferry-kubelet`: the process kubelet of Ferry's Tier-1 test cluster.
//!
//! It registers a Node, binds pending pods to it (there is no scheduler) and runs every pod's
//! containers as local processes, each pod in its own network namespace on the cluster bridge,
//! with an image map deciding which executable stands in for which image. Run it as root
//! inside the cluster's network namespace:
//!
//! ```text
//! ip netns exec ferry-e2e target/debug/ferry-kubelet --kubeconfig e2e/.run/kubeconfig \
//!     --node-name ferry-node --image-map e2e/images.yaml --run-dir e2e/.run/kubelet
//! ```
//!
//! SIGTERM (or Ctrl-C) stops every pod's processes, removes their network namespaces, marks
//! the node not ready and exits 0.
#![forbid(unsafe_code)]

mod cmd;
mod context;
mod downward;
mod env;
mod events;
mod images;
mod ipam;
mod netns;
mod node;
mod pods;
mod probes;
mod process;
mod refs;
mod status;
mod volumes;
mod worker;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;

use crate::cmd::Tools;
use crate::context::{Context, NodeConfig};
use crate::images::ImageMap;
use crate::ipam::{Cidr, Ipam};

use ferry_api::usage::{EX_USAGE, exit_on_clap_error};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-kubelet",
    version,
    about = "Ferry's process kubelet: runs pods' containers as local processes, one network namespace per pod"
)]
struct Args {
    /// Admin kubeconfig of the cluster [default: e2e/.run/kubeconfig in this repository].
    #[arg(long, env = "FERRY_E2E_KUBECONFIG", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.run/kubeconfig"), hide_default_value = true)]
    kubeconfig: PathBuf,
    /// Name of the Node to register.
    #[arg(long, env = "FERRY_KUBELET_NODE_NAME", default_value = "ferry-node")]
    node_name: String,
    /// Image map file (YAML): which executable stands in for which image [default:
    /// e2e/images.yaml in this repository].
    #[arg(long, env = "FERRY_KUBELET_IMAGE_MAP", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/images.yaml"), hide_default_value = true)]
    image_map: PathBuf,
    /// Extra image rule, before the map file's: PATTERN=EXECUTABLE (repeatable).
    #[arg(long = "image", value_name = "PATTERN=EXECUTABLE")]
    images: Vec<String>,
    /// Where pod volumes (pods/<uid>/) and container logs (pods/<ns>_<name>_<uid>/) go
    /// [default: e2e/.run/kubelet in this repository].
    #[arg(long, env = "FERRY_KUBELET_RUN_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.run/kubelet"), hide_default_value = true)]
    run_dir: PathBuf,
    /// The pod bridge, in the kubelet's network namespace.
    #[arg(long, env = "FERRY_E2E_BRIDGE", default_value = "ferry-br0")]
    bridge: String,
    /// The bridge's address: node IP, pods' gateway and hostIP (a /prefix suffix is ignored).
    #[arg(long, env = "FERRY_E2E_BRIDGE_IP", default_value = "10.88.0.1", value_parser = parse_ip)]
    node_ip: Ipv4Addr,
    /// Pod addresses come from here, lowest free first from .2.
    #[arg(long, env = "FERRY_E2E_POD_CIDR", default_value = "10.88.0.0/16")]
    pod_cidr: Cidr,
    /// KUBERNETES_SERVICE_HOST for pods [default: the node IP].
    #[arg(long, env = "FERRY_E2E_APISERVER_HOST")]
    api_host: Option<String>,
    /// KUBERNETES_SERVICE_PORT for pods.
    #[arg(long, env = "FERRY_E2E_APISERVER_PORT", default_value_t = 6443)]
    api_port: u16,
    /// The most time a pod gets to stop when the kubelet stops (seconds; below down.sh's 5).
    #[arg(long, env = "FERRY_KUBELET_SHUTDOWN_GRACE", default_value_t = 3)]
    shutdown_grace_seconds: u64,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG wins when set.
    #[arg(long, env = "FERRY_KUBELET_LOG", default_value = "info")]
    log: String,
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    let addr = s.split('/').next().unwrap_or(s).trim();
    addr.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

fn main() {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => exit_on_clap_error("ferry-kubelet", e),
    };
    init_logging(&args.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    let code = rt.block_on(async {
        let ctx = match setup(&args).await {
            Ok(ctx) => ctx,
            Err(e) => {
                eprintln!("ferry-kubelet: {}", one_line(&e));
                return EX_USAGE;
            }
        };
        match run(ctx).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ferry-kubelet: {}", one_line(&e));
                1
            }
        }
    });
    std::process::exit(code);
}

/// The error and its causes on one line, each cause once (our errors already name theirs).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Everything that must be right before the kubelet touches the cluster; errors here are
/// configuration errors.
async fn setup(args: &Args) -> anyhow::Result<Arc<Context>> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let images = ImageMap::load(&args.image_map, &args.images, &cwd)?;
    let tools = Tools::find()?;
    check_bridge(&tools, &args.bridge, args.node_ip).await?;
    if !args.pod_cidr.contains(args.node_ip) {
        bail!(
            "the node IP {} is outside the pod CIDR {}",
            args.node_ip,
            args.pod_cidr
        );
    }
    let run_dir = context::absolute(&args.run_dir, &cwd);
    std::fs::create_dir_all(run_dir.join("pods"))
        .with_context(|| format!("cannot create the run directory {}", run_dir.display()))?;
    let client = client(&context::absolute(&args.kubeconfig, &cwd)).await?;
    let node = NodeConfig {
        name: args.node_name.clone(),
        ip: args.node_ip,
        bridge: args.bridge.clone(),
        pod_cidr: args.pod_cidr,
        api_host: args
            .api_host
            .clone()
            .unwrap_or_else(|| args.node_ip.to_string()),
        api_port: args.api_port,
    };
    for rule in images.rules() {
        tracing::debug!(pattern = %rule.pattern, exec = %rule.exec.display(), honour_command = rule.honour_command, "image rule");
    }
    tracing::info!(
        node = %node.name, ip = %node.ip, bridge = %node.bridge, pod_cidr = %node.pod_cidr,
        image_map = %images.source().display(), rules = images.rules().len(), run_dir = %run_dir.display(),
        "starting"
    );
    if tools.host_mount_ns.is_none() && !own_mount_ns_is_the_machines() {
        tracing::warn!(
            "no ancestor process is in the machine's mount namespace: pod network namespaces \
             will be visible to `ip netns` only inside the kubelet's"
        );
    }
    Ok(Arc::new(Context {
        events: events::recorder(client.clone(), &node.name),
        client,
        ipam: Mutex::new(Ipam::new(node.pod_cidr, node.ip)),
        node,
        images,
        tools,
        run_dir,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        allocatable: context::allocatable(),
    }))
}

fn own_mount_ns_is_the_machines() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|l| l.contains(" /run/netns ") && l.contains("shared:") && !l.contains("master:"))
    })
}

async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read the kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("the kubeconfig {} is not usable", kubeconfig.display()))?;
    kube::Client::try_from(config).context("cannot build the API client")
}

/// The bridge must exist here and carry the node IP: that is how we know we run inside the
/// cluster's network namespace.
async fn check_bridge(tools: &Tools, bridge: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let shown = cmd::run(&tools.ip, ["-o", "-4", "addr", "show", "dev", bridge])
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "bridge {bridge} not found in this network namespace ({e}); run the kubelet inside the cluster's namespace (ip netns exec ferry-e2e ...) after `make cluster-up`"
            )
        })?;
    let wanted = format!("inet {ip}/");
    if !shown.contains(&wanted) {
        bail!(
            "bridge {bridge} does not carry the node IP {ip} (it has: {})",
            shown.trim()
        );
    }
    Ok(())
}

async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let swept = netns::sweep(&ctx.tools, &ctx.pod_network()).await?;
    if swept > 0 {
        tracing::info!(swept, "removed pod network namespaces of an earlier run");
    }
    // The API server may still be settling right after `make cluster-up`: try for a while.
    let mut attempt = 0;
    let registered = loop {
        attempt += 1;
        match node::register(ctx.clone()).await {
            Ok(registered) => break registered,
            Err(e) if attempt < 30 => {
                tracing::warn!(error = %e, attempt, "cannot register the node yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(registered.run(stop_rx.clone()));
    let pods = tokio::spawn(pods::run(ctx.clone(), stop_rx));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
    let _ = stop_tx.send(true);
    if let Err(e) = pods.await {
        tracing::error!(error = %e, "the pod manager failed");
    }
    let _ = heartbeat.await;
    // Belt and braces: nothing of ours may outlive the kubelet.
    netns::sweep(&ctx.tools, &ctx.pod_network()).await?;
    tracing::info!("stopped");
    Ok(())
}
