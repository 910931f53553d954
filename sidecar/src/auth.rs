//! API tokens, both ways (Dapr's `dapr/pkg/api/http/middlewares.go` and its app channel).
//!
//! - `DAPR_API_TOKEN`: every request on the HTTP API must carry `dapr-api-token: <token>`, or
//!   it is answered 401 `invalid api token`. Only `GET /v1.0/healthz` and
//!   `GET /v1.0/healthz/outbound` are exempt, by exact path after trimming slashes (never a
//!   prefix: CVE-2023-37918). The comparison takes the same time wherever the bytes differ.
//!   A request that passes loses the header, so it never travels on.
//! - `APP_API_TOKEN`: set by this sidecar on every request to its own app (the app channel and
//!   the health probe), and only there: a caller never sends it (CVE-2024-35223), a callee
//!   drops whatever token arrives from the network before setting its own.

use ferry_api::headers::DAPR_API_TOKEN;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header::CONTENT_TYPE};
use subtle::ConstantTimeEq;

use crate::body::{self, Body};

/// Dapr's 401 body (`http.Error` adds the newline).
pub const INVALID_TOKEN_BODY: &str = "invalid api token\n";

/// A token from the environment. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(HeaderValue);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token from the environment cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{var} holds a character that cannot be sent in an HTTP header (control characters and newlines are not allowed); set it to the token alone"
)]
pub struct TokenError {
    pub var: &'static str,
}

impl Token {
    /// The token in `value` of the variable `var`; an empty value is no token (as in Dapr).
    pub fn from_env_value(
        var: &'static str,
        value: Option<&str>,
    ) -> Result<Option<Self>, TokenError> {
        match value {
            None | Some("") => Ok(None),
            Some(v) => {
                let mut h = HeaderValue::from_str(v).map_err(|_| TokenError { var })?;
                h.set_sensitive(true);
                Ok(Some(Self(h)))
            }
        }
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: Option<&HeaderValue>) -> bool {
        let want = self.0.as_bytes();
        let got = presented.map_or(&[][..], HeaderValue::as_bytes);
        // `ct_eq` on slices of different lengths is false at once; the length of a token is
        // not the secret, its bytes are.
        bool::from(want.ct_eq(got))
    }

    /// Sets the app token on a request for the own app, over any value already there.
    pub fn set_on(&self, h: &mut HeaderMap) {
        h.insert(DAPR_API_TOKEN, self.0.clone());
    }
}

/// Whether a request on the HTTP API needs no token: `GET` of exactly `v1.0/healthz` or
/// `v1.0/healthz/outbound` once leading and trailing slashes are trimmed (Dapr's
/// `isRouteExcludedFromAPITokenAuth`).
pub fn is_exempt(method: &Method, path: &str) -> bool {
    method == Method::GET
        && matches!(
            path.trim_matches('/'),
            "v1.0/healthz" | "v1.0/healthz/outbound"
        )
}

/// The API token check of one request: whether it may pass (else it is answered with
/// [`unauthorized`]); when it passes, the header is removed.
pub fn admit(token: Option<&Token>, method: &Method, path: &str, headers: &mut HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = headers.get(DAPR_API_TOKEN);
    if !token.matches(presented) && !is_exempt(method, path) {
        return false;
    }
    headers.remove(DAPR_API_TOKEN);
    true
}

/// 401 `invalid api token`, as Go's `http.Error` writes it.
pub fn unauthorized() -> Response<Body> {
    let mut r = Response::new(body::full(INVALID_TOKEN_BODY));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        Token::from_env_value("DAPR_API_TOKEN", Some(s))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn exemptions_are_exact() {
        let cases: &[(&str, &str, bool)] = &[
            ("GET", "/v1.0/healthz", true),
            ("GET", "/v1.0/healthz/", true),
            ("GET", "//v1.0/healthz//", true),
            ("GET", "/v1.0/healthz/outbound", true),
            ("GET", "v1.0/healthz/outbound/", true),
            ("POST", "/v1.0/healthz", false),
            ("HEAD", "/v1.0/healthz", false),
            ("GET", "/v1.0/healthzx", false),
            ("GET", "/v1.0/healthz/../invoke/a/method/b", false),
            ("GET", "/v1.0/healthz/outbound/x", false),
            ("GET", "/v1.0/healthz/x", false),
            ("GET", "/v1.0/invoke/a/method/v1.0/healthz", false),
            ("GET", "/v1.0//healthz", false),
            ("GET", "/v1.0/metadata", false),
            ("GET", "/", false),
        ];
        for (verb, path, want) in cases {
            let m: Method = verb.parse().unwrap();
            assert_eq!(is_exempt(&m, path), *want, "{verb} {path}");
        }
    }

    #[test]
    fn only_the_exact_token_passes_and_then_goes() {
        let t = token("s3cret");
        for (presented, want) in [
            (Some("s3cret"), true),
            (Some("s3cret "), false),
            (Some("s3cre"), false),
            (Some("S3cret"), false),
            (Some(""), false),
            (None, false),
        ] {
            let mut h = HeaderMap::new();
            if let Some(p) = presented {
                h.insert(DAPR_API_TOKEN, HeaderValue::from_str(p).unwrap());
            }
            let verdict = admit(Some(&t), &Method::POST, "/v1.0/invoke/a/method/b", &mut h);
            assert_eq!(verdict, want, "{presented:?}");
            if want {
                assert!(!h.contains_key(DAPR_API_TOKEN), "removed once checked");
            }
        }
        let mut h = HeaderMap::new();
        h.insert(DAPR_API_TOKEN, HeaderValue::from_static("whatever"));
        assert!(admit(None, &Method::GET, "/", &mut h));
        assert!(
            h.contains_key(DAPR_API_TOKEN),
            "without DAPR_API_TOKEN nothing is checked here (the header rules drop it later)"
        );
    }

    #[tokio::test]
    async fn the_401_is_daprs() {
        use http_body_util::BodyExt;
        let r = unauthorized();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        let b = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(b, "invalid api token\n");
    }

    #[test]
    fn the_comparison_is_constant_time() {
        // `matches` must stay on subtle's `ct_eq`: a `==` on the bytes returns at the first
        // difference and leaks the token's prefix by timing.
        let src = include_str!("auth.rs");
        let body = &src[src.find("pub fn matches").unwrap()..src.find("pub fn set_on").unwrap()];
        assert!(body.contains("want.ct_eq(got)"), "{body}");
        assert!(!body.contains("=="), "{body}");
    }

    #[test]
    fn tokens_never_print_and_bad_values_are_named() {
        assert_eq!(format!("{:?}", token("s3cret")), "Token(<redacted>)");
        assert_eq!(
            Token::from_env_value("APP_API_TOKEN", Some("")).unwrap(),
            None
        );
        let e = Token::from_env_value("APP_API_TOKEN", Some("a\nb")).unwrap_err();
        assert!(e.to_string().starts_with("APP_API_TOKEN holds"), "{e}");
    }
}
