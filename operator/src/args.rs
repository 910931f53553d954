//! Command-line flags. Every flag can also be set through its `FERRY_*` environment variable.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

use crate::sidecar_rbac::Names;

/// The namespace the lease lives in when neither `--lease-namespace` nor `POD_NAMESPACE` is set.
pub const DEFAULT_LEASE_NAMESPACE: &str = "ferry-system";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferry-operator",
    version,
    about = "Keeps per-app Services, HTTPEndpoint status and namespaced RoutingTables true.",
    long_about = "Keeps per-app Services, HTTPEndpoint status and namespaced RoutingTables true.\n\n\
                  The kubeconfig follows the usual rules: in a pod the service account, otherwise \
                  $KUBECONFIG or ~/.kube/config."
)]
pub struct Args {
    /// Where /livez, /readyz and /metrics are served.
    #[arg(long, env = "FERRY_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// Name of the coordination.k8s.io Lease that elects the leader.
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    pub lease_name: String,

    /// Namespace of the Lease [default: $POD_NAMESPACE, else ferry-system].
    #[arg(long, env = "FERRY_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a leader that stopped renewing keeps the Lease, in seconds.
    #[arg(long, env = "FERRY_LEASE_DURATION_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(2..=3600))]
    pub lease_duration_seconds: u32,

    /// How often the Lease is renewed (and a follower looks at it), in milliseconds.
    #[arg(long, env = "FERRY_LEASE_RENEW_MILLIS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub lease_renew_millis: u64,

    /// This process's name in the Lease [default: $POD_NAME (else the hostname), '_' and a
    /// random suffix, so that a restarted process never mistakes its predecessor's Lease for
    /// its own].
    #[arg(long, env = "FERRY_IDENTITY")]
    pub identity: Option<String>,

    /// How long an app's Service is kept after its last pod is gone, in seconds.
    #[arg(long, env = "FERRY_SERVICE_GRACE_SECONDS", default_value_t = 30)]
    pub service_grace_seconds: u64,

    /// The ClusterRole that sidecars' ServiceAccounts are bound to: read RoutingTables and
    /// EndpointSlices in every namespace (deploy/rbac/ferry-sidecar.yaml). The operator needs
    /// `bind` on it.
    #[arg(long, env = "FERRY_SIDECAR_CLUSTER_ROLE", default_value = "ferry-sidecar",
          value_parser = rbac_name)]
    pub sidecar_cluster_role: String,

    /// The ClusterRoleBinding to that role which the operator keeps, with every ServiceAccount
    /// that runs a pod labelled dapr.io/app-id. The operator owns the object of this name.
    #[arg(long, env = "FERRY_SIDECAR_BINDING_NAME", default_value = "ferry-sidecar",
          value_parser = rbac_name)]
    pub sidecar_binding_name: String,

    /// The Role and RoleBinding the operator keeps in each namespace whose HTTPEndpoints name
    /// Secrets (or inline private keys): `get` on exactly those, for the namespace's sidecars.
    /// The operator owns the objects of this name.
    #[arg(long, env = "FERRY_SIDECAR_SECRETS_ROLE", default_value = "ferry-sidecar-secrets",
          value_parser = rbac_name)]
    pub sidecar_secrets_role: String,

    /// Serve Ferry's CA (Dapr Sentry's SignCertificate) on --ca-addr, on every replica.
    #[arg(long, env = "FERRY_CA", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ca: bool,

    /// Where the CA listens (TLS, gRPC).
    #[arg(long, env = "FERRY_CA_ADDR", default_value = "0.0.0.0:50001")]
    pub ca_addr: SocketAddr,

    /// The Secret in the operator's namespace holding the CA's roots (`ca.crt`) and issuer
    /// (`issuer.crt`, `issuer.key`; or cert-manager's `tls.crt`, `tls.key`).
    #[arg(long, env = "FERRY_CA_SECRET", default_value = "dapr-trust-bundle", value_parser = rbac_name)]
    pub ca_secret: String,

    /// Generate a root and issuer into --ca-secret when it does not exist (false: wait for it,
    /// e.g. for cert-manager to write it).
    #[arg(long, env = "FERRY_CA_GENERATE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ca_generate: bool,

    /// The Service in front of the CA (named in its serving certificate).
    #[arg(long, env = "FERRY_CA_SERVICE", default_value = "ferry-ca", value_parser = rbac_name)]
    pub ca_service: String,

    /// The control plane's trust domain: the CA's SPIFFE ID is
    /// spiffe://<this>/ns/<operator namespace>/dapr-sentry.
    #[arg(
        long,
        env = "FERRY_CONTROL_PLANE_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub control_plane_trust_domain: ferry_api::TrustDomain,

    /// Lifetime of the workload certificates the CA signs (Dapr's default: 24h; e.g. 90s, 30m).
    #[arg(long, env = "FERRY_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = ferry_identity::ca::parse_ttl)]
    pub workload_cert_ttl: Duration,

    /// Log filter (tracing-subscriber EnvFilter syntax, e.g. `info,ferry_operator=debug`).
    #[arg(long, env = "FERRY_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Args {
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| non_empty_env("POD_NAMESPACE"))
            .unwrap_or_else(|| DEFAULT_LEASE_NAMESPACE.to_owned())
    }

    /// The identity to hold the Lease under; call it once (the default is random).
    pub fn identity(&self) -> String {
        if let Some(id) = &self.identity {
            return id.clone();
        }
        let base = non_empty_env("POD_NAME")
            .or_else(|| non_empty_env("HOSTNAME"))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "ferry-operator".to_owned());
        format!("{base}_{:08x}", random_u32())
    }

    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_seconds.into())
    }

    pub fn lease_renew_every(&self) -> Duration {
        Duration::from_millis(self.lease_renew_millis)
    }

    pub fn service_grace(&self) -> Duration {
        Duration::from_secs(self.service_grace_seconds)
    }

    pub fn sidecar_names(&self) -> Names {
        Names {
            cluster_role: self.sidecar_cluster_role.clone(),
            binding: self.sidecar_binding_name.clone(),
            secrets_role: self.sidecar_secrets_role.clone(),
        }
    }
}

/// A name RBAC objects may have (the API server accepts any path segment; we ask for a DNS
/// subdomain, which is what a person would write and what Helm renders).
fn rbac_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253)"
        ))
    }
}

/// Randomness from the standard library's hasher keys (seeded by the OS), mixed with the time.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let a = Args::try_parse_from(["ferry-operator"]).unwrap();
        assert_eq!(a.admin_addr.port(), 8080);
        assert_eq!(a.lease_name, "ferry-operator");
        assert_eq!(a.lease_duration(), Duration::from_secs(10));
        assert_eq!(a.lease_renew_every(), Duration::from_secs(2));
        assert_eq!(a.service_grace(), Duration::from_secs(30));
        assert_eq!(a.sidecar_names(), Names::default());
    }

    #[test]
    fn sidecar_names_are_flags() {
        let a = Args::try_parse_from([
            "ferry-operator",
            "--sidecar-cluster-role",
            "role-a",
            "--sidecar-binding-name",
            "binding.b",
            "--sidecar-secrets-role",
            "secrets-c",
        ])
        .unwrap();
        assert_eq!(
            a.sidecar_names(),
            Names {
                cluster_role: "role-a".into(),
                binding: "binding.b".into(),
                secrets_role: "secrets-c".into(),
            }
        );
        for bad in ["", "Upper", "a/b", "-x", "x..y", ".."] {
            assert!(
                Args::try_parse_from(["ferry-operator", "--sidecar-binding-name", bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn default_identities_differ_per_process() {
        let a = Args::try_parse_from(["ferry-operator"]).unwrap();
        assert_ne!(a.identity(), a.identity());
        let named = Args::try_parse_from(["ferry-operator", "--identity", "x"]).unwrap();
        assert_eq!(named.identity(), "x");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Args::try_parse_from(["ferry-operator", "--admin-addr", "nope"]).is_err());
        assert!(Args::try_parse_from(["ferry-operator", "--lease-duration-seconds", "1"]).is_err());
    }
}
