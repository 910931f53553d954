//! The injector's own CA and serving certificate (bootstrap mode), and what the injector needs
//! to know of a certificate: when it expires and which names it covers.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::tls::{TlsError, TlsMaterial};

/// How long the bootstrap CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a serving certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// A serving certificate this close to expiry is replaced.
pub const RENEW_BEFORE: Duration = Duration::days(30);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} is not a valid DNS name for a certificate")]
    DnsName(String),
}

/// The names the serving certificate must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sans {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Sans {
    /// `name`, `name.ns`, `name.ns.svc` and `name.ns.svc.cluster.local`, plus `ips`.
    pub fn for_service(name: &str, namespace: &str, ips: Vec<IpAddr>) -> Self {
        Self {
            dns: vec![
                name.to_owned(),
                format!("{name}.{namespace}"),
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ],
            ips,
        }
    }
}

/// A CA certificate and key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem").finish_non_exhaustive()
    }
}

/// A new self-signed CA, valid for [`CA_VALIDITY`].
pub fn new_ca(now: OffsetDateTime) -> Result<CaPem, CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(now).self_signed(&key)?;
    Ok(CaPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ferry-injector-ca");
    dn.push(DnType::OrganizationName, "ferry");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + CA_VALIDITY;
    params
}

/// A serving certificate for `sans`, signed by `ca`, valid for [`LEAF_VALIDITY`].
pub fn issue(ca: &CaPem, sans: &Sans, now: OffsetDateTime) -> Result<TlsMaterial, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        sans.dns.first().map_or("ferry-injector", String::as_str),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .dns
        .iter()
        .map(|d| {
            d.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| CertError::DnsName(d.clone()))
        })
        .chain(sans.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + LEAF_VALIDITY;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(TlsMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: Some(ca.cert.clone()),
    })
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| TlsError::X509(e.to_string()))
}

/// The certificate's expiry, in Unix seconds.
pub fn not_after(der: &CertificateDer<'_>) -> Result<i64, TlsError> {
    Ok(parse(der)?.validity().not_after.timestamp())
}

/// Whether the first certificate of `pem` is good for serving `sans` beyond `now +
/// RENEW_BEFORE`. Anything unreadable counts as not good.
pub fn leaf_is_fresh(pem: &str, sans: &Sans, now: OffsetDateTime) -> bool {
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return false;
    };
    let Ok(cert) = parse(&der) else {
        return false;
    };
    if cert.validity().not_after.timestamp() < (now + RENEW_BEFORE).unix_timestamp() {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                _ => {}
            },
            _ => {}
        }
    }
    sans.dns.iter().all(|d| dns.contains(d)) && sans.ips.iter().all(|ip| ips.contains(ip))
}

/// Whether the CA `pem` is readable and valid beyond `now + RENEW_BEFORE`.
pub fn ca_is_fresh(pem: &str, now: OffsetDateTime) -> bool {
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem.as_bytes()).next() else {
        return false;
    };
    parse(&der).is_ok_and(|c| {
        c.is_ca() && c.validity().not_after.timestamp() >= (now + RENEW_BEFORE).unix_timestamp()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{certified_key, provider};

    fn sans() -> Sans {
        Sans::for_service(
            "ferry-injector",
            "ferry-system",
            vec!["127.0.0.1".parse().unwrap()],
        )
    }

    #[test]
    fn issued_certificate_serves_and_is_fresh() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(now).unwrap();
        assert!(ca_is_fresh(&ca.cert, now));
        let leaf = issue(&ca, &sans(), now).unwrap();
        let (_, expiry) = certified_key(&provider(), &leaf).unwrap();
        assert!((expiry - (now + LEAF_VALIDITY).unix_timestamp()).abs() < 5);
        assert!(leaf_is_fresh(&leaf.cert_pem, &sans(), now));
        // Near expiry, or missing a name, it is not.
        assert!(!leaf_is_fresh(
            &leaf.cert_pem,
            &sans(),
            now + Duration::days(340)
        ));
        let more = Sans::for_service("other", "ferry-system", vec![]);
        assert!(!leaf_is_fresh(&leaf.cert_pem, &more, now));
        let ip = Sans::for_service(
            "ferry-injector",
            "ferry-system",
            vec!["10.0.0.1".parse().unwrap()],
        );
        assert!(!leaf_is_fresh(&leaf.cert_pem, &ip, now));
        assert!(!leaf_is_fresh("garbage", &sans(), now));
        assert!(!ca_is_fresh(&leaf.cert_pem, now), "a leaf is not a CA");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(now).unwrap();
        let a = issue(&ca, &sans(), now).unwrap();
        let b = issue(&ca, &sans(), now).unwrap();
        let mixed = TlsMaterial {
            key_pem: b.key_pem,
            ..a
        };
        let err = certified_key(&provider(), &mixed).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch(_)), "{err}");
    }
}
