//! HTTPEndpoint resources from `--resources-path`, each with its own validated client.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use ferry_api::{
    AppId, Namespace,
    http_endpoint::{self, HttpEndpoint, TlsDocument, render_value},
};
use http::{HeaderName, HeaderValue, Uri};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::{
    invoke::Unusable,
    upstream::{GuardedResolver, Upstream, crypto_provider, http_client},
};

/// A loaded endpoint, ready to be called.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    /// The base URL without a trailing slash.
    pub base_url: String,
    /// Headers set on every request, overriding the caller's of the same name.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub client: Arc<dyn Upstream>,
}

/// The endpoints this sidecar may call, by name.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    by_name: HashMap<String, Arc<Endpoint>>,
    /// Endpoints that exist but cannot be called (kubernetes mode: not ready, or a Secret that
    /// cannot be read), with the reason. The name still wins over an app ID of the same name, so
    /// a call says why instead of silently reaching an app.
    unusable: HashMap<String, Unusable>,
}

/// What a name in [`Endpoints`] stands for.
#[derive(Debug, Clone)]
pub enum Found<'a> {
    Usable(&'a Arc<Endpoint>),
    Unusable(&'a Unusable),
}

impl Endpoints {
    pub fn new(
        usable: impl IntoIterator<Item = Arc<Endpoint>>,
        unusable: impl IntoIterator<Item = (String, Unusable)>,
    ) -> Self {
        let by_name: HashMap<String, Arc<Endpoint>> =
            usable.into_iter().map(|e| (e.name.clone(), e)).collect();
        let unusable = unusable
            .into_iter()
            .filter(|(n, _)| !by_name.contains_key(n))
            .collect();
        Self { by_name, unusable }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.by_name.get(name)
    }

    /// The endpoint named `name`, usable or not.
    pub fn find(&self, name: &str) -> Option<Found<'_>> {
        if let Some(e) = self.by_name.get(name) {
            return Some(Found::Usable(e));
        }
        self.unusable.get(name).map(Found::Unusable)
    }

    /// The names of the usable endpoints, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.by_name.keys().cloned().collect();
        v.sort();
        v
    }

    /// The unusable endpoints and why, sorted by name.
    pub fn unusable(&self) -> Vec<(&str, &Unusable)> {
        let mut v: Vec<(&str, &Unusable)> =
            self.unusable.iter().map(|(n, r)| (n.as_str(), r)).collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }

    /// Usable endpoints.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.unusable.is_empty()
    }

    /// `self` (the `--resources-path` files) over `cluster` (the namespace's RoutingTable): a
    /// name defined in both is the file's, usable or not. Returns the merge and the names that
    /// clashed.
    pub fn over(&self, cluster: &Endpoints) -> (Endpoints, Vec<String>) {
        let mut merged = self.clone();
        let mut clashes = Vec::new();
        for (name, ep) in &cluster.by_name {
            if self.find(name).is_some() {
                clashes.push(name.clone());
            } else {
                merged.by_name.insert(name.clone(), ep.clone());
            }
        }
        for (name, reason) in &cluster.unusable {
            if self.find(name).is_some() {
                clashes.push(name.clone());
            } else {
                merged.unusable.insert(name.clone(), reason.clone());
            }
        }
        clashes.sort();
        (merged, clashes)
    }

    /// Whether `other` holds the very same endpoints (the same clients) and reasons.
    pub fn same_as(&self, other: &Endpoints) -> bool {
        self.unusable == other.unusable
            && self.by_name.len() == other.by_name.len()
            && self
                .by_name
                .iter()
                .all(|(n, e)| other.by_name.get(n).is_some_and(|o| Arc::ptr_eq(e, o)))
    }
}

/// A resource that cannot be loaded; the message names the file, the resource and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read resources path {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("{path}: HTTPEndpoint {name:?}: {reason}")]
    Invalid {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path} and {other}: two HTTPEndpoints are named {name:?}; names must be unique")]
    Duplicate {
        path: PathBuf,
        other: PathBuf,
        name: String,
    },
}

/// Loads every `HTTPEndpoint` in the YAML files of `dirs` (files may hold several documents).
/// Other kinds of resources are skipped with a log line; endpoints scoped to other apps, or in
/// another namespace, are skipped too.
pub fn load(dirs: &[PathBuf], app: &AppId, ns: &Namespace) -> Result<Endpoints, LoadError> {
    let mut by_name: HashMap<String, Arc<Endpoint>> = HashMap::new();
    let mut origin: HashMap<String, PathBuf> = HashMap::new();
    for dir in dirs {
        for path in yaml_files(dir)? {
            let text = fs::read_to_string(&path).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            let docs: Vec<serde_json::Value> =
                serde_saphyr::from_multiple(&text).map_err(|e| LoadError::Yaml {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            for doc in docs {
                if doc.is_null() {
                    continue;
                }
                let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
                let api_version = doc
                    .get("apiVersion")
                    .and_then(|k| k.as_str())
                    .unwrap_or_default();
                if kind != http_endpoint::KIND {
                    tracing::info!(file = %path.display(), kind, "skipping a resource this sidecar does not use");
                    continue;
                }
                let doc_name = doc
                    .pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let invalid = |reason: String| LoadError::Invalid {
                    path: path.clone(),
                    name: doc_name.clone(),
                    reason,
                };
                if api_version != http_endpoint::API_VERSION {
                    return Err(invalid(format!(
                        "apiVersion {api_version:?} is not supported; use {:?}",
                        http_endpoint::API_VERSION
                    )));
                }
                let ep: HttpEndpoint =
                    serde_json::from_value(doc).map_err(|e| invalid(e.to_string()))?;
                if ep.name().is_empty() {
                    return Err(invalid("metadata.name is missing".into()));
                }
                if let Some(ep_ns) = &ep.metadata.namespace
                    && ep_ns != ns.as_str()
                {
                    tracing::info!(endpoint = ep.name(), namespace = %ep_ns, "skipping an HTTPEndpoint of another namespace");
                    continue;
                }
                if !ep.in_scope(app.as_str()) {
                    tracing::info!(
                        endpoint = ep.name(),
                        "skipping an HTTPEndpoint scoped to other apps"
                    );
                    continue;
                }
                let built = build(&ep).map_err(invalid)?;
                if let Some(other) = origin.get(ep.name()) {
                    return Err(LoadError::Duplicate {
                        path: path.clone(),
                        other: other.clone(),
                        name: ep.name().to_owned(),
                    });
                }
                origin.insert(ep.name().to_owned(), path.clone());
                by_name.insert(ep.name().to_owned(), Arc::new(built));
            }
        }
    }
    Ok(Endpoints {
        by_name,
        unusable: HashMap::new(),
    })
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Validates one endpoint and builds its client.
pub fn build(ep: &HttpEndpoint) -> Result<Endpoint, String> {
    let base = ep.spec.base_url.trim();
    let uri: Uri = base
        .parse()
        .map_err(|e| format!("spec.baseUrl {base:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "spec.baseUrl {base:?} must start with http:// or https://"
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("spec.baseUrl {base:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "spec.baseUrl {base:?} must not carry user information; set an Authorization header in spec.headers instead"
        ));
    }
    if uri.query().is_some() {
        return Err(format!(
            "spec.baseUrl {base:?} must not have a query string"
        ));
    }

    let mut headers = Vec::with_capacity(ep.spec.headers.len());
    for (i, h) in ep.spec.headers.iter().enumerate() {
        let at = format!("spec.headers[{i}] ({:?})", h.name);
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("{at}: {:?} is not a valid header name", h.name))?;
        let sources = [
            h.value.is_some(),
            h.secret_key_ref.is_some(),
            h.env_ref.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(format!(
                "{at}: give exactly one of value, secretKeyRef or envRef"
            ));
        }
        let text = if let Some(v) = &h.value {
            render_value(v)
        } else if let Some(env) = &h.env_ref {
            std::env::var(env).map_err(|_| {
                format!("{at}: envRef {env:?} is not set in the sidecar's environment")
            })?
        } else {
            return Err(format!(
                "{at}: secretKeyRef needs a secret store, which standalone mode does not have; use value or envRef"
            ));
        };
        let value = HeaderValue::from_str(&text).map_err(|_| {
            format!("{at}: the value contains characters a header cannot carry (such as CR or LF)")
        })?;
        headers.push((name, value));
    }

    let tls = client_tls(ep)?;
    Ok(Endpoint {
        name: ep.name().to_owned(),
        base_url: base.trim_end_matches('/').to_owned(),
        headers,
        client: Arc::new(http_client(tls, GuardedResolver::open(), false)),
    })
}

fn client_tls(ep: &HttpEndpoint) -> Result<ClientConfig, String> {
    let Some(tls) = &ep.spec.client_tls else {
        return Ok(crate::upstream::native_roots_tls());
    };
    if let Some(r) = tls.renegotiation.as_deref()
        && r != "Never"
    {
        return Err(format!(
            "spec.clientTLS.renegotiation {r:?} is not supported: rustls never renegotiates; use Never"
        ));
    }
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &tls.root_ca {
        Some(doc) => {
            let pem = pem_text(doc, "spec.clientTLS.rootCA")?;
            let mut roots = RootCertStore::empty();
            for cert in parse_certs(&pem, "spec.clientTLS.rootCA")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("spec.clientTLS.rootCA: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            // The machine's roots, as for any https URL.
            let mut roots = RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            builder.with_root_certificates(roots)
        }
    };
    match (&tls.certificate, &tls.private_key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(c), Some(k)) => {
            let certs = parse_certs(
                &pem_text(c, "spec.clientTLS.certificate")?,
                "spec.clientTLS.certificate",
            )?;
            let key_pem = pem_text(k, "spec.clientTLS.privateKey")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
                format!("spec.clientTLS.privateKey: no PEM private key found ({e})")
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("spec.clientTLS.certificate and privateKey do not form a client certificate: {e}"))
        }
        (Some(_), None) => {
            Err("spec.clientTLS.certificate is set without spec.clientTLS.privateKey".into())
        }
        (None, Some(_)) => {
            Err("spec.clientTLS.privateKey is set without spec.clientTLS.certificate".into())
        }
    }
}

fn pem_text(doc: &TlsDocument, at: &str) -> Result<String, String> {
    match (&doc.value, &doc.secret_key_ref) {
        (Some(v), None) => Ok(render_value(v)),
        (None, Some(_)) => Err(format!(
            "{at}: secretKeyRef needs a secret store, which standalone mode does not have; put the PEM in value"
        )),
        _ => Err(format!("{at}: give exactly one of value or secretKeyRef")),
    }
}

fn parse_certs(pem: &str, at: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{at}: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{at}: no PEM certificate found"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(yaml: &str) -> Result<Endpoint, String> {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        build(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn valid_endpoint() {
        let e = ep(r#"
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {name: ext}
spec:
  baseUrl: http://127.0.0.1:8080/api/
  headers:
  - name: X-Num
    value: 42
  - name: Accept-Language
    value: en-US
"#)
        .unwrap();
        assert_eq!(e.base_url, "http://127.0.0.1:8080/api");
        assert_eq!(e.headers[0].1, "42");
        assert_eq!(e.headers[1].0, "accept-language");
    }

    #[test]
    fn files_win_over_the_cluster_and_unusable_names_still_count() {
        let named = |name: &str, url: &str| {
            Arc::new(
                ep(&format!(
                    "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {{name: {name}}}\nspec:\n  baseUrl: {url}\n"
                ))
                .unwrap(),
            )
        };
        let files = Endpoints::new(
            [
                named("shared", "http://file"),
                named("local", "http://local"),
            ],
            [("broken-local".to_owned(), Unusable::Invalid("bad".into()))],
        );
        let cluster = Endpoints::new(
            [
                named("shared", "http://cluster"),
                named("remote", "http://remote"),
            ],
            [
                (
                    "broken-local".to_owned(),
                    Unusable::Invalid("cluster's".into()),
                ),
                (
                    "down".to_owned(),
                    Unusable::Material("it is not ready".into()),
                ),
            ],
        );
        let (merged, clashes) = files.over(&cluster);
        assert_eq!(clashes, vec!["broken-local", "shared"]);
        assert_eq!(merged.names(), vec!["local", "remote", "shared"]);
        assert!(
            matches!(merged.find("shared"), Some(Found::Usable(e)) if e.base_url == "http://file")
        );
        assert!(matches!(
            merged.find("down"),
            Some(Found::Unusable(r)) if r.to_string() == "it is not ready"
        ));
        assert!(matches!(
            merged.find("broken-local"),
            Some(Found::Unusable(r)) if r.to_string() == "bad"
        ));
        assert!(merged.find("nope").is_none());
        assert!(merged.same_as(&files.over(&cluster).0));
        assert!(!merged.same_as(&files));
    }

    #[test]
    fn invalid_endpoints_say_what_is_wrong() {
        let base = |url: &str| {
            format!(
                "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {{name: e}}\nspec:\n  baseUrl: \"{url}\"\n"
            )
        };
        for (url, needle) in [
            ("ftp://x", "must start with http"),
            ("not a url", "is not a URL"),
            ("http://user:pw@h", "user information"),
            ("/relative", "must start with http"),
        ] {
            let err = ep(&base(url)).unwrap_err();
            assert!(err.contains(needle), "{url}: {err}");
        }
        let err = ep(&(base("http://h") + "  headers:\n  - name: \"bad name\"\n    value: x\n"))
            .unwrap_err();
        assert!(err.contains("not a valid header name"), "{err}");
        let err = ep(&(base("http://h") + "  headers:\n  - name: X\n")).unwrap_err();
        assert!(err.contains("exactly one of"), "{err}");
        let err =
            ep(&(base("http://h")
                + "  headers:\n  - name: X\n    secretKeyRef: {name: s, key: k}\n"))
            .unwrap_err();
        assert!(err.contains("secret store"), "{err}");
        let err =
            ep(&(base("https://h") + "  clientTLS:\n    rootCA: {value: nope}\n")).unwrap_err();
        assert!(err.contains("rootCA"), "{err}");
        let err =
            ep(&(base("https://h") + "  clientTLS:\n    certificate: {value: x}\n")).unwrap_err();
        assert!(err.contains("without spec.clientTLS.privateKey"), "{err}");
    }
}
