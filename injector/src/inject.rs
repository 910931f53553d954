//! The injection decision (Dapr's `handleRequest`, `dapr/pkg/injector/service/handler.go`) and
//! the JSON patch that adds the sidecar (`dapr/pkg/injector/patcher/sidecar_container.go` and
//! `sidecar_patcher.go`).

use std::collections::BTreeMap;

use ferry_api::{
    SidecarConfig,
    annotations::{self, labels},
    ports,
};
use json_patch::{
    AddOperation, Patch, PatchOperation,
    jsonptr::{PointerBuf, Token},
};
use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
        DownwardAPIVolumeFile, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
        Pod, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
        SecretKeySelector, SecurityContext, ServiceAccountTokenProjection, TCPSocketAction, Volume,
        VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The sidecar container's name, as in Dapr (so Dapr tooling recognises it).
pub const SIDECAR_CONTAINER_NAME: &str = "daprd";
/// The sidecar executable, run as the container's `command`.
pub const FERRYD_PATH: &str = "/ferryd";
/// The projected API-server token volume added when the pod does not automount one.
pub const KUBE_API_ACCESS_VOLUME: &str = "ferryd-kube-api-access";
/// Where that token is mounted in the sidecar (the standard service-account path).
pub const KUBE_API_ACCESS_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The image used when neither the configuration nor `dapr.io/sidecar-image` names one.
pub const DEFAULT_SIDECAR_IMAGE: &str = "ghcr.io/ferry-dev/ferryd:latest";

/// Dapr's built-in list of service accounts (`namespace:name` globs) whose pods are injected.
pub const BUILTIN_SERVICE_ACCOUNTS: &[&str] = &[
    "kube-system:replicaset-controller",
    "kube-system:replication-controller",
    "kube-system:deployment-controller",
    "kube-system:cronjob-controller",
    "kube-system:job-controller",
    "kube-system:statefulset-controller",
    "kube-system:daemon-set-controller",
    "openshift-operator-lifecycle-manager:olm-operator-serviceaccount",
    "tekton-pipelines:tekton-pipelines-controller",
    "mirrord:mirrord-operator",
];

/// The injector's own configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InjectorConfig {
    pub sidecar_image: String,
    pub image_pull_policy: String,
    pub control_plane_namespace: String,
    pub trust_domain: String,
    /// Extra `namespace:name` globs, in addition to [`BUILTIN_SERVICE_ACCOUNTS`].
    pub allowed_service_accounts: Vec<String>,
    /// mTLS between sidecars: where their CA is. `None`: plaintext (the sidecar logs it).
    pub mtls: Option<MtlsConfig>,
}

/// What a sidecar needs for mTLS: its CA's address; the CA's identity follows from the control
/// plane's namespace and trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MtlsConfig {
    /// `host:port` of the CA (Ferry's, or Dapr's Sentry).
    pub sentry_address: String,
}

/// The projected token the sidecar proves itself to the CA with (Dapr's volume name).
pub const SENTRY_TOKEN_VOLUME: &str = "dapr-identity-token";
/// Where it is mounted: the directory of Dapr's token path.
pub const SENTRY_TOKEN_DIR: &str = "/var/run/secrets/dapr.io/sentrytoken";
/// The trust bundle ConfigMap the operator publishes in every namespace, as a volume.
pub const TRUST_BUNDLE_VOLUME: &str = "dapr-trust-bundle";
pub const TRUST_BUNDLE_CONFIG_MAP: &str = "dapr-trust-bundle";
pub const TRUST_BUNDLE_DIR: &str = "/var/run/secrets/dapr.io/trust-anchors";
/// How long the CA token lives (the kubelet renews it at 80 %).
const SENTRY_TOKEN_SECONDS: i64 = 7200;

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            sidecar_image: DEFAULT_SIDECAR_IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            control_plane_namespace: "ferry-system".into(),
            trust_domain: "cluster.local".into(),
            allowed_service_accounts: Vec::new(),
            mtls: None,
        }
    }
}

/// Who asked for the pod (the admission request's `userInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
}

/// Why a pod is admitted without a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The admitted object is not a Pod (decided by the webhook, never by [`plan`]).
    NotAPod,
    /// The operation is not a CREATE: a running pod's containers cannot change (decided by the
    /// webhook, never by [`plan`]).
    NotCreate,
    /// `dapr.io/enabled` is not exactly `true`.
    NotEnabled,
    /// The requesting user is not an allowed service account nor in `system:masters`.
    UnauthorizedServiceAccount,
    /// The pod uses the host's network, where the sidecar's ports would clash on the node.
    HostNetwork,
    /// The pod already has a `daprd` container (reinvocation).
    AlreadyInjected,
}

impl SkipReason {
    /// A stable name for Event reasons and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAPod => "not_a_pod",
            Self::NotCreate => "not_create",
            Self::NotEnabled => "not_enabled",
            Self::UnauthorizedServiceAccount => "unauthorized_service_account",
            Self::HostNetwork => "host_network",
            Self::AlreadyInjected => "already_injected",
        }
    }
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Inject(Injection),
    Skip(SkipReason),
    /// Refuse the pod, with a message for its creator (the warnings, if any, included).
    Deny(String),
}

/// The sidecar's patch, and what the pod's author should know about its annotations (each
/// message on one line, at most 256 bytes; all of them, unclipped). The patch records them in
/// the pod's annotation [`INJECTION_WARNINGS`] too, for the pods nobody watches being created.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub patch: Patch,
    pub warnings: Vec<String>,
}

/// The annotation in which the patch records the warnings, one per line (see
/// [`record_warnings`]); ferry-operator reports them as an Event on the pod.
pub use annotations::INJECTION_WARNINGS;

/// The most the injection-warnings annotation holds (the API server allows 256 KiB for all of
/// a pod's annotations).
pub const MAX_RECORDED_WARNINGS_BYTES: usize = 32 * 1024;

/// Decides whether and how to inject the sidecar into `pod`. `user` is `None` offline
/// (`ferry inject`), where no authorization applies. Nothing depends on the pod's namespace:
/// the sidecar reads it from the downward API, so a manifest injected offline works in
/// whatever namespace it is applied to.
pub fn plan(pod: &Pod, cfg: &InjectorConfig, user: Option<&UserInfo>) -> Decision {
    let empty = BTreeMap::new();
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    if !annotations::is_enabled(pod_annotations) {
        return Decision::Skip(SkipReason::NotEnabled);
    }
    if let Some(user) = user
        && !is_authorized(user, cfg)
    {
        return Decision::Skip(SkipReason::UnauthorizedServiceAccount);
    }
    let no_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    if spec.host_network == Some(true) {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_CONTAINER_NAME);
    if has_sidecar {
        return Decision::Skip(SkipReason::AlreadyInjected);
    }
    let reading = annotations::read(pod_annotations, pod.metadata.name.as_deref());
    let warnings: Vec<String> = reading.warnings.iter().map(ToString::to_string).collect();
    let deny = |message: String| Decision::Deny(with_warnings(message, &warnings));
    let sidecar = match reading.config {
        Ok(s) => s,
        Err(e) => return deny(e.to_string()),
    };
    let pod_volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for (key, mounts) in [
        (annotations::keys::VOLUME_MOUNTS, &sidecar.volume_mounts),
        (
            annotations::keys::VOLUME_MOUNTS_RW,
            &sidecar.volume_mounts_rw,
        ),
    ] {
        if let Some(m) = mounts
            .iter()
            .find(|m| !pod_volumes.contains(&m.volume.as_str()))
        {
            return deny(format!(
                "annotation {key}: volume {:?} is not a volume of the pod (its volumes: {})",
                m.volume,
                if pod_volumes.is_empty() {
                    "none".to_owned()
                } else {
                    pod_volumes.join(", ")
                }
            ));
        }
    }
    Decision::Inject(Injection {
        patch: build_patch(pod, cfg, &sidecar, &warnings),
        warnings,
    })
}

/// A refusal, with the warnings after it: a misspelt annotation is often why a pod is refused
/// (`dapr.io/app-prot` and a health check that needs `dapr.io/app-port`), and a Deployment's
/// author sees only the message, in the ReplicaSet's events.
fn with_warnings(message: String, warnings: &[String]) -> String {
    if warnings.is_empty() {
        return message;
    }
    let shown = fit_warnings(warnings, 2048, "more warnings");
    format!("{message} (also: {})", shown.join("; "))
}

/// At most `budget` bytes of `warnings`, each clipped to the 256 bytes the API server keeps of
/// an admission warning; what does not fit is counted in a last line (`and 3 {rest}`), never
/// dropped silently.
pub fn fit_warnings(warnings: &[String], budget: usize, rest: &str) -> Vec<String> {
    const MAX_WARNING: usize = 256;
    let clipped: Vec<String> = warnings.iter().map(|w| clip(w, MAX_WARNING)).collect();
    if clipped.iter().map(String::len).sum::<usize>() <= budget {
        return clipped;
    }
    // Room for the last line.
    let budget = budget.saturating_sub(MAX_WARNING);
    let mut shown = Vec::new();
    let mut used = 0;
    for (i, w) in clipped.into_iter().enumerate() {
        if used + w.len() > budget {
            shown.push(clip(
                &format!("and {} {rest}", warnings.len() - i),
                MAX_WARNING,
            ));
            break;
        }
        used += w.len();
        shown.push(w);
    }
    shown
}

/// `s` in at most `max` bytes, ending in `…` when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The value of [`INJECTION_WARNINGS`]: one warning per line.
pub fn record_warnings(warnings: &[String]) -> String {
    fit_warnings(
        warnings,
        MAX_RECORDED_WARNINGS_BYTES,
        "more warnings, not kept here (fix the ones above first)",
    )
    .join("\n")
}

fn is_authorized(user: &UserInfo, cfg: &InjectorConfig) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let Some((ns, name)) = user
        .username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return false;
    };
    BUILTIN_SERVICE_ACCOUNTS
        .iter()
        .copied()
        .chain(cfg.allowed_service_accounts.iter().map(String::as_str))
        .filter_map(|p| p.split_once(':'))
        .any(|(pns, pname)| crate::glob::matches(pns, ns) && crate::glob::matches(pname, name))
}

fn path<'t>(tokens: impl IntoIterator<Item = &'t str>) -> PointerBuf {
    PointerBuf::from_tokens(tokens.into_iter().map(Token::new))
}

fn add(ops: &mut Vec<PatchOperation>, path: PointerBuf, value: Value) {
    ops.push(PatchOperation::Add(AddOperation { path, value }));
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Serializing k8s-openapi types to a Value cannot fail.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn build_patch(pod: &Pod, cfg: &InjectorConfig, sc: &SidecarConfig, warnings: &[String]) -> Patch {
    let no_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let mut ops = Vec::new();

    // 1. Parents first.
    if spec.containers.is_empty() {
        add(&mut ops, path(["spec", "containers"]), json!([]));
    }
    if pod.metadata.labels.as_ref().is_none_or(BTreeMap::is_empty) {
        add(&mut ops, path(["metadata", "labels"]), json!({}));
    }

    // 2. Volumes.
    let needs_token = spec.automount_service_account_token == Some(false)
        && !spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == KUBE_API_ACCESS_VOLUME);
    let mut volumes = Vec::new();
    if needs_token {
        volumes.push(kube_api_access_volume());
    }
    if cfg.mtls.is_some() {
        volumes.extend(mtls_volumes(cfg));
    }
    let mut has_volumes = !spec.volumes.as_ref().is_none_or(Vec::is_empty);
    for volume in volumes {
        let volume = to_value(&volume);
        if has_volumes {
            add(&mut ops, path(["spec", "volumes", "-"]), volume);
        } else {
            add(&mut ops, path(["spec", "volumes"]), json!([volume]));
            has_volumes = true;
        }
    }

    // 3. The sidecar.
    let container = to_value(&sidecar_container(cfg, sc, needs_token));
    if sc.native_sidecar {
        if spec.init_containers.is_none() {
            add(&mut ops, path(["spec", "initContainers"]), json!([]));
        }
        add(&mut ops, path(["spec", "initContainers", "-"]), container);
    } else {
        add(&mut ops, path(["spec", "containers", "-"]), container);
    }

    // 4. Labels.
    for (label, value) in [
        (labels::SIDECAR_INJECTED, "true"),
        (labels::APP_ID, sc.app_id.as_str()),
        (
            labels::METRICS_ENABLED,
            if sc.enable_metrics { "true" } else { "false" },
        ),
    ] {
        add(&mut ops, path(["metadata", "labels", label]), json!(value));
    }
    // `metadata.annotations` exists: `dapr.io/enabled` is in it.
    if !warnings.is_empty() {
        add(
            &mut ops,
            path(["metadata", "annotations", INJECTION_WARNINGS]),
            json!(record_warnings(warnings)),
        );
    }

    // 5. The app containers learn where their sidecar is.
    let app_env = [
        ("DAPR_HTTP_PORT", ports::HTTP_API.to_string()),
        ("DAPR_GRPC_PORT", ports::GRPC_API.to_string()),
        ("APP_ID", sc.app_id.to_string()),
        (
            "APP_PROTOCOL",
            sc.app_protocol.effective(sc.app_ssl).as_str().to_owned(),
        ),
    ];
    for (i, c) in spec.containers.iter().enumerate() {
        let existing = c.env.as_deref().unwrap_or_default();
        let missing: Vec<Value> = app_env
            .iter()
            .filter(|(name, _)| !existing.iter().any(|e| e.name == *name))
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect();
        let index = i.to_string();
        if existing.is_empty() {
            add(
                &mut ops,
                path(["spec", "containers", &index, "env"]),
                Value::Array(missing),
            );
        } else {
            for var in missing {
                add(
                    &mut ops,
                    path(["spec", "containers", &index, "env", "-"]),
                    var,
                );
            }
        }
    }
    Patch(ops)
}

/// The CA's SPIFFE ID, which is the audience of the sidecar's token (as Dapr's injector sets it).
fn sentry_audience(cfg: &InjectorConfig) -> String {
    format!(
        "spiffe://{}/ns/{}/dapr-sentry",
        cfg.trust_domain, cfg.control_plane_namespace
    )
}

fn mtls_volumes(cfg: &InjectorConfig) -> [Volume; 2] {
    [
        Volume {
            name: SENTRY_TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o644),
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(sentry_audience(cfg)),
                        expiration_seconds: Some(SENTRY_TOKEN_SECONDS),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        },
        Volume {
            name: TRUST_BUNDLE_VOLUME.into(),
            config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource {
                name: TRUST_BUNDLE_CONFIG_MAP.into(),
                items: Some(vec![KeyToPath {
                    key: "ca.crt".into(),
                    path: "ca.crt".into(),
                    mode: None,
                }]),
                default_mode: Some(0o644),
                optional: None,
            }),
            ..Default::default()
        },
    ]
}

/// ferryd's mTLS flags, for a CA at `m.sentry_address`.
fn mtls_args(cfg: &InjectorConfig, m: &MtlsConfig) -> Vec<String> {
    vec![
        "--enable-mtls".into(),
        "--sentry-address".into(),
        m.sentry_address.clone(),
        "--control-plane-namespace".into(),
        cfg.control_plane_namespace.clone(),
        "--control-plane-trust-domain".into(),
        cfg.trust_domain.clone(),
        "--trust-anchors-file".into(),
        format!("{TRUST_BUNDLE_DIR}/ca.crt"),
        "--sentry-token-file".into(),
        format!("{SENTRY_TOKEN_DIR}/token"),
    ]
}

fn kube_api_access_volume() -> Volume {
    Volume {
        name: KUBE_API_ACCESS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        expiration_seconds: Some(3607),
                        path: "token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(field("metadata.namespace")),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

fn field(path: &str) -> ObjectFieldSelector {
    ObjectFieldSelector {
        api_version: Some("v1".into()),
        field_path: path.into(),
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(source),
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: None,
            }),
            ..Default::default()
        },
    )
}

/// The ferryd flags, daprd-style (the daprd arguments of
/// `dapr/pkg/injector/patcher/sidecar_container.go`). No `--namespace`: ferryd reads
/// `NAMESPACE`, which the downward API sets, as daprd does.
pub fn sidecar_args(sc: &SidecarConfig) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut flag = |name: &str, value: Option<String>| {
        args.push(format!("--{name}"));
        args.extend(value);
    };
    flag("mode", Some("kubernetes".into()));
    flag("dapr-http-port", Some(ports::HTTP_API.to_string()));
    flag("dapr-grpc-port", Some(ports::GRPC_API.to_string()));
    flag("dapr-internal-grpc-port", Some(ports::INTERNAL.to_string()));
    flag("dapr-listen-addresses", Some(sc.listen_addresses.clone()));
    flag("dapr-public-port", Some(ports::PUBLIC.to_string()));
    flag("app-id", Some(sc.app_id.to_string()));
    flag("app-protocol", Some(sc.app_protocol.as_str().into()));
    flag("log-level", Some(sc.log_level.name().into()));
    flag(
        "dapr-graceful-shutdown-seconds",
        Some(sc.graceful_shutdown_seconds.to_string()),
    );
    if let Some(port) = sc.app_port {
        flag("app-port", Some(port.to_string()));
    }
    if sc.app_ssl {
        flag("app-ssl", None);
    }
    if sc.log_as_json {
        flag("log-as-json", None);
    }
    if sc.enable_metrics {
        flag("enable-metrics", None);
        flag("metrics-port", Some(sc.metrics_port.to_string()));
    }
    if let Some(config) = &sc.config {
        flag("config", Some(config.clone()));
    }
    if let Some(size) = &sc.max_body_size {
        flag("max-body-size", Some(size.clone()));
    }
    if let Some(mb) = sc.http_max_request_size_mb {
        flag("dapr-http-max-request-size", Some(mb.to_string()));
    }
    if let Some(size) = &sc.read_buffer_size {
        flag("read-buffer-size", Some(size.clone()));
    }
    if let Some(kb) = sc.http_read_buffer_size_kb {
        flag("dapr-http-read-buffer-size", Some(kb.to_string()));
    }
    if let Some(host) = &sc.app_channel_address {
        flag("app-channel-address", Some(host.clone()));
    }
    if let Some(n) = sc.app_max_concurrency {
        flag("app-max-concurrency", Some(n.to_string()));
    }
    if let Some(h) = &sc.app_health_check {
        flag("enable-app-health-check", None);
        flag("app-health-check-path", Some(h.path.clone()));
        flag(
            "app-health-probe-interval",
            Some(h.probe_interval_seconds.to_string()),
        );
        flag(
            "app-health-probe-timeout",
            Some(h.probe_timeout_millis.to_string()),
        );
        flag("app-health-threshold", Some(h.threshold.to_string()));
    }
    args
}

fn sidecar_container(cfg: &InjectorConfig, sc: &SidecarConfig, token_volume: bool) -> Container {
    let downward = |name: &str, path: &str| {
        env_from(
            name,
            EnvVarSource {
                field_ref: Some(field(path)),
                ..Default::default()
            },
        )
    };
    // The pod's own facts come from the downward API, never from the admission request: a
    // ReplicaSet's pods have no name yet, and a manifest injected offline is applied wherever
    // `kubectl apply -n` says.
    let mut env_vars = vec![
        downward("NAMESPACE", "metadata.namespace"),
        downward("POD_NAME", "metadata.name"),
        downward("POD_IP", "status.podIP"),
        env(
            "DAPR_CONTROLPLANE_NAMESPACE",
            cfg.control_plane_namespace.clone(),
        ),
        env("DAPR_CONTROLPLANE_TRUST_DOMAIN", cfg.trust_domain.clone()),
    ];
    env_vars.extend(sc.env.iter().map(|(k, v)| env(k, v.clone())));
    env_vars.extend(
        sc.env_from_secret
            .iter()
            .map(|e| secret_env(&e.name, &e.secret, &e.key)),
    );
    let user_keys: Vec<&str> = sc
        .env
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(sc.env_from_secret.iter().map(|e| e.name.as_str()))
        .collect();
    if !user_keys.is_empty() {
        env_vars.push(env("DAPR_ENV_KEYS", user_keys.join(" ")));
    }
    if let Some(secret) = &sc.api_token_secret {
        env_vars.push(secret_env("DAPR_API_TOKEN", secret, "token"));
    }
    if let Some(secret) = &sc.app_token_secret {
        env_vars.push(secret_env("APP_API_TOKEN", secret, "token"));
    }

    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut mounts: Vec<VolumeMount> = sc
        .volume_mounts
        .iter()
        .map(|m| (m, true))
        .chain(sc.volume_mounts_rw.iter().map(|m| (m, false)))
        .map(|(m, read_only)| VolumeMount {
            name: m.volume.clone(),
            mount_path: m.path.clone(),
            read_only: Some(read_only),
            ..Default::default()
        })
        .collect();
    if token_volume {
        mounts.push(VolumeMount {
            name: KUBE_API_ACCESS_VOLUME.into(),
            mount_path: KUBE_API_ACCESS_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let mut args = sidecar_args(sc);
    if let Some(m) = &cfg.mtls {
        args.extend(mtls_args(cfg, m));
        for (name, dir) in [
            (SENTRY_TOKEN_VOLUME, SENTRY_TOKEN_DIR),
            (TRUST_BUNDLE_VOLUME, TRUST_BUNDLE_DIR),
        ] {
            mounts.push(VolumeMount {
                name: name.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    let quantities = |pairs: [(&str, &Option<String>); 2]| {
        let map: BTreeMap<String, Quantity> = pairs
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), Quantity(v.clone()))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    let r = &sc.resources;
    let requests = quantities([("cpu", &r.cpu_request), ("memory", &r.memory_request)]);
    let limits = quantities([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]);
    let resources = (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    });
    let public = IntOrString::Int(i32::from(ports::PUBLIC));

    Container {
        name: SIDECAR_CONTAINER_NAME.into(),
        image: Some(
            sc.image
                .clone()
                .unwrap_or_else(|| cfg.sidecar_image.clone()),
        ),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        command: Some(vec![FERRYD_PATH.into()]),
        args: Some(args),
        env: Some(env_vars),
        ports: Some(vec![
            port("dapr-http", ports::HTTP_API),
            port("dapr-grpc", ports::GRPC_API),
            port("dapr-internal", ports::INTERNAL),
            port("dapr-metrics", sc.metrics_port),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/v1.0/healthz".into()),
                port: public.clone(),
                ..Default::default()
            }),
            initial_delay_seconds: Some(sc.readiness.initial_delay_seconds),
            timeout_seconds: Some(sc.readiness.timeout_seconds),
            period_seconds: Some(sc.readiness.period_seconds),
            failure_threshold: Some(sc.readiness.failure_threshold),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: public,
                host: None,
            }),
            initial_delay_seconds: Some(sc.liveness.initial_delay_seconds),
            timeout_seconds: Some(sc.liveness.timeout_seconds),
            period_seconds: Some(sc.liveness.period_seconds),
            failure_threshold: Some(sc.liveness.failure_threshold),
            ..Default::default()
        }),
        resources,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: sc.seccomp_profile_type.as_str().into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        restart_policy: sc.native_sidecar.then(|| "Always".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization() {
        let cfg = InjectorConfig {
            allowed_service_accounts: vec!["proj-*:sa-*".into(), "staging-?:deploy".into()],
            ..Default::default()
        };
        let sa = |ns: &str, name: &str| UserInfo {
            username: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![],
        };
        let cases = [
            (sa("proj-alpha", "sa-runner"), true),
            (sa("staging-A", "deploy"), true),
            (sa("kube-system", "replicaset-controller"), true),
            (sa("kube-system", "job-controller"), true),
            (sa("mirrord", "mirrord-operator"), true),
            (sa("proj-alpha", "builder"), false),
            (sa("other", "sa-runner"), false),
            (sa("staging-AB", "deploy"), false),
            (sa("kube-system", "default"), false),
            (
                UserInfo {
                    username: "alice".into(),
                    groups: vec![],
                },
                false,
            ),
            (
                UserInfo {
                    username: "alice".into(),
                    groups: vec!["system:masters".into()],
                },
                true,
            ),
            (
                UserInfo {
                    username: "system:serviceaccount:broken".into(),
                    groups: vec![],
                },
                false,
            ),
        ];
        for (user, want) in cases {
            assert_eq!(is_authorized(&user, &cfg), want, "{user:?}");
        }
        // Without configured patterns the built-in list still applies.
        assert!(is_authorized(
            &sa("kube-system", "deployment-controller"),
            &InjectorConfig::default()
        ));
        assert!(!is_authorized(
            &sa("proj-alpha", "sa-runner"),
            &InjectorConfig::default()
        ));
    }

    #[test]
    fn skip_reasons_have_distinct_names() {
        let all = [
            SkipReason::NotAPod,
            SkipReason::NotCreate,
            SkipReason::NotEnabled,
            SkipReason::UnauthorizedServiceAccount,
            SkipReason::HostNetwork,
            SkipReason::AlreadyInjected,
        ];
        let mut names: Vec<&str> = all.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn warnings_are_clipped_and_what_does_not_fit_is_counted() {
        let long = "é".repeat(200); // 400 bytes
        let clipped = clip(&long, 256);
        assert!(clipped.len() <= 256 && clipped.ends_with('…'), "{clipped}");
        assert_eq!(clip("short", 256), "short");

        let warnings: Vec<String> = (0..10)
            .map(|i| format!("warning {i:02} {}", "x".repeat(89)))
            .collect();
        // 100 bytes each; 256 of the budget are kept for the last line.
        let shown = fit_warnings(&warnings, 756, "more");
        assert_eq!(shown.len(), 6, "{shown:?}");
        assert_eq!(shown[..5], warnings[..5]);
        assert_eq!(shown[5], "and 5 more");
        assert_eq!(
            fit_warnings(&warnings, 1000, "more"),
            warnings,
            "all fit exactly"
        );
        assert_eq!(fit_warnings(&[], 10, "more"), Vec::<String>::new());
        assert_eq!(
            fit_warnings(&[long], 10_000, "more"),
            [clipped],
            "each one within 256 bytes"
        );
    }

    #[test]
    fn patch_paths_escape_label_keys() {
        assert_eq!(
            path(["metadata", "labels", "dapr.io/app-id"]).as_str(),
            "/metadata/labels/dapr.io~1app-id"
        );
    }
}
