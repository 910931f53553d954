//! The signing core of Ferry's CA, apart from any transport: it turns a verified identity and a
//! public key into an SVID chain. Sentry's `SignCertificate` (`sentry.rs`), the standalone local
//! CA (`local.rs`) and, later, Kubernetes Pod Certificates call the same [`Authority::sign`].
//!
//! The hierarchy is Dapr's: a long-lived self-signed root (the trust anchor every sidecar
//! holds) signs an issuer, and the issuer signs the workload certificates. Root rotation adds
//! the new root to the bundle first, then switches the issuer, then removes the old root.

use std::time::{Duration, SystemTime};

use ferry_api::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, pem::PemObject};
use thiserror::Error;

/// Dapr's default workload certificate lifetime (`--workload-cert-ttl`).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Dapr's default clock skew allowance: certificates start this long before they are signed.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a generated root and issuer (Dapr's: one year).
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A workload certificate lifetime as daprd and Sentry take it (`--workload-cert-ttl`): whole
/// Go-style units, `90s`, `30m`, `24h`, at least a minute.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 90s, 30m or 24h");
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    if secs < 60 {
        return Err(format!("{s:?}: a certificate must live at least 1m"));
    }
    Ok(Duration::from_secs(secs))
}

/// What a CA signs with: the issuer's certificate and key, and the trust anchors to hand out.
pub struct Authority {
    issuer_pem: String,
    issuer: Issuer<'static, KeyPair>,
    trust_anchors_pem: String,
    ttl: Duration,
    skew: Duration,
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    /// PEM: the workload certificate, then the issuer.
    pub chain_pem: String,
    /// PEM: the trust anchors.
    pub trust_anchors_pem: String,
    pub not_after: SystemTime,
}

/// PEM material of a CA: root and issuer, each with its key.
#[derive(Clone)]
pub struct CaMaterial {
    pub root_cert: String,
    pub root_key: String,
    pub issuer_cert: String,
    pub issuer_key: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaMaterial { .. }")
    }
}

impl CaMaterial {
    /// A new root and issuer for `trust_domain`, valid for `ttl` (ECDSA P-256, as Dapr's).
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<Self, CaError> {
        let now = SystemTime::now();
        let root_key = KeyPair::generate().map_err(CaError::Generate)?;
        let mut root = ca_params(&format!("{trust_domain} root"), now, ttl, None);
        root.subject_alt_names
            .push(uri(&format!("spiffe://{trust_domain}"))?);
        let root_cert = root.self_signed(&root_key).map_err(CaError::Generate)?;
        let root_issuer = Issuer::new(root, root_key);
        let issuer_key = KeyPair::generate().map_err(CaError::Generate)?;
        let mut issuer = ca_params(&format!("{trust_domain} issuer"), now, ttl, Some(0));
        issuer
            .subject_alt_names
            .push(uri(&format!("spiffe://{trust_domain}"))?);
        let issuer_cert = issuer
            .signed_by(&issuer_key, &root_issuer)
            .map_err(CaError::Generate)?;
        Ok(Self {
            root_cert: root_cert.pem(),
            root_key: root_issuer.key().serialize_pem(),
            issuer_cert: issuer_cert.pem(),
            issuer_key: issuer_key.serialize_pem(),
        })
    }
}

fn ca_params(
    name: &str,
    now: SystemTime,
    ttl: Duration,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ferry");
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = (now - DEFAULT_SKEW).into();
    p.not_after = (now + ttl).into();
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    p
}

fn serial() -> rcgen::SerialNumber {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes[0] &= 0x7f; // positive
    rcgen::SerialNumber::from_slice(&bytes)
}

fn uri(s: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(s.try_into().map_err(|_| {
        CaError::Identity(format!("{s:?} is not an IA5 string"))
    })?))
}

impl Authority {
    /// An authority signing with `issuer_cert`/`issuer_key` (PEM) and handing out
    /// `trust_anchors` (PEM, one or more roots; during a rotation, old and new).
    pub fn new(
        issuer_cert: &str,
        issuer_key: &str,
        trust_anchors: &str,
        ttl: Duration,
    ) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(issuer_key).map_err(CaError::IssuerKey)?;
        let issuer = Issuer::from_ca_cert_pem(issuer_cert, key).map_err(CaError::IssuerCert)?;
        if crate::trust::certificates(trust_anchors)?.is_empty() {
            return Err(CaError::NoTrustAnchors);
        }
        Ok(Self {
            issuer_pem: issuer_cert.trim_end().to_owned() + "\n",
            issuer,
            trust_anchors_pem: trust_anchors.trim_end().to_owned() + "\n",
            ttl,
            skew: DEFAULT_SKEW,
        })
    }

    /// The authority of generated material.
    pub fn from_material(m: &CaMaterial, ttl: Duration) -> Result<Self, CaError> {
        Self::new(&m.issuer_cert, &m.issuer_key, &m.root_cert, ttl)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn trust_anchors_pem(&self) -> &str {
        &self.trust_anchors_pem
    }

    /// When the issuer certificate expires (`None` if it cannot be read back, which
    /// [`Authority::new`] already ruled out).
    pub fn issuer_not_after(&self) -> Option<SystemTime> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let der = crate::trust::certificates(&self.issuer_pem)
            .ok()?
            .into_iter()
            .next()?;
        let (_, cert) = X509Certificate::from_der(&der).ok()?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Signs `csr` (PEM `CERTIFICATE REQUEST`, or DER) for `id`, whose claim the caller has
    /// verified. Only the CSR's public key is used: the identity comes from `id`, never from
    /// what the CSR asks for.
    pub fn sign(&self, csr: &[u8], id: &SpiffeId) -> Result<Signed, CaError> {
        let csr = parse_csr(csr)?;
        let now = SystemTime::now();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.app_id.as_str());
        p.distinguished_name = dn;
        p.subject_alt_names = vec![uri(&id.uri())?];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = (now - self.skew).into();
        let not_after = now + self.ttl;
        p.not_after = not_after.into();
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        let cert = p
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        Ok(Signed {
            chain_pem: cert.pem() + &self.issuer_pem,
            trust_anchors_pem: self.trust_anchors_pem.clone(),
            not_after: truncate_to_seconds(not_after),
        })
    }
}

impl Authority {
    /// A certificate for the CA's own server: `id` (the CA's SPIFFE ID) and `dns` names, with a
    /// fresh key.
    pub fn serving_certificate(
        &self,
        id: &SpiffeId,
        dns: &[String],
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        CaError,
    > {
        let key = KeyPair::generate().map_err(CaError::Generate)?;
        let now = SystemTime::now();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.app_id.as_str());
        p.distinguished_name = dn;
        p.subject_alt_names = vec![uri(&id.uri())?];
        for name in dns {
            p.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| CaError::Identity(format!("{name:?} is not a DNS name")))?,
            ));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = (now - self.skew).into();
        p.not_after = (now + self.ttl).into();
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer).map_err(CaError::Sign)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(crate::trust::certificates(&self.issuer_pem)?);
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((chain, key))
    }
}

/// X.509 times have whole seconds.
fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since)
}

fn parse_csr(csr: &[u8]) -> Result<CertificateSigningRequestParams, CaError> {
    let bad = |why: String| CaError::Csr(why);
    let der: CertificateSigningRequestDer<'static> = if csr.starts_with(b"-----BEGIN") {
        // Before Dapr 1.12, daprd labelled its CSR "CERTIFICATE"; Sentry still takes both.
        CertificateSigningRequestDer::from_pem_slice(csr)
            .or_else(|_| CertificateDer::from_pem_slice(csr).map(|d| d.to_vec().into()))
            .map_err(|_| bad("no CERTIFICATE REQUEST block in the PEM".into()))?
    } else {
        csr.to_vec().into()
    };
    CertificateSigningRequestParams::from_der(&der).map_err(|e| bad(e.to_string()))
}

#[derive(Debug, Error)]
pub enum CaError {
    #[error("cannot generate a CA key or certificate: {0}")]
    Generate(rcgen::Error),
    #[error("the issuer key is not a PEM private key rcgen can sign with: {0}")]
    IssuerKey(rcgen::Error),
    #[error("the issuer certificate is not a PEM CA certificate: {0}")]
    IssuerCert(rcgen::Error),
    #[error("no trust anchor: the bundle holds no PEM certificate")]
    NoTrustAnchors,
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    #[error("cannot sign the certificate: {0}")]
    Sign(rcgen::Error),
    #[error("invalid identity: {0}")]
    Identity(String),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
}
