//! App IDs and namespaces.

use std::{fmt, str::FromStr};

/// The longest app ID Kubernetes can serve: `<app-id>-dapr` must fit in a 63-character DNS label.
pub const MAX_APP_ID_LEN: usize = 58;

/// The namespace used when none is configured (Dapr's standalone default).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a string is not a valid app ID or namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppIdError {
    #[error("app ID is empty")]
    Empty,
    #[error("app ID {0:?} is longer than {MAX_APP_ID_LEN} characters")]
    TooLong(String),
    #[error(
        "app ID {id:?} contains {found:?}: use letters, digits, '-' and '_' only \
         (a '.' separates the app ID from a namespace)"
    )]
    BadChar { id: String, found: char },
    #[error("app ID {0:?} must start and end with a letter or a digit")]
    BadEdge(String),
    #[error(
        "app ID {0:?} is not a lowercase DNS-1123 label (a-z, 0-9 and '-', starting and ending \
         with a letter or digit), which Kubernetes requires"
    )]
    NotDnsLabel(String),
    #[error(
        "namespace {0:?} is not a DNS-1123 label (a-z, 0-9 and '-', at most 63 characters, \
         starting and ending with a letter or digit)"
    )]
    BadNamespace(String),
}

/// A validated app ID.
///
/// Standalone mode accepts what Dapr's standalone mode accepts in practice (for example
/// `mathService`): ASCII letters, digits, `-` and `_`, at most 58 characters, starting and ending
/// with a letter or digit. A `.` is never allowed, because `app.namespace` is how a target names
/// another namespace. [`AppId::check_kubernetes`] applies the stricter DNS-1123 rule.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    pub fn new(id: impl Into<String>) -> Result<Self, AppIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(AppIdError::Empty);
        }
        if id.len() > MAX_APP_ID_LEN {
            return Err(AppIdError::TooLong(id));
        }
        if let Some(found) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(AppIdError::BadChar { id, found });
        }
        let edge_ok = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
        if !edge_ok(id.as_bytes().first()) || !edge_ok(id.as_bytes().last()) {
            return Err(AppIdError::BadEdge(id));
        }
        Ok(Self(id))
    }

    /// Checks that `<id>-dapr` is a DNS-1123 label, as Kubernetes mode needs.
    pub fn check_kubernetes(&self) -> Result<(), AppIdError> {
        if is_dns_label(&self.0) {
            Ok(())
        } else {
            Err(AppIdError::NotDnsLabel(self.0.clone()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AppId {
    type Err = AppIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for AppId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A validated namespace name (a DNS-1123 label).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    pub fn new(ns: impl Into<String>) -> Result<Self, AppIdError> {
        let ns = ns.into();
        if ns.len() <= 63 && is_dns_label(&ns) {
            Ok(Self(ns))
        } else {
            Err(AppIdError::BadNamespace(ns))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self(DEFAULT_NAMESPACE.to_owned())
    }
}

impl FromStr for Namespace {
    type Err = AppIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A lowercase RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, 1 to 63 characters.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids() {
        for ok in ["cart", "mathService", "a", "my-app_2", &"a".repeat(58)] {
            assert!(AppId::new(ok).is_ok(), "{ok} should be valid");
        }
        assert_eq!(AppId::new(""), Err(AppIdError::Empty));
        assert!(matches!(
            AppId::new("a".repeat(59)),
            Err(AppIdError::TooLong(_))
        ));
        assert!(matches!(
            AppId::new("a.b"),
            Err(AppIdError::BadChar { found: '.', .. })
        ));
        assert!(matches!(AppId::new("a b"), Err(AppIdError::BadChar { .. })));
        assert!(matches!(AppId::new("-a"), Err(AppIdError::BadEdge(_))));
        assert!(matches!(AppId::new("a_"), Err(AppIdError::BadEdge(_))));
    }

    #[test]
    fn kubernetes_app_ids() {
        assert!(AppId::new("cart-2").unwrap().check_kubernetes().is_ok());
        assert!(
            AppId::new("mathService")
                .unwrap()
                .check_kubernetes()
                .is_err()
        );
        assert!(AppId::new("my_app").unwrap().check_kubernetes().is_err());
    }

    #[test]
    fn namespaces() {
        assert!(Namespace::new("default").is_ok());
        assert!(Namespace::new("team-a").is_ok());
        assert!(Namespace::new("Team").is_err());
        assert!(Namespace::new("").is_err());
        assert!(Namespace::new("a.b").is_err());
        assert_eq!(Namespace::default().as_str(), "default");
    }
}
