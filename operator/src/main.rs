//! `ferry-operator`: the admin server and the leader election always run; the controllers run
//! only while this replica holds the Lease. Losing the Lease stops them (and the replica goes on
//! as a follower); SIGTERM or SIGINT stops them, releases the Lease and exits.
#![forbid(unsafe_code)]

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use ferry_api::usage::{EX_USAGE, exit_on_clap_error};
use ferry_operator::{
    admin::{self, Health},
    args::{Args, LogFormat},
    ca,
    lease::{Elector, LeaseConfig},
    metrics::Metrics,
    runtime::{self, Settings},
};
use tokio::sync::watch;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => exit_on_clap_error("ferry-operator", e),
    };
    if let Err(e) = init_tracing(&args) {
        eprintln!("ferry-operator: {e:#}");
        return ExitCode::from(EX_USAGE as u8);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-operator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(args: &Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log)
        .with_context(|| format!("--log {:?} is not a log filter", args.log))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let identity = args.identity();
    let lease = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace(),
        identity: identity.clone(),
        duration: args.lease_duration(),
        renew_every: args.lease_renew_every(),
    };
    let client = kube::Client::try_default().await.context(
        "cannot configure the Kubernetes client (in-cluster, $KUBECONFIG or ~/.kube/config)",
    )?;
    let metrics = Arc::new(Metrics::default());
    let health = Health::new(metrics.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let listener = admin::bind(args.admin_addr).await?;
    info!(
        admin = %args.admin_addr, %identity,
        lease = %format!("{}/{}", lease.namespace, lease.name),
        "ferry-operator starting"
    );
    let admin_task = tokio::spawn(admin::serve(
        listener,
        admin::router(health.clone(), metrics.clone()),
        shutdown_rx.clone(),
    ));

    // The CA: on every replica, leader or not. Its port is bound now so that a taken port
    // fails start-up; a failure later stops the process like a signal does.
    let ca_failed = Arc::new(tokio::sync::Notify::new());
    let ca_task = if args.ca {
        let settings = ca::Settings {
            listen: args.ca_addr,
            namespace: ferry_api::Namespace::new(lease.namespace.clone()).with_context(|| {
                format!("the operator's namespace {:?} (the CA's)", lease.namespace)
            })?,
            secret: args.ca_secret.clone(),
            generate: args.ca_generate,
            trust_domain: args.control_plane_trust_domain.clone(),
            workload_ttl: args.workload_cert_ttl,
            service: args.ca_service.clone(),
        };
        let listener = ca::bind(args.ca_addr).await?;
        health.enable_ca();
        info!(addr = %args.ca_addr, id = %settings.sentry_id(), "CA starting");
        let (client, metrics, health, shutdown, failed) = (
            client.clone(),
            metrics.clone(),
            health.clone(),
            shutdown_rx.clone(),
            ca_failed.clone(),
        );
        Some(tokio::spawn(async move {
            let r = ca::run(client, settings, listener, metrics, health, shutdown).await;
            if let Err(e) = &r {
                error!("the CA stopped: {e:#}");
                failed.notify_one();
            }
            r
        }))
    } else {
        None
    };

    let (leader_tx, mut leader_rx) = watch::channel(false);
    let elector = Elector::new(client.clone(), lease);
    let elector_task = tokio::spawn(elector.run(leader_tx, health.clone(), shutdown_rx.clone()));

    let settings = Settings {
        service_grace: args.service_grace(),
        instance: identity,
        sidecar_names: args.sidecar_names(),
    };
    let signal = {
        let failed = ca_failed.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = failed.notified() => {}
            }
        }
    };
    tokio::pin!(signal);
    loop {
        // Follower: wait to lead, or to stop.
        tokio::select! {
            r = leader_rx.wait_for(|l| *l) => {
                if r.is_err() { break; }
            }
            () = &mut signal => break,
        }
        info!("leading: starting the caches and controllers");
        let controllers = runtime::run(
            client.clone(),
            metrics.clone(),
            health.clone(),
            settings.clone(),
        );
        let lost = tokio::select! {
            () = controllers => false,
            _ = leader_rx.wait_for(|l| !*l) => true,
            () = &mut signal => false,
        };
        health.set_caches_synced(false);
        if !lost {
            break;
        }
        info!("lost the Lease: controllers stopped, following again");
    }

    info!("shutting down");
    shutdown_tx.send_replace(true);
    // The elector releases the Lease (the controllers are already stopped).
    let _ = elector_task.await;
    if let Some(task) = ca_task {
        match task.await {
            Ok(r) => r?,
            Err(e) => anyhow::bail!("CA task failed: {e}"),
        }
    }
    match admin_task.await {
        Ok(r) => r?,
        Err(e) => anyhow::bail!("admin server task failed: {e}"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
    }
}
