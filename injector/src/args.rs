//! Command-line flags. Every flag can also be set through its `FERRY_INJECTOR_*` environment
//! variable.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::{
    bootstrap::SecretRef,
    certs::Sans,
    inject::{DEFAULT_SIDECAR_IMAGE, InjectorConfig, MtlsConfig},
    tls::CertFiles,
};

pub use ferry_api::LogLevel;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferry-injector",
    version,
    about = "Mutating admission webhook: adds the ferryd sidecar to pods annotated dapr.io/enabled.",
    long_about = "Mutating admission webhook: adds the ferryd sidecar to pods annotated \
                  dapr.io/enabled.\n\n\
                  Certificates: with --tls-cert-file and --tls-key-file it serves those files and \
                  reloads them when they change (cert-manager, or your own). Without them it \
                  bootstraps its own CA and serving certificate into the Secret --tls-secret-name \
                  and puts the CA into the caBundle of --webhook-config-name. The kubeconfig follows \
                  the usual rules: in a pod the service account, otherwise $KUBECONFIG or \
                  ~/.kube/config."
)]
pub struct Args {
    /// Where the webhook (HTTPS, POST /mutate) listens.
    #[arg(long, env = "FERRY_INJECTOR_LISTEN", default_value = "0.0.0.0:4000")]
    pub listen: SocketAddr,

    /// Where /livez, /readyz and /metrics (plain HTTP) listen.
    #[arg(
        long,
        env = "FERRY_INJECTOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,

    /// The serving certificate (PEM, leaf first). With --tls-key-file: files mode.
    #[arg(long, env = "FERRY_INJECTOR_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The serving certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "FERRY_INJECTOR_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Files mode: the CA bundle (PEM) to put into the webhook configuration's caBundle. Without
    /// it the caBundle is someone else's job (cert-manager's CA injector, your manifests).
    #[arg(long, env = "FERRY_INJECTOR_TLS_CA_FILE", requires = "tls_cert_file")]
    pub tls_ca_file: Option<PathBuf>,

    /// Files mode: how often the certificate files are checked for changes, in milliseconds.
    #[arg(long, env = "FERRY_INJECTOR_TLS_RELOAD_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub tls_reload_interval_ms: u64,

    /// Bootstrap mode: the Secret (in --namespace) that holds the CA and serving certificate.
    #[arg(
        long,
        env = "FERRY_INJECTOR_TLS_SECRET_NAME",
        default_value = "ferry-injector-tls"
    )]
    pub tls_secret_name: String,

    /// Bootstrap mode: how often the Secret is re-checked (renewal 30 days before expiry, and
    /// certificates written by another replica), in seconds.
    #[arg(long, env = "FERRY_INJECTOR_TLS_SECRET_RESYNC_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub tls_secret_resync_seconds: u64,

    /// The namespace the injector runs in [default: $POD_NAMESPACE, else ferry-system].
    #[arg(long, env = "FERRY_INJECTOR_NAMESPACE")]
    pub namespace: Option<String>,

    /// The Service in front of the injector: its DNS names go into the bootstrap certificate.
    #[arg(
        long,
        env = "FERRY_INJECTOR_SERVICE_NAME",
        default_value = "ferry-injector"
    )]
    pub service_name: String,

    /// Extra IP addresses for the bootstrap certificate, comma-separated.
    #[arg(long, env = "FERRY_INJECTOR_IP_SANS", value_delimiter = ',')]
    pub ip_sans: Vec<IpAddr>,

    /// The MutatingWebhookConfiguration whose webhooks get the CA as caBundle (bootstrap mode,
    /// or files mode with --tls-ca-file). Empty: never touch it.
    #[arg(
        long,
        env = "FERRY_INJECTOR_WEBHOOK_CONFIG_NAME",
        default_value = "ferry-injector"
    )]
    pub webhook_config_name: String,

    /// The image of the injected sidecar (dapr.io/sidecar-image overrides it per pod).
    #[arg(long, env = "FERRY_INJECTOR_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// imagePullPolicy of the injected sidecar.
    #[arg(long, env = "FERRY_INJECTOR_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// The control plane's namespace, given to sidecars as DAPR_CONTROLPLANE_NAMESPACE
    /// [default: the injector's namespace].
    #[arg(long, env = "FERRY_INJECTOR_CONTROL_PLANE_NAMESPACE")]
    pub control_plane_namespace: Option<String>,

    /// The trust domain, given to sidecars as DAPR_CONTROLPLANE_TRUST_DOMAIN.
    #[arg(
        long,
        env = "FERRY_INJECTOR_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,

    /// Turn on mTLS between the sidecars it injects: each gets --enable-mtls, the CA's address,
    /// a projected token for the CA and the namespace's trust bundle (ConfigMap
    /// dapr-trust-bundle, which the operator's CA publishes). The chart sets it (mtls.enabled).
    #[arg(long, env = "FERRY_INJECTOR_MTLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub mtls: bool,

    /// The CA sidecars ask for certificates, `host:port` [default:
    /// ferry-ca.<control-plane-namespace>.svc:443].
    #[arg(long, env = "FERRY_INJECTOR_SENTRY_ADDRESS", requires = "mtls")]
    pub sentry_address: Option<String>,

    /// More service accounts whose pods get a sidecar, as `namespace:name` globs
    /// (comma-separated), in addition to Dapr's built-in list of controllers.
    #[arg(long, env = "FERRY_INJECTOR_ALLOWED_SERVICE_ACCOUNTS", value_delimiter = ',',
          value_parser = parse_service_account_glob)]
    pub allowed_service_accounts: Vec<String>,

    /// Seconds open requests get to finish on SIGTERM.
    #[arg(
        long,
        env = "FERRY_INJECTOR_GRACEFUL_SHUTDOWN_SECONDS",
        default_value_t = 10
    )]
    pub graceful_shutdown_seconds: u64,

    #[arg(
        long,
        env = "FERRY_INJECTOR_LOG_LEVEL",
        value_enum,
        default_value = "info"
    )]
    pub log_level: LogLevel,

    /// Write logs as JSON lines.
    #[arg(long, env = "FERRY_INJECTOR_LOG_AS_JSON")]
    pub log_as_json: bool,
}

fn parse_service_account_glob(s: &str) -> Result<String, String> {
    match s.trim().split_once(':') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(s.trim().to_owned()),
        _ => Err(format!(
            "{s:?} is not namespace:name (globs allowed, e.g. ci-*:deployer)"
        )),
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    Files(CertFiles),
    Bootstrap { secret: SecretRef, sans: Sans },
}

impl Args {
    pub fn namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "ferry-system".into())
    }

    pub fn injector_config(&self) -> InjectorConfig {
        InjectorConfig {
            sidecar_image: self.sidecar_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            control_plane_namespace: self
                .control_plane_namespace
                .clone()
                .unwrap_or_else(|| self.namespace()),
            trust_domain: self.trust_domain.clone(),
            allowed_service_accounts: self.allowed_service_accounts.clone(),
            mtls: self.mtls.then(|| MtlsConfig {
                sentry_address: self.sentry_address.clone().unwrap_or_else(|| {
                    format!(
                        "ferry-ca.{}.svc:443",
                        self.control_plane_namespace
                            .clone()
                            .unwrap_or_else(|| self.namespace())
                    )
                }),
            }),
        }
    }

    pub fn cert_source(&self) -> CertSource {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => CertSource::Files(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: self.tls_ca_file.clone(),
            }),
            _ => CertSource::Bootstrap {
                secret: SecretRef {
                    namespace: self.namespace(),
                    name: self.tls_secret_name.clone(),
                },
                sans: Sans::for_service(
                    &self.service_name,
                    &self.namespace(),
                    self.ip_sans.clone(),
                ),
            },
        }
    }

    /// Whether the injector keeps a caBundle in place (and so needs the API).
    pub fn manages_ca_bundle(&self) -> bool {
        !self.webhook_config_name.is_empty()
            && match self.cert_source() {
                CertSource::Files(f) => f.ca.is_some(),
                CertSource::Bootstrap { .. } => true,
            }
    }

    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.tls_reload_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_sound() {
        Args::command().debug_assert();
    }

    #[test]
    fn modes() {
        let a = Args::try_parse_from(["ferry-injector", "--namespace", "mesh"]).unwrap();
        assert!(a.manages_ca_bundle());
        match a.cert_source() {
            CertSource::Bootstrap { secret, sans } => {
                assert_eq!(secret.namespace, "mesh");
                assert!(sans.dns.contains(&"ferry-injector.mesh.svc".to_owned()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.injector_config().control_plane_namespace, "mesh");
        let f = Args::try_parse_from([
            "ferry-injector",
            "--tls-cert-file",
            "c.pem",
            "--tls-key-file",
            "k.pem",
        ])
        .unwrap();
        assert!(matches!(f.cert_source(), CertSource::Files(_)));
        assert!(
            !f.manages_ca_bundle(),
            "no CA file: the caBundle is not ours"
        );
        let e = Args::try_parse_from(["ferry-injector", "--tls-cert-file", "c.pem"]).unwrap_err();
        assert!(e.to_string().contains("--tls-key-file"), "{e}");
        let e = Args::try_parse_from(["ferry-injector", "--allowed-service-accounts", "nocolon"])
            .unwrap_err();
        assert!(e.to_string().contains("namespace:name"), "{e}");
        let e = Args::try_parse_from(["ferry-injector", "--ip-sans", "not-an-ip"]).unwrap_err();
        assert!(e.to_string().contains("--ip-sans"), "{e}");
    }
}
