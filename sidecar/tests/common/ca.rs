//! Ferry's CA on Sentry's contract, served in the test process (the signing core and
//! `SentryService` the operator hosts, with a validator that takes every request, as Dapr's
//! self-hosted Sentry does): tests start it, stop it, restart it on the same address and switch
//! its issuer.
#![allow(dead_code)]

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use ferry_api::{Namespace, TrustDomain};
use ferry_identity::{
    Authority, CaMaterial,
    sentry::{
        self, Refusal, SentryService, SignCertificateRequest, TokenValidator, Validated, Validator,
    },
    tls::{self, ServingCert},
};
use tokio::net::TcpListener;

pub struct Insecure(pub Arc<AtomicU64>);

impl Validator for Insecure {
    fn kind(&self) -> TokenValidator {
        TokenValidator::Insecure
    }
    async fn validate(&self, _req: &SignCertificateRequest) -> Result<Validated, Refusal> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(Validated {
            trust_domain: TrustDomain::default(),
        })
    }
}

pub fn sentry_id() -> ferry_api::SpiffeId {
    sentry::sentry_id(
        &TrustDomain::new("cluster.local").unwrap(),
        &Namespace::new("ferry-system").unwrap(),
    )
}

/// The CA's own serving certificate, from `material`'s issuer: it lives an hour whatever the
/// workload certificates' life (renewing it is the CA host's business, not these tests').
pub fn serving(
    material: &CaMaterial,
    anchors: &str,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    Authority::new(
        &material.issuer_cert,
        &material.issuer_key,
        anchors,
        Duration::from_secs(3600),
    )
    .unwrap()
    .serving_certificate(&sentry_id(), &[])
    .unwrap()
}

/// Ferry's CA on a port of its own, stoppable and restartable on the same address.
pub struct Ca {
    pub authority: Arc<ArcSwap<Authority>>,
    pub serving: Arc<ServingCert>,
    pub addr: std::net::SocketAddr,
    pub signed: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Ca {
    pub async fn start(material: &CaMaterial, ttl: Duration) -> Self {
        let authority = Authority::from_material(material, ttl).unwrap();
        let (chain, key) = serving(material, &material.root_cert);
        let mut ca = Self {
            authority: Arc::new(ArcSwap::from_pointee(authority)),
            serving: ServingCert::new(chain, &key).unwrap(),
            addr: "127.0.0.1:0".parse().unwrap(),
            signed: Arc::default(),
            stop: None,
        };
        ca.serve().await;
        ca
    }

    pub async fn serve(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let service = SentryService::new(self.authority.clone(), Insecure(self.signed.clone()));
        let config = tls::serving_config(&self.serving);
        tokio::spawn(sentry::serve(listener, config, service, async {
            let _ = rx.await;
        }));
        self.stop = Some(tx);
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Signs with `material`'s issuer from now on, handing out `anchors`.
    pub fn switch_issuer(&self, material: &CaMaterial, anchors: &str, ttl: Duration) {
        let next =
            Authority::new(&material.issuer_cert, &material.issuer_key, anchors, ttl).unwrap();
        let (chain, key) = serving(material, anchors);
        self.serving.set(chain, &key).unwrap();
        self.authority.store(Arc::new(next));
    }

    pub fn args(&self, anchors: &Path) -> Vec<String> {
        [
            "--enable-mtls",
            "--sentry-address",
            &self.addr.to_string(),
            "--control-plane-namespace",
            "ferry-system",
            "--control-plane-trust-domain",
            "cluster.local",
            "--trust-anchors-file",
            anchors.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }
}
