//! The only module that binds sockets: the HTTP API, the internal (sidecar-to-sidecar) port,
//! the optional public health and metrics ports; registration; graceful shutdown.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{Request, Response};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_util::either::Either;

use arc_swap::{ArcSwap, ArcSwapOption};
use tower::Service;

use crate::{
    api::{self, Api, Health, OutboundCheck},
    apphealth::{self, AppHealth},
    body::Body,
    config::{ConfigError, HttpListen, Mode, Settings, SidecarArgs},
    configuration::{self, ConfigurationError},
    conn,
    endpoints::{self, Endpoints},
    identity::Identity,
    inbound::access::Policy,
    kubernetes::{self, KubeResolver, httpendpoints},
    metrics::Metrics,
    outbound::{
        mtls::PeerConnect,
        peers::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW},
        resolve::Resolve,
    },
    registry::{Entry, Registration, RegistryResolver, now_unix},
    stacks::{Parts, Sidecar},
    upstream::{AppChannel, GuardedResolver, Upstream, http_client, native_roots_tls},
};

/// Why the sidecar could not start; each names the flag or file to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} (--{flag}): {source}")]
    Bind {
        addr: SocketAddr,
        flag: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on any of {addrs:?} (--dapr-listen-addresses): {source}")]
    NoListenAddress {
        addrs: Vec<IpAddr>,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Resources(#[from] endpoints::LoadError),
    #[error("mTLS (--enable-mtls): {0}")]
    Identity(String),
    #[error(transparent)]
    Configuration(#[from] configuration::ConfigurationError),
    #[error(
        "cannot register in {dir} (set FERRY_HOME or --ferry-home to a writable directory): {source}"
    )]
    Register {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// What `ferry run` adds to the registry entry.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub command: Vec<String>,
    /// The run file (`ferry run -f`) the app was started from.
    pub run_file: Option<String>,
    /// The `ferry run -f` process that started this one.
    pub cli_pid: Option<u32>,
}

/// A started sidecar.
pub struct Running {
    pub http_addrs: Vec<SocketAddr>,
    pub internal_addr: SocketAddr,
    pub public_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// What the registry holds (standalone mode) or would hold (kubernetes mode, which does not
    /// register).
    pub entry: Entry,
    registration: Option<Registration>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    background: JoinSet<()>,
    /// Run once the servers have stopped (kubernetes mode stops its watches).
    on_shutdown: Vec<Box<dyn FnOnce() + Send>>,
    grace: Duration,
}

/// Validates the flags, binds every port, loads resources, registers (standalone mode), and
/// starts serving.
pub async fn start(args: &SidecarArgs, info: RunInfo) -> Result<Running, StartError> {
    start_with(args.settings()?, info).await
}

/// [`start`] from settings already validated.
pub async fn start_with(settings: Settings, info: RunInfo) -> Result<Running, StartError> {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let settings = Arc::new(settings);
    match settings.mode {
        Mode::Standalone => {
            let resolver = Arc::new(RegistryResolver::new(settings.registry_dir.clone()));
            let mut running = launch(&settings, info, resolver.clone()).await?;
            resolver.rescan().await;
            running.health.outbound_ready.store(true, Ordering::Release);
            running
                .running
                .background
                .spawn(resolver.clone().refresh_forever());
            let dir = &settings.registry_dir;
            let registration =
                Registration::create(dir, &running.running.entry).map_err(|source| {
                    StartError::Register {
                        dir: dir.display().to_string(),
                        source,
                    }
                })?;
            running.running.registration = Some(registration);
            Ok(running.serving(&settings))
        }
        Mode::Kubernetes => {
            // No registry: the root filesystem is read-only, and peers find pods through the
            // Kubernetes API. Building the client reads files only; without one the sidecar
            // still serves, and every lookup says why it cannot resolve.
            let api = kubernetes::connect().await.map_err(|e| e.to_string());
            let resolver = Arc::new(KubeResolver::new(
                api.clone(),
                settings.app_id.clone(),
                settings.namespace.clone(),
                settings.kube.sync_timeout,
            ));
            let mut running = launch(&settings, info, resolver.clone()).await?;
            // Readiness (/v1.0/healthz) never waits for the API server: a pod must stay Ready
            // while it is briefly away. /v1.0/healthz/outbound tells the sync state instead.
            running.health.outbound_ready.store(true, Ordering::Release);
            let check = resolver.clone();
            let _ = running
                .health
                .outbound_check
                .set(OutboundCheck(Box::new(move || check.outbound())));
            let background = &mut running.running.background;
            background.spawn(resolver.clone().let_go_idle_forever());
            match (&api, settings.config.first()) {
                (Ok(api), Some(name)) => {
                    background.spawn(configuration::follow_resource(
                        api.client.clone(),
                        settings.namespace.clone(),
                        name.clone(),
                        running.policy.clone(),
                    ));
                }
                (Err(why), Some(name)) => tracing::warn!(
                    "cannot watch the Configuration {name} (--config): {why}; no access control applies"
                ),
                (_, None) => {}
            }
            if let (Ok(api), Ok(own)) = (api, resolver.watch(&settings.namespace)) {
                let endpoints = running.endpoints.clone();
                let files = (**endpoints.load()).clone();
                background.spawn(httpendpoints::follow_forever(
                    api,
                    own,
                    settings.app_id.clone(),
                    files,
                    settings.kube.secret_refresh,
                    move |eps| endpoints.store(Arc::new(eps)),
                ));
            }
            running
                .running
                .on_shutdown
                .push(Box::new(move || resolver.stop()));
            Ok(running.serving(&settings))
        }
    }
}

/// A sidecar whose sockets serve, before the mode's last steps.
struct Launched {
    running: Running,
    health: Arc<Health>,
    endpoints: Arc<ArcSwap<Endpoints>>,
    /// The access-control policy in force.
    policy: Policy,
}

impl Launched {
    fn serving(self, settings: &Settings) -> Running {
        let r = &self.running;
        tracing::info!(
            app_id = %settings.app_id,
            namespace = %settings.namespace,
            mode = ?settings.mode,
            http = ?r.http_addrs,
            grpc = r.entry.grpc_port,
            internal = %r.internal_addr,
            public = ?r.public_addr,
            metrics = ?r.metrics_addr,
            "sidecar is serving"
        );
        self.running
    }
}

async fn launch<R: Resolve>(
    settings: &Arc<Settings>,
    info: RunInfo,
    resolver: Arc<R>,
) -> Result<Launched, StartError> {
    let endpoints = endpoints::load(
        &settings.resources_path,
        &settings.app_id,
        &settings.namespace,
    )?;
    if !endpoints.is_empty() {
        tracing::info!(endpoints = ?endpoints.names(), "loaded HTTPEndpoints");
    }
    let endpoints = Arc::new(ArcSwap::from_pointee(endpoints));
    let config = match settings.config.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        many => return Err(ConfigurationError::Several(many.len()).into()),
    };
    let policy: Policy = Arc::new(ArcSwapOption::empty());
    if settings.mode == Mode::Standalone
        && let Some(file) = &config
    {
        // As daprd: standalone reads the --config file, and a bad one refuses the start.
        let acl = configuration::read_file(Path::new(file))?;
        tracing::info!(file = %file, access_control = acl.is_some(), "loaded the Configuration");
        policy.store(acl.map(Arc::new));
    }
    let app = settings.app.as_ref().map(|a| {
        AppChannel::new(settings.app_protocol, &a.address, a.port)
            .with_token(settings.app_token.clone())
    });
    let fqdn = settings.fqdn.map(|f| {
        let guard = if f.allow_link_local {
            GuardedResolver::open()
        } else {
            GuardedResolver::guarded()
        };
        Arc::new(http_client(native_roots_tls(), guard, false)) as Arc<dyn Upstream>
    });
    let metrics = settings
        .metrics
        .map(|_| Arc::new(Metrics::new(&settings.app_id)));
    let app_health = settings
        .app_health
        .clone()
        .map(|s| Arc::new(AppHealth::new(s)));
    // The first certificate before serving, so the first call can use it; without one the
    // sidecar serves anyway, not Ready, and keeps asking (`Identity::run`).
    let identity = match &settings.mtls {
        None => {
            if settings.mode == Mode::Kubernetes {
                tracing::warn!("plaintext between sidecars: mTLS is off (--enable-mtls not given)");
            }
            None
        }
        Some(m) => {
            let identity = Identity::new(m, &settings.app_id, &settings.namespace, metrics.clone())
                .map_err(StartError::Identity)?;
            let _ = identity.obtain().await;
            Some(identity)
        }
    };
    let connect = match &identity {
        Some(i) => PeerConnect::mtls(ferry_identity::tls::client_config(i.credentials())),
        None => PeerConnect::Tcp,
    };
    let internal_tls = identity.as_ref().map(|i| {
        tokio_rustls::TlsAcceptor::from(ferry_identity::tls::server_config(i.credentials()))
    });
    let sidecar = Sidecar::new(Parts {
        settings: settings.clone(),
        resolver,
        connect,
        app: app.clone(),
        fqdn,
        endpoints: endpoints.clone(),
        hostname: hostname(),
        app_health: app_health.clone(),
        metrics: metrics.clone(),
        access: policy.clone(),
    });
    let health = Arc::new(Health::default());
    if let Some(i) = &identity {
        let _ = health.identity.set(i.clone());
    }
    if !settings.config.is_empty() {
        health
            .extended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert("configuration".into(), settings.config.join(","));
    }
    let api = Arc::new(Api {
        outbound: sidecar.outbound,
        settings: settings.clone(),
        health: health.clone(),
        endpoints: endpoints.clone(),
        app_health: app_health.clone(),
    });

    // Bind everything before serving anything, so a busy port fails the start cleanly.
    let http_listeners = bind_http(&settings.http).await?;
    let http_addrs: Vec<SocketAddr> = http_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let grpc_listeners = bind_api(&settings.http, settings.grpc_port, "dapr-grpc-port").await?;
    let grpc_port = grpc_listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .map_or(settings.grpc_port, |a| a.port());
    let internal = bind(settings.internal, "dapr-internal-grpc-port").await?;
    let internal_addr = internal
        .local_addr()
        .expect("a bound socket has an address");
    let public = match settings.public {
        Some(addr) => Some(bind(addr, "dapr-public-port").await?),
        None => None,
    };
    let public_addr = public.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_listener = match settings.metrics {
        Some(addr) => Some(bind(addr, "metrics-port").await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (shutdown, shutdown_rx) = watch::channel(false);
    let grace = settings.grace;
    let first_request = settings.head_timeout;
    let mut tasks = JoinSet::new();
    let builder = http_builder(settings.max_head);
    // The API ports' connections: plaintext, nothing kept idle on shutdown.
    let api_conn = ConnOptions {
        grace,
        first_request,
        linger: Duration::ZERO,
        tls: None,
    };
    for listener in http_listeners {
        let api = api.clone();
        let svc = move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.serve(req).await) }
        };
        tasks.spawn(serve(
            listener,
            builder.clone(),
            svc,
            shutdown_rx.clone(),
            api_conn.clone(),
        ));
    }
    let grpc = crate::grpc::GrpcService::new(api.clone());
    for listener in grpc_listeners {
        let grpc = grpc.clone();
        let svc = move |req| grpc.clone().serve(req);
        tasks.spawn(serve(
            listener,
            builder.clone(),
            svc,
            shutdown_rx.clone(),
            api_conn.clone(),
        ));
    }
    {
        let inbound = sidecar.inbound;
        let svc = move |req| inbound.clone().call(req);
        tasks.spawn(serve(
            internal,
            builder.clone(),
            svc,
            shutdown_rx.clone(),
            ConnOptions {
                grace,
                first_request,
                linger: grace.min(PEER_LINGER),
                tls: internal_tls,
            },
        ));
    }
    if let Some(listener) = public {
        let api = api.clone();
        let svc = move |req: Request<Incoming>| {
            let resp = api.serve_public(&req);
            std::future::ready(Ok::<_, Infallible>(resp))
        };
        tasks.spawn(serve(
            listener,
            builder.clone(),
            svc,
            shutdown_rx.clone(),
            api_conn.clone(),
        ));
    }
    if let (Some(listener), Some(m)) = (metrics_listener, &metrics) {
        let m = m.clone();
        let svc = move |req: Request<Incoming>| {
            std::future::ready(Ok::<_, Infallible>(api::serve_metrics(&m, &req)))
        };
        tasks.spawn(serve(
            listener,
            builder.clone(),
            svc,
            shutdown_rx.clone(),
            api_conn.clone(),
        ));
    }

    let mut background = JoinSet::new();
    if let Some(i) = identity {
        background.spawn(i.run());
    }
    match &settings.app {
        None => health.app_ready.store(true, Ordering::Release),
        Some(a) => {
            let (h, addr, port) = (health.clone(), a.address.clone(), a.port);
            background.spawn(async move { wait_for_app(&addr, port, &h).await });
        }
    }
    if let (Some(app_health), Some(app)) = (app_health, app) {
        background.spawn(apphealth::probe_forever(app_health, app, metrics));
    }
    if settings.mode == Mode::Standalone
        && let Some(file) = config
    {
        background.spawn(configuration::follow_file(file.into(), policy.clone()));
    }

    let entry = Entry {
        app_id: settings.app_id.to_string(),
        namespace: settings.namespace.to_string(),
        internal_address: reachable(internal_addr),
        http_port: http_addrs
            .first()
            .map(|a| a.port())
            .unwrap_or(settings.http.port),
        grpc_port,
        app_port: settings.app.as_ref().map(|a| a.port),
        app_protocol: settings.app_protocol.as_str().to_owned(),
        pid: std::process::id(),
        app_pid: None,
        command: info.command,
        run_file: info.run_file,
        cli_pid: info.cli_pid,
        started_at: now_unix(),
    };
    Ok(Launched {
        running: Running {
            http_addrs,
            internal_addr,
            public_addr,
            metrics_addr,
            entry,
            registration: None,
            shutdown,
            tasks,
            background,
            on_shutdown: Vec::new(),
            grace,
        },
        health,
        endpoints,
        policy,
    })
}

impl Running {
    /// Records the app's process in the registry entry.
    pub fn set_app_pid(&mut self, pid: u32) {
        self.entry.app_pid = Some(pid);
        if let Some(r) = &mut self.registration
            && let Err(e) = r.update(&self.entry)
        {
            tracing::warn!(error = %e, "cannot update the registry entry");
        }
    }

    /// The HTTP API port apps should use.
    pub fn http_port(&self) -> u16 {
        self.entry.http_port
    }

    /// Deregisters, stops accepting, and lets in-flight requests finish within the grace period.
    pub async fn shutdown(mut self) {
        drop(self.registration.take());
        let _ = self.shutdown.send(true);
        let deadline = self.grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.background.abort_all();
        for stop in self.on_shutdown.drain(..) {
            stop();
        }
        tracing::info!("sidecar stopped");
    }

    /// Waits until one of the servers stops on its own (it should not).
    pub async fn wait(&mut self) {
        let _ = self.tasks.join_next().await;
    }
}

/// The address other sidecars should dial for a listener (an unspecified address means "all
/// interfaces", which on one machine is reached through loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

async fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, flag, source })
}

/// Binds the HTTP API: on the given addresses, or on 127.0.0.1 and (when the machine has IPv6)
/// [::1]. Port 0 picks a free port, the same one on every address.
///
/// An address this machine does not have (Dapr's default `[::1],127.0.0.1` on a host without
/// IPv6) is skipped, as daprd skips it, as long as another address works; any other failure
/// (a busy port, say) stops the start.
/// The HTTP API's listeners, on every address of `listen` (one port for all, also when free).
async fn bind_http(listen: &HttpListen) -> Result<Vec<TcpListener>, StartError> {
    bind_api(listen, listen.port, "dapr-http-port").await
}

/// An API's listeners on the HTTP API's addresses, at `port` (0: a free one, the same on every
/// address).
async fn bind_api(
    listen: &HttpListen,
    port: u16,
    flag: &'static str,
) -> Result<Vec<TcpListener>, StartError> {
    let explicit = listen.explicit;
    let addrs = listen.addrs.clone();
    let mut port = port;
    let mut out = Vec::new();
    let mut missing = None;
    for ip in &addrs {
        let addr = SocketAddr::new(*ip, port);
        match TcpListener::bind(addr).await {
            Ok(l) => {
                if port == 0 {
                    port = l.local_addr().map(|a| a.port()).unwrap_or(0);
                }
                out.push(l);
            }
            Err(source) if not_on_this_machine(&source) => {
                if explicit {
                    tracing::warn!(%addr, error = %source, "skipping a listen address this machine does not have (--dapr-listen-addresses)");
                } else {
                    tracing::debug!(%addr, error = %source, "not listening on IPv6 loopback");
                }
                missing = Some(source);
            }
            Err(source) => {
                return Err(StartError::Bind { addr, flag, source });
            }
        }
    }
    match (out.is_empty(), missing) {
        (true, Some(source)) => Err(StartError::NoListenAddress { addrs, source }),
        _ => Ok(out),
    }
}

/// The address does not exist here (EADDRNOTAVAIL), or its family is not supported
/// (EAFNOSUPPORT: a kernel without IPv6).
fn not_on_this_machine(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    const EAFNOSUPPORT: i32 = 97;
    #[cfg(not(target_os = "linux"))]
    const EAFNOSUPPORT: i32 = 47;
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(EAFNOSUPPORT)
}

/// Every port serves HTTP/1.1 and HTTP/2 (prior knowledge). Peers call the internal port over
/// HTTP/1.1 (see `peers`); HTTP/2 there serves sidecars of earlier versions.
fn http_builder(head_limit: usize) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // No `header_read_timeout`: hyper would start it while a keep-alive connection idles
    // between requests; `conn::HeadDeadline` times the head from its first byte instead.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(head_limit)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(head_limit as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    b
}

/// How long an idle HTTP/1.1 connection from a peer sidecar stays open after shutdown begins
/// (within the grace period): long enough for the peers' tables to drop this sidecar.
const PEER_LINGER: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown, then waits (up to the grace period) for the open ones.
/// A connection whose first request has not arrived within `first_request` is closed.
///
/// On shutdown the listener closes, a request in progress is answered, and HTTP/2 connections
/// get a GOAWAY, which tells the client which requests were not taken so it can send them
/// elsewhere. An idle HTTP/1.1 connection is kept for `linger` first: a peer that took it from
/// its pool just then (its tables do not know yet that this sidecar is going) has its request
/// answered, with `Connection: close`, rather than cut unanswered, which it could only retry
/// when the request is idempotent.
async fn serve<S, F>(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    svc: S,
    mut shutdown: watch::Receiver<bool>,
    options: ConnOptions,
) where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let ConnOptions {
        grace,
        first_request,
        linger,
        tls,
    } = options;
    // Every connection task holds a sender: all are done when `recv` sees none left.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let stopping = Arc::new(AtomicBool::new(false));
    let stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // An HTTP/1 head that starts but does not finish in time is cut by
                // `HeadDeadline`; a connection that sends no request at all (nothing, a partial
                // HTTP/2 preface, or HTTP/2 without a stream) by the `first_request` timer
                // below. Either would otherwise hold a socket forever (slowloris).
                let activity = Arc::new(conn::Activity::default());
                let svc = {
                    let (svc, activity, stopping) = (svc.clone(), activity.clone(), stopping.clone());
                    move |req: Request<Incoming>| {
                        let request = activity.begin();
                        let http1 = req.version() < http::Version::HTTP_2;
                        let response = svc(req);
                        let stopping = stopping.clone();
                        async move {
                            let mut response = response.await?;
                            if http1 && stopping.load(Ordering::Relaxed) {
                                response.headers_mut().insert(
                                    http::header::CONNECTION,
                                    http::HeaderValue::from_static("close"),
                                );
                            }
                            Ok::<_, Infallible>(response.map(|b| request.until_written(b)))
                        }
                    }
                };
                let (open, mut shutdown) = (open.clone(), stop.clone());
                let (builder, tls) = (builder.clone(), tls.clone());
                tokio::spawn(async move {
                    let _open = open;
                    // mTLS: the handshake counts against the first request's time. The peer's
                    // verified identity goes with each of its requests; what it says in headers
                    // about itself is not trusted (the callee stack sets them from this).
                    let (stream, peer_id) = match tls {
                        None => (Either::Left(stream), None),
                        Some(tls) => match tokio::time::timeout(first_request, tls.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let id = ferry_identity::tls::peer_identity(tls.get_ref().1.peer_certificates());
                                (Either::Right(tls), id)
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "a peer's TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("a peer's TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    let svc = move |mut req: Request<Incoming>| {
                        if let Some(id) = &peer_id {
                            req.extensions_mut().insert(id.clone());
                        }
                        svc(req)
                    };
                    let io = conn::HeadDeadline::new(stream, activity.clone(), first_request);
                    // Not `serve_connection_with_upgrades`: the sidecar never upgrades a connection.
                    let conn = builder.serve_connection(TokioIo::new(io), service_fn(svc)).into_owned();
                    tokio::pin!(conn);
                    let guard = tokio::time::sleep(first_request);
                    tokio::pin!(guard);
                    let mut guarding = true;
                    let ended = loop {
                        tokio::select! {
                            ended = conn.as_mut() => break Some(ended),
                            _ = &mut guard, if guarding => {
                                if !activity.started() {
                                    tracing::debug!("closing a connection that sent no request in time");
                                    return;
                                }
                                guarding = false;
                            }
                            _ = stopped(&mut shutdown) => break None,
                        }
                    };
                    let ended = match ended {
                        Some(ended) => ended,
                        None => {
                            let lingering = !linger.is_zero() && activity.started() && !activity.http2();
                            let ended = if lingering {
                                tokio::time::timeout(linger, conn.as_mut()).await.ok()
                            } else {
                                None
                            };
                            match ended {
                                Some(ended) => ended,
                                None => {
                                    conn.as_mut().graceful_shutdown();
                                    conn.await
                                }
                            }
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    stopping.store(true, Ordering::Relaxed);
    drop(listener);
    drop(open);
    if tokio::time::timeout(grace, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "in-flight requests did not finish within the grace period"
        );
    }
}

/// How a port treats its connections.
#[derive(Clone)]
struct ConnOptions {
    /// How long in-flight requests may finish on shutdown.
    grace: Duration,
    /// How long a new connection may take to send its first request (and its TLS handshake).
    first_request: Duration,
    /// How long an idle HTTP/1.1 connection is kept on shutdown.
    linger: Duration,
    /// mTLS (the internal port with --enable-mtls).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Returns once shutdown has begun (or the sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn wait_for_app(addr: &str, port: u16, health: &Health) {
    loop {
        if tokio::net::TcpStream::connect((addr, port)).await.is_ok() {
            tracing::info!(port, "app is listening");
            health.app_ready.store(true, Ordering::Release);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The machine's host name (the pod name on Kubernetes), for `X-Forwarded-Host`.
pub fn hostname() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_this_machine_lacks_are_told_apart_from_busy_ports() {
        // 192.0.2.0/24 is documentation space: no machine has it.
        let missing = TcpListener::bind("192.0.2.1:0").await.unwrap_err();
        assert!(not_on_this_machine(&missing), "{missing:?}");
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let busy = TcpListener::bind(taken.local_addr().unwrap())
            .await
            .unwrap_err();
        assert!(!not_on_this_machine(&busy), "{busy:?}");
    }
}
