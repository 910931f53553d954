//! A sidecar's own SVID: the key is generated here and never leaves the process; only its CSR
//! goes to the CA.

use std::{sync::Arc, time::SystemTime};

use ferry_api::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};
use thiserror::Error;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::trust::{TrustBundle, certificates};

/// A key pair waiting for its certificate.
pub struct PendingKey {
    key: KeyPair,
    csr_pem: String,
}

impl PendingKey {
    /// A fresh ECDSA P-256 key and a CSR asking for `id`.
    pub fn generate(id: &SpiffeId) -> Result<Self, SvidError> {
        let key = KeyPair::generate().map_err(|e| SvidError::Key(e.to_string()))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.app_id.as_str());
        p.distinguished_name = dn;
        p.subject_alt_names =
            vec![SanType::URI(id.uri().try_into().map_err(|_| {
                SvidError::Key("the SPIFFE ID is not ASCII".into())
            })?)];
        let csr = p
            .serialize_request(&key)
            .map_err(|e| SvidError::Key(e.to_string()))?;
        let csr_pem = csr.pem().map_err(|e| SvidError::Key(e.to_string()))?;
        Ok(Self { key, csr_pem })
    }

    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The SVID of `chain_pem` (workload certificate first), once it is checked: for this key,
    /// for `wanted`'s app ID and namespace (the CA picks the trust domain), and valid under
    /// `bundle` for both client and server use.
    pub fn complete(
        self,
        chain_pem: &str,
        wanted: &SpiffeId,
        bundle: &TrustBundle,
    ) -> Result<Svid, SvidError> {
        let chain = certificates(chain_pem).map_err(|e| SvidError::Chain(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| SvidError::Chain("no certificate in the answer".into()))?;
        let info = CertInfo::of(leaf)?;
        if !info.id.is(&wanted.app_id, &wanted.namespace) {
            return Err(SvidError::WrongIdentity {
                got: info.id.to_string(),
                wanted: wanted.to_string(),
            });
        }
        if info.public_key != self.key.public_key_raw() {
            return Err(SvidError::Chain(
                "the certificate is for another key than ours".into(),
            ));
        }
        crate::tls::verify_chain(&chain, bundle, webpki::KeyUsage::client_auth())
            .and_then(|_| crate::tls::verify_chain(&chain, bundle, webpki::KeyUsage::server_auth()))
            .map_err(|e| SvidError::Untrusted(e.to_string()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| SvidError::Key(e.to_string()))?;
        Ok(Svid {
            id: info.id,
            received: SystemTime::now(),
            not_before: info.not_before,
            not_after: info.not_after,
            chain_pem: chain_pem.to_owned(),
            key: Arc::new(CertifiedKey::new(chain, signing)),
        })
    }
}

/// A sidecar's certificate and key, as rustls serves them.
#[derive(Clone)]
pub struct Svid {
    pub id: SpiffeId,
    /// When this sidecar got it.
    pub received: SystemTime,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub chain_pem: String,
    pub key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// When to ask for the next one: at 70 % of the life it had when it arrived (Linkerd's
    /// choice), leaving the last 30 % (hours, by default) to retry while the CA is away.
    /// Counted from its arrival, not its `notBefore`, which CAs backdate for clock skew.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.received)
            .unwrap_or_default();
        self.received + life.mul_f64(0.7)
    }
}

/// What a certificate says about its subject.
pub struct CertInfo {
    pub id: SpiffeId,
    pub public_key: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    pub fn of(cert: &CertificateDer<'_>) -> Result<Self, SvidError> {
        let (_, x509) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| SvidError::Chain(format!("not an X.509 certificate: {e}")))?;
        Ok(Self {
            id: spiffe_id(&x509)?,
            public_key: x509.public_key().subject_public_key.data.to_vec(),
            not_before: time(x509.validity().not_before.timestamp()),
            not_after: time(x509.validity().not_after.timestamp()),
        })
    }
}

fn time(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64)
}

/// The one SPIFFE ID among the certificate's URI SANs (a SPIFFE SVID carries exactly one).
pub fn spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let mut ids = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name
                    && uri.starts_with("spiffe://")
                {
                    ids.push(*uri);
                }
            }
        }
    }
    match ids.as_slice() {
        [one] => one
            .parse()
            .map_err(|e: ferry_api::spiffe::SpiffeError| SvidError::NoIdentity(e.to_string())),
        [] => Err(SvidError::NoIdentity(
            "the certificate has no spiffe:// URI SAN".into(),
        )),
        _ => Err(SvidError::NoIdentity(
            "the certificate has more than one spiffe:// URI SAN".into(),
        )),
    }
}

#[derive(Debug, Error, Clone)]
pub enum SvidError {
    #[error("cannot make a key or its CSR: {0}")]
    Key(String),
    #[error("the CA's answer is not a usable certificate chain: {0}")]
    Chain(String),
    #[error("the CA signed {got}, not {wanted}")]
    WrongIdentity { got: String, wanted: String },
    #[error("the CA's certificate does not chain to the trust anchors: {0}")]
    Untrusted(String),
    #[error("no SPIFFE identity: {0}")]
    NoIdentity(String),
}
