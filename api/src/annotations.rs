//! Dapr's pod annotations (`dapr.io/*`) for service invocation, parsed into one typed
//! [`SidecarConfig`] with explicit defaults (Dapr's: the `annotation:` and `default:` tags of
//! `SidecarConfig` in `dapr/pkg/injector/patcher/sidecar.go`).
//!
//! Improving on Dapr, every invalid value is an [`AnnotationError`] naming the annotation, the
//! value and what is allowed, instead of a warning and a silent default. A present but empty
//! annotation is treated as absent (the default applies); for `dapr.io/app-id` that means the
//! pod name, as in Dapr.
//!
//! Beyond the values, [`read`] says what the pod's author should know about the annotations
//! themselves ([`AnnotationWarning`], see [`dapr`]): Dapr's pre-1.0 names (`dapr.io/id`), read
//! as the names that replaced them; misspelt names, with the closest real one; and Dapr's
//! annotations that Ferry does not implement, which are ignored or refused.

mod dapr;

use std::collections::BTreeMap;

pub use dapr::{
    AnnotationWarning, DAPR_ANNOTATIONS, OLD_NAMES, closest_annotation, edit_distance, review,
};

use crate::{AppId, AppIdError, ports, size};

/// The annotation keys, one constant per annotation.
pub mod keys {
    pub const ENABLED: &str = "dapr.io/enabled";
    pub const APP_ID: &str = "dapr.io/app-id";
    pub const APP_PORT: &str = "dapr.io/app-port";
    pub const APP_PROTOCOL: &str = "dapr.io/app-protocol";
    pub const APP_SSL: &str = "dapr.io/app-ssl";
    pub const CONFIG: &str = "dapr.io/config";
    pub const LOG_LEVEL: &str = "dapr.io/log-level";
    pub const LOG_AS_JSON: &str = "dapr.io/log-as-json";
    pub const ENABLE_METRICS: &str = "dapr.io/enable-metrics";
    pub const METRICS_PORT: &str = "dapr.io/metrics-port";
    pub const SIDECAR_LISTEN_ADDRESSES: &str = "dapr.io/sidecar-listen-addresses";
    pub const MAX_BODY_SIZE: &str = "dapr.io/max-body-size";
    pub const HTTP_MAX_REQUEST_SIZE: &str = "dapr.io/http-max-request-size";
    pub const READ_BUFFER_SIZE: &str = "dapr.io/read-buffer-size";
    pub const APP_MAX_CONCURRENCY: &str = "dapr.io/app-max-concurrency";
    pub const GRACEFUL_SHUTDOWN_SECONDS: &str = "dapr.io/graceful-shutdown-seconds";
    pub const ENABLE_APP_HEALTH_CHECK: &str = "dapr.io/enable-app-health-check";
    pub const APP_HEALTH_CHECK_PATH: &str = "dapr.io/app-health-check-path";
    pub const APP_HEALTH_PROBE_INTERVAL: &str = "dapr.io/app-health-probe-interval";
    pub const APP_HEALTH_PROBE_TIMEOUT: &str = "dapr.io/app-health-probe-timeout";
    pub const APP_HEALTH_THRESHOLD: &str = "dapr.io/app-health-threshold";
    pub const SIDECAR_CPU_REQUEST: &str = "dapr.io/sidecar-cpu-request";
    pub const SIDECAR_CPU_LIMIT: &str = "dapr.io/sidecar-cpu-limit";
    pub const SIDECAR_MEMORY_REQUEST: &str = "dapr.io/sidecar-memory-request";
    pub const SIDECAR_MEMORY_LIMIT: &str = "dapr.io/sidecar-memory-limit";
    pub const LIVENESS_DELAY: &str = "dapr.io/sidecar-liveness-probe-delay-seconds";
    pub const LIVENESS_TIMEOUT: &str = "dapr.io/sidecar-liveness-probe-timeout-seconds";
    pub const LIVENESS_PERIOD: &str = "dapr.io/sidecar-liveness-probe-period-seconds";
    pub const LIVENESS_THRESHOLD: &str = "dapr.io/sidecar-liveness-probe-threshold";
    pub const READINESS_DELAY: &str = "dapr.io/sidecar-readiness-probe-delay-seconds";
    pub const READINESS_TIMEOUT: &str = "dapr.io/sidecar-readiness-probe-timeout-seconds";
    pub const READINESS_PERIOD: &str = "dapr.io/sidecar-readiness-probe-period-seconds";
    pub const READINESS_THRESHOLD: &str = "dapr.io/sidecar-readiness-probe-threshold";
    pub const SIDECAR_IMAGE: &str = "dapr.io/sidecar-image";
    pub const ENV: &str = "dapr.io/env";
    pub const ENV_FROM_SECRET: &str = "dapr.io/env-from-secret";
    pub const API_TOKEN_SECRET: &str = "dapr.io/api-token-secret";
    pub const APP_TOKEN_SECRET: &str = "dapr.io/app-token-secret";
    pub const VOLUME_MOUNTS: &str = "dapr.io/volume-mounts";
    pub const VOLUME_MOUNTS_RW: &str = "dapr.io/volume-mounts-rw";
    pub const SIDECAR_SECCOMP_PROFILE_TYPE: &str = "dapr.io/sidecar-seccomp-profile-type";
    pub const ENABLE_NATIVE_SIDECAR: &str = "dapr.io/enable-native-sidecar";
    pub const SIDECAR_SVC_ANNOTATIONS: &str = "dapr.io/sidecar-svc-annotations";
    pub const HTTP_READ_BUFFER_SIZE: &str = "dapr.io/http-read-buffer-size";
    pub const APP_CHANNEL_ADDRESS: &str = "dapr.io/app-channel-address";

    /// Every annotation Ferry supports.
    pub const ALL: &[&str] = &[
        ENABLED,
        APP_ID,
        APP_PORT,
        APP_PROTOCOL,
        APP_SSL,
        CONFIG,
        LOG_LEVEL,
        LOG_AS_JSON,
        ENABLE_METRICS,
        METRICS_PORT,
        SIDECAR_LISTEN_ADDRESSES,
        MAX_BODY_SIZE,
        HTTP_MAX_REQUEST_SIZE,
        READ_BUFFER_SIZE,
        HTTP_READ_BUFFER_SIZE,
        APP_MAX_CONCURRENCY,
        GRACEFUL_SHUTDOWN_SECONDS,
        ENABLE_APP_HEALTH_CHECK,
        APP_HEALTH_CHECK_PATH,
        APP_HEALTH_PROBE_INTERVAL,
        APP_HEALTH_PROBE_TIMEOUT,
        APP_HEALTH_THRESHOLD,
        SIDECAR_CPU_REQUEST,
        SIDECAR_CPU_LIMIT,
        SIDECAR_MEMORY_REQUEST,
        SIDECAR_MEMORY_LIMIT,
        LIVENESS_DELAY,
        LIVENESS_TIMEOUT,
        LIVENESS_PERIOD,
        LIVENESS_THRESHOLD,
        READINESS_DELAY,
        READINESS_TIMEOUT,
        READINESS_PERIOD,
        READINESS_THRESHOLD,
        SIDECAR_IMAGE,
        ENV,
        ENV_FROM_SECRET,
        API_TOKEN_SECRET,
        APP_TOKEN_SECRET,
        VOLUME_MOUNTS,
        VOLUME_MOUNTS_RW,
        SIDECAR_SECCOMP_PROFILE_TYPE,
        ENABLE_NATIVE_SIDECAR,
        SIDECAR_SVC_ANNOTATIONS,
        APP_CHANNEL_ADDRESS,
    ];
}

/// The annotation in which the injector records its warnings about a pod's annotations, one
/// per line; ferry-operator reports them as a Warning Event on the pod (pods that a controller
/// creates show admission warnings to nobody).
pub const INJECTION_WARNINGS: &str = "ferry.dev/injection-warnings";

/// Labels the injector puts on an injected pod.
pub mod labels {
    pub const SIDECAR_INJECTED: &str = "dapr.io/sidecar-injected";
    pub const APP_ID: &str = "dapr.io/app-id";
    pub const METRICS_ENABLED: &str = "dapr.io/metrics-enabled";
}

/// Why an annotation's value was refused. Each message names the annotation, the value and
/// what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("annotation {key}: {value:?} is not a port (1-65535)")]
    NotAPort { key: &'static str, value: String },
    #[error(
        "annotation {key}: {value:?} is not a boolean (true/false, 1/0, yes/no, on/off, t/f, y/n)"
    )]
    NotABool { key: &'static str, value: String },
    #[error("annotation {key}: {value:?} is not an integer in {range}")]
    NotAnInteger {
        key: &'static str,
        value: String,
        range: &'static str,
    },
    #[error(
        "annotation {key}: {value:?} is not a Kubernetes quantity (such as 500m, 2, 4Mi or 1Gi)"
    )]
    NotAQuantity { key: &'static str, value: String },
    #[error("annotation {key}: {value:?} is not one of {allowed}")]
    NotOneOf {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("annotation {key}: {value:?} is not supported by Ferry (supported: {supported})")]
    Unsupported {
        key: &'static str,
        value: String,
        supported: &'static str,
    },
    #[error("annotation {key}: {reason}")]
    NotASize { key: &'static str, reason: String },
    #[error(
        "annotation dapr.io/enable-app-health-check is on but dapr.io/app-port is not set: there is no app to probe (set dapr.io/app-port, or turn the health check off)"
    )]
    HealthCheckWithoutAppPort,
    #[error(
        "annotation dapr.io/app-health-probe-timeout: {timeout_ms:?} (milliseconds) is longer than dapr.io/app-health-probe-interval ({interval_s} seconds); the timeout must be at most the interval"
    )]
    ProbeTimeoutAboveInterval { timeout_ms: String, interval_s: u32 },
    #[error("annotation {key}: {value:?} is not a list of the form {format}")]
    BadList {
        key: &'static str,
        value: String,
        format: &'static str,
    },
    #[error("annotation {key}: {value:?} is not a valid app ID: {source}")]
    BadAppId {
        key: &'static str,
        value: String,
        source: AppIdError,
    },
    #[error(
        "the pod has no name and no annotation {}: set dapr.io/app-id",
        keys::APP_ID
    )]
    NoAppId,
    /// A Dapr annotation Ferry does not implement, whose absence would surprise the app.
    #[error("annotation {key} is not supported by Ferry: {why}")]
    NotImplemented {
        key: &'static str,
        why: &'static str,
    },
}

/// The protocol the sidecar uses to talk to the app (`dapr.io/app-protocol`, ferryd's
/// `--app-protocol`).
///
/// Dapr also accepts `grpc` and `grpcs`; Ferry's sidecar has no gRPC app channel, so those values
/// are refused with [`AnnotationError::Unsupported`] rather than injecting a sidecar that cannot
/// reach the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum AppProtocol {
    /// HTTP/1.1.
    #[default]
    Http,
    /// HTTP/1.1 over TLS; the app's certificate is not verified (as with Dapr's app-ssl).
    Https,
    /// HTTP/2 without TLS (prior knowledge).
    H2c,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::H2c => "h2c",
        }
    }

    /// The protocol the app is reached with once `dapr.io/app-ssl` is applied (`http` → `https`).
    pub fn effective(self, app_ssl: bool) -> Self {
        match self {
            Self::Http if app_ssl => Self::Https,
            other => other,
        }
    }
}

/// How much to log, in Dapr's levels (`dapr.io/log-level`, `--log-level` of every binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
    /// Dapr's highest level; logs as `error` (nothing of Ferry's logs only at fatal).
    Fatal,
}

impl LogLevel {
    /// Dapr's word for the level, as annotations and flags write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Fatal => "fatal",
        }
    }

    /// The `tracing` level it logs at: Dapr's, except that `fatal` logs as `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "error",
            other => other.name(),
        }
    }
}

/// `dapr.io/sidecar-seccomp-profile-type`. `Localhost` is refused: it needs a profile path that
/// no annotation provides, so Kubernetes would reject the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompProfileType {
    #[default]
    RuntimeDefault,
    Unconfined,
}

impl SeccompProfileType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RuntimeDefault => "RuntimeDefault",
            Self::Unconfined => "Unconfined",
        }
    }
}

/// The app health check (`dapr.io/enable-app-health-check` and its settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealthCheck {
    pub path: String,
    pub probe_interval_seconds: u32,
    pub probe_timeout_millis: u32,
    pub threshold: u32,
}

/// Timings of one of the sidecar's Kubernetes probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTimings {
    pub initial_delay_seconds: i32,
    pub timeout_seconds: i32,
    pub period_seconds: i32,
    pub failure_threshold: i32,
}

/// Dapr HEAD's liveness probe defaults: 180 / 3 / 10 / 5.
pub const DEFAULT_LIVENESS: ProbeTimings = ProbeTimings {
    initial_delay_seconds: 180,
    timeout_seconds: 3,
    period_seconds: 10,
    failure_threshold: 5,
};

/// Dapr HEAD's readiness probe defaults: 1 / 1 / 1 / 5.
pub const DEFAULT_READINESS: ProbeTimings = ProbeTimings {
    initial_delay_seconds: 1,
    timeout_seconds: 1,
    period_seconds: 1,
    failure_threshold: 5,
};

/// The largest value of the legacy sizes `dapr.io/http-max-request-size` (MB) and
/// `dapr.io/http-read-buffer-size` (KB), as ferryd takes them.
const LEGACY_MAX: u32 = 1_048_576;
const LEGACY_RANGE: &str = "1..=1048576";

/// The default of `dapr.io/sidecar-listen-addresses`.
pub const DEFAULT_LISTEN_ADDRESSES: &str = "[::1],127.0.0.1";
/// The default of `dapr.io/graceful-shutdown-seconds` (the sidecar treats < 0 as 5 s).
pub const DEFAULT_GRACEFUL_SHUTDOWN_SECONDS: i32 = -1;

/// The sidecar container's resources, validated Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidecarResources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

/// An env var taken from a Secret (`dapr.io/env-from-secret`: `K=secret` or `K=secret:key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFromSecret {
    pub name: String,
    pub secret: String,
    pub key: String,
}

/// A pod volume mounted into the sidecar (`dapr.io/volume-mounts[-rw]`: `vol:path,...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarVolumeMount {
    pub volume: String,
    pub path: String,
}

/// Everything the service-invocation annotations say about the sidecar, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarConfig {
    pub app_id: AppId,
    pub app_port: Option<u16>,
    pub app_protocol: AppProtocol,
    pub app_ssl: bool,
    pub config: Option<String>,
    pub log_level: LogLevel,
    pub log_as_json: bool,
    pub enable_metrics: bool,
    pub metrics_port: u16,
    pub listen_addresses: String,
    /// A byte size ferryd accepts, such as `4Mi`.
    pub max_body_size: Option<String>,
    /// Legacy, in MB.
    pub http_max_request_size_mb: Option<u32>,
    /// A byte size ferryd accepts (at least 8Ki), such as `16Ki`.
    pub read_buffer_size: Option<String>,
    /// Legacy, in KB.
    pub http_read_buffer_size_kb: Option<u32>,
    /// The host the sidecar reaches the app at; `None`: ferryd's default, `127.0.0.1`.
    pub app_channel_address: Option<String>,
    pub app_max_concurrency: Option<u32>,
    pub graceful_shutdown_seconds: i32,
    pub app_health_check: Option<AppHealthCheck>,
    pub resources: SidecarResources,
    pub liveness: ProbeTimings,
    pub readiness: ProbeTimings,
    /// `None`: the injector's configured image.
    pub image: Option<String>,
    pub env: Vec<(String, String)>,
    pub env_from_secret: Vec<EnvFromSecret>,
    pub api_token_secret: Option<String>,
    pub app_token_secret: Option<String>,
    pub volume_mounts: Vec<SidecarVolumeMount>,
    pub volume_mounts_rw: Vec<SidecarVolumeMount>,
    pub seccomp_profile_type: SeccompProfileType,
    pub native_sidecar: bool,
    /// Extra annotations for the `<id>-dapr` Service (read by the operator), `k=v,...`.
    pub svc_annotations: Vec<(String, String)>,
}

/// Dapr's pre-check (`handleRequest`, `dapr/pkg/injector/service/handler.go`): `dapr.io/enabled`
/// must be exactly `true`, case-insensitive.
/// `"yes"` or `"1"` do **not** enable injection.
pub fn is_enabled(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(keys::ENABLED)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Dapr's truthy parsing: `1`, `true`, `t`, `yes`, `y`, `on` (and their negatives), any case.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// Whether `s` is a Kubernetes quantity: a decimal number and an optional binary-SI (`Ki`..`Ei`),
/// decimal-SI (`n`, `u`, `m`, `k`, `M`..`E`) or exponent (`e3`, `E-2`) suffix.
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

/// Splits `K1=v1,K2=v2` with Dapr's comma rule: a comma starts a new pair only when what follows
/// it looks like `IDENT=`; otherwise it belongs to the value.
fn split_pairs(value: &str) -> Option<Vec<(String, String)>> {
    let is_ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' || c == '/')
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in value.split(',') {
        match part.split_once('=') {
            Some((k, v)) if is_ident(k.trim()) => {
                pairs.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            _ => {
                let last = pairs.last_mut()?;
                last.1.push(',');
                last.1.push_str(part.trim_end());
            }
        }
    }
    Some(pairs)
}

struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
}

impl<'a> Reader<'a> {
    /// The annotation that gives `key`'s value, and the value: `key` itself, else its pre-1.0
    /// name; `None` when both are absent or empty. Errors name the annotation that was read.
    fn lookup(&self, key: &'static str) -> Option<(&'static str, &'a str)> {
        let value = |k: &'static str| {
            self.annotations
                .get(k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(|v| (k, v))
        };
        value(key).or_else(|| dapr::old_name_of(key).and_then(value))
    }

    /// The value, or `None` when absent or empty.
    fn get(&self, key: &'static str) -> Option<&'a str> {
        self.lookup(key).map(|(_, v)| v)
    }

    fn string(&self, key: &'static str) -> Option<String> {
        self.get(key).map(str::to_owned)
    }

    fn bool(&self, key: &'static str, default: bool) -> Result<bool, AnnotationError> {
        self.lookup(key).map_or(Ok(default), |(key, v)| {
            parse_bool(v).ok_or_else(|| AnnotationError::NotABool {
                key,
                value: v.to_owned(),
            })
        })
    }

    fn port(&self, key: &'static str) -> Result<Option<u16>, AnnotationError> {
        self.lookup(key)
            .map(|(key, v)| match v.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(AnnotationError::NotAPort {
                    key,
                    value: v.to_owned(),
                }),
            })
            .transpose()
    }

    /// An integer in `min..=max`; `range` says so in the error.
    fn int<T: std::str::FromStr + PartialOrd>(
        &self,
        key: &'static str,
        min: T,
        max: T,
        range: &'static str,
    ) -> Result<Option<T>, AnnotationError> {
        self.lookup(key)
            .map(|(key, v)| match v.parse::<T>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                _ => Err(AnnotationError::NotAnInteger {
                    key,
                    value: v.to_owned(),
                    range,
                }),
            })
            .transpose()
    }

    fn quantity(&self, key: &'static str) -> Result<Option<String>, AnnotationError> {
        self.lookup(key)
            .map(|(key, v)| {
                if is_quantity(v) {
                    Ok(v.to_owned())
                } else {
                    Err(AnnotationError::NotAQuantity {
                        key,
                        value: v.to_owned(),
                    })
                }
            })
            .transpose()
    }

    /// A byte size as ferryd accepts it, kept in the user's spelling.
    fn size(
        &self,
        key: &'static str,
        parse: fn(&str) -> Result<u64, String>,
    ) -> Result<Option<String>, AnnotationError> {
        self.lookup(key)
            .map(|(key, v)| match parse(v) {
                Ok(_) => Ok(v.to_owned()),
                Err(reason) => Err(AnnotationError::NotASize { key, reason }),
            })
            .transpose()
    }

    fn probe(
        &self,
        keys: [&'static str; 4],
        default: ProbeTimings,
    ) -> Result<ProbeTimings, AnnotationError> {
        const NON_NEG: &str = "0..=2147483647";
        const POS: &str = "1..=2147483647";
        const MAX: i32 = i32::MAX;
        Ok(ProbeTimings {
            initial_delay_seconds: self
                .int(keys[0], 0, MAX, NON_NEG)?
                .unwrap_or(default.initial_delay_seconds),
            timeout_seconds: self
                .int(keys[1], 1, MAX, POS)?
                .unwrap_or(default.timeout_seconds),
            period_seconds: self
                .int(keys[2], 1, MAX, POS)?
                .unwrap_or(default.period_seconds),
            failure_threshold: self
                .int(keys[3], 1, MAX, POS)?
                .unwrap_or(default.failure_threshold),
        })
    }

    fn pairs(
        &self,
        key: &'static str,
        format: &'static str,
    ) -> Result<Vec<(String, String)>, AnnotationError> {
        let Some((key, v)) = self.lookup(key) else {
            return Ok(Vec::new());
        };
        split_pairs(v).ok_or_else(|| AnnotationError::BadList {
            key,
            value: v.to_owned(),
            format,
        })
    }

    fn mounts(&self, key: &'static str) -> Result<Vec<SidecarVolumeMount>, AnnotationError> {
        let Some((key, v)) = self.lookup(key) else {
            return Ok(Vec::new());
        };
        let bad = || AnnotationError::BadList {
            key,
            value: v.to_owned(),
            format: "volume:/absolute/path,...",
        };
        v.split(',')
            .map(|item| {
                let (volume, path) = item.trim().split_once(':').ok_or_else(bad)?;
                if volume.is_empty() || !path.starts_with('/') {
                    return Err(bad());
                }
                Ok(SidecarVolumeMount {
                    volume: volume.to_owned(),
                    path: path.to_owned(),
                })
            })
            .collect()
    }

    /// A host to connect to: an IP address or a DNS name.
    fn host(&self, key: &'static str) -> Result<Option<String>, AnnotationError> {
        self.lookup(key)
            .map(|(key, v)| {
                if v.parse::<std::net::IpAddr>().is_ok() || is_dns_name(v) {
                    Ok(v.to_owned())
                } else {
                    Err(AnnotationError::NotOneOf {
                        key,
                        value: v.to_owned(),
                        allowed: "an IP address or a host name (no port, no scheme)",
                    })
                }
            })
            .transpose()
    }
}

/// Whether `s` is a DNS name: dot-separated labels of letters, digits and inner `-`, each at
/// most 63 characters, at most 253 in all.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What a pod's annotations say: the sidecar's configuration, or why the pod is refused, and
/// in both cases the warnings for the pod's author (see [`review`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub config: Result<SidecarConfig, AnnotationError>,
    pub warnings: Vec<AnnotationWarning>,
}

/// Reads a pod's annotations: [`review`], then [`SidecarConfig::from_annotations`]'s values.
pub fn read(annotations: &BTreeMap<String, String>, pod_name: Option<&str>) -> Reading {
    match review(annotations) {
        Ok(warnings) => Reading {
            config: SidecarConfig::values(annotations, pod_name),
            warnings,
        },
        Err(refused) => Reading {
            config: Err(refused),
            warnings: Vec::new(),
        },
    }
}

impl SidecarConfig {
    /// Parses a pod's annotations, refusing what [`review`] refuses (its warnings are
    /// dropped; [`read`] keeps them). `pod_name` is the app ID when `dapr.io/app-id` is absent.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        pod_name: Option<&str>,
    ) -> Result<Self, AnnotationError> {
        read(annotations, pod_name).config
    }

    /// The values alone. Dapr's pre-1.0 names count when the new name is absent.
    fn values(
        annotations: &BTreeMap<String, String>,
        pod_name: Option<&str>,
    ) -> Result<Self, AnnotationError> {
        let r = Reader { annotations };
        let app_id = match r.lookup(keys::APP_ID).or(pod_name
            .filter(|n| !n.is_empty())
            .map(|n| (keys::APP_ID, n)))
        {
            None => return Err(AnnotationError::NoAppId),
            Some((key, id)) => AppId::new(id)
                .and_then(|a| a.check_kubernetes().map(|()| a))
                .map_err(|source| AnnotationError::BadAppId {
                    key,
                    value: id.to_owned(),
                    source,
                })?,
        };
        let app_protocol = match r.lookup(keys::APP_PROTOCOL) {
            None => AppProtocol::Http,
            Some((key, v)) => match v.to_ascii_lowercase().as_str() {
                "http" => AppProtocol::Http,
                "https" => AppProtocol::Https,
                "h2c" => AppProtocol::H2c,
                "grpc" | "grpcs" => {
                    return Err(AnnotationError::Unsupported {
                        key,
                        value: v.to_owned(),
                        supported: "http, https, h2c",
                    });
                }
                _ => {
                    return Err(AnnotationError::NotOneOf {
                        key,
                        value: v.to_owned(),
                        allowed: "http, https, h2c, grpc, grpcs",
                    });
                }
            },
        };
        let log_level = match r.get(keys::LOG_LEVEL) {
            None => LogLevel::Info,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "debug" => LogLevel::Debug,
                "info" => LogLevel::Info,
                "warn" => LogLevel::Warn,
                "error" => LogLevel::Error,
                "fatal" => LogLevel::Fatal,
                _ => {
                    return Err(AnnotationError::NotOneOf {
                        key: keys::LOG_LEVEL,
                        value: v.to_owned(),
                        allowed: "debug, info, warn, error, fatal",
                    });
                }
            },
        };
        let seccomp_profile_type = match r.get(keys::SIDECAR_SECCOMP_PROFILE_TYPE) {
            None => SeccompProfileType::RuntimeDefault,
            Some("RuntimeDefault") => SeccompProfileType::RuntimeDefault,
            Some("Unconfined") => SeccompProfileType::Unconfined,
            Some(v) => {
                return Err(AnnotationError::NotOneOf {
                    key: keys::SIDECAR_SECCOMP_PROFILE_TYPE,
                    value: v.to_owned(),
                    allowed: "RuntimeDefault, Unconfined (Localhost needs a profile path, which no annotation gives)",
                });
            }
        };
        // The ranges are ferryd's: what the injector admits, ferryd starts with.
        const POSITIVE: &str = "1..=4294967295";
        const MAX: u32 = u32::MAX;
        let app_health_check = if r.bool(keys::ENABLE_APP_HEALTH_CHECK, false)? {
            let path = r
                .string(keys::APP_HEALTH_CHECK_PATH)
                .unwrap_or_else(|| "/healthz".into());
            if !path.starts_with('/') {
                return Err(AnnotationError::NotOneOf {
                    key: keys::APP_HEALTH_CHECK_PATH,
                    value: path,
                    allowed: "an absolute HTTP path such as /healthz",
                });
            }
            let check = AppHealthCheck {
                path,
                probe_interval_seconds: r
                    .int(keys::APP_HEALTH_PROBE_INTERVAL, 1, 86_400, "1..=86400")?
                    .unwrap_or(5),
                probe_timeout_millis: r
                    .int(
                        keys::APP_HEALTH_PROBE_TIMEOUT,
                        1,
                        86_400_000,
                        "1..=86400000",
                    )?
                    .unwrap_or(500),
                threshold: r
                    .int(keys::APP_HEALTH_THRESHOLD, 1, MAX, POSITIVE)?
                    .unwrap_or(3),
            };
            // What ferryd would refuse to start with is refused here, where the pod's author
            // sees it, instead of in a crash-looping container.
            if u64::from(check.probe_timeout_millis)
                > u64::from(check.probe_interval_seconds) * 1000
            {
                return Err(AnnotationError::ProbeTimeoutAboveInterval {
                    timeout_ms: check.probe_timeout_millis.to_string(),
                    interval_s: check.probe_interval_seconds,
                });
            }
            Some(check)
        } else {
            None
        };
        let env_from_secret = r
            .pairs(
                keys::ENV_FROM_SECRET,
                "NAME=secret or NAME=secret:key, comma-separated",
            )?
            .into_iter()
            .map(|(name, target)| {
                let (secret, key) = match target.split_once(':') {
                    Some((s, k)) => (s.to_owned(), k.to_owned()),
                    None => (target.clone(), name.clone()),
                };
                if secret.is_empty() || key.is_empty() {
                    return Err(AnnotationError::BadList {
                        key: keys::ENV_FROM_SECRET,
                        value: r.get(keys::ENV_FROM_SECRET).unwrap_or_default().to_owned(),
                        format: "NAME=secret or NAME=secret:key, comma-separated",
                    });
                }
                Ok(EnvFromSecret { name, secret, key })
            })
            .collect::<Result<_, _>>()?;
        let app_port = r.port(keys::APP_PORT)?;
        if app_health_check.is_some() && app_port.is_none() {
            return Err(AnnotationError::HealthCheckWithoutAppPort);
        }
        Ok(Self {
            app_id,
            app_port,
            app_protocol,
            app_ssl: r.bool(keys::APP_SSL, false)?,
            config: r.string(keys::CONFIG),
            log_level,
            log_as_json: r.bool(keys::LOG_AS_JSON, false)?,
            enable_metrics: r.bool(keys::ENABLE_METRICS, true)?,
            metrics_port: r.port(keys::METRICS_PORT)?.unwrap_or(ports::METRICS),
            listen_addresses: r
                .string(keys::SIDECAR_LISTEN_ADDRESSES)
                .unwrap_or_else(|| DEFAULT_LISTEN_ADDRESSES.into()),
            max_body_size: r.size(keys::MAX_BODY_SIZE, size::parse_size)?,
            http_max_request_size_mb: r.int(
                keys::HTTP_MAX_REQUEST_SIZE,
                1,
                LEGACY_MAX,
                LEGACY_RANGE,
            )?,
            read_buffer_size: r.size(keys::READ_BUFFER_SIZE, size::parse_read_buffer_size)?,
            http_read_buffer_size_kb: r.int(
                keys::HTTP_READ_BUFFER_SIZE,
                1,
                LEGACY_MAX,
                LEGACY_RANGE,
            )?,
            app_max_concurrency: r.int(keys::APP_MAX_CONCURRENCY, 1, MAX, POSITIVE)?,
            graceful_shutdown_seconds: r
                .int(
                    keys::GRACEFUL_SHUTDOWN_SECONDS,
                    -1,
                    i32::MAX,
                    "-1..=2147483647",
                )?
                .unwrap_or(DEFAULT_GRACEFUL_SHUTDOWN_SECONDS),
            app_health_check,
            resources: SidecarResources {
                cpu_request: r.quantity(keys::SIDECAR_CPU_REQUEST)?,
                cpu_limit: r.quantity(keys::SIDECAR_CPU_LIMIT)?,
                memory_request: r.quantity(keys::SIDECAR_MEMORY_REQUEST)?,
                memory_limit: r.quantity(keys::SIDECAR_MEMORY_LIMIT)?,
            },
            liveness: r.probe(
                [
                    keys::LIVENESS_DELAY,
                    keys::LIVENESS_TIMEOUT,
                    keys::LIVENESS_PERIOD,
                    keys::LIVENESS_THRESHOLD,
                ],
                DEFAULT_LIVENESS,
            )?,
            readiness: r.probe(
                [
                    keys::READINESS_DELAY,
                    keys::READINESS_TIMEOUT,
                    keys::READINESS_PERIOD,
                    keys::READINESS_THRESHOLD,
                ],
                DEFAULT_READINESS,
            )?,
            app_channel_address: r.host(keys::APP_CHANNEL_ADDRESS)?,
            image: r.string(keys::SIDECAR_IMAGE),
            env: r.pairs(keys::ENV, "NAME=value, comma-separated")?,
            env_from_secret,
            api_token_secret: r.string(keys::API_TOKEN_SECRET),
            app_token_secret: r.string(keys::APP_TOKEN_SECRET),
            volume_mounts: r.mounts(keys::VOLUME_MOUNTS)?,
            volume_mounts_rw: r.mounts(keys::VOLUME_MOUNTS_RW)?,
            seccomp_profile_type,
            native_sidecar: r.bool(keys::ENABLE_NATIVE_SIDECAR, false)?,
            svc_annotations: r
                .pairs(keys::SIDECAR_SVC_ANNOTATIONS, "key=value, comma-separated")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<SidecarConfig, AnnotationError> {
        let annotations = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SidecarConfig::from_annotations(&annotations, Some("my-pod"))
    }

    fn defaults() -> SidecarConfig {
        SidecarConfig {
            app_id: AppId::new("my-pod").unwrap(),
            app_port: None,
            app_protocol: AppProtocol::Http,
            app_ssl: false,
            config: None,
            log_level: LogLevel::Info,
            log_as_json: false,
            enable_metrics: true,
            metrics_port: 9090,
            listen_addresses: "[::1],127.0.0.1".into(),
            max_body_size: None,
            http_max_request_size_mb: None,
            read_buffer_size: None,
            http_read_buffer_size_kb: None,
            app_channel_address: None,
            app_max_concurrency: None,
            graceful_shutdown_seconds: -1,
            app_health_check: None,
            resources: SidecarResources::default(),
            liveness: ProbeTimings {
                initial_delay_seconds: 180,
                timeout_seconds: 3,
                period_seconds: 10,
                failure_threshold: 5,
            },
            readiness: ProbeTimings {
                initial_delay_seconds: 1,
                timeout_seconds: 1,
                period_seconds: 1,
                failure_threshold: 5,
            },
            image: None,
            env: vec![],
            env_from_secret: vec![],
            api_token_secret: None,
            app_token_secret: None,
            volume_mounts: vec![],
            volume_mounts_rw: vec![],
            seccomp_profile_type: SeccompProfileType::RuntimeDefault,
            native_sidecar: false,
            svc_annotations: vec![],
        }
    }

    #[test]
    fn no_annotations_give_dapr_head_defaults() {
        assert_eq!(parse(&[]).unwrap(), defaults());
        // Present but empty is the same as absent.
        assert_eq!(
            parse(&[(keys::APP_PORT, ""), (keys::APP_ID, " ")]).unwrap(),
            defaults()
        );
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn valid_values() {
        type Expect = fn(&mut SidecarConfig);
        let cases: &[(&str, &str, Expect)] = &[
            (keys::APP_ID, "orders", |c| {
                c.app_id = AppId::new("orders").unwrap()
            }),
            (keys::APP_PORT, "8080", |c| c.app_port = Some(8080)),
            (keys::APP_PROTOCOL, "HTTPS", |c| {
                c.app_protocol = AppProtocol::Https
            }),
            (keys::APP_PROTOCOL, "h2c", |c| {
                c.app_protocol = AppProtocol::H2c
            }),
            (keys::APP_SSL, "yes", |c| c.app_ssl = true),
            (keys::CONFIG, "tracing", |c| c.config = Some(s("tracing"))),
            (keys::LOG_LEVEL, "debug", |c| c.log_level = LogLevel::Debug),
            (keys::LOG_AS_JSON, "On", |c| c.log_as_json = true),
            (keys::ENABLE_METRICS, "false", |c| c.enable_metrics = false),
            (keys::ENABLE_METRICS, "0", |c| c.enable_metrics = false),
            (keys::METRICS_PORT, "9999", |c| c.metrics_port = 9999),
            (keys::SIDECAR_LISTEN_ADDRESSES, "0.0.0.0", |c| {
                c.listen_addresses = s("0.0.0.0")
            }),
            (keys::MAX_BODY_SIZE, "16Mi", |c| {
                c.max_body_size = Some(s("16Mi"))
            }),
            (keys::HTTP_MAX_REQUEST_SIZE, "16", |c| {
                c.http_max_request_size_mb = Some(16)
            }),
            (keys::READ_BUFFER_SIZE, "8Ki", |c| {
                c.read_buffer_size = Some(s("8Ki"))
            }),
            (keys::APP_MAX_CONCURRENCY, "10", |c| {
                c.app_max_concurrency = Some(10)
            }),
            (keys::HTTP_READ_BUFFER_SIZE, "64", |c| {
                c.http_read_buffer_size_kb = Some(64)
            }),
            (keys::APP_CHANNEL_ADDRESS, "10.1.2.3", |c| {
                c.app_channel_address = Some(s("10.1.2.3"))
            }),
            (keys::APP_CHANNEL_ADDRESS, "fd00::1", |c| {
                c.app_channel_address = Some(s("fd00::1"))
            }),
            (keys::APP_CHANNEL_ADDRESS, "app.shop.svc", |c| {
                c.app_channel_address = Some(s("app.shop.svc"))
            }),
            // Dapr's pre-1.0 names.
            ("dapr.io/id", "cart", |c| {
                c.app_id = AppId::new("cart").unwrap()
            }),
            ("dapr.io/port", "5000", |c| c.app_port = Some(5000)),
            ("dapr.io/protocol", "h2c", |c| {
                c.app_protocol = AppProtocol::H2c
            }),
            ("dapr.io/max-concurrency", "3", |c| {
                c.app_max_concurrency = Some(3)
            }),
            (keys::GRACEFUL_SHUTDOWN_SECONDS, "30", |c| {
                c.graceful_shutdown_seconds = 30
            }),
            (keys::SIDECAR_CPU_REQUEST, "100m", |c| {
                c.resources.cpu_request = Some(s("100m"))
            }),
            (keys::SIDECAR_CPU_LIMIT, "1.5", |c| {
                c.resources.cpu_limit = Some(s("1.5"))
            }),
            (keys::SIDECAR_MEMORY_REQUEST, "64Mi", |c| {
                c.resources.memory_request = Some(s("64Mi"))
            }),
            (keys::SIDECAR_MEMORY_LIMIT, "1e9", |c| {
                c.resources.memory_limit = Some(s("1e9"))
            }),
            (keys::LIVENESS_DELAY, "0", |c| {
                c.liveness.initial_delay_seconds = 0
            }),
            (keys::LIVENESS_TIMEOUT, "7", |c| {
                c.liveness.timeout_seconds = 7
            }),
            (keys::LIVENESS_PERIOD, "20", |c| {
                c.liveness.period_seconds = 20
            }),
            (keys::LIVENESS_THRESHOLD, "2", |c| {
                c.liveness.failure_threshold = 2
            }),
            (keys::READINESS_DELAY, "4", |c| {
                c.readiness.initial_delay_seconds = 4
            }),
            (keys::READINESS_TIMEOUT, "2", |c| {
                c.readiness.timeout_seconds = 2
            }),
            (keys::READINESS_PERIOD, "3", |c| {
                c.readiness.period_seconds = 3
            }),
            (keys::READINESS_THRESHOLD, "9", |c| {
                c.readiness.failure_threshold = 9
            }),
            (keys::SIDECAR_IMAGE, "ferry/ferryd:dev", |c| {
                c.image = Some(s("ferry/ferryd:dev"))
            }),
            (keys::ENV, "A=1,B=x,y,C=", |c| {
                c.env = vec![(s("A"), s("1")), (s("B"), s("x,y")), (s("C"), s(""))];
            }),
            (keys::ENV_FROM_SECRET, "TOKEN=creds,PASS=db:password", |c| {
                c.env_from_secret = vec![
                    EnvFromSecret {
                        name: s("TOKEN"),
                        secret: s("creds"),
                        key: s("TOKEN"),
                    },
                    EnvFromSecret {
                        name: s("PASS"),
                        secret: s("db"),
                        key: s("password"),
                    },
                ];
            }),
            (keys::API_TOKEN_SECRET, "api-tok", |c| {
                c.api_token_secret = Some(s("api-tok"))
            }),
            (keys::APP_TOKEN_SECRET, "app-tok", |c| {
                c.app_token_secret = Some(s("app-tok"))
            }),
            (keys::VOLUME_MOUNTS, "certs:/certs,cfg:/etc/cfg", |c| {
                c.volume_mounts = vec![
                    SidecarVolumeMount {
                        volume: s("certs"),
                        path: s("/certs"),
                    },
                    SidecarVolumeMount {
                        volume: s("cfg"),
                        path: s("/etc/cfg"),
                    },
                ];
            }),
            (keys::VOLUME_MOUNTS_RW, "scratch:/tmp", |c| {
                c.volume_mounts_rw = vec![SidecarVolumeMount {
                    volume: s("scratch"),
                    path: s("/tmp"),
                }];
            }),
            (keys::SIDECAR_SECCOMP_PROFILE_TYPE, "Unconfined", |c| {
                c.seccomp_profile_type = SeccompProfileType::Unconfined;
            }),
            (keys::ENABLE_NATIVE_SIDECAR, "Y", |c| {
                c.native_sidecar = true
            }),
            (keys::SIDECAR_SVC_ANNOTATIONS, "a.io/x=1,b=2", |c| {
                c.svc_annotations = vec![(s("a.io/x"), s("1")), (s("b"), s("2"))];
            }),
        ];
        for (key, value, expect) in cases {
            let mut want = defaults();
            expect(&mut want);
            assert_eq!(parse(&[(key, value)]), Ok(want), "{key}: {value:?}");
        }
    }

    #[test]
    fn app_health_check_settings() {
        let cfg = parse(&[
            (keys::APP_PORT, "8080"),
            (keys::ENABLE_APP_HEALTH_CHECK, "1"),
            (keys::APP_HEALTH_CHECK_PATH, "/ready"),
            (keys::APP_HEALTH_PROBE_INTERVAL, "10"),
            (keys::APP_HEALTH_PROBE_TIMEOUT, "250"),
            (keys::APP_HEALTH_THRESHOLD, "4"),
        ])
        .unwrap();
        let want = AppHealthCheck {
            path: s("/ready"),
            probe_interval_seconds: 10,
            probe_timeout_millis: 250,
            threshold: 4,
        };
        assert_eq!(cfg.app_health_check, Some(want));
        // Enabled alone, Dapr's defaults.
        let defaults = parse(&[
            (keys::APP_PORT, "8080"),
            (keys::ENABLE_APP_HEALTH_CHECK, "true"),
        ]);
        assert_eq!(
            defaults.unwrap().app_health_check,
            Some(AppHealthCheck {
                path: s("/healthz"),
                probe_interval_seconds: 5,
                probe_timeout_millis: 500,
                threshold: 3,
            })
        );
        // The settings alone do not enable the check.
        assert_eq!(
            parse(&[(keys::APP_HEALTH_CHECK_PATH, "/ready")])
                .unwrap()
                .app_health_check,
            None
        );
    }

    #[test]
    fn invalid_values_name_the_annotation_the_value_and_what_is_allowed() {
        let h = |k: &'static str, v: &'static str| {
            vec![
                (keys::APP_PORT, "8080"),
                (keys::ENABLE_APP_HEALTH_CHECK, "true"),
                (k, v),
            ]
        };
        let long_id = "a".repeat(59);
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![(keys::ENABLE_APP_HEALTH_CHECK, "true")],
                "annotation dapr.io/enable-app-health-check is on but dapr.io/app-port is not set: there is no app to probe (set dapr.io/app-port, or turn the health check off)",
            ),
            (
                vec![
                    (keys::APP_PORT, "8080"),
                    (keys::ENABLE_APP_HEALTH_CHECK, "true"),
                    (keys::APP_HEALTH_PROBE_INTERVAL, "1"),
                    (keys::APP_HEALTH_PROBE_TIMEOUT, "1500"),
                ],
                r#"annotation dapr.io/app-health-probe-timeout: "1500" (milliseconds) is longer than dapr.io/app-health-probe-interval (1 seconds); the timeout must be at most the interval"#,
            ),
            (
                vec![(keys::APP_PORT, "70000")],
                r#"annotation dapr.io/app-port: "70000" is not a port (1-65535)"#,
            ),
            (
                vec![(keys::APP_PORT, "0")],
                r#"annotation dapr.io/app-port: "0" is not a port (1-65535)"#,
            ),
            (
                vec![(keys::APP_PORT, "http")],
                r#"annotation dapr.io/app-port: "http" is not a port (1-65535)"#,
            ),
            (
                vec![(keys::METRICS_PORT, "-1")],
                r#"annotation dapr.io/metrics-port: "-1" is not a port (1-65535)"#,
            ),
            (
                vec![(keys::APP_ID, "My_App")],
                "annotation dapr.io/app-id: \"My_App\" is not a valid app ID: app ID \"My_App\" is not a lowercase DNS-1123 label",
            ),
            (
                vec![(keys::APP_ID, &long_id)],
                "is longer than 58 characters",
            ),
            (
                vec![(keys::APP_PROTOCOL, "grpc")],
                r#"annotation dapr.io/app-protocol: "grpc" is not supported by Ferry (supported: http, https, h2c)"#,
            ),
            (
                vec![(keys::APP_PROTOCOL, "ftp")],
                r#"annotation dapr.io/app-protocol: "ftp" is not one of http, https, h2c, grpc, grpcs"#,
            ),
            (
                vec![(keys::APP_SSL, "maybe")],
                r#"annotation dapr.io/app-ssl: "maybe" is not a boolean (true/false"#,
            ),
            (
                vec![(keys::LOG_AS_JSON, "2")],
                r#"annotation dapr.io/log-as-json: "2" is not a boolean"#,
            ),
            (
                vec![(keys::ENABLE_METRICS, "nope")],
                r#"annotation dapr.io/enable-metrics: "nope" is not a boolean"#,
            ),
            (
                vec![(keys::ENABLE_NATIVE_SIDECAR, "x")],
                r#"annotation dapr.io/enable-native-sidecar: "x" is not a boolean"#,
            ),
            (
                vec![(keys::ENABLE_APP_HEALTH_CHECK, "x")],
                r#"annotation dapr.io/enable-app-health-check: "x" is not a boolean"#,
            ),
            (
                vec![(keys::LOG_LEVEL, "trace")],
                r#"annotation dapr.io/log-level: "trace" is not one of debug, info, warn, error, fatal"#,
            ),
            (
                vec![(keys::MAX_BODY_SIZE, "4MB")],
                r#"annotation dapr.io/max-body-size: "4MB" is not a size: use a whole number of bytes with an optional unit Ki, Mi, Gi, Ti"#,
            ),
            (
                vec![(keys::READ_BUFFER_SIZE, "Ki")],
                r#"annotation dapr.io/read-buffer-size: "Ki" is not a size"#,
            ),
            (
                vec![(keys::READ_BUFFER_SIZE, "4Ki")],
                r#"annotation dapr.io/read-buffer-size: "4Ki" is below the minimum of 8Ki"#,
            ),
            (
                vec![(keys::MAX_BODY_SIZE, "0")],
                r#"annotation dapr.io/max-body-size: "0" must be larger than zero"#,
            ),
            (
                vec![(keys::SIDECAR_CPU_REQUEST, "lots")],
                r#"annotation dapr.io/sidecar-cpu-request: "lots" is not a Kubernetes quantity"#,
            ),
            (
                vec![(keys::SIDECAR_CPU_LIMIT, "1..5")],
                r#"annotation dapr.io/sidecar-cpu-limit: "1..5" is not a Kubernetes quantity"#,
            ),
            (
                vec![(keys::SIDECAR_MEMORY_REQUEST, "64 Mi")],
                r#"annotation dapr.io/sidecar-memory-request: "64 Mi" is not a Kubernetes quantity"#,
            ),
            (
                vec![(keys::SIDECAR_MEMORY_LIMIT, "1Gb")],
                r#"annotation dapr.io/sidecar-memory-limit: "1Gb" is not a Kubernetes quantity"#,
            ),
            (
                vec![(keys::HTTP_MAX_REQUEST_SIZE, "0")],
                r#"annotation dapr.io/http-max-request-size: "0" is not an integer in 1..=1048576"#,
            ),
            // Above what ferryd takes: refused here rather than by a crash-looping sidecar.
            (
                vec![(keys::HTTP_MAX_REQUEST_SIZE, "1048577")],
                r#"annotation dapr.io/http-max-request-size: "1048577" is not an integer in 1..=1048576"#,
            ),
            (
                vec![(keys::HTTP_READ_BUFFER_SIZE, "-1")],
                r#"annotation dapr.io/http-read-buffer-size: "-1" is not an integer in 1..=1048576"#,
            ),
            (
                h(keys::APP_HEALTH_PROBE_INTERVAL, "86401"),
                r#"annotation dapr.io/app-health-probe-interval: "86401" is not an integer in 1..=86400"#,
            ),
            (
                vec![(keys::APP_CHANNEL_ADDRESS, "http://10.0.0.1")],
                r#"annotation dapr.io/app-channel-address: "http://10.0.0.1" is not one of an IP address or a host name"#,
            ),
            (
                vec![(keys::APP_CHANNEL_ADDRESS, "app.local:5000")],
                "is not one of an IP address or a host name",
            ),
            // Errors in a value read under a pre-1.0 name name that annotation.
            (
                vec![("dapr.io/port", "70000")],
                r#"annotation dapr.io/port: "70000" is not a port (1-65535)"#,
            ),
            (
                vec![("dapr.io/id", "Cart")],
                r#"annotation dapr.io/id: "Cart" is not a valid app ID"#,
            ),
            (
                vec![("dapr.io/protocol", "grpc")],
                r#"annotation dapr.io/protocol: "grpc" is not supported by Ferry"#,
            ),
            (
                vec![("dapr.io/max-concurrency", "-1")],
                r#"annotation dapr.io/max-concurrency: "-1" is not an integer"#,
            ),
            // A Dapr annotation whose absence would surprise the app.
            (
                vec![("dapr.io/unix-domain-socket-path", "/tmp/dapr")],
                "annotation dapr.io/unix-domain-socket-path is not supported by Ferry: ferryd listens on TCP only",
            ),
            (
                vec![(keys::APP_MAX_CONCURRENCY, "-1")],
                r#"annotation dapr.io/app-max-concurrency: "-1" is not an integer in 1..=4294967295"#,
            ),
            (
                vec![(keys::GRACEFUL_SHUTDOWN_SECONDS, "-5")],
                r#"annotation dapr.io/graceful-shutdown-seconds: "-5" is not an integer in -1..=2147483647"#,
            ),
            (
                h(keys::APP_HEALTH_CHECK_PATH, "healthz"),
                r#"annotation dapr.io/app-health-check-path: "healthz" is not one of an absolute HTTP path"#,
            ),
            (
                h(keys::APP_HEALTH_PROBE_INTERVAL, "0"),
                r#"annotation dapr.io/app-health-probe-interval: "0" is not an integer in 1..=86400"#,
            ),
            (
                h(keys::APP_HEALTH_PROBE_TIMEOUT, "1s"),
                r#"annotation dapr.io/app-health-probe-timeout: "1s" is not an integer"#,
            ),
            (
                h(keys::APP_HEALTH_THRESHOLD, "x"),
                r#"annotation dapr.io/app-health-threshold: "x" is not an integer"#,
            ),
            (
                vec![(keys::LIVENESS_DELAY, "-1")],
                r#"annotation dapr.io/sidecar-liveness-probe-delay-seconds: "-1" is not an integer in 0..=2147483647"#,
            ),
            (
                vec![(keys::LIVENESS_TIMEOUT, "0")],
                r#"annotation dapr.io/sidecar-liveness-probe-timeout-seconds: "0" is not an integer in 1..=2147483647"#,
            ),
            (
                vec![(keys::LIVENESS_PERIOD, "x")],
                r#"annotation dapr.io/sidecar-liveness-probe-period-seconds: "x" is not an integer"#,
            ),
            (
                vec![(keys::LIVENESS_THRESHOLD, "0")],
                r#"annotation dapr.io/sidecar-liveness-probe-threshold: "0" is not an integer"#,
            ),
            (
                vec![(keys::READINESS_DELAY, "x")],
                r#"annotation dapr.io/sidecar-readiness-probe-delay-seconds: "x" is not an integer"#,
            ),
            (
                vec![(keys::READINESS_TIMEOUT, "0")],
                r#"annotation dapr.io/sidecar-readiness-probe-timeout-seconds: "0" is not an integer"#,
            ),
            (
                vec![(keys::READINESS_PERIOD, "0")],
                r#"annotation dapr.io/sidecar-readiness-probe-period-seconds: "0" is not an integer"#,
            ),
            (
                vec![(keys::READINESS_THRESHOLD, "0")],
                r#"annotation dapr.io/sidecar-readiness-probe-threshold: "0" is not an integer"#,
            ),
            (
                vec![(keys::ENV, "novalue")],
                r#"annotation dapr.io/env: "novalue" is not a list of the form NAME=value, comma-separated"#,
            ),
            (
                vec![(keys::ENV_FROM_SECRET, "K=s:")],
                r#"annotation dapr.io/env-from-secret: "K=s:" is not a list of the form NAME=secret or NAME=secret:key"#,
            ),
            (
                vec![(keys::ENV_FROM_SECRET, "K")],
                r#"annotation dapr.io/env-from-secret: "K" is not a list of the form"#,
            ),
            (
                vec![(keys::VOLUME_MOUNTS, "certs")],
                r#"annotation dapr.io/volume-mounts: "certs" is not a list of the form volume:/absolute/path,..."#,
            ),
            (
                vec![(keys::VOLUME_MOUNTS_RW, "a:rel")],
                r#"annotation dapr.io/volume-mounts-rw: "a:rel" is not a list of the form volume:/absolute/path,..."#,
            ),
            (
                vec![(keys::SIDECAR_SECCOMP_PROFILE_TYPE, "runtimedefault")],
                r#"annotation dapr.io/sidecar-seccomp-profile-type: "runtimedefault" is not one of RuntimeDefault, Unconfined (Localhost"#,
            ),
            (
                vec![(keys::SIDECAR_SVC_ANNOTATIONS, "=x")],
                r#"annotation dapr.io/sidecar-svc-annotations: "=x" is not a list of the form key=value"#,
            ),
        ];
        for (pairs, want) in cases {
            let err = parse(&pairs).expect_err(want).to_string();
            assert!(
                err.starts_with(want) || err.contains(want),
                "{pairs:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn the_new_name_wins_over_the_pre_1_0_one() {
        let cfg = parse(&[
            ("dapr.io/id", "old"),
            (keys::APP_ID, "new"),
            ("dapr.io/port", "70000"),
            (keys::APP_PORT, "5000"),
        ])
        .unwrap();
        assert_eq!(cfg.app_id.as_str(), "new");
        assert_eq!(
            cfg.app_port,
            Some(5000),
            "the shadowed value is not even parsed"
        );
        // An empty new name is absent: the old one counts.
        let cfg = parse(&[("dapr.io/port", "5000"), (keys::APP_PORT, "")]).unwrap();
        assert_eq!(cfg.app_port, Some(5000));
    }

    #[test]
    fn read_keeps_the_warnings_whether_or_not_the_pod_is_refused() {
        let annotations = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let ok = read(
            &annotations(&[("dapr.io/id", "cart"), ("dapr.io/app-prot", "1")]),
            None,
        );
        assert_eq!(ok.config.unwrap().app_id.as_str(), "cart");
        assert_eq!(ok.warnings.len(), 2, "{:?}", ok.warnings);
        let bad = read(
            &annotations(&[("dapr.io/app-prot", "1"), (keys::APP_PORT, "x")]),
            Some("p"),
        );
        assert!(matches!(bad.config, Err(AnnotationError::NotAPort { .. })));
        assert_eq!(
            bad.warnings,
            [AnnotationWarning::Unknown {
                key: "dapr.io/app-prot".into(),
                closest: Some(keys::APP_PORT)
            }]
        );
    }

    #[test]
    fn the_app_id_defaults_to_the_pod_name_and_is_required() {
        let none = BTreeMap::new();
        assert_eq!(
            SidecarConfig::from_annotations(&none, Some("")).unwrap_err(),
            AnnotationError::NoAppId
        );
        assert_eq!(
            SidecarConfig::from_annotations(&none, None).unwrap_err(),
            AnnotationError::NoAppId
        );
    }

    #[test]
    fn enabled_must_be_exactly_true() {
        let with = |v: &str| BTreeMap::from([(keys::ENABLED.to_owned(), v.to_owned())]);
        assert!(is_enabled(&with("true")));
        assert!(is_enabled(&with("TRUE")));
        for v in ["yes", "1", "on", "y", "false", ""] {
            assert!(!is_enabled(&with(v)), "{v:?}");
        }
        assert!(!is_enabled(&BTreeMap::new()));
    }

    #[test]
    fn truthy_parsing() {
        for v in ["1", "true", "T", "YES", "y", "On"] {
            assert_eq!(parse_bool(v), Some(true), "{v}");
        }
        for v in ["0", "false", "F", "no", "N", "off"] {
            assert_eq!(parse_bool(v), Some(false), "{v}");
        }
        assert_eq!(parse_bool("2"), None);
    }

    #[test]
    fn quantities() {
        for q in [
            "1", "0.5", "500m", "4Mi", "1Gi", "1e3", "2E-2", "+1", "1.5k", ".5",
        ] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "Mi", "1MB", "1..5", "1 Mi", "e3", ".", "1e", "1Mi2"] {
            assert!(!is_quantity(q), "{q}");
        }
    }

    #[test]
    fn effective_protocol() {
        assert_eq!(AppProtocol::Http.effective(true), AppProtocol::Https);
        assert_eq!(AppProtocol::Http.effective(false), AppProtocol::Http);
        assert_eq!(AppProtocol::H2c.effective(true), AppProtocol::H2c);
    }
}
