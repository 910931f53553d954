//! The serving certificate: parsed from PEM, swapped atomically, reloaded from files.
//!
//! Handshakes read the current certificate through [`CertStore`]'s resolver, so a reload needs
//! no restart and no lock: the new key is visible to the next handshake, connections already
//! open keep theirs. A reload that fails (a half-written file, a key that does not match its
//! certificate) keeps the certificate being served.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwapOption;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, ServerConfig},
    sign::CertifiedKey,
};
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in the PEM data")]
    NoCertificate,
    #[error("certificate PEM is invalid: {0}")]
    CertPem(String),
    #[error("private key PEM is invalid (PKCS#8, PKCS#1 or SEC1 expected): {0}")]
    KeyPem(String),
    #[error("the private key cannot sign: {0}")]
    Key(#[source] rustls::Error),
    #[error("the private key does not belong to the certificate: {0}")]
    Mismatch(#[source] rustls::Error),
    #[error("the certificate cannot be read: {0}")]
    X509(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM text of a serving certificate, its key and (optionally) the CA that signed it.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsMaterial")
            .field("cert_pem_len", &self.cert_pem.len())
            .field("ca_pem", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// The crypto provider, chosen explicitly (ring), never from process-wide defaults.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses `material` into a key rustls can serve, checking that key and certificate match.
/// Returns it with the leaf's expiry (Unix seconds).
pub fn certified_key(
    provider: &CryptoProvider,
    material: &TlsMaterial,
) -> Result<(CertifiedKey, i64), TlsError> {
    let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertPem(e.to_string()))?;
    let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
    let not_after = crate::certs::not_after(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
        .map_err(|e| TlsError::KeyPem(e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::Key)?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(TlsError::Mismatch)?;
    Ok((ck, not_after))
}

/// The certificate being served, and who is waiting for it to change.
pub struct CertStore {
    provider: Arc<CryptoProvider>,
    current: ArcSwapOption<CertifiedKey>,
    material: watch::Sender<Option<TlsMaterial>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("loaded", &self.current.load().is_some())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            provider: provider(),
            current: ArcSwapOption::empty(),
            material: watch::channel(None).0,
            metrics,
        })
    }

    /// Serves `material` from the next handshake on, if it parses; otherwise keeps what is
    /// served. `source` labels the reload metric (`files`, `secret`).
    pub fn install(&self, material: TlsMaterial, source: &'static str) -> Result<(), TlsError> {
        match certified_key(&self.provider, &material) {
            Ok((ck, not_after)) => {
                self.current.store(Some(Arc::new(ck)));
                self.metrics.certificate_not_after.set(not_after);
                self.metrics.reload(source, true);
                self.material.send_replace(Some(material));
                Ok(())
            }
            Err(e) => {
                self.metrics.reload(source, false);
                Err(e)
            }
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// What is served now; changes are announced on the receiver.
    pub fn subscribe(&self) -> watch::Receiver<Option<TlsMaterial>> {
        self.material.subscribe()
    }

    /// A rustls server configuration that always presents the current certificate. ALPN offers
    /// HTTP/2 and HTTP/1.1 (the API server uses either).
    pub fn server_config(self: &Arc<Self>) -> ServerConfig {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current.load_full()
    }
}

/// Where files mode reads its certificate.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl CertFiles {
    /// Reads the files through any symlinks (a Secret volume's `..data` swap included).
    pub fn read(&self) -> Result<TlsMaterial, TlsError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TlsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        Ok(TlsMaterial {
            cert_pem: read(&self.cert)?,
            key_pem: read(&self.key)?,
            ca_pem: self.ca.as_deref().map(read).transpose()?,
        })
    }
}

/// Polls `files` every `interval` and installs what changed. Polling, rather than inotify,
/// sees every way a file can change: in place, by rename, or by a Secret volume's symlink swap.
/// A failed attempt is logged once per distinct content, and retried when the content changes.
pub async fn watch_files(store: Arc<CertStore>, files: CertFiles, interval: Duration) {
    let mut last = store.subscribe().borrow().clone();
    let mut last_failed: Option<TlsMaterial> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let read = tokio::task::spawn_blocking({
            let files = files.clone();
            move || files.read()
        })
        .await;
        let material = match read {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "certificate files not readable now; keeping the served certificate");
                continue;
            }
            Err(_) => continue,
        };
        if last.as_ref() == Some(&material) || last_failed.as_ref() == Some(&material) {
            continue;
        }
        match store.install(material.clone(), "files") {
            Ok(()) => {
                tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
                last = Some(material);
                last_failed = None;
            }
            Err(e) => {
                tracing::error!(cert = %files.cert.display(), error = %e,
                    "new certificate files are not usable; still serving the previous certificate");
                last_failed = Some(material);
            }
        }
    }
}
