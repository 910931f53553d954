//! Where a request to the HTTP API is going: target and method, from the request alone.
//!
//! The three forms are tried in Dapr's order: the `dapr-app-id` header, then HTTP basic auth
//! with user `dapr-app-id`, then the path `/v1.0/invoke/<target>/method/<method...>`.

use base64::Engine as _;
use ferry_api::{AppId, Namespace, headers::DAPR_APP_ID};
use http::{HeaderMap, header::AUTHORIZATION};
use percent_encoding::percent_decode;

/// What the request names, before anything is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The target exactly as given (an app ID, `app.namespace`, an HTTPEndpoint name or a URL).
    pub target: String,
    /// The method, percent-decoded once, not yet normalized.
    pub method: Vec<u8>,
    pub form: Form,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Header,
    BasicAuth,
    Path,
}

/// Finds target and method; `None` means the request names no target (Dapr answers 404).
///
/// `raw_path` is the path as received (still percent-encoded).
pub fn extract(headers: &HeaderMap, raw_path: &str) -> Option<Extracted> {
    let decoded: Vec<u8> = percent_decode(raw_path.as_bytes()).collect();

    if let Some(v) = headers.get(DAPR_APP_ID)
        && !v.is_empty()
    {
        return Some(Extracted {
            target: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            method: decoded,
            form: Form::Header,
        });
    }
    if let Some(target) = basic_auth_target(headers) {
        return Some(Extracted {
            target,
            method: decoded,
            form: Form::BasicAuth,
        });
    }
    let (target, method) = split_invoke_path(&decoded)?;
    let target = String::from_utf8_lossy(target).into_owned();
    // Dapr unescapes the target once more, so `http%253A%252F%252Fhost` works as well as the
    // once-encoded form; like Go's QueryUnescape, '+' becomes a space.
    let target = match query_unescape(&target) {
        Some(t) if !t.is_empty() => t,
        _ => target,
    };
    Some(Extracted {
        target,
        method: method.to_vec(),
        form: Form::Path,
    })
}

/// What to tell a caller whose request names no target: what is missing from `raw_path` (as
/// received) and the URL that works.
pub fn no_target_hint(raw_path: &str) -> String {
    const FORM: &str = "/v1.0/invoke/<app-id>/method/<method>";
    let segments: Vec<&str> = raw_path.split('/').filter(|s| !s.is_empty()).collect();
    // `/v1.0/invoke/...`, or `invoke` one segment early or late with another version.
    let at = segments
        .iter()
        .position(|s| *s == "invoke")
        .filter(|i| *i <= 1);
    let Some(at) = at else {
        // The sidecar's own routes, with a verb they do not take.
        if let ["v1.0", api @ ("healthz" | "metadata"), ..] = segments[..] {
            return format!(
                "/v1.0/{api} is answered for GET only{}; to invoke an app at this path, name it in a dapr-app-id header",
                if api == "metadata" {
                    " (and PUT /v1.0/metadata/<key>)"
                } else {
                    ""
                }
            );
        }
        // `/v1.0/state/...`, `/v1.0-alpha1/...`: another Dapr API, not an invocation.
        if let [version, api, ..] = segments[..]
            && version.starts_with("v1")
        {
            return format!(
                "/{version}/{api} is not an API of Ferry's, which serves invocation ({FORM}), /v1.0/healthz and /v1.0/metadata; to invoke an app at this path, name it in a dapr-app-id header"
            );
        }
        let path = if raw_path.starts_with('/') {
            raw_path.to_owned()
        } else {
            format!("/{raw_path}")
        };
        return format!(
            "name the app in the path, /v1.0/invoke/<app-id>/method{path}, or in a dapr-app-id header"
        );
    };
    let version = (at == 1).then(|| segments[0]);
    let rest = &segments[at + 1..];
    let like_method =
        |m: &str| m.eq_ignore_ascii_case("method") || m.eq_ignore_ascii_case("methods");
    let (complaint, call) = match rest {
        [] => ("the path names no app ID".to_owned(), FORM.to_owned()),
        [m, ..] if m.eq_ignore_ascii_case("method") => {
            ("the path names no app ID".to_owned(), FORM.to_owned())
        }
        [id] => (
            "the path names no method after the app ID".to_owned(),
            format!("/v1.0/invoke/{id}/method/<method>"),
        ),
        [id, m] if like_method(m) => (
            format!("the path names no method after /{m}/"),
            format!("/v1.0/invoke/{id}/method/<method>"),
        ),
        [id, m, tail @ ..] if like_method(m) => (
            if *m == "method" {
                String::new()
            } else {
                format!("the path has /{m}/ where /method/ belongs")
            },
            format!("/v1.0/invoke/{id}/method/{}", tail.join("/")),
        ),
        [id, tail @ ..] => (
            "the path has no /method/ after the app ID".to_owned(),
            format!("/v1.0/invoke/{id}/method/{}", tail.join("/")),
        ),
    };
    let version = match version {
        Some("v1.0") => String::new(),
        Some(v) => format!("the API version is v1.0, not {v}"),
        None => "the path has no API version (v1.0)".to_owned(),
    };
    let what: Vec<String> = [version, complaint]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    format!("{}; call {call}", what.join("; "))
}

/// `Authorization: Basic base64(dapr-app-id:<target>)`, user compared case-insensitively.
fn basic_auth_target(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, creds) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(creds.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    if pass.contains(':') || !user.eq_ignore_ascii_case(DAPR_APP_ID) || pass.is_empty() {
        return None;
    }
    Some(pass.to_owned())
}

/// Splits a decoded `/v1.0/invoke/<target>/method/<method...>` path, tolerating repeated
/// slashes before and after `invoke`. The target ends at the first `/method/`.
fn split_invoke_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = skip_slashes(path);
    let rest = skip_slashes(rest.strip_prefix(b"v1.0/")?);
    let rest = skip_slashes(rest.strip_prefix(b"invoke/")?);
    const SEP: &[u8] = b"/method/";
    let at = rest.windows(SEP.len()).position(|w| w == SEP)?;
    Some((&rest[..at], &rest[at + SEP.len()..]))
}

fn skip_slashes(p: &[u8]) -> &[u8] {
    let n = p.iter().take_while(|b| **b == b'/').count();
    &p[n..]
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` decodes, anything malformed fails.
fn query_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The kinds of target a string can name, in Dapr's order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetName {
    /// `http://...` or `https://...`: a direct call to that URL.
    Url(String),
    /// `app` (namespace `None`: the caller's own) or `app.namespace`.
    App {
        id: AppId,
        namespace: Option<Namespace>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The target is not `app`, `app.namespace` or a URL; `reason` says which part is wrong.
    #[error("invalid app id {target}: {reason}")]
    InvalidAppId { target: String, reason: String },
}

/// Classifies a target string. HTTPEndpoint names are matched later, against the app ID part.
pub fn classify(target: &str) -> Result<TargetName, TargetError> {
    let lower = target
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(TargetName::Url(target.to_owned()));
    }
    let invalid = |reason: String| TargetError::InvalidAppId {
        target: target.to_owned(),
        reason,
    };
    let mut parts = target.split('.');
    let id = parts.next().unwrap_or_default();
    let ns = parts.next();
    if parts.next().is_some() {
        return Err(invalid(
            "a target is <app-id>, <app-id>.<namespace>, an HTTPEndpoint name or an http(s):// URL, with at most one '.'".to_owned(),
        ));
    }
    let id = AppId::new(id).map_err(|e| invalid(e.to_string()))?;
    let namespace = match ns {
        None => None,
        Some(ns) => Some(
            Namespace::new(ns)
                .map_err(|e| invalid(format!("after the '.' comes a namespace: {e}")))?,
        ),
    };
    Ok(TargetName::App { id, namespace })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ex(path: &str) -> Option<(String, String)> {
        extract(&HeaderMap::new(), path).map(|e| {
            assert_eq!(e.form, Form::Path);
            (e.target, String::from_utf8(e.method).unwrap())
        })
    }

    #[test]
    fn path_form() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("/v1.0/invoke/cart/method/add", Some(("cart", "add"))),
            ("/v1.0/invoke/cart/method/a/b/c", Some(("cart", "a/b/c"))),
            ("/v1.0/invoke/cart/method/", Some(("cart", ""))),
            ("/v1.0////invoke/cart/method/foo", Some(("cart", "foo"))),
            ("/v1.0//invoke//cart/method//foo", Some(("cart", "/foo"))),
            ("//v1.0/invoke/cart/method/x", Some(("cart", "x"))),
            ("/v1.0/invoke/cart.prod/method/x", Some(("cart.prod", "x"))),
            (
                "/v1.0/invoke/cart/method/method/x",
                Some(("cart", "method/x")),
            ),
            (
                "/v1.0/invoke/http://localhost:8080/base/method/x",
                Some(("http://localhost:8080/base", "x")),
            ),
            (
                "/v1.0/invoke/http%3A%2F%2Fexample.com/method/x",
                Some(("http://example.com", "x")),
            ),
            (
                "/v1.0/invoke/http%253A%252F%252Fexample.com/method/x",
                Some(("http://example.com", "x")),
            ),
            ("/v1.0/invoke/cart/method/a%2Fb", Some(("cart", "a/b"))),
            ("/v1.0/invoke/cart/method/a%252Fb", Some(("cart", "a%2Fb"))),
            ("/v1.0/invoke/a+b/method/x", Some(("a b", "x"))),
            ("/v1.0/invoke/cart", None),
            ("/v1.0/invoke/cart/method", None),
            ("/v1.0/invoke//method/x", None),
            ("/v1.0/invoke/", None),
            ("/v1.0/state/x", None),
            ("/foo", None),
            ("/", None),
        ];
        for (path, want) in cases {
            let want = want.map(|(t, m)| (t.to_owned(), m.to_owned()));
            assert_eq!(ex(path), want, "path {path}");
        }
    }

    #[test]
    fn header_form_wins_and_takes_the_whole_path() {
        let mut h = HeaderMap::new();
        h.insert(DAPR_APP_ID, HeaderValue::from_static("cart"));
        let e = extract(&h, "/v1.0/invoke/other/method/x%20y").unwrap();
        assert_eq!(e.form, Form::Header);
        assert_eq!(e.target, "cart");
        assert_eq!(e.method, b"/v1.0/invoke/other/method/x y");
        // An empty header does not count.
        h.insert(DAPR_APP_ID, HeaderValue::from_static(""));
        assert_eq!(extract(&h, "/foo"), None);
    }

    #[test]
    fn basic_auth_form() {
        let auth = |creds: &str| {
            let mut h = HeaderMap::new();
            let b64 = base64::engine::general_purpose::STANDARD.encode(creds);
            h.insert(AUTHORIZATION, format!("Basic {b64}").parse().unwrap());
            extract(&h, "/orders/1").map(|e| (e.form, e.target))
        };
        assert_eq!(
            auth("dapr-app-id:cart"),
            Some((Form::BasicAuth, "cart".into()))
        );
        assert_eq!(
            auth("DAPR-APP-ID:cart"),
            Some((Form::BasicAuth, "cart".into()))
        );
        assert_eq!(auth("someone:cart"), None);
        assert_eq!(auth("dapr-app-id:a:b"), None);
        assert_eq!(auth("dapr-app-id:"), None);
        assert_eq!(auth("nocolon"), None);
    }

    #[test]
    fn classifies_targets() {
        let app = |id: &str, ns: Option<&str>| TargetName::App {
            id: AppId::new(id).unwrap(),
            namespace: ns.map(|n| Namespace::new(n).unwrap()),
        };
        assert_eq!(classify("cart"), Ok(app("cart", None)));
        assert_eq!(classify("cart.prod"), Ok(app("cart", Some("prod"))));
        assert_eq!(
            classify("http://h:1/x"),
            Ok(TargetName::Url("http://h:1/x".into()))
        );
        assert_eq!(
            classify("HTTPS://h"),
            Ok(TargetName::Url("HTTPS://h".into()))
        );
        for (bad, reason) in [
            ("a.b.c", "with at most one '.'"),
            ("", "app ID is empty"),
            (".ns", "app ID is empty"),
            ("cart.", "after the '.' comes a namespace"),
            ("a b", "\"a b\""),
            ("cart.Prod", "after the '.' comes a namespace"),
        ] {
            let Err(TargetError::InvalidAppId {
                target,
                reason: why,
            }) = classify(bad)
            else {
                panic!("target {bad:?} was accepted");
            };
            assert_eq!(target, bad);
            assert!(why.contains(reason), "target {bad:?}: {why}");
        }
    }
    #[test]
    fn a_request_without_a_target_is_told_the_url_that_works() {
        let cases = [
            (
                "/v1.0/invoke/cart/add",
                "the path has no /method/ after the app ID; call /v1.0/invoke/cart/method/add",
            ),
            (
                "/v1.0/invoke/cart/orders/7",
                "the path has no /method/ after the app ID; call /v1.0/invoke/cart/method/orders/7",
            ),
            (
                "/v1.0/invoke/cart",
                "the path names no method after the app ID; call /v1.0/invoke/cart/method/<method>",
            ),
            (
                "/v1.0/invoke/cart/method",
                "the path names no method after /method/; call /v1.0/invoke/cart/method/<method>",
            ),
            (
                "/v1.0/invoke/cart/methods/add",
                "the path has /methods/ where /method/ belongs; call /v1.0/invoke/cart/method/add",
            ),
            (
                "/v1.0/invoke/",
                "the path names no app ID; call /v1.0/invoke/<app-id>/method/<method>",
            ),
            (
                "/v1.0/invoke//method/x",
                "the path names no app ID; call /v1.0/invoke/<app-id>/method/<method>",
            ),
            (
                "/v1/invoke/cart/method/add",
                "the API version is v1.0, not v1; call /v1.0/invoke/cart/method/add",
            ),
            (
                "/invoke/cart/method/add",
                "the path has no API version (v1.0); call /v1.0/invoke/cart/method/add",
            ),
            (
                "/v1.0/state/store/key",
                "/v1.0/state is not an API of Ferry's, which serves invocation (/v1.0/invoke/<app-id>/method/<method>), /v1.0/healthz and /v1.0/metadata; to invoke an app at this path, name it in a dapr-app-id header",
            ),
            (
                "/v1.0/healthz",
                "/v1.0/healthz is answered for GET only; to invoke an app at this path, name it in a dapr-app-id header",
            ),
            (
                "/add",
                "name the app in the path, /v1.0/invoke/<app-id>/method/add, or in a dapr-app-id header",
            ),
            (
                "/",
                "name the app in the path, /v1.0/invoke/<app-id>/method/, or in a dapr-app-id header",
            ),
        ];
        for (path, want) in cases {
            assert_eq!(no_target_hint(path), want, "path {path}");
        }
    }
}
