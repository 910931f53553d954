//! Where the CA's keys come from: one Secret in the operator's namespace, in Dapr's layout
//! (`ca.crt` = the trust anchors, `issuer.crt` + `issuer.key` = what signs) or in
//! cert-manager's (`ca.crt`, `tls.crt`, `tls.key`: a `Certificate` with `isCA: true`). When it
//! does not exist and generation is allowed, a root and an issuer are generated into it; the
//! root's key is not kept (as Dapr's Sentry does), so a later root comes from the user.

use std::collections::BTreeMap;

use ferry_identity::ca::{CaMaterial, DEFAULT_CA_TTL};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

/// Dapr's key names.
pub const ROOTS: &str = "ca.crt";
pub const ISSUER_CERT: &str = "issuer.crt";
pub const ISSUER_KEY: &str = "issuer.key";
/// cert-manager's.
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// The PEM the CA signs with, read from the Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub roots: String,
    pub issuer_cert: String,
    pub issuer_key: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Material { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error(
        "Secret {0} does not exist: create it with {ROOTS}, {ISSUER_CERT} and {ISSUER_KEY} \
         (or {ROOTS}, {TLS_CERT} and {TLS_KEY} from cert-manager), or let the operator \
         generate it (--ca-generate)"
    )]
    Missing(String),
    #[error("Secret {secret}: {why}")]
    Invalid { secret: String, why: String },
    #[error("cannot read or write Secret {secret}: {source}")]
    Api {
        secret: String,
        #[source]
        source: kube::Error,
    },
}

/// Reads the material out of a Secret's data.
pub fn from_secret(name: &str, secret: &Secret) -> Result<Material, MaterialError> {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let invalid = |why: String| MaterialError::Invalid {
        secret: name.to_owned(),
        why,
    };
    let text = |key: &str| -> Result<Option<String>, MaterialError> {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.0.clone())
                    .map_err(|_| invalid(format!("key {key} is not PEM text")))
            })
            .transpose()
            .map(|v| v.filter(|s| !s.trim().is_empty()))
    };
    let roots = text(ROOTS)?.ok_or_else(|| invalid(format!("no {ROOTS} (the trust anchors)")))?;
    let pair = |cert: &str, key: &str| -> Result<Option<(String, String)>, MaterialError> {
        match (text(cert)?, text(key)?) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            _ => Err(invalid(format!(
                "{cert} and {key} go together: one is missing"
            ))),
        }
    };
    let (issuer_cert, issuer_key) = match pair(ISSUER_CERT, ISSUER_KEY)? {
        Some(p) => p,
        None => pair(TLS_CERT, TLS_KEY)?.ok_or_else(|| {
            invalid(format!(
                "no issuer: set {ISSUER_CERT} and {ISSUER_KEY} (or cert-manager's {TLS_CERT} and {TLS_KEY})"
            ))
        })?,
    };
    Ok(Material {
        roots,
        issuer_cert,
        issuer_key,
    })
}

/// The Secret as read now, with its resourceVersion; created first when missing and `generate`.
pub async fn load_or_create(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    generate: bool,
) -> Result<(Material, Option<String>), MaterialError> {
    let full = format!("{namespace}/{name}");
    let api_err = |source| MaterialError::Api {
        secret: full.clone(),
        source,
    };
    if let Some(s) = api.get_opt(name).await.map_err(api_err)? {
        return Ok((from_secret(&full, &s)?, s.metadata.resource_version));
    }
    if !generate {
        return Err(MaterialError::Missing(full));
    }
    let generated =
        CaMaterial::generate(trust_domain, DEFAULT_CA_TTL).map_err(|e| MaterialError::Invalid {
            secret: full.clone(),
            why: format!("cannot generate a root and issuer: {e}"),
        })?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "ferry-operator".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                ROOTS.to_owned(),
                ByteString(generated.root_cert.into_bytes()),
            ),
            (
                ISSUER_CERT.to_owned(),
                ByteString(generated.issuer_cert.into_bytes()),
            ),
            (
                ISSUER_KEY.to_owned(),
                ByteString(generated.issuer_key.into_bytes()),
            ),
        ])),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => {
            tracing::info!(secret = %full, "generated the CA's root and issuer");
            Ok((from_secret(&full, &s)?, s.metadata.resource_version))
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(name).await.map_err(api_err)?;
            Ok((from_secret(&full, &s)?, s.metadata.resource_version))
        }
        Err(e) => Err(api_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn dapr_and_cert_manager_layouts_are_read() {
        let m = from_secret(
            "ns/s",
            &secret(&[("ca.crt", "R"), ("issuer.crt", "C"), ("issuer.key", "K")]),
        )
        .unwrap();
        assert_eq!(
            (
                m.roots.as_str(),
                m.issuer_cert.as_str(),
                m.issuer_key.as_str()
            ),
            ("R", "C", "K")
        );
        let m = from_secret(
            "ns/s",
            &secret(&[("ca.crt", "R"), ("tls.crt", "C"), ("tls.key", "K")]),
        )
        .unwrap();
        assert_eq!((m.issuer_cert.as_str(), m.issuer_key.as_str()), ("C", "K"));
    }

    #[test]
    fn incomplete_secrets_are_refused_naming_the_key() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("issuer.crt", "C"), ("issuer.key", "K")], "no ca.crt"),
            (&[("ca.crt", "R")], "no issuer"),
            (
                &[("ca.crt", "R"), ("issuer.crt", "C")],
                "issuer.crt and issuer.key go together",
            ),
            (
                &[("ca.crt", "R"), ("tls.key", "K")],
                "tls.crt and tls.key go together",
            ),
        ];
        for (pairs, want) in cases {
            let e = from_secret("ns/s", &secret(pairs)).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("ns/s"), "{pairs:?}: {e}");
        }
    }
}
