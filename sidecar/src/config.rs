//! The sidecar's flags, named as `daprd` names them, and their validated form ([`Settings`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, ValueEnum, builder::BoolishValueParser};
use ferry_api::{AppId, Namespace, TrustDomain, ports};

use crate::auth::{Token, TokenError};
pub use ferry_api::{AppProtocol, LogLevel};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One machine, no cluster: names resolve through the local registry directory.
    Standalone,
    /// In a pod, as the injector starts it: nothing is written to disk, peers connect by pod IP.
    Kubernetes,
}

/// Sidecar flags, shared by `ferryd` and `ferry run`.
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// The app's ID: letters, digits, '-' and '_', at most 58 characters.
    #[arg(long, env = "FERRY_APP_ID", value_parser = parse_app_id)]
    pub app_id: AppId,

    /// The port the app listens on; without it the app can call others but cannot be called.
    #[arg(long, env = "FERRY_APP_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub app_port: Option<u16>,

    /// How to talk to the app.
    #[arg(long, env = "FERRY_APP_PROTOCOL", default_value = "http", value_parser = parse_app_protocol,
          hide_possible_values = true)]
    pub app_protocol: AppProtocol,

    /// Deprecated (as in Dapr): same as --app-protocol https.
    #[arg(long, env = "FERRY_APP_SSL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub app_ssl: bool,

    /// The host the app listens on.
    #[arg(long, env = "FERRY_APP_CHANNEL_ADDRESS", default_value = "127.0.0.1")]
    pub app_channel_address: String,

    /// The HTTP API port apps call (`DAPR_HTTP_PORT`); 0 picks a free port (see `ferry list`).
    #[arg(long, env = "FERRY_HTTP_PORT", default_value_t = ports::HTTP_API)]
    pub dapr_http_port: u16,

    /// Dapr's gRPC API (`dapr.proto.runtime.v1.Dapr`), on the HTTP API's addresses, given to the
    /// app as `DAPR_GRPC_PORT` (0: a free port).
    #[arg(long, env = "FERRY_GRPC_PORT", default_value_t = ports::GRPC_API)]
    pub dapr_grpc_port: u16,

    /// The sidecar-to-sidecar port [default: a free port in standalone mode, 50002 in
    /// kubernetes mode].
    #[arg(long, env = "FERRY_INTERNAL_GRPC_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dapr_internal_grpc_port: Option<u16>,

    /// The address the sidecar-to-sidecar port listens on [default: 127.0.0.1 in standalone
    /// mode, 0.0.0.0 in kubernetes mode, where peers connect by pod IP].
    #[arg(long, env = "FERRY_INTERNAL_GRPC_LISTEN_ADDRESS", value_parser = parse_listen_address)]
    pub dapr_internal_grpc_listen_address: Option<IpAddr>,

    /// The public health port (`/v1.0/healthz`, `/v1.0/healthz/outbound`, `/v1.0/metadata`);
    /// off when not given.
    #[arg(long, env = "FERRY_PUBLIC_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dapr_public_port: Option<u16>,

    /// Addresses the HTTP API listens on, comma-separated. Loopback by default (127.0.0.1, and
    /// [::1] when the machine has IPv6). An address this machine does not have (such as [::1]
    /// without IPv6) is skipped with a warning, as long as another one works.
    #[arg(long, env = "FERRY_LISTEN_ADDRESSES", value_delimiter = ',', value_parser = parse_listen_address)]
    pub dapr_listen_addresses: Vec<IpAddr>,

    /// A directory of resource YAML files (HTTPEndpoint); may be repeated.
    #[arg(
        long,
        env = "FERRY_RESOURCES_PATH",
        alias = "components-path",
        value_delimiter = ','
    )]
    pub resources_path: Vec<PathBuf>,

    /// The largest request body accepted, as a quantity (4Mi, 16Mi, 1G, or bytes) [default: 4Mi].
    #[arg(long, env = "FERRY_MAX_BODY_SIZE", value_parser = parse_size)]
    pub max_body_size: Option<u64>,

    /// Deprecated (as in Dapr): the largest request body in whole megabytes (MiB); ignored when
    /// --max-body-size is given. -1 (Dapr's default): not set.
    #[arg(long, env = "FERRY_HTTP_MAX_REQUEST_SIZE", allow_negative_numbers = true,
          value_parser = parse_legacy_megabytes)]
    pub dapr_http_max_request_size: Option<LegacyUnits>,

    /// The largest request head (request line and headers) accepted, as a quantity; at least 8Ki.
    #[arg(long, env = "FERRY_READ_BUFFER_SIZE", value_parser = parse_read_buffer)]
    pub read_buffer_size: Option<u64>,

    /// Deprecated (as in Dapr): the largest request head in whole kilobytes (KiB); ignored when
    /// --read-buffer-size is given. -1: not set.
    #[arg(long, env = "FERRY_HTTP_READ_BUFFER_SIZE", allow_negative_numbers = true,
          value_parser = parse_legacy_kilobytes)]
    pub dapr_http_read_buffer_size: Option<LegacyUnits>,

    /// The app's namespace (standalone: any DNS label you like; `default` when not set).
    #[arg(long, env = "NAMESPACE", default_value = "default", value_parser = parse_namespace)]
    pub namespace: Namespace,

    /// Where running sidecars register (`<dir>/registry`); default `~/.ferry`.
    #[arg(long, env = "FERRY_HOME")]
    pub ferry_home: Option<PathBuf>,

    /// Turn off calls to full http(s):// URLs.
    #[arg(long, env = "FERRY_DISABLE_FQDN_INVOCATION")]
    pub disable_fqdn_invocation: bool,

    /// Allow URL calls to link-local and cloud metadata addresses (refused by default).
    #[arg(long, env = "FERRY_ALLOW_FQDN_LINK_LOCAL")]
    pub allow_fqdn_link_local: bool,

    /// Seconds to let in-flight requests finish on shutdown (negative: 5, as in Dapr).
    #[arg(
        long,
        env = "FERRY_GRACEFUL_SHUTDOWN_SECONDS",
        default_value_t = 5,
        allow_negative_numbers = true
    )]
    pub dapr_graceful_shutdown_seconds: i64,

    /// Seconds a client has to send a request's head before the connection is closed.
    #[arg(long, env = "FERRY_READ_HEADER_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub read_header_timeout_seconds: u64,

    /// Threads that serve requests [default: the CPUs this process may run on, from its
    /// affinity mask and cgroup CPU quota]. With one, ferryd runs on a single-threaded
    /// runtime: no wake-ups handed between threads, the cheapest per request.
    #[arg(long, env = "FERRY_WORKER_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// The address put in X-Forwarded-For and Forwarded on remote calls [default: the POD_IP
    /// env var in kubernetes mode, else 127.0.0.1].
    #[arg(long, env = "DAPR_HOST_IP")]
    pub host_ip: Option<IpAddr>,

    /// Where names are resolved.
    #[arg(long, env = "FERRY_MODE", value_enum, default_value = "standalone")]
    pub mode: Mode,

    /// Kubernetes mode: how long the first calls to a namespace wait for its RoutingTable and
    /// EndpointSlices to be listed, before they fail with the Kubernetes API's error.
    #[arg(long, env = "FERRY_KUBE_SYNC_TIMEOUT_SECONDS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub kube_sync_timeout_seconds: u64,

    /// Kubernetes mode: seconds between reads of the Secrets that the namespace's HTTPEndpoints
    /// name (they are also read whenever the RoutingTable changes).
    #[arg(long, env = "FERRY_KUBE_SECRET_REFRESH_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub kube_secret_refresh_seconds: u64,

    /// How much to log (Dapr's levels).
    #[arg(
        long,
        env = "FERRY_LOG_LEVEL",
        value_enum,
        ignore_case = true,
        default_value = "info"
    )]
    pub log_level: LogLevel,

    /// Log every call of the HTTP API at info level, as Dapr does ("HTTP API Called": method
    /// and path, user agent, status, response size, duration); health checks are not logged.
    #[arg(long, env = "FERRY_ENABLE_API_LOGGING", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub enable_api_logging: bool,

    /// Write logs as JSON lines.
    #[arg(long, env = "FERRY_LOG_AS_JSON", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub log_as_json: bool,

    /// Serve Prometheus metrics at GET /metrics on 0.0.0.0:<--metrics-port>. Off unless given
    /// (daprd's default is on).
    #[arg(long, env = "FERRY_ENABLE_METRICS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub enable_metrics: bool,

    /// The metrics port (with --enable-metrics).
    #[arg(long, env = "FERRY_METRICS_PORT", default_value_t = ports::METRICS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub metrics_port: u16,

    /// The Dapr Configuration to apply (its access control): a YAML file in standalone mode,
    /// the name of a Configuration in the sidecar's namespace in kubernetes mode. Changes apply
    /// without a restart.
    #[arg(long, env = "FERRY_CONFIG", value_delimiter = ',')]
    pub config: Vec<String>,

    /// At most this many requests to the app at once; others wait (no 429). -1 and 0: no limit.
    #[arg(long, env = "FERRY_APP_MAX_CONCURRENCY", default_value_t = -1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-1..=i64::from(u32::MAX)))]
    pub app_max_concurrency: i64,

    /// Probe the app and refuse requests for it while it is unhealthy (needs --app-port).
    #[arg(long, env = "FERRY_ENABLE_APP_HEALTH_CHECK", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub enable_app_health_check: bool,

    /// The path the health probe GETs on the app.
    #[arg(long, env = "FERRY_APP_HEALTH_CHECK_PATH", default_value = "/healthz",
          value_parser = parse_health_path)]
    pub app_health_check_path: String,

    /// Seconds between health probes.
    #[arg(long, env = "FERRY_APP_HEALTH_PROBE_INTERVAL", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub app_health_probe_interval: u64,

    /// Milliseconds a health probe may take (at most the interval).
    #[arg(long, env = "FERRY_APP_HEALTH_PROBE_TIMEOUT", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub app_health_probe_timeout: u64,

    /// Consecutive failed probes that make the app unhealthy.
    #[arg(long, env = "FERRY_APP_HEALTH_THRESHOLD", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub app_health_threshold: u32,

    /// Mutual TLS between sidecars with SPIFFE certificates (the chart turns it on in
    /// kubernetes mode). The certificate comes from the CA at --sentry-address; standalone
    /// without one, from the local CA under --ferry-home.
    #[arg(long, env = "FERRY_ENABLE_MTLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = BoolishValueParser::new())]
    pub enable_mtls: bool,

    /// The CA serving Dapr Sentry's contract, `host:port`: Ferry's CA or Dapr's own Sentry.
    #[arg(long, env = "FERRY_SENTRY_ADDRESS")]
    pub sentry_address: Option<String>,

    /// The CA's namespace: its certificate must be
    /// spiffe://<control-plane-trust-domain>/ns/<this>/dapr-sentry. daprd's default and
    /// environment variable (the injector passes the flag).
    #[arg(long, env = "DAPR_CONTROLPLANE_NAMESPACE", default_value = "default",
          value_parser = parse_namespace)]
    pub control_plane_namespace: Namespace,

    /// The CA's trust domain (daprd's default and environment variable; Dapr's Sentry defaults
    /// to `localhost` too).
    #[arg(
        long,
        env = "DAPR_CONTROLPLANE_TRUST_DOMAIN",
        default_value = "localhost"
    )]
    pub control_plane_trust_domain: TrustDomain,

    /// The trust anchors (PEM) certificates must chain to, as daprd takes them.
    #[arg(long, env = "DAPR_TRUST_ANCHORS", hide = true, hide_env_values = true)]
    pub trust_anchors: Option<String>,

    /// A file of PEM trust anchors, read again when it changes (a root rotation reaches running
    /// sidecars this way).
    #[arg(long, env = "FERRY_TRUST_ANCHORS_FILE")]
    pub trust_anchors_file: Option<PathBuf>,

    /// The token proving this sidecar's identity to the CA [default: Dapr's path in kubernetes
    /// mode, /var/run/secrets/dapr.io/sentrytoken/token; standalone: none].
    #[arg(long, env = "FERRY_SENTRY_TOKEN_FILE")]
    pub sentry_token_file: Option<PathBuf>,

    /// Lifetime of certificates from the standalone local CA (Dapr's default: 24h).
    #[arg(long, env = "FERRY_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = ferry_identity::ca::parse_ttl)]
    pub workload_cert_ttl: Duration,
}

/// Where a projected service-account token for the CA is mounted, as Dapr's injector does.
pub const SENTRY_TOKEN_FILE: &str = "/var/run/secrets/dapr.io/sentrytoken/token";

/// The flags once checked against each other, with the mode's defaults applied: everything the
/// sidecar reads after start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub app_id: AppId,
    pub namespace: Namespace,
    pub mode: Mode,
    /// Where the app is reached; `None` without `--app-port` (the app can call, not be called).
    pub app: Option<AppSettings>,
    /// How the app is reached (`--app-protocol`, with `--app-ssl` applied); the registry entry
    /// tells it even without an app port.
    pub app_protocol: AppProtocol,
    /// Where the HTTP API listens.
    pub http: HttpListen,
    /// Where the gRPC API listens, on the HTTP API's addresses (0: a free port).
    pub grpc_port: u16,
    /// Where the sidecar-to-sidecar port listens (port 0: a free one).
    pub internal: SocketAddr,
    /// Where the public health port listens, when it does.
    pub public: Option<SocketAddr>,
    pub host_ip: IpAddr,
    /// The largest request body, in bytes.
    pub max_body: u64,
    /// The largest request head, in bytes.
    pub max_head: usize,
    /// How long a connection may take to send a request's head.
    pub head_timeout: Duration,
    /// How long in-flight requests may finish on shutdown.
    pub grace: Duration,
    /// `None`: no limit.
    pub max_concurrency: Option<u32>,
    pub app_health: Option<AppHealthSettings>,
    /// Where `/metrics` is served, when it is.
    pub metrics: Option<SocketAddr>,
    /// Log every HTTP API call (`--enable-api-logging`).
    pub api_logging: bool,
    /// Calls to full URLs (`None`: turned off).
    pub fqdn: Option<FqdnSettings>,
    /// Directories of resource files (HTTPEndpoint).
    pub resources_path: Vec<PathBuf>,
    /// Standalone mode's registry directory.
    pub registry_dir: PathBuf,
    pub kube: KubeSettings,
    /// The Configuration named with `--config` (a file standalone, a resource name in
    /// kubernetes mode).
    pub config: Vec<String>,
    /// `DAPR_API_TOKEN`: what every HTTP API request must carry.
    pub api_token: Option<Token>,
    /// `APP_API_TOKEN`: what this sidecar sends its own app, and only it.
    pub app_token: Option<Token>,
    /// Things to tell the operator once logging is up (deprecated and unsupported flags).
    pub warnings: Vec<String>,
    /// mTLS between sidecars (`None`: plaintext).
    pub mtls: Option<MtlsSettings>,
}

/// mTLS between sidecars: where the certificate comes from and what it must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsSettings {
    pub ca: CaSource,
    /// `None` with the local CA (its root is the anchor).
    pub anchors: Option<AnchorSource>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// Standalone: the local CA in this directory, created on first use.
    Local { dir: PathBuf, ttl: Duration },
    /// A server of Sentry's contract.
    Sentry {
        address: String,
        /// The CA's SPIFFE ID, which its certificate must carry.
        sentry: ferry_api::SpiffeId,
        /// `None`: no token (Dapr's self-hosted Sentry, validator INSECURE).
        token_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorSource {
    Pem(String),
    File(PathBuf),
}

impl AnchorSource {
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Pem(pem) => Ok(pem.clone()),
            Self::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the trust anchors at {}: {e}", path.display())),
        }
    }
}

/// The variable of the token apps send their sidecar (Dapr's).
pub const API_TOKEN_ENV: &str = "DAPR_API_TOKEN";
/// The variable of the token the sidecar sends its app (Dapr's).
pub const APP_TOKEN_ENV: &str = "APP_API_TOKEN";

impl Settings {
    /// The API tokens, from the values of [`API_TOKEN_ENV`] and [`APP_TOKEN_ENV`].
    pub fn with_tokens(
        mut self,
        api: Option<&str>,
        app: Option<&str>,
    ) -> Result<Self, ConfigError> {
        self.api_token = Token::from_env_value(API_TOKEN_ENV, api)?;
        self.app_token = Token::from_env_value(APP_TOKEN_ENV, app)?;
        Ok(self)
    }
}

/// Where the sidecar reaches its app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    pub address: String,
    pub port: u16,
}

/// Where the HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpListen {
    pub addrs: Vec<IpAddr>,
    /// The addresses were given (`--dapr-listen-addresses`), rather than the loopback default.
    pub explicit: bool,
    /// 0: a free port, the same on every address.
    pub port: u16,
}

/// Calls to full `http(s)://` URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FqdnSettings {
    /// Link-local and cloud metadata addresses may be called.
    pub allow_link_local: bool,
}

/// Kubernetes mode's timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeSettings {
    pub sync_timeout: Duration,
    pub secret_refresh: Duration,
}

/// How the app is probed (Dapr's `dapr/pkg/apphealth/config.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealthSettings {
    /// Starts with `/`.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub threshold: u32,
}

/// Flags that each parse but do not fit together; exits with code 64 like a bad flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Mtls(String),
    #[error(
        "--enable-app-health-check needs --app-port: the app is probed through its app channel"
    )]
    HealthCheckWithoutAppPort,
    #[error(
        "--app-health-probe-timeout {timeout_ms} (milliseconds) is longer than --app-health-probe-interval {interval_s} (seconds); make the timeout at most the interval"
    )]
    ProbeTimeoutAboveInterval { timeout_ms: u64, interval_s: u64 },
    #[error("POD_IP {0:?} is not an IP address (set --host-ip or DAPR_HOST_IP instead)")]
    PodIp(String),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The default largest request body (Dapr's): 4 MiB.
pub const DEFAULT_MAX_BODY: u64 = 4 << 20;
/// The default largest request head: 16 KiB (Dapr's is 4 KiB; hyper's smallest buffer is 8 KiB).
pub const DEFAULT_MAX_HEAD: u64 = 16 << 10;

impl SidecarArgs {
    /// Parses a command line (its first item is the program), as `ferryd` does.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            sidecar: SidecarArgs,
        }
        <Cli as clap::Parser>::try_parse_from(args).map(|c| c.sidecar)
    }

    pub fn effective_app_protocol(&self) -> AppProtocol {
        if self.app_ssl && self.app_protocol == AppProtocol::Http {
            AppProtocol::Https
        } else {
            self.app_protocol
        }
    }

    /// Checks the flags against each other and applies the mode's defaults; reads `POD_IP` in
    /// kubernetes mode.
    /// Reads the API tokens (`DAPR_API_TOKEN`, `APP_API_TOKEN`) from the environment too.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let env = |k| std::env::var(k).ok();
        self.settings_with(env("POD_IP"))?
            .with_tokens(env(API_TOKEN_ENV).as_deref(), env(APP_TOKEN_ENV).as_deref())
    }

    /// [`Self::settings`] with the value of `POD_IP` given.
    pub fn settings_with(&self, pod_ip: Option<String>) -> Result<Settings, ConfigError> {
        let kubernetes = self.mode == Mode::Kubernetes;
        let mut warnings = Vec::new();

        let internal_ip = self
            .dapr_internal_grpc_listen_address
            .unwrap_or(if kubernetes {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::LOCALHOST.into()
            });
        let internal_port =
            self.dapr_internal_grpc_port
                .unwrap_or(if kubernetes { ports::INTERNAL } else { 0 });

        let host_ip = match (self.host_ip, pod_ip.filter(|p| !p.trim().is_empty())) {
            (Some(ip), _) => ip,
            (None, Some(p)) if kubernetes => p
                .trim()
                .parse()
                .map_err(|_| ConfigError::PodIp(p.clone()))?,
            _ => Ipv4Addr::LOCALHOST.into(),
        };

        // As daprd: --max-body-size wins; the legacy flag counts only when it is absent.
        let max_body = match (
            self.max_body_size,
            self.dapr_http_max_request_size.and_then(|l| l.0),
        ) {
            (Some(bytes), legacy) => {
                if let Some(mb) = legacy {
                    warnings.push(format!(
                        "--dapr-http-max-request-size {mb} is deprecated and ignored because --max-body-size is given"
                    ));
                }
                bytes
            }
            (None, Some(mb)) => {
                warnings.push(format!(
                    "--dapr-http-max-request-size is deprecated; use --max-body-size {mb}Mi"
                ));
                u64::from(mb) << 20
            }
            (None, None) => DEFAULT_MAX_BODY,
        };

        // The same rule for the head: the quantity wins, the legacy kilobytes count without it.
        let max_head = match (
            self.read_buffer_size,
            self.dapr_http_read_buffer_size.and_then(|l| l.0),
        ) {
            (Some(bytes), legacy) => {
                if let Some(kb) = legacy {
                    warnings.push(format!(
                        "--dapr-http-read-buffer-size {kb} is deprecated and ignored because --read-buffer-size is given"
                    ));
                }
                bytes
            }
            (None, Some(kb)) => {
                warnings.push(format!(
                    "--dapr-http-read-buffer-size is deprecated; use --read-buffer-size {kb}Ki"
                ));
                // Hyper reads heads in buffers of at least 8 KiB; smaller limits are raised to it.
                (u64::from(kb) << 10).max(ferry_api::size::MIN_READ_BUFFER_SIZE)
            }
            (None, None) => DEFAULT_MAX_HEAD,
        };

        if self.app_ssl {
            warnings.push("--app-ssl is deprecated; use --app-protocol https".to_owned());
        }

        let app_health = if self.enable_app_health_check {
            if self.app_port.is_none() {
                return Err(ConfigError::HealthCheckWithoutAppPort);
            }
            if self.app_health_probe_timeout > self.app_health_probe_interval * 1000 {
                return Err(ConfigError::ProbeTimeoutAboveInterval {
                    timeout_ms: self.app_health_probe_timeout,
                    interval_s: self.app_health_probe_interval,
                });
            }
            Some(AppHealthSettings {
                path: self.app_health_check_path.clone(),
                interval: Duration::from_secs(self.app_health_probe_interval),
                timeout: Duration::from_millis(self.app_health_probe_timeout),
                threshold: self.app_health_threshold,
            })
        } else {
            None
        };

        let explicit = !self.dapr_listen_addresses.is_empty();
        Ok(Settings {
            app_id: self.app_id.clone(),
            namespace: self.namespace.clone(),
            mode: self.mode,
            app: self.app_port.map(|port| AppSettings {
                address: self.app_channel_address.clone(),
                port,
            }),
            app_protocol: self.effective_app_protocol(),
            http: HttpListen {
                addrs: if explicit {
                    self.dapr_listen_addresses.clone()
                } else {
                    vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
                },
                explicit,
                port: self.dapr_http_port,
            },
            grpc_port: self.dapr_grpc_port,
            internal: SocketAddr::new(internal_ip, internal_port),
            public: self
                .dapr_public_port
                .map(|p| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), p)),
            host_ip,
            max_body,
            max_head: max_head as usize,
            head_timeout: Duration::from_secs(self.read_header_timeout_seconds),
            grace: self.graceful_shutdown(),
            max_concurrency: u32::try_from(self.app_max_concurrency)
                .ok()
                .filter(|n| *n > 0),
            app_health,
            api_logging: self.enable_api_logging,
            metrics: self
                .enable_metrics
                .then(|| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), self.metrics_port)),
            fqdn: (!self.disable_fqdn_invocation).then_some(FqdnSettings {
                allow_link_local: self.allow_fqdn_link_local,
            }),
            resources_path: self.resources_path.clone(),
            registry_dir: self.registry_dir(),
            kube: KubeSettings {
                sync_timeout: Duration::from_secs(self.kube_sync_timeout_seconds),
                secret_refresh: Duration::from_secs(self.kube_secret_refresh_seconds),
            },
            config: self.config.clone(),
            mtls: self.mtls(&mut warnings)?,
            api_token: None,
            app_token: None,
            warnings,
        })
    }

    fn mtls(&self, warnings: &mut Vec<String>) -> Result<Option<MtlsSettings>, ConfigError> {
        if !self.enable_mtls {
            if self.mode == Mode::Kubernetes {
                warnings.push(
                    "mTLS between sidecars is OFF (no --enable-mtls): peers are not verified, and traffic between sidecars is plaintext".to_owned(),
                );
            }
            return Ok(None);
        }
        let anchors = match (&self.trust_anchors_file, &self.trust_anchors) {
            (Some(path), _) => Some(AnchorSource::File(path.clone())),
            (None, Some(pem)) if !pem.trim().is_empty() => Some(AnchorSource::Pem(pem.clone())),
            _ => None,
        };
        let ca = match (&self.sentry_address, self.mode) {
            (Some(address), mode) => {
                if anchors.is_none() {
                    return Err(ConfigError::Mtls(
                        "--sentry-address needs the trust anchors: set DAPR_TRUST_ANCHORS or --trust-anchors-file".into(),
                    ));
                }
                let token_file = self.sentry_token_file.clone().or_else(|| {
                    (mode == Mode::Kubernetes).then(|| PathBuf::from(SENTRY_TOKEN_FILE))
                });
                CaSource::Sentry {
                    address: address.clone(),
                    sentry: ferry_identity::sentry::sentry_id(
                        &self.control_plane_trust_domain,
                        &self.control_plane_namespace,
                    ),
                    token_file,
                }
            }
            (None, Mode::Kubernetes) => {
                return Err(ConfigError::Mtls(
                    "--enable-mtls in kubernetes mode needs --sentry-address (the CA's host:port)"
                        .into(),
                ));
            }
            (None, Mode::Standalone) => {
                if anchors.is_some() {
                    return Err(ConfigError::Mtls(
                        "trust anchors are given but no --sentry-address: the standalone local CA is its own anchor; give --sentry-address to use another CA".into(),
                    ));
                }
                CaSource::Local {
                    dir: ferry_home(self.ferry_home.clone()).join("ca"),
                    ttl: self.workload_cert_ttl,
                }
            }
        };
        Ok(Some(MtlsSettings { ca, anchors }))
    }

    pub fn graceful_shutdown(&self) -> Duration {
        let secs = if self.dapr_graceful_shutdown_seconds < 0 {
            5
        } else {
            self.dapr_graceful_shutdown_seconds as u64
        };
        Duration::from_secs(secs)
    }

    /// `$FERRY_HOME/registry`, default `~/.ferry/registry`.
    pub fn registry_dir(&self) -> PathBuf {
        ferry_home(self.ferry_home.clone()).join("registry")
    }
}

/// `--ferry-home`, else `$HOME/.ferry`.
pub fn ferry_home(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
            .join(".ferry")
    })
}

fn parse_app_id(s: &str) -> Result<AppId, String> {
    AppId::new(s).map_err(|e| e.to_string())
}

/// Dapr's protocols, case-insensitively (run files write `HTTP`); the two Ferry does not speak
/// yet are refused by name.
fn parse_app_protocol(s: &str) -> Result<AppProtocol, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "http" => Ok(AppProtocol::Http),
        "https" => Ok(AppProtocol::Https),
        "h2c" => Ok(AppProtocol::H2c),
        p @ ("grpc" | "grpcs") => Err(format!(
            "{p} is not supported yet: Ferry reaches apps over HTTP (possible values: http, https, h2c)"
        )),
        _ => Err(format!(
            "{s:?} is not a protocol (possible values: http, https, h2c)"
        )),
    }
}

fn parse_namespace(s: &str) -> Result<Namespace, String> {
    Namespace::new(s).map_err(|e| e.to_string())
}

fn parse_listen_address(s: &str) -> Result<IpAddr, String> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    t.parse()
        .map_err(|_| format!("{s:?} is not an IP address (for example 127.0.0.1 or [::1])"))
}

/// Dapr's rule: the path gets a leading `/` when it has none.
fn parse_health_path(s: &str) -> Result<String, String> {
    let path = format!("/{}", s.trim().trim_start_matches('/'));
    path.parse::<http::uri::PathAndQuery>()
        .map_err(|_| format!("{s:?} is not an HTTP path (for example /healthz)"))?;
    Ok(path)
}

fn parse_read_buffer(s: &str) -> Result<u64, String> {
    ferry_api::size::parse_read_buffer_size(s)
}

/// The value of one of Dapr's deprecated whole-megabyte or whole-kilobyte flags; `None`: -1,
/// Dapr's "not set".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyUnits(pub Option<u32>);

fn parse_legacy_megabytes(s: &str) -> Result<LegacyUnits, String> {
    parse_legacy_units(s, "megabytes", 1_048_576)
}

fn parse_legacy_kilobytes(s: &str) -> Result<LegacyUnits, String> {
    parse_legacy_units(s, "kilobytes", 1_048_576)
}

fn parse_legacy_units(s: &str, unit: &str, max: u32) -> Result<LegacyUnits, String> {
    match s.trim().parse::<i64>() {
        Ok(-1) => Ok(LegacyUnits(None)),
        Ok(n) if (1..=i64::from(max)).contains(&n) => Ok(LegacyUnits(Some(n as u32))),
        _ => Err(format!(
            "{s:?} is not a number of {unit} from 1 to {max} (or -1 for the default)"
        )),
    }
}

pub use ferry_api::size::parse_size;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        sidecar: SidecarArgs,
    }

    #[test]
    fn clap_definition_is_sound() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4Mi"), Ok(4 << 20));
        assert_eq!(parse_size("16Mi"), Ok(16 << 20));
        assert_eq!(parse_size("512Ki"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("4194304"), Ok(4194304));
        for bad in ["", "Mi", "4MB", "-1", "1.5Mi", "0", "99999999999Ti"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_errors() {
        let cli = Cli::try_parse_from(["ferryd", "--app-id", "cart"]).unwrap();
        let a = cli.sidecar;
        assert_eq!(a.dapr_http_port, 3500);
        assert_eq!(a.settings_with(None).unwrap().max_body, 4 << 20);
        assert_eq!(a.app_port, None);
        assert_eq!(a.effective_app_protocol(), AppProtocol::Http);
        assert_eq!(a.graceful_shutdown(), Duration::from_secs(5));

        let err =
            Cli::try_parse_from(["ferryd", "--app-id", "cart", "--app-port", "70000"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--app-port") && text.contains("1..=65535"),
            "{text}"
        );
        let err = Cli::try_parse_from(["ferryd", "--app-id", "a.b"]).unwrap_err();
        assert!(err.to_string().contains("--app-id"), "{err}");
        let err =
            Cli::try_parse_from(["ferryd", "--app-id", "a", "--app-protocol", "grpc"]).unwrap_err();
        assert!(err.to_string().contains("http, https, h2c"), "{err}");
        let ssl = Cli::try_parse_from(["ferryd", "--app-id", "a", "--app-ssl"]).unwrap();
        assert_eq!(ssl.sidecar.effective_app_protocol(), AppProtocol::Https);
    }

    fn parse(args: &[&str]) -> Result<SidecarArgs, clap::Error> {
        let mut all = vec!["ferryd", "--app-id", "cart"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| c.sidecar)
    }

    fn settings(args: &[&str]) -> Settings {
        parse(args).unwrap().settings_with(None).unwrap()
    }

    #[test]
    fn mode_decides_the_internal_defaults() {
        let s = settings(&[]);
        assert_eq!(s.internal, "127.0.0.1:0".parse().unwrap());
        let s = settings(&["--mode", "kubernetes"]);
        assert_eq!(s.internal, "0.0.0.0:50002".parse().unwrap());
        let s = settings(&[
            "--mode",
            "kubernetes",
            "--dapr-internal-grpc-port",
            "6000",
            "--dapr-internal-grpc-listen-address",
            "[::1]",
        ]);
        assert_eq!(s.internal, "[::1]:6000".parse().unwrap());
        let s = settings(&["--dapr-internal-grpc-listen-address", "10.0.0.7"]);
        assert_eq!(s.internal, "10.0.0.7:0".parse().unwrap());
    }

    #[test]
    fn host_ip_falls_back_to_pod_ip_in_kubernetes_mode() {
        let k8s = parse(&["--mode", "kubernetes"]).unwrap();
        let pod = Some("10.1.2.3".to_owned());
        assert_eq!(
            k8s.settings_with(pod.clone()).unwrap().host_ip,
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            k8s.settings_with(None).unwrap().host_ip,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            k8s.settings_with(Some(" ".into())).unwrap().host_ip,
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "an empty POD_IP is unset"
        );
        let explicit = parse(&["--mode", "kubernetes", "--host-ip", "10.9.9.9"]).unwrap();
        assert_eq!(
            explicit.settings_with(pod.clone()).unwrap().host_ip,
            "10.9.9.9".parse::<IpAddr>().unwrap(),
            "--host-ip wins"
        );
        let standalone = parse(&[]).unwrap();
        assert_eq!(
            standalone.settings_with(pod).unwrap().host_ip,
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "standalone ignores POD_IP"
        );
        let err = k8s.settings_with(Some("pod-ip".into())).unwrap_err();
        assert_eq!(err, ConfigError::PodIp("pod-ip".into()));
        assert!(err.to_string().contains("--host-ip"), "{err}");
    }

    #[test]
    fn fatal_logs_as_error() {
        let a = parse(&["--log-level", "fatal"]).unwrap();
        assert_eq!(a.log_level, LogLevel::Fatal);
        assert_eq!(a.log_level.as_str(), "error");
        assert!(parse(&["--log-level", "trace"]).is_err());
    }

    #[test]
    fn metrics_are_off_unless_enabled() {
        assert_eq!(settings(&[]).metrics, None);
        assert_eq!(settings(&["--metrics-port", "9999"]).metrics, None);
        assert_eq!(
            settings(&["--enable-metrics"]).metrics,
            Some("0.0.0.0:9090".parse().unwrap())
        );
        // daprd's spelling with a value, and the injector's bare flag followed by the port.
        assert_eq!(
            settings(&["--enable-metrics=true", "--metrics-port", "9999"]).metrics,
            Some("0.0.0.0:9999".parse().unwrap())
        );
        assert_eq!(
            settings(&["--enable-metrics", "--metrics-port", "9999"]).metrics,
            Some("0.0.0.0:9999".parse().unwrap())
        );
        assert_eq!(settings(&["--enable-metrics=false"]).metrics, None);
        let err = parse(&["--enable-metrics", "--metrics-port", "0"]).unwrap_err();
        assert!(err.to_string().contains("--metrics-port"), "{err}");
        assert!(parse(&["--enable-metrics=maybe"]).is_err());
    }

    #[test]
    fn config_is_taken_as_given() {
        let a = parse(&["--config", "appconfig"]).unwrap();
        assert_eq!(a.config, vec!["appconfig".to_owned()]);
        let s = a.settings_with(None).unwrap();
        assert_eq!(s.config, ["appconfig"]);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn tokens_come_from_their_variables() {
        let s = settings(&[]);
        assert_eq!((&s.api_token, &s.app_token), (&None, &None));
        let s = s.with_tokens(Some("api"), Some("")).unwrap();
        assert!(
            s.api_token
                .as_ref()
                .unwrap()
                .matches(Some(&http::HeaderValue::from_static("api")))
        );
        assert_eq!(
            s.app_token, None,
            "an empty variable is no token, as in Dapr"
        );
        let e = settings(&[])
            .with_tokens(None, Some("a\u{7}b"))
            .unwrap_err();
        assert!(e.to_string().starts_with("APP_API_TOKEN holds"), "{e}");
        assert!(!format!("{s:?}").contains("\"api\""), "tokens never print");
    }

    #[test]
    fn max_concurrency() {
        assert_eq!(settings(&[]).max_concurrency, None);
        assert_eq!(
            settings(&["--app-max-concurrency", "-1"]).max_concurrency,
            None
        );
        assert_eq!(
            settings(&["--app-max-concurrency", "0"]).max_concurrency,
            None
        );
        assert_eq!(
            settings(&["--app-max-concurrency", "10"]).max_concurrency,
            Some(10)
        );
        let err = parse(&["--app-max-concurrency", "-2"]).unwrap_err();
        assert!(err.to_string().contains("--app-max-concurrency"), "{err}");
        assert!(parse(&["--app-max-concurrency", "4294967296"]).is_err());
    }

    #[test]
    fn app_health_check() {
        assert_eq!(settings(&[]).app_health, None);
        let s = settings(&["--app-port", "5000", "--enable-app-health-check"]);
        assert_eq!(
            s.app_health,
            Some(AppHealthSettings {
                path: "/healthz".into(),
                interval: Duration::from_secs(5),
                timeout: Duration::from_millis(500),
                threshold: 3,
            })
        );
        let s = settings(&[
            "--app-port",
            "5000",
            "--enable-app-health-check",
            "--app-health-check-path",
            "ready",
            "--app-health-probe-interval",
            "1",
            "--app-health-probe-timeout",
            "1000",
            "--app-health-threshold",
            "1",
        ]);
        let h = s.app_health.unwrap();
        assert_eq!(h.path, "/ready", "a leading slash is added, as Dapr does");
        assert_eq!(
            h.timeout, h.interval,
            "a timeout equal to the interval is fine"
        );
        assert_eq!(h.threshold, 1);

        let err = parse(&["--enable-app-health-check"])
            .unwrap()
            .settings_with(None)
            .unwrap_err();
        assert_eq!(err, ConfigError::HealthCheckWithoutAppPort);
        assert!(err.to_string().contains("--app-port"), "{err}");

        let err = parse(&[
            "--app-port",
            "5000",
            "--enable-app-health-check",
            "--app-health-probe-interval",
            "1",
            "--app-health-probe-timeout",
            "1001",
        ])
        .unwrap()
        .settings_with(None)
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--app-health-probe-timeout")
                && text.contains("--app-health-probe-interval"),
            "{text}"
        );
        // The same settings with the check off are not an error (Dapr checks them only when
        // probing).
        assert!(
            parse(&[
                "--app-health-probe-interval",
                "1",
                "--app-health-probe-timeout",
                "5000"
            ])
            .unwrap()
            .settings_with(None)
            .is_ok()
        );
        for (flag, bad) in [
            ("--app-health-threshold", "0"),
            ("--app-health-probe-interval", "0"),
            ("--app-health-probe-timeout", "0"),
            ("--app-health-check-path", "/a b"),
        ] {
            let err = parse(&[flag, bad]).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag} {bad}: {err}");
        }
    }

    #[test]
    fn legacy_max_request_size_yields_to_max_body_size() {
        let s = settings(&["--dapr-http-max-request-size", "16"]);
        assert_eq!(s.max_body, 16 << 20);
        assert!(s.warnings[0].contains("deprecated"), "{:?}", s.warnings);
        assert!(
            s.warnings[0].contains("--max-body-size 16Mi"),
            "{:?}",
            s.warnings
        );
        // As daprd: --max-body-size, when given, wins whatever the order.
        for args in [
            &[
                "--dapr-http-max-request-size",
                "16",
                "--max-body-size",
                "1Mi",
            ][..],
            &[
                "--max-body-size",
                "1Mi",
                "--dapr-http-max-request-size",
                "16",
            ],
        ] {
            let s = settings(args);
            assert_eq!(s.max_body, 1 << 20, "{args:?}");
            assert!(s.warnings[0].contains("ignored"), "{:?}", s.warnings);
        }
        assert_eq!(settings(&["--max-body-size", "2Mi"]).max_body, 2 << 20);
        let err = parse(&["--dapr-http-max-request-size", "0"]).unwrap_err();
        assert!(
            err.to_string().contains("--dapr-http-max-request-size"),
            "{err}"
        );
    }

    #[test]
    fn bool_flags_take_daprs_forms() {
        for (args, want) in [
            (&["--app-ssl"][..], true),
            (&["--app-ssl=true"], true),
            (&["--app-ssl=false"], false),
            (&[], false),
        ] {
            assert_eq!(parse(args).unwrap().app_ssl, want, "{args:?}");
        }
        let a = parse(&[
            "--log-as-json",
            "--app-ssl",
            "--enable-app-health-check=false",
        ])
        .unwrap();
        assert!(a.log_as_json && a.app_ssl && !a.enable_app_health_check);
        assert!(a.settings_with(None).unwrap().warnings[0].contains("--app-ssl is deprecated"));
    }

    /// What `ferry_injector::inject::sidecar_args` writes for a pod with every annotation set
    /// (the injector's own tests check each fixture's list against this parser too).
    #[test]
    fn the_injected_argument_list_parses() {
        let a = Cli::try_parse_from([
            "ferryd",
            "--mode",
            "kubernetes",
            "--dapr-http-port",
            "3500",
            "--dapr-grpc-port",
            "50001",
            "--dapr-internal-grpc-port",
            "50002",
            "--dapr-listen-addresses",
            "[::1],127.0.0.1",
            "--dapr-public-port",
            "3501",
            "--app-id",
            "orders",
            "--app-protocol",
            "http",
            "--namespace",
            "shop",
            "--log-level",
            "fatal",
            "--dapr-graceful-shutdown-seconds",
            "-1",
            "--app-port",
            "8080",
            "--app-ssl",
            "--log-as-json",
            "--enable-metrics",
            "--metrics-port",
            "9090",
            "--config",
            "tracing",
            "--max-body-size",
            "16Mi",
            "--dapr-http-max-request-size",
            "16",
            "--read-buffer-size",
            "8Ki",
            "--app-max-concurrency",
            "10",
            "--enable-app-health-check",
            "--app-health-check-path",
            "/ready",
            "--app-health-probe-interval",
            "10",
            "--app-health-probe-timeout",
            "250",
            "--app-health-threshold",
            "4",
        ])
        .unwrap()
        .sidecar;
        assert_eq!(a.mode, Mode::Kubernetes);
        assert_eq!(
            a.dapr_listen_addresses,
            vec![
                "::1".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(a.graceful_shutdown(), Duration::from_secs(5));
        let s = a.settings_with(Some("10.244.0.9".into())).unwrap();
        assert_eq!(s.internal, "0.0.0.0:50002".parse().unwrap());
        assert_eq!(s.host_ip, "10.244.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(s.max_body, 16 << 20);
        assert_eq!(s.max_concurrency, Some(10));
        assert_eq!(s.metrics, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(s.app_health.unwrap().timeout, Duration::from_millis(250));
    }
}
