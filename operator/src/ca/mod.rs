//! Ferry's CA, in the operator: Dapr Sentry's `dapr.proto.sentry.v1.CA/SignCertificate` over
//! TLS, so ferryd and daprd sidecars alike get their SPIFFE certificates from it.
//!
//! Every replica serves (`--ca`), leader or not: signing needs only the Secret's material and
//! the API server (TokenReview, the pod), so a rollout or a lost Lease never stops issuance and
//! the Service spreads requests over replicas. The signing core is `ferry_identity::ca`, apart
//! from this transport (Pod Certificates can be served by it later).
//!
//! - [`material`]: the roots and issuer from one Secret (generated on first start when allowed).
//! - [`validator`]: who a request comes from (TokenReview, the pod, the app-ID binding).
//! - [`bundle`]: the trust anchors published to every namespace.
//!
//! The Secret is read again every [`RELOAD`]: a changed issuer signs from then on, changed roots
//! are handed out and published. Root rotation is the user's three steps (README): add the new
//! root to `ca.crt`, switch the issuer, remove the old root.

pub mod bundle;
pub mod material;
pub mod validator;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use ferry_api::{Namespace, SpiffeId, TrustDomain};
use ferry_identity::{
    ca::Authority,
    sentry::{self, Outcome, SentryService},
    tls::{ServingCert, serving_config},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{admin::Health, metrics::Metrics};

/// How often the Secret is read again and the trust bundle checked in every namespace.
pub const RELOAD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The operator's namespace: the Secret's, and the CA's SPIFFE ID's.
    pub namespace: Namespace,
    pub secret: String,
    pub generate: bool,
    /// The control plane's trust domain (the CA's SPIFFE ID's).
    pub trust_domain: TrustDomain,
    pub workload_ttl: Duration,
    /// The Service in front of the CA, named in its serving certificate.
    pub service: String,
}

impl Settings {
    /// `spiffe://<trust-domain>/ns/<namespace>/dapr-sentry`: what sidecars check the CA's
    /// certificate against, and the audience of their tokens.
    pub fn sentry_id(&self) -> SpiffeId {
        sentry::sentry_id(&self.trust_domain, &self.namespace)
    }

    fn dns_names(&self) -> Vec<String> {
        let (s, ns) = (&self.service, self.namespace.as_str());
        vec![
            s.clone(),
            format!("{s}.{ns}"),
            format!("{s}.{ns}.svc"),
            format!("{s}.{ns}.svc.cluster.local"),
        ]
    }
}

/// Binds the CA's port, so that a taken port fails start-up.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the CA (--ca-addr)"))
}

/// Serves until `shutdown` turns true. Not ready (and not listening for requests yet) until
/// the Secret yields usable material.
pub async fn run(
    client: Client,
    settings: Settings,
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let secrets = Api::<Secret>::namespaced(client.clone(), settings.namespace.as_str());
    let full = format!("{}/{}", settings.namespace, settings.secret);
    let mut backoff = Duration::from_secs(1);
    let (authority, mut version) = loop {
        let loaded = material::load_or_create(
            &secrets,
            settings.namespace.as_str(),
            &settings.secret,
            settings.trust_domain.as_str(),
            settings.generate,
        )
        .await
        .map_err(anyhow::Error::from)
        .and_then(|(m, rv)| Ok((authority_of(&m, &settings)?, rv)));
        match loaded {
            Ok(ok) => break ok,
            Err(e) => {
                warn!("the CA cannot sign yet: {e:#}; trying again in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut shutdown) => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    metrics.ca.issuer_loaded(&authority);
    let sentry_id = settings.sentry_id();
    let (chain, key) = authority
        .serving_certificate(&sentry_id, &settings.dns_names())
        .context("cannot issue the CA's serving certificate")?;
    let serving = ServingCert::new(chain, &key).context("the CA's serving certificate")?;
    let mut serving_issued = Instant::now();
    let authority = Arc::new(ArcSwap::from_pointee(authority));

    let record = {
        let m = metrics.clone();
        Arc::new(move |o: Outcome| m.ca.outcome(o))
    };
    let service = SentryService::new(
        authority.clone(),
        validator::KubernetesValidator::new(client.clone(), sentry_id.uri()),
    )
    .with_metrics(record);
    info!(addr = %settings.listen, id = %sentry_id, secret = %full, "the CA is serving");
    health.set_ca_ready(true);
    let mut stop = shutdown.clone();
    let serve = sentry::serve(listener, serving_config(&serving), service, async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    tokio::pin!(serve);

    let mut tick = tokio::time::interval(RELOAD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: Option<String> = None;
    let mut reissue = false;
    loop {
        tokio::select! {
            served = &mut serve => {
                health.set_ca_ready(false);
                return served.context("the CA's server failed");
            }
            () = stopped(&mut shutdown) => {
                health.set_ca_ready(false);
                // Let in-flight requests finish.
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut serve).await;
                return Ok(());
            }
            _ = tick.tick() => {}
        }
        // 1. The Secret changed: sign with what it says now.
        match secrets.get(&settings.secret).await {
            Ok(s) if s.metadata.resource_version != version => {
                let next = material::from_secret(&full, &s)
                    .map_err(anyhow::Error::from)
                    .and_then(|m| authority_of(&m, &settings));
                match next {
                    Ok(a) => {
                        info!(secret = %full, "the CA's Secret changed: signing with it from now on");
                        metrics.ca.issuer_changed.inc();
                        metrics.ca.issuer_loaded(&a);
                        authority.store(Arc::new(a));
                        reissue = true;
                    }
                    Err(e) => warn!(
                        "the CA's Secret changed but cannot be used: {e:#}; still signing with the previous material"
                    ),
                }
                version = s.metadata.resource_version;
            }
            Ok(_) => {}
            Err(e) => warn!(secret = %full, "cannot read the CA's Secret: {e}"),
        }
        // 2. The serving certificate, at half its life or after an issuer change.
        if reissue || serving_issued.elapsed() >= settings.workload_ttl / 2 {
            match authority
                .load()
                .serving_certificate(&sentry_id, &settings.dns_names())
                .map_err(anyhow::Error::from)
                .and_then(|(chain, key)| serving.set(chain, &key).map_err(anyhow::Error::from))
            {
                Ok(()) => {
                    serving_issued = Instant::now();
                    reissue = false;
                }
                Err(e) => {
                    metrics.ca.server_cert_failed.inc();
                    warn!("cannot renew the CA's serving certificate: {e:#}");
                }
            }
        }
        // 3. The trust bundle in every namespace.
        let pem = authority.load().trust_anchors_pem().to_owned();
        match bundle::publish(&client, &pem).await {
            Ok(n) => {
                if n > 0 || published.as_deref() != Some(pem.as_str()) {
                    info!(written = n, "trust bundle {} published", bundle::CONFIG_MAP);
                }
                published = Some(pem);
            }
            Err(e) => {
                metrics.ca.bundle_errors.inc();
                warn!(
                    "cannot publish the trust bundle {}: {e}",
                    bundle::CONFIG_MAP
                );
            }
        }
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn authority_of(m: &material::Material, settings: &Settings) -> anyhow::Result<Authority> {
    Authority::new(
        &m.issuer_cert,
        &m.issuer_key,
        &m.roots,
        settings.workload_ttl,
    )
    .with_context(|| {
        format!(
            "Secret {}/{} holds no usable issuer and roots",
            settings.namespace, settings.secret
        )
    })
}

/// Seconds since the epoch, for the expiry gauge.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
