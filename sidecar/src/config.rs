//! The sidecar's flags, named as `daprd` names them, and their validated form.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use ferry_api::{AppId, Namespace, ports};

/// How the sidecar reaches its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppProtocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS; the app's certificate is not verified (as with Dapr's app-ssl).
    Https,
    /// HTTP/2 without TLS (prior knowledge).
    H2c,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Https => "https",
            AppProtocol::H2c => "h2c",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One machine, no cluster: names resolve through the local registry directory.
    Standalone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
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
    #[arg(long, env = "FERRY_APP_PROTOCOL", value_enum, default_value = "http")]
    pub app_protocol: AppProtocol,

    /// Deprecated (as in Dapr): same as --app-protocol https.
    #[arg(long, env = "FERRY_APP_SSL")]
    pub app_ssl: bool,

    /// The host the app listens on.
    #[arg(long, env = "FERRY_APP_CHANNEL_ADDRESS", default_value = "127.0.0.1")]
    pub app_channel_address: String,

    /// The HTTP API port apps call (`DAPR_HTTP_PORT`); 0 picks a free port (see `ferry list`).
    #[arg(long, env = "FERRY_HTTP_PORT", default_value_t = ports::HTTP_API)]
    pub dapr_http_port: u16,

    /// The gRPC API port given to the app as `DAPR_GRPC_PORT` (reserved: not served yet).
    #[arg(long, env = "FERRY_GRPC_PORT", default_value_t = ports::GRPC_API,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub dapr_grpc_port: u16,

    /// The sidecar-to-sidecar port; a free port is picked when not given.
    #[arg(long, env = "FERRY_INTERNAL_GRPC_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dapr_internal_grpc_port: Option<u16>,

    /// The address the sidecar-to-sidecar port listens on.
    #[arg(
        long,
        env = "FERRY_INTERNAL_GRPC_LISTEN_ADDRESS",
        default_value = "127.0.0.1"
    )]
    pub dapr_internal_grpc_listen_address: IpAddr,

    /// The public health port (`/v1.0/healthz`, `/v1.0/healthz/outbound`, `/v1.0/metadata`);
    /// off when not given.
    #[arg(long, env = "FERRY_PUBLIC_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dapr_public_port: Option<u16>,

    /// Addresses the HTTP API listens on, comma-separated. Loopback by default (127.0.0.1, and
    /// [::1] when the machine has IPv6).
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

    /// The largest request body accepted, as a quantity (4Mi, 16Mi, 1G, or bytes).
    #[arg(long, env = "FERRY_MAX_BODY_SIZE", default_value = "4Mi", value_parser = parse_size)]
    pub max_body_size: u64,

    /// The largest request head (request line and headers) accepted, as a quantity; at least 8Ki.
    #[arg(long, env = "FERRY_READ_BUFFER_SIZE", default_value = "16Ki", value_parser = parse_read_buffer)]
    pub read_buffer_size: u64,

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

    /// The address put in X-Forwarded-For and Forwarded on remote calls.
    #[arg(long, env = "DAPR_HOST_IP", default_value = "127.0.0.1")]
    pub host_ip: IpAddr,

    /// Where names are resolved.
    #[arg(long, env = "FERRY_MODE", value_enum, default_value = "standalone")]
    pub mode: Mode,

    #[arg(long, env = "FERRY_LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: LogLevel,

    /// Write logs as JSON lines.
    #[arg(long, env = "FERRY_LOG_AS_JSON")]
    pub log_as_json: bool,
}

impl SidecarArgs {
    pub fn effective_app_protocol(&self) -> AppProtocol {
        if self.app_ssl && self.app_protocol == AppProtocol::Http {
            AppProtocol::Https
        } else {
            self.app_protocol
        }
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

fn parse_namespace(s: &str) -> Result<Namespace, String> {
    Namespace::new(s).map_err(|e| e.to_string())
}

fn parse_listen_address(s: &str) -> Result<IpAddr, String> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    t.parse()
        .map_err(|_| format!("{s:?} is not an IP address (for example 127.0.0.1 or [::1])"))
}

fn parse_read_buffer(s: &str) -> Result<u64, String> {
    ferry_api::size::parse_read_buffer_size(s)
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
        assert_eq!(a.max_body_size, 4 << 20);
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
}
