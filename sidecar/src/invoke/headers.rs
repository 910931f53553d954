//! Header rules, both ways: every rule about which header passes, goes or is set lives here.
//!
//! Dapr's rules are in `dapr/pkg/messaging/v1/util.go` (which metadata passes to the app) and
//! `dapr/pkg/http/api_directmessaging.go` (what the HTTP API forwards and sets).

use ferry_api::headers as names;

use super::error::ErrorKind;
use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{
        CONNECTION, CONTENT_LENGTH, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
        TRAILER, TRANSFER_ENCODING, UPGRADE,
    },
};

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the ones Dapr strips besides).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(CONNECTION) {
        let listed: Vec<HeaderName> = h
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            h.remove(name);
        }
    }
    // The typed constants avoid parsing names for the common ones.
    for name in [
        CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        TE,
        TRAILER,
        PROXY_AUTHORIZATION,
        PROXY_AUTHENTICATE,
    ] {
        h.remove(name);
    }
    for name in &HOP_BY_HOP[..] {
        h.remove(*name);
    }
}

/// Cleans a request an app sent to its sidecar before it is forwarded anywhere: hop-by-hop
/// headers, the headers only a sidecar may set (so they cannot be spoofed), the caller's API
/// token, gRPC-only `-bin` keys, and framing the sidecar recomputes (`Host`, `Content-Length`,
/// `Expect`).
pub fn sanitize_request(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
    for name in [
        names::DAPR_APP_ID,
        names::DAPR_CALLER_APP_ID,
        names::DAPR_CALLER_NAMESPACE,
        names::DAPR_CALLEE_APP_ID,
        names::DAPR_API_TOKEN,
        names::FERRY_CALLEE,
        names::FERRY_ERROR,
        "destination-app-id",
    ] {
        h.remove(name);
    }
    h.remove(HOST);
    h.remove(EXPECT);
    if h.keys().any(|k| k.as_str().ends_with("-bin")) {
        let bin: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().ends_with("-bin"))
            .cloned()
            .collect();
        for k in bin {
            h.remove(k);
        }
    }
    // The length travels with the body (its size hint); a stale value must never be sent on.
    h.remove(CONTENT_LENGTH);
}

/// Who is calling whom, set by the sidecar on app-to-app calls (remote and self).
pub fn set_identity(
    h: &mut HeaderMap,
    caller_id: &HeaderValue,
    caller_ns: &HeaderValue,
    callee_id: &HeaderValue,
) {
    h.insert(names::DAPR_CALLER_APP_ID, caller_id.clone());
    h.insert(names::DAPR_CALLER_NAMESPACE, caller_ns.clone());
    h.insert(names::DAPR_CALLEE_APP_ID, callee_id.clone());
}

/// `X-Forwarded-For`, `X-Forwarded-Host` and `Forwarded`, appended to what is already there, on
/// calls to a remote app.
#[derive(Debug, Clone)]
pub struct ForwardedHeaders {
    ip: HeaderValue,
    host: HeaderValue,
    forwarded: HeaderValue,
}

impl ForwardedHeaders {
    pub fn new(ip: std::net::IpAddr, hostname: &str) -> Self {
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let host = HeaderValue::from_str(hostname)
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let forwarded = HeaderValue::from_str(&format!(
            "for={node};by={node};host={}",
            host.to_str().unwrap_or("localhost")
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("for=unknown"));
        Self {
            ip: HeaderValue::from_str(&ip.to_string())
                .expect("an IP address is a valid header value"),
            host,
            forwarded,
        }
    }

    pub fn append_to(&self, h: &mut HeaderMap) {
        h.append("x-forwarded-for", self.ip.clone());
        h.append("x-forwarded-host", self.host.clone());
        h.append(http::header::FORWARDED, self.forwarded.clone());
    }
}

/// Cleans a response on its way back: hop-by-hop headers never pass.
pub fn sanitize_response(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
}

/// A peer sidecar's request on its way to the app: hop-by-hop headers go, the framing the
/// app channel recomputes (`Host`, `Content-Length`), and any `dapr-api-token` from the network
/// (only the app channel sets one: the app's own `APP_API_TOKEN`).
pub fn for_app(h: &mut HeaderMap) {
    strip_hop_by_hop(h);
    h.remove(names::DAPR_API_TOKEN);
    h.remove(HOST);
    h.remove(CONTENT_LENGTH);
}

/// The app's answer on its way back: hop-by-hop headers go, and so does `ferry-error`: only a
/// sidecar may mark an answer as its own error.
pub fn from_app(h: &mut HeaderMap) {
    sanitize_response(h);
    h.remove(names::FERRY_ERROR);
}

/// Tells the callee's sidecar whom the request is for (`ferry-callee: <app-id>.<namespace>`).
pub fn set_callee(h: &mut HeaderMap, tag: HeaderValue) {
    h.insert(names::FERRY_CALLEE, tag);
}

/// Takes the `ferry-callee` a peer sent (the callee checks it against its own).
pub fn take_callee(h: &mut HeaderMap) -> Option<HeaderValue> {
    h.remove(names::FERRY_CALLEE)
}

/// On the callee, over mTLS: the caller is who its certificate says, whatever its headers
/// claim (every `dapr-caller-*` value that came over the network is replaced).
pub fn set_verified_caller(h: &mut HeaderMap, caller: &ferry_api::SpiffeId) {
    let hv = |s: &str| HeaderValue::from_str(s).expect("validated IDs are valid header values");
    h.insert(names::DAPR_CALLER_APP_ID, hv(caller.app_id.as_str()));
    h.insert(names::DAPR_CALLER_NAMESPACE, hv(caller.namespace.as_str()));
}

/// The caller's app ID, as its sidecar set it.
pub fn caller_app_id(h: &HeaderMap) -> Option<&str> {
    h.get(names::DAPR_CALLER_APP_ID)
        .and_then(|v| v.to_str().ok())
}

/// An HTTPEndpoint's own headers, over the caller's of the same name.
pub fn set_endpoint_headers(h: &mut HeaderMap, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        h.insert(name.clone(), value.clone());
    }
}

/// Marks an error response as the callee sidecar's own, with what failed.
pub fn mark_callee_error(h: &mut HeaderMap, kind: ErrorKind) {
    h.insert(names::FERRY_ERROR, kind.header_value());
}

/// A peer's answer that its sidecar marked as its own error: what failed (`None` for a word this
/// sidecar does not know). `None` when the answer is the app's.
pub fn callee_error(h: &HeaderMap) -> Option<Option<ErrorKind>> {
    h.get(names::FERRY_ERROR)
        .map(|v| ErrorKind::parse(v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names_of(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_and_connection_listed_names_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop , upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-authenticate", "Basic"),
            ("x-kept", "1"),
            ("authorization", "Bearer t"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names_of(&h), ["authorization", "x-kept"]);
    }

    #[test]
    fn request_sanitizing_removes_what_only_sidecars_set() {
        let mut h = map(&[
            ("dapr-app-id", "cart"),
            ("Dapr-Caller-App-Id", "evil"),
            ("DAPR-CALLER-NAMESPACE", "evil"),
            ("dapr-callee-app-id", "evil"),
            ("dapr-api-token", "secret"),
            ("ferry-callee", "x.y"),
            ("ferry-error", "1"),
            ("host", "localhost:3500"),
            ("content-length", "999"),
            ("expect", "100-continue"),
            ("grpc-trace-bin", "AAA"),
            ("content-type", "application/json"),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ]);
        sanitize_request(&mut h);
        assert_eq!(names_of(&h), ["content-type", "x-multi"]);
        let multi: Vec<_> = h.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"], "multi-value headers keep their order");
    }

    #[test]
    fn callee_marks_travel_and_the_apps_cannot_forge_them() {
        let mut h = HeaderMap::new();
        assert_eq!(callee_error(&h), None, "an app's answer");
        mark_callee_error(&mut h, ErrorKind::AppUnhealthy);
        assert_eq!(callee_error(&h), Some(Some(ErrorKind::AppUnhealthy)));
        h.insert(
            names::FERRY_ERROR,
            HeaderValue::from_static("from-a-newer-peer"),
        );
        assert_eq!(
            callee_error(&h),
            Some(None),
            "marked, of a kind not known here"
        );
        from_app(&mut h);
        assert_eq!(
            callee_error(&h),
            None,
            "an app's own ferry-error never passes"
        );
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str().as_bytes()), Some(kind));
        }
    }

    #[test]
    fn requests_for_the_app_lose_their_framing() {
        let mut h = map(&[
            ("host", "10.0.0.1:50002"),
            ("content-length", "12"),
            ("dapr-api-token", "the-callers"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-kept", "1"),
        ]);
        for_app(&mut h);
        assert_eq!(names_of(&h), ["x-kept"]);
        let mut h = HeaderMap::new();
        set_callee(&mut h, HeaderValue::from_static("cart.shop"));
        assert_eq!(take_callee(&mut h).unwrap(), "cart.shop");
        assert!(take_callee(&mut h).is_none());
    }

    #[test]
    fn identity_overrides_and_forwarded_appends() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.9"),
            ("forwarded", "for=10.0.0.9"),
        ]);
        set_identity(
            &mut h,
            &HeaderValue::from_static("a"),
            &HeaderValue::from_static("default"),
            &HeaderValue::from_static("b"),
        );
        ForwardedHeaders::new("127.0.0.1".parse().unwrap(), "host1").append_to(&mut h);
        assert_eq!(h["dapr-caller-app-id"], "a");
        assert_eq!(h["dapr-caller-namespace"], "default");
        assert_eq!(h["dapr-callee-app-id"], "b");
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["10.0.0.9", "127.0.0.1"]);
        assert_eq!(h["x-forwarded-host"], "host1");
        let fwd: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(
            fwd,
            ["for=10.0.0.9", "for=127.0.0.1;by=127.0.0.1;host=host1"]
        );

        let mut h6 = HeaderMap::new();
        ForwardedHeaders::new("::1".parse().unwrap(), "h").append_to(&mut h6);
        assert_eq!(h6["forwarded"], "for=\"[::1]\";by=\"[::1]\";host=h");
    }
}
