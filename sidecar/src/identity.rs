//! The sidecar's identity at run time: it gets its SVID (from the CA at `--sentry-address`, or
//! standalone from the local CA), renews it at 70 % of its life without touching a connection,
//! follows the trust anchors' file, and tells readiness and `/v1.0/metadata` how it stands.
//!
//! While the CA is away, a sidecar keeps serving with the certificate it has and retries; it is
//! not Ready only when it has no valid certificate, and says why.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use ferry_api::{AppId, Namespace, SpiffeId, TrustDomain};
use ferry_identity::{
    Authority, Credentials, PendingKey, Svid, TrustBundle,
    sentry::{Proof, SentryClient, SentryError, TokenValidator},
};

use crate::{
    config::{AnchorSource, CaSource, MtlsSettings},
    metrics::Metrics,
};

/// Retries after a failed request: from 1 s, doubling, up to 30 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the trust anchors' file is read for changes (a rotation).
const ANCHORS_EVERY: Duration = Duration::from_secs(1);

enum Source {
    Local(Box<Authority>),
    Sentry {
        client: SentryClient,
        token_file: Option<PathBuf>,
    },
}

pub struct Identity {
    app_id: AppId,
    namespace: Namespace,
    credentials: Arc<Credentials>,
    source: Source,
    anchors: Option<AnchorSource>,
    /// Why the last request failed, while no valid certificate is held.
    last_error: Mutex<Option<String>>,
    renewals: AtomicU64,
    failures: AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("app_id", &self.app_id)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// What `/v1.0/metadata` and the metrics show.
#[derive(Debug, Clone)]
pub struct Status {
    pub spiffe_id: Option<SpiffeId>,
    pub expiry: Option<SystemTime>,
    pub renewals: u64,
    pub failures: u64,
}

impl Identity {
    /// Loads the trust anchors and opens the CA; the first certificate comes from [`Self::run`].
    pub fn new(
        settings: &MtlsSettings,
        app_id: &AppId,
        namespace: &Namespace,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Self>, String> {
        let (source, bundle) = match &settings.ca {
            CaSource::Local { dir, ttl } => {
                let authority = ferry_identity::local::open_or_create(
                    dir,
                    TrustDomain::default().as_str(),
                    *ttl,
                )
                .map_err(|e| e.to_string())?;
                let bundle = TrustBundle::from_pem(authority.trust_anchors_pem())
                    .map_err(|e| e.to_string())?;
                (Source::Local(Box::new(authority)), bundle)
            }
            CaSource::Sentry {
                address,
                sentry,
                token_file,
            } => {
                let pem = settings
                    .anchors
                    .as_ref()
                    .ok_or("mTLS with --sentry-address needs trust anchors")?
                    .read()?;
                let bundle = TrustBundle::from_pem(&pem).map_err(|e| e.to_string())?;
                let credentials = Credentials::new(bundle.clone());
                let client = SentryClient::new(address.clone(), sentry.clone(), credentials);
                (
                    Source::Sentry {
                        client,
                        token_file: token_file.clone(),
                    },
                    bundle,
                )
            }
        };
        Ok(Arc::new(Self {
            app_id: app_id.clone(),
            namespace: namespace.clone(),
            credentials: Credentials::new(bundle),
            source,
            anchors: settings.anchors.clone(),
            last_error: Mutex::new(None),
            renewals: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            metrics,
        }))
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// Ok when the sidecar holds a certificate valid now; else why not.
    pub fn check(&self) -> Result<(), String> {
        match self.credentials.svid() {
            Some(svid) if svid.not_after > SystemTime::now() => Ok(()),
            held => {
                let why = self
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let what = if held.is_some() {
                    "the workload certificate has expired"
                } else {
                    "no workload certificate yet"
                };
                Err(match why {
                    Some(why) => format!("{what}: {why}"),
                    None => what.to_owned(),
                })
            }
        }
    }

    pub fn status(&self) -> Status {
        let svid = self.credentials.svid();
        Status {
            spiffe_id: svid.as_ref().map(|s| s.id.clone()),
            expiry: svid.as_ref().map(|s| s.not_after),
            renewals: self.renewals.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// A certificate, or why not with the reason class the metrics count.
    async fn request(&self) -> Result<Svid, (&'static str, String)> {
        match &self.source {
            Source::Local(authority) => {
                let asked = SpiffeId::new(
                    TrustDomain::default(),
                    self.namespace.clone(),
                    self.app_id.clone(),
                );
                let key = PendingKey::generate(&asked).map_err(|e| ("sign", e.to_string()))?;
                let signed = authority
                    .sign(key.csr_pem().as_bytes(), &asked)
                    .map_err(|e| ("sign", e.to_string()))?;
                key.complete(&signed.chain_pem, &asked, &self.credentials.bundle())
                    .map_err(|e| ("invalid_cert", e.to_string()))
            }
            Source::Sentry { client, token_file } => {
                let proof = match token_file {
                    Some(path) => Proof {
                        token: std::fs::read_to_string(path)
                            .map_err(|e| {
                                let why = format!(
                                    "cannot read the token for the CA at {}: {e}",
                                    path.display()
                                );
                                ("sentry_token", why)
                            })?
                            .trim()
                            .to_owned(),
                        validator: TokenValidator::Kubernetes,
                    },
                    // Dapr's self-hosted Sentry takes requests without a token.
                    None => Proof {
                        token: String::new(),
                        validator: TokenValidator::Insecure,
                    },
                };
                client
                    .request(&self.app_id, &self.namespace, &proof)
                    .await
                    .map_err(|e| {
                        let reason = match e {
                            SentryError::Connect { .. } => "sentry_conn",
                            SentryError::Refused { .. } => "sign",
                            SentryError::Answer(_) => "invalid_cert",
                        };
                        (reason, e.to_string())
                    })
            }
        }
    }

    /// Gets a certificate now, once: Ok when one is held afterwards.
    pub async fn obtain(&self) -> Result<(), String> {
        match self.request().await {
            Ok(svid) => {
                let first = self.credentials.svid().is_none();
                tracing::info!(
                    spiffe_id = %svid.id,
                    expiry = %humantime(svid.not_after),
                    "{}",
                    if first { "got the workload certificate" } else { "renewed the workload certificate" }
                );
                if let Some(m) = &self.metrics {
                    m.cert_rotated(svid.not_after);
                }
                self.credentials.set_svid(svid);
                if !first {
                    self.renewals.fetch_add(1, Ordering::Relaxed);
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(())
            }
            Err((reason, e)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.cert_rotation_failed(reason);
                }
                tracing::warn!(error = %e, "cannot get a workload certificate; retrying");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Renews before expiry and follows the trust anchors, until dropped.
    pub async fn run(self: Arc<Self>) {
        let anchors = self.clone();
        let follow = async move { anchors.follow_anchors().await };
        let renew = async move {
            let mut retry = RETRY_FIRST;
            loop {
                let wait = match self.credentials.svid() {
                    Some(svid) => svid
                        .renew_at()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default(),
                    None => Duration::ZERO,
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                if self.obtain().await.is_ok() {
                    retry = RETRY_FIRST;
                } else {
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        };
        tokio::join!(follow, renew);
    }

    async fn follow_anchors(&self) {
        let Some(AnchorSource::File(path)) = &self.anchors else {
            return std::future::pending().await;
        };
        let mut current = self.credentials.bundle().pem().to_owned();
        loop {
            tokio::time::sleep(ANCHORS_EVERY).await;
            let Ok(text) = tokio::fs::read_to_string(path).await else {
                continue;
            };
            let text = text.trim_end().to_owned() + "\n";
            if text == current {
                continue;
            }
            match TrustBundle::from_pem(&text) {
                Ok(bundle) => {
                    tracing::info!(path = %path.display(), roots = bundle.len(), "the trust anchors changed");
                    self.credentials.set_bundle(bundle.clone());
                    if let Source::Sentry { client, .. } = &self.source {
                        client.credentials().set_bundle(bundle);
                    }
                    current = text;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable trust anchors; keeping the current ones");
                    current = text;
                }
            }
        }
    }
}

/// RFC 3339, UTC, whole seconds.
pub fn humantime(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(humantime(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_601_600 + 3_723);
        assert_eq!(humantime(t), "2026-12-07T01:02:03Z");
    }
}
