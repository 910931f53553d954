//! Is an HTTPEndpoint usable? A pure check of its spec, with the first problem as the reason.

use std::fmt;

use ferry_api::http_endpoint::{
    ClientTls, HttpEndpoint, NameValuePair, SecretKeyRef, TlsDocument, render_value,
};

use crate::services::desired::clip;

/// Why an HTTPEndpoint is (not) ready: the condition's and the Event's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Valid,
    InvalidBaseURL,
    InvalidHeader,
    IncompleteTLS,
    InvalidTLS,
    UnsupportedSecretStore,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "Valid",
            Self::InvalidBaseURL => "InvalidBaseURL",
            Self::InvalidHeader => "InvalidHeader",
            Self::IncompleteTLS => "IncompleteTLS",
            Self::InvalidTLS => "InvalidTLS",
            Self::UnsupportedSecretStore => "UnsupportedSecretStore",
        }
    }

    pub fn ready(self) -> bool {
        self == Self::Valid
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    pub message: String,
}

impl Verdict {
    pub fn ready(&self) -> bool {
        self.reason.ready()
    }
}

/// Messages quoted in full; the rest are counted.
const SHOWN: usize = 3;

#[derive(Default)]
struct Findings {
    first: Option<Reason>,
    shown: Vec<String>,
    more: usize,
}

impl Findings {
    fn add(&mut self, reason: Reason, message: String) {
        self.first.get_or_insert(reason);
        if self.shown.len() < SHOWN {
            self.shown.push(message);
        } else {
            self.more += 1;
        }
    }
}

/// Validates `ep`: base URL, headers, TLS references, secret store.
pub fn validate(ep: &HttpEndpoint) -> Verdict {
    let mut f = Findings::default();
    check_base_url(&ep.spec.base_url, &mut f);
    for (i, h) in ep.spec.headers.iter().enumerate() {
        check_header(i, h, &mut f);
    }
    if let Some(tls) = &ep.spec.client_tls {
        check_tls(tls, &mut f);
    }
    let store = ep
        .auth
        .as_ref()
        .map(|a| a.secret_store.trim())
        .unwrap_or_default();
    let uses_secrets = ep.spec.headers.iter().any(|h| h.secret_key_ref.is_some())
        || ep.spec.client_tls.as_ref().is_some_and(|t| {
            [&t.root_ca, &t.certificate, &t.private_key]
                .into_iter()
                .flatten()
                .any(|d| d.secret_key_ref.is_some())
        });
    if uses_secrets && !store.is_empty() && store != "kubernetes" {
        f.add(
            Reason::UnsupportedSecretStore,
            format!(
                "auth.secretStore {:?}: Ferry resolves secretKeyRef from Kubernetes Secrets only \
                 (leave it empty or set \"kubernetes\")",
                clip(store)
            ),
        );
    }
    match f.first {
        None => Verdict {
            reason: Reason::Valid,
            message: format!("{} is a valid base URL", clip(&ep.spec.base_url)),
        },
        Some(reason) => {
            let mut message = f.shown.join("; ");
            if f.more > 0 {
                message.push_str(&format!(" (and {} more problems)", f.more));
            }
            Verdict { reason, message }
        }
    }
}

fn check_base_url(url: &str, f: &mut Findings) {
    let bad = |why: &str| format!("spec.baseUrl {:?} {why}", clip(url));
    if url.trim().is_empty() {
        f.add(Reason::InvalidBaseURL, "spec.baseUrl is empty".into());
        return;
    }
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            f.add(Reason::InvalidBaseURL, bad(&format!("is not a URL ({e})")));
            return;
        }
    };
    let scheme_ok = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    if !scheme_ok {
        f.add(
            Reason::InvalidBaseURL,
            bad("must be an absolute http:// or https:// URL"),
        );
        return;
    }
    let Some(authority) = uri.authority() else {
        f.add(Reason::InvalidBaseURL, bad("has no host"));
        return;
    };
    if authority.as_str().contains('@') {
        f.add(
            Reason::InvalidBaseURL,
            bad("must not carry credentials (user:password@); use a header from a Secret"),
        );
        return;
    }
    if authority.host().is_empty() {
        f.add(Reason::InvalidBaseURL, bad("has no host"));
    }
}

fn check_header(i: usize, h: &NameValuePair, f: &mut Findings) {
    let at = format!("spec.headers[{i}]");
    if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
        f.add(
            Reason::InvalidHeader,
            format!(
                "{at}.name {:?} is not a valid HTTP header name",
                clip(&h.name)
            ),
        );
    }
    let sources = [
        h.value.is_some(),
        h.secret_key_ref.is_some(),
        h.env_ref.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    match sources {
        0 => f.add(
            Reason::InvalidHeader,
            format!(
                "{at} ({}) has no value: set one of value, secretKeyRef or envRef",
                clip(&h.name)
            ),
        ),
        1 => {}
        _ => f.add(
            Reason::InvalidHeader,
            format!(
                "{at} ({}) has more than one of value, secretKeyRef and envRef",
                clip(&h.name)
            ),
        ),
    }
    if let Some(v) = &h.value
        && http::HeaderValue::from_str(&render_value(v)).is_err()
    {
        f.add(
            Reason::InvalidHeader,
            format!("{at}.value is not a valid header value (control characters or non-ASCII)"),
        );
    }
    if let Some(r) = &h.secret_key_ref
        && let Some(missing) = missing_in_ref(r)
    {
        f.add(
            Reason::InvalidHeader,
            format!("{at}.secretKeyRef has no {missing}"),
        );
    }
    if h.env_ref.as_ref().is_some_and(|e| e.trim().is_empty()) {
        f.add(Reason::InvalidHeader, format!("{at}.envRef is empty"));
    }
}

fn missing_in_ref(r: &SecretKeyRef) -> Option<&'static str> {
    match (r.name.trim().is_empty(), r.key.trim().is_empty()) {
        (true, true) => Some("name and key"),
        (true, false) => Some("name"),
        (false, true) => Some("key"),
        (false, false) => None,
    }
}

fn check_tls(tls: &ClientTls, f: &mut Findings) {
    let docs = [
        ("rootCA", &tls.root_ca),
        ("certificate", &tls.certificate),
        ("privateKey", &tls.private_key),
    ];
    for (field, doc) in docs {
        if let Some(doc) = doc {
            check_document(field, doc, f);
        }
    }
    match (&tls.certificate, &tls.private_key) {
        (Some(_), None) => f.add(
            Reason::IncompleteTLS,
            "spec.clientTLS.certificate needs spec.clientTLS.privateKey".into(),
        ),
        (None, Some(_)) => f.add(
            Reason::IncompleteTLS,
            "spec.clientTLS.privateKey needs spec.clientTLS.certificate".into(),
        ),
        _ => {}
    }
    if let Some(r) = &tls.renegotiation
        && !matches!(r.as_str(), "Never" | "OnceAsClient" | "FreelyAsClient")
    {
        f.add(
            Reason::InvalidTLS,
            format!(
                "spec.clientTLS.renegotiation {:?} is not one of Never, OnceAsClient, FreelyAsClient",
                clip(r)
            ),
        );
    }
}

fn check_document(field: &str, doc: &TlsDocument, f: &mut Findings) {
    let at = format!("spec.clientTLS.{field}");
    match (&doc.value, &doc.secret_key_ref) {
        (None, None) => f.add(
            Reason::IncompleteTLS,
            format!("{at} has neither value nor secretKeyRef"),
        ),
        (Some(_), Some(_)) => f.add(
            Reason::InvalidTLS,
            format!("{at} has both value and secretKeyRef; set one"),
        ),
        (Some(v), None) => {
            let pem = v.as_str().is_some_and(|s| s.contains("-----BEGIN "));
            if !pem {
                f.add(Reason::InvalidTLS, format!("{at}.value is not PEM text"));
            }
        }
        (None, Some(r)) => {
            if let Some(missing) = missing_in_ref(r) {
                f.add(
                    Reason::IncompleteTLS,
                    format!("{at}.secretKeyRef has no {missing}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ep(v: serde_json::Value) -> HttpEndpoint {
        let mut obj = json!({
            "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
            "metadata": {"name": "ext", "namespace": "shop"},
        });
        for (k, val) in v.as_object().unwrap() {
            obj[k] = val.clone();
        }
        serde_json::from_value(obj).unwrap()
    }

    fn reason(v: serde_json::Value) -> (Reason, String) {
        let verdict = validate(&ep(v));
        (verdict.reason, verdict.message)
    }

    #[test]
    fn daprs_docs_example_is_valid() {
        let (r, m) = reason(json!({
            "spec": {
                "baseUrl": "https://api.example.com",
                "headers": [
                    {"name": "Accept-Language", "value": "en-US"},
                    {"name": "X-Count", "value": 42},
                    {"name": "Authorization", "secretKeyRef": {"name": "my-secret", "key": "token"}},
                    {"name": "X-Env", "envRef": "SOME_ENV"}
                ],
                "clientTLS": {
                    "rootCA": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}},
                    "certificate": {"value": "-----BEGIN CERTIFICATE-----\n..."},
                    "privateKey": {"secretKeyRef": {"name": "tls", "key": "tls.key"}},
                    "renegotiation": "Never"
                }
            },
            "auth": {"secretStore": "kubernetes"}
        }));
        assert_eq!(r, Reason::Valid, "{m}");
        assert!(Reason::Valid.ready());
    }

    #[test]
    fn base_urls() {
        for ok in [
            "http://example.com",
            "https://api.example.com:8443/v1/",
            "HTTP://10.0.0.1",
            "http://[::1]:8080",
        ] {
            assert_eq!(
                reason(json!({"spec": {"baseUrl": ok}})).0,
                Reason::Valid,
                "{ok}"
            );
        }
        for bad in [
            "",
            "example.com",
            "/relative",
            "ftp://example.com",
            "https://user:pw@example.com",
            "http://user@example.com",
            "http://exa mple.com",
            "https://",
        ] {
            let (r, m) = reason(json!({"spec": {"baseUrl": bad}}));
            assert_eq!(r, Reason::InvalidBaseURL, "{bad:?}: {m}");
        }
        let (_, m) = reason(json!({"spec": {"baseUrl": "https://u:p@x"}}));
        assert!(m.contains("credentials"), "{m}");
    }

    #[test]
    fn headers_need_a_valid_name_and_exactly_one_source() {
        let cases = [
            json!({"name": "Bad Name", "value": "x"}),
            json!({"name": "", "value": "x"}),
            json!({"name": "X-A"}),
            json!({"name": "X-A", "value": "x", "envRef": "E"}),
            json!({"name": "X-A", "secretKeyRef": {"name": "s"}}),
            json!({"name": "X-A", "value": "a\r\nInjected: yes"}),
        ];
        for h in cases {
            let (r, m) = reason(json!({"spec": {"baseUrl": "https://x", "headers": [h.clone()]}}));
            assert_eq!(r, Reason::InvalidHeader, "{h}: {m}");
        }
        let (_, m) =
            reason(json!({"spec": {"baseUrl": "https://x", "headers": [{"name": "X-A"}]}}));
        assert_eq!(
            m,
            "spec.headers[0] (X-A) has no value: set one of value, secretKeyRef or envRef"
        );
    }

    #[test]
    fn tls_references_must_be_complete() {
        let tls = |t: serde_json::Value| {
            reason(json!({"spec": {"baseUrl": "https://x", "clientTLS": t}}))
        };
        assert_eq!(
            tls(json!({"certificate": {"secretKeyRef": {"name": "c", "key": "tls.crt"}}})).0,
            Reason::IncompleteTLS
        );
        assert_eq!(
            tls(json!({"privateKey": {"secretKeyRef": {"name": "c", "key": "tls.key"}}})).0,
            Reason::IncompleteTLS
        );
        assert_eq!(tls(json!({"rootCA": {}})).0, Reason::IncompleteTLS);
        assert_eq!(
            tls(json!({"rootCA": {"secretKeyRef": {"name": "ca"}}})).0,
            Reason::IncompleteTLS
        );
        assert_eq!(
            tls(json!({"rootCA": {"value": "-----BEGIN CERTIFICATE-----", "secretKeyRef": {"name": "a", "key": "b"}}})).0,
            Reason::InvalidTLS
        );
        assert_eq!(
            tls(json!({"rootCA": {"value": "not pem"}})).0,
            Reason::InvalidTLS
        );
        assert_eq!(
            tls(json!({"renegotiation": "Sometimes"})).0,
            Reason::InvalidTLS
        );
        assert_eq!(
            tls(json!({
                "certificate": {"secretKeyRef": {"name": "c", "key": "tls.crt"}},
                "privateKey": {"secretKeyRef": {"name": "c", "key": "tls.key"}}
            }))
            .0,
            Reason::Valid
        );
    }

    #[test]
    fn other_secret_stores_are_not_supported_for_references() {
        let (r, _) = reason(json!({
            "spec": {"baseUrl": "https://x", "headers": [{"name": "A", "secretKeyRef": {"name": "s", "key": "k"}}]},
            "auth": {"secretStore": "vault"}
        }));
        assert_eq!(r, Reason::UnsupportedSecretStore);
        let (r, _) =
            reason(json!({"spec": {"baseUrl": "https://x"}, "auth": {"secretStore": "vault"}}));
        assert_eq!(r, Reason::Valid);
    }

    #[test]
    fn the_first_problem_decides_and_the_message_stays_short() {
        let headers: Vec<_> = (0..10_000)
            .map(|i| json!({"name": format!("bad name {i}"), "value": "v"}))
            .collect();
        let (r, m) = reason(json!({"spec": {"baseUrl": "https://x", "headers": headers}}));
        assert_eq!(r, Reason::InvalidHeader);
        assert!(m.ends_with("(and 9997 more problems)"), "{m}");
        assert!(m.len() < 400, "{}", m.len());
        let (r, _) = reason(json!({"spec": {"baseUrl": "nope", "headers": [{"name": "A"}]}}));
        assert_eq!(r, Reason::InvalidBaseURL);
    }
}
