//! Trust anchors: the roots a sidecar accepts peers' certificates from. A bundle holds one root
//! normally and two during a rotation; it is swapped whole when its file changes.

use std::sync::Arc;

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use thiserror::Error;

/// The PEM certificates in `pem`, in order.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustError::Pem(e.to_string()))
}

/// A set of trust anchors, parsed once.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pem: String,
    roots: Arc<RootCertStore>,
    anchors: Vec<CertificateDer<'static>>,
    parsed: Arc<Vec<rustls::pki_types::TrustAnchor<'static>>>,
}

impl TrustBundle {
    pub fn from_pem(pem: &str) -> Result<Self, TrustError> {
        let anchors = certificates(pem)?;
        if anchors.is_empty() {
            return Err(TrustError::Empty);
        }
        let mut roots = RootCertStore::empty();
        for cert in &anchors {
            roots
                .add(cert.clone())
                .map_err(|e| TrustError::Anchor(e.to_string()))?;
        }
        let parsed = anchors
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrustError::Anchor(e.to_string()))?;
        Ok(Self {
            pem: pem.trim_end().to_owned() + "\n",
            roots: Arc::new(roots),
            anchors,
            parsed: Arc::new(parsed),
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// The anchors as webpki checks chains against them.
    pub fn trust_anchors(&self) -> &[rustls::pki_types::TrustAnchor<'static>] {
        &self.parsed
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TrustError {
    #[error("the trust anchors are not PEM certificates: {0}")]
    Pem(String),
    #[error("the trust anchors hold no PEM certificate")]
    Empty,
    #[error("a trust anchor is not a usable CA certificate: {0}")]
    Anchor(String),
}
