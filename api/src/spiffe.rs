//! A sidecar's identity as Dapr writes it: `spiffe://<trust-domain>/ns/<namespace>/<app-id>`.
//!
//! The SVID of every sidecar carries exactly one such URI SAN. The callee reads the caller's
//! from the verified peer certificate (never from headers); the caller checks that the callee's
//! is the app and namespace it meant to call. Access control keys its policies on the three
//! parts. Parsing follows the SPIFFE ID spec (lower-case trust domain of `[a-z0-9.-_]`, path
//! segments of `[A-Za-z0-9.-_]`, no empty, `.` or `..` segment) and Dapr's path shape.

use std::{fmt, str::FromStr};

use thiserror::Error;

use crate::{AppId, Namespace};

/// Dapr's trust domain when a Configuration names none (`accessControl.trustDomain`).
pub const DEFAULT_TRUST_DOMAIN: &str = "public";

/// A SPIFFE trust domain: lower-case letters, digits, `.`, `-` and `_`, at most 255 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(td: impl Into<String>) -> Result<Self, SpiffeError> {
        let td = td.into();
        if td.is_empty() {
            return Err(SpiffeError::EmptyTrustDomain);
        }
        if td.len() > 255 {
            return Err(SpiffeError::TrustDomainTooLong(td.len()));
        }
        if let Some(c) = td
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeError::TrustDomainChar { td, c });
        }
        Ok(Self(td))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/<app-id>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: TrustDomain,
    pub namespace: Namespace,
    pub app_id: AppId,
}

impl SpiffeId {
    pub fn new(trust_domain: TrustDomain, namespace: Namespace, app_id: AppId) -> Self {
        Self {
            trust_domain,
            namespace,
            app_id,
        }
    }

    /// The URI, as it stands in the certificate's SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Whether this is `app_id` in `namespace`, in any trust domain (Dapr's caller checks the
    /// callee's namespace and app ID and accepts any trust domain it trusts).
    pub fn is(&self, app_id: &AppId, namespace: &Namespace) -> bool {
        &self.app_id == app_id && &self.namespace == namespace
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeError::Scheme(s.to_owned()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeError::Shape(s.to_owned()))?;
        let trust_domain = TrustDomain::new(td)?;
        let mut parts = path.split('/');
        let (Some("ns"), Some(ns), Some(app), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SpiffeError::Shape(s.to_owned()));
        };
        for segment in [ns, app] {
            if segment.is_empty()
                || segment == "."
                || segment == ".."
                || !segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(SpiffeError::Shape(s.to_owned()));
            }
        }
        let namespace = Namespace::new(ns).map_err(|_| SpiffeError::Shape(s.to_owned()))?;
        let app_id = AppId::new(app).map_err(|_| SpiffeError::Shape(s.to_owned()))?;
        Ok(Self {
            trust_domain,
            namespace,
            app_id,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpiffeError {
    #[error("a trust domain cannot be empty")]
    EmptyTrustDomain,
    #[error("a trust domain has at most 255 characters, not {0}")]
    TrustDomainTooLong(usize),
    #[error(
        "trust domain {td:?}: {c:?} is not allowed (lower-case letters, digits, '.', '-' and '_')"
    )]
    TrustDomainChar { td: String, c: char },
    #[error("{0:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/<app-id>)")]
    Scheme(String),
    #[error("{0:?} is not a sidecar's SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/<app-id>)")]
    Shape(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_ids_round_trip() {
        for s in [
            "spiffe://public/ns/default/cart",
            "spiffe://cluster.local/ns/dapr-tests/allowlists-caller",
            "spiffe://a_b-c.d/ns/prod/checkout",
        ] {
            let id: SpiffeId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
        let id: SpiffeId = "spiffe://public/ns/prod/checkout".parse().unwrap();
        assert_eq!(id.trust_domain.as_str(), "public");
        assert_eq!(id.namespace.as_str(), "prod");
        assert_eq!(id.app_id.as_str(), "checkout");
    }

    #[test]
    fn other_shapes_are_refused() {
        for s in [
            "",
            "http://public/ns/default/cart",
            "spiffe://public",
            "spiffe://public/",
            "spiffe://public/ns/default",
            "spiffe://public/ns/default/cart/extra",
            "spiffe://public/sa/default/cart",
            "spiffe://Public/ns/default/cart",
            "spiffe:///ns/default/cart",
            "spiffe://public/ns//cart",
            "spiffe://public/ns/../cart",
            "spiffe://public/ns/default/..",
            "spiffe://public/ns/default/ca%2ft",
            "spiffe://pub lic/ns/default/cart",
        ] {
            assert!(s.parse::<SpiffeId>().is_err(), "{s:?} was accepted");
        }
    }

    #[test]
    fn trust_domains_follow_the_spiffe_alphabet() {
        assert!(TrustDomain::new("cluster.local").is_ok());
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("UPPER").is_err());
        assert!(TrustDomain::new("a".repeat(256)).is_err());
        assert_eq!(TrustDomain::default().as_str(), "public");
    }
}
