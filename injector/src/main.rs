//! `ferry-injector`: the mutating admission webhook. The admin port comes up first (so
//! `/livez` answers while certificates are being set up), then the certificate, then the
//! webhook; `/readyz` turns 200 once a certificate is served and, when the injector manages it,
//! the webhook configuration carries its CA.
#![forbid(unsafe_code)]

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use clap::Parser;
use ferry_injector::{
    args::{Args, CertSource},
    bootstrap::{self, BundleState},
    metrics::Metrics,
    server::{self, Admin, Webhook},
    tls::CertStore,
};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => ferry_api::usage::exit_on_clap_error("ferry-injector", e),
    };
    init_tracing(&args);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-injector: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ferry-injector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(args: &Args) {
    let level = args.log_level.as_str();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,ferry_injector={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_as_json {
        builder.json().init();
    } else {
        use std::io::IsTerminal as _;
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        builder.with_target(false).with_ansi(ansi).init();
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let store = CertStore::new(metrics.clone());
    let bundle = Arc::new(ArcSwap::from_pointee(if args.manages_ca_bundle() {
        BundleState::Pending("not checked yet".into())
    } else {
        BundleState::NotManaged
    }));

    // Bind both ports before anything else, so a busy port fails the start at once.
    let webhook_listener = server::bind(args.listen, "listen").await?;
    let admin_listener = server::bind(args.admin_listen, "admin-listen").await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grace = Duration::from_secs(args.graceful_shutdown_seconds);
    let admin = server::admin_router(Admin {
        store: store.clone(),
        bundle: bundle.clone(),
        metrics: metrics.clone(),
    });
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        None,
        admin,
        stopped(stop_rx.clone()),
        grace,
    ));

    let source = args.cert_source();
    let needs_api = args.manages_ca_bundle() || matches!(source, CertSource::Bootstrap { .. });
    let client = if needs_api {
        Some(kube::Client::try_default().await.context(
            "cannot configure the Kubernetes client (in-cluster, $KUBECONFIG or ~/.kube/config); \
             it is needed to bootstrap certificates or to set the caBundle \
             (use --tls-cert-file/--tls-key-file and --webhook-config-name '' to run without it)",
        )?)
    } else {
        None
    };

    let mut background = tokio::task::JoinSet::new();
    match source {
        CertSource::Files(files) => {
            match files.read() {
                Ok(m) => store.install(m, "files").with_context(|| {
                    format!(
                        "--tls-cert-file {} / --tls-key-file {}",
                        files.cert.display(),
                        files.key.display()
                    )
                })?,
                Err(e) => tracing::error!(error = %e,
                    "certificate files not readable yet; not ready until they are"),
            }
            background.spawn(ferry_injector::tls::watch_files(
                store.clone(),
                files,
                args.reload_interval(),
            ));
        }
        CertSource::Bootstrap { secret, sans } => {
            let client = client.clone().expect("bootstrap mode has a client");
            let mut backoff = Duration::from_millis(500);
            let material = loop {
                match bootstrap::ensure_secret(&client, &secret, &sans).await {
                    Ok(m) => break m,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot bootstrap the serving certificate; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            };
            store
                .install(material, "secret")
                .context("the bootstrapped certificate is not usable")?;
            background.spawn(bootstrap::keep_secret(
                client,
                secret,
                sans,
                store.clone(),
                Duration::from_secs(args.tls_secret_resync_seconds),
            ));
        }
    }
    if args.manages_ca_bundle() {
        let client = client
            .clone()
            .expect("managing the caBundle needs a client");
        background.spawn(bootstrap::keep_ca_bundle(
            client,
            args.webhook_config_name.clone(),
            store.subscribe(),
            bundle.clone(),
        ));
    }

    let webhook = server::webhook_router(Arc::new(Webhook {
        config: args.injector_config(),
        metrics: metrics.clone(),
        body_timeout: server::BODY_TIMEOUT,
    }));
    let acceptor = TlsAcceptor::from(Arc::new(store.server_config()));
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, "ferry-injector serving");
    let serving = tokio::spawn(server::serve(
        webhook_listener,
        Some(acceptor),
        webhook,
        stopped(stop_rx),
        grace,
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: finishing open requests");
    let _ = stop_tx.send(true);
    background.abort_all();
    let _ = serving.await;
    let _ = admin_task.await;
    Ok(())
}
