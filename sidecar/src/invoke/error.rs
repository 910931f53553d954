//! Sidecar-made errors, turned into HTTP responses in exactly one place.
//!
//! The body is Dapr's: `{"errorCode":"ERR_DIRECT_INVOKE","message":"failed to invoke, id:
//! <target>, err: <cause>"}`. 404 when the request names no target; 500 for everything else
//! the sidecar itself fails at; 403 when the callee's access control denies.

use std::{path::PathBuf, time::Duration};

use crate::body::{self, Body};
use ferry_api::{AppId, Namespace};
use http::{
    HeaderValue, Response, StatusCode,
    header::{CONNECTION, CONTENT_TYPE},
};

pub const ERR_DIRECT_INVOKE: &str = "ERR_DIRECT_INVOKE";

/// One variant per step that can fail.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// Dapr's text, then what is missing and the URL that works.
    #[error("failed getting app id either from the URL path or the header dapr-app-id: {hint}")]
    NoTarget { hint: String },
    #[error("invalid baggage header: {0}")]
    InvalidBaggage(String),
    #[error(transparent)]
    InvalidAppId(super::target::TargetError),
    #[error(transparent)]
    InvalidMethod(#[from] super::method::MethodError),
    #[error("invalid HTTP verb {0}: CONNECT cannot be invoked")]
    InvalidVerb(String),
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "FQDN invocation is turned off on this sidecar (--disable-fqdn-invocation); call an HTTPEndpoint or an app ID instead"
    )]
    FqdnDisabled,
    #[error(
        "refusing to call {host}: it is a link-local or cloud metadata address (start the sidecar with --allow-fqdn-link-local to allow it)"
    )]
    BlockedAddress { host: String },
    #[error("failed to resolve address for '{app}' in namespace '{namespace}': {source}")]
    Resolve {
        app: AppId,
        namespace: Namespace,
        source: Box<ResolveError>,
    },
    /// An HTTPEndpoint of that name exists, but cannot be called.
    #[error("HTTPEndpoint '{name}' cannot be used: {reason}")]
    EndpointUnusable { name: String, reason: Unusable },
    #[error(
        "cannot invoke local endpoint: app channel not initialized (start the sidecar with --app-port)"
    )]
    NoLocalAppChannel,
    #[error("app channel is not initialized (the callee sidecar was started without --app-port)")]
    NoAppChannel,
    #[error("error invoking app channel: {0}")]
    AppChannel(String),
    /// `--enable-app-health-check` says the app is unhealthy (Dapr's text, matched by tools).
    #[error("app is not in a healthy state")]
    AppUnhealthy,
    #[error(
        "request body is larger than the limit of {limit} bytes (raise it with --max-body-size)"
    )]
    BodyTooLarge { limit: u64 },
    /// The caller's request body broke off before its declared end.
    #[error("cannot read the request body: {0}")]
    RequestBody(String),
    #[error("error invoking remote app: {0}")]
    Remote(String),
    #[error("error invoking {url}: {reason}")]
    External { url: String, reason: String },
    #[error("request was meant for app {wanted:?}, but this sidecar serves {own:?}")]
    WrongCallee { wanted: String, own: String },
    /// The callee's access control refused the request (Dapr's text, see `acl::denial`).
    #[error("{0}")]
    AccessDenied(String),
    /// An error the callee's sidecar made (its answer carried `ferry-error`).
    #[error("{message}")]
    Callee {
        status: StatusCode,
        /// What the callee said failed; `None` for a kind this sidecar does not know (a peer
        /// of another version).
        kind: Option<ErrorKind>,
        message: String,
    },
}

/// Why an app ID has no instance to call. The texts name the app, the namespace and what to
/// look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Standalone: no live registry entry.
    #[error(
        "no running sidecar has registered app ID '{app}' in namespace '{namespace}' under {} (start it with: ferry run --app-id {app} ...)",
        dir.display()
    )]
    NotRegistered {
        app: AppId,
        namespace: Namespace,
        dir: PathBuf,
    },
    /// Kubernetes mode without an API client: why there is none.
    #[error("{0}")]
    NoApi(String),
    #[error(
        "this sidecar already watches {max} namespaces; a namespace is let go after {idle_minutes} minutes without calls"
    )]
    TooManyNamespaces { max: usize, idle_minutes: u64 },
    /// The caller's namespace lists an HTTPEndpoint of the name whose Secrets are being read:
    /// it must not be shadowed by an app of the same name meanwhile.
    #[error(
        "HTTPEndpoint '{app}' of namespace '{namespace}' is still being loaded (its Secrets are being read); try again"
    )]
    EndpointLoading { app: AppId, namespace: Namespace },
    #[error(
        "app '{app}' not found in namespace '{namespace}': the namespace has no RoutingTable '{}' (no app there runs with a sidecar, or ferry-operator is not running)",
        crate::kubernetes::index::TABLE_NAME
    )]
    NoTable { app: AppId, namespace: Namespace },
    #[error(
        "app '{app}' not found in namespace '{namespace}': the RoutingTable '{}' has no such app ({listed})",
        crate::kubernetes::index::TABLE_NAME
    )]
    UnknownApp {
        app: AppId,
        namespace: Namespace,
        listed: Listed,
    },
    #[error(
        "app '{app}' in namespace '{namespace}' has no ready instance: Service {service} has no ready endpoint with a port named {}",
        crate::kubernetes::index::INTERNAL_PORT_NAME
    )]
    NoReadyInstance {
        app: AppId,
        namespace: Namespace,
        service: String,
    },
    #[error(
        "the Kubernetes API at {api} has not listed namespace '{namespace}' within {}s of the first call to it: {problem}",
        within.as_secs_f32()
    )]
    NotListed {
        api: String,
        namespace: Namespace,
        within: Duration,
        problem: String,
    },
}

/// The app IDs a RoutingTable lists, as an error tells them: the first few, then a count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub first: Vec<String>,
    pub more: usize,
}

impl Listed {
    /// At most this many are named.
    pub const NAMED: usize = 10;

    pub fn of(ids: &[&str]) -> Self {
        let n = ids.len().min(Self::NAMED);
        Self {
            first: ids[..n].iter().map(|s| (*s).to_owned()).collect(),
            more: ids.len() - n,
        }
    }
}

impl std::fmt::Display for Listed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.first.len(), self.more) {
            (0, _) => f.write_str("it lists no app"),
            (_, 0) => write!(f, "it lists {}", self.first.join(", ")),
            (_, more) => write!(f, "it lists {} and {more} more", self.first.join(", ")),
        }
    }
}

/// Why an HTTPEndpoint that exists cannot be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// The operator reports it not ready.
    #[error("it is not ready ({reason}); see kubectl describe httpendpoint {name} -n {namespace}")]
    NotReady {
        name: String,
        namespace: String,
        reason: String,
    },
    /// What it refers to (a Secret, an inline key) cannot be read or used; the text names the
    /// field.
    #[error("{0}")]
    Material(String),
    /// It cannot be built into a client (its URL, headers or TLS); the text names the field.
    #[error("{0}")]
    Invalid(String),
}

/// What failed, as one fixed word: for logs, metrics, and the `ferry-error` header with which a
/// callee's sidecar marks its own errors (parsed back by the caller's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NoTarget,
    InvalidBaggage,
    InvalidAppId,
    InvalidMethod,
    InvalidVerb,
    InvalidUrl,
    FqdnDisabled,
    BlockedAddress,
    Resolve,
    EndpointUnusable,
    NoAppChannel,
    AppChannel,
    AppUnhealthy,
    BodyTooLarge,
    RequestBody,
    Remote,
    External,
    WrongCallee,
    AccessDenied,
    Callee,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 20] = [
        ErrorKind::NoTarget,
        ErrorKind::InvalidBaggage,
        ErrorKind::InvalidAppId,
        ErrorKind::InvalidMethod,
        ErrorKind::InvalidVerb,
        ErrorKind::InvalidUrl,
        ErrorKind::FqdnDisabled,
        ErrorKind::BlockedAddress,
        ErrorKind::Resolve,
        ErrorKind::EndpointUnusable,
        ErrorKind::NoAppChannel,
        ErrorKind::AppChannel,
        ErrorKind::AppUnhealthy,
        ErrorKind::BodyTooLarge,
        ErrorKind::RequestBody,
        ErrorKind::Remote,
        ErrorKind::External,
        ErrorKind::WrongCallee,
        ErrorKind::AccessDenied,
        ErrorKind::Callee,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoTarget => "no-target",
            ErrorKind::InvalidBaggage => "invalid-baggage",
            ErrorKind::InvalidAppId => "invalid-app-id",
            ErrorKind::InvalidMethod => "invalid-method",
            ErrorKind::InvalidVerb => "invalid-verb",
            ErrorKind::InvalidUrl => "invalid-url",
            ErrorKind::FqdnDisabled => "fqdn-disabled",
            ErrorKind::BlockedAddress => "blocked-address",
            ErrorKind::Resolve => "resolve",
            ErrorKind::EndpointUnusable => "endpoint-unusable",
            ErrorKind::NoAppChannel => "no-app-channel",
            ErrorKind::AppChannel => "app-channel",
            ErrorKind::AppUnhealthy => "app-unhealthy",
            ErrorKind::BodyTooLarge => "body-too-large",
            ErrorKind::RequestBody => "request-body",
            ErrorKind::Remote => "remote",
            ErrorKind::External => "external",
            ErrorKind::WrongCallee => "wrong-callee",
            ErrorKind::AccessDenied => "access-denied",
            ErrorKind::Callee => "callee",
        }
    }

    /// The kind a `ferry-error` value names; `None` for a word this sidecar does not know.
    pub fn parse(wire: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes() == wire)
    }

    /// The `ferry-error` value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Cause {
    pub fn status(&self) -> StatusCode {
        match self {
            Cause::NoTarget { .. } => StatusCode::NOT_FOUND,
            Cause::InvalidBaggage(_) | Cause::RequestBody(_) => StatusCode::BAD_REQUEST,
            Cause::Callee { status, .. } => *status,
            Cause::AccessDenied(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What failed, as one word (logs, metrics, the `ferry-error` header).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Cause::NoTarget { .. } => ErrorKind::NoTarget,
            Cause::InvalidBaggage(_) => ErrorKind::InvalidBaggage,
            Cause::InvalidAppId(_) => ErrorKind::InvalidAppId,
            Cause::InvalidMethod(_) => ErrorKind::InvalidMethod,
            Cause::InvalidVerb(_) => ErrorKind::InvalidVerb,
            Cause::InvalidUrl { .. } => ErrorKind::InvalidUrl,
            Cause::FqdnDisabled => ErrorKind::FqdnDisabled,
            Cause::BlockedAddress { .. } => ErrorKind::BlockedAddress,
            Cause::Resolve { .. } => ErrorKind::Resolve,
            Cause::EndpointUnusable { .. } => ErrorKind::EndpointUnusable,
            Cause::NoLocalAppChannel | Cause::NoAppChannel => ErrorKind::NoAppChannel,
            Cause::AppChannel(_) => ErrorKind::AppChannel,
            Cause::AppUnhealthy => ErrorKind::AppUnhealthy,
            Cause::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            Cause::RequestBody(_) => ErrorKind::RequestBody,
            Cause::Remote(_) => ErrorKind::Remote,
            Cause::External { .. } => ErrorKind::External,
            Cause::WrongCallee { .. } => ErrorKind::WrongCallee,
            Cause::AccessDenied(_) => ErrorKind::AccessDenied,
            Cause::Callee { .. } => ErrorKind::Callee,
        }
    }
}

impl Cause {
    /// Dapr reports these failures as gRPC statuses, so its messages read
    /// `rpc error: code = <Code> desc = <text>`; tools and tests match on that.
    fn grpc_prefix(&self) -> &'static str {
        match self {
            Cause::InvalidMethod(_) => "rpc error: code = InvalidArgument desc = ",
            Cause::AppUnhealthy => "rpc error: code = Internal desc = ",
            Cause::AccessDenied(_) => "rpc error: code = PermissionDenied desc = ",
            Cause::Callee { status, .. } if *status == StatusCode::FORBIDDEN => {
                "rpc error: code = PermissionDenied desc = "
            }
            Cause::Callee {
                kind: Some(ErrorKind::InvalidMethod),
                ..
            } => "rpc error: code = InvalidArgument desc = ",
            Cause::Callee { .. } => "rpc error: code = Internal desc = ",
            _ => "",
        }
    }

    /// Dapr's `errorCode` for this failure.
    pub fn error_code(&self) -> &'static str {
        match self {
            Cause::InvalidBaggage(_) => "ERR_MALFORMED_REQUEST",
            _ => ERR_DIRECT_INVOKE,
        }
    }
}

/// Marks a response the caller's sidecar made itself for a failed invocation (not the app's
/// answer), with its message: the gRPC API answers it as a status instead of a body.
#[derive(Debug, Clone)]
pub struct SidecarFailure {
    pub message: String,
}

/// An invocation that failed in the sidecar, with the target it was for (when known).
#[derive(Debug)]
pub struct InvokeError {
    pub target: Option<String>,
    pub cause: Cause,
    /// Made by a callee sidecar for the calling sidecar (marked with `ferry-error`).
    from_callee: bool,
}

impl InvokeError {
    pub fn new(target: &str, cause: impl Into<Cause>) -> Self {
        Self {
            target: Some(target.to_owned()),
            cause: cause.into(),
            from_callee: false,
        }
    }

    /// A failure before any target is known (no target named, a malformed request).
    pub fn untargeted(cause: Cause) -> Self {
        Self {
            target: None,
            cause,
            from_callee: false,
        }
    }

    /// The request names no target; `raw_path` is its path as received.
    pub fn no_target(raw_path: &str) -> Self {
        Self::untargeted(Cause::NoTarget {
            hint: super::target::no_target_hint(raw_path),
        })
    }

    /// An error made by the callee sidecar (it has no target string of the caller's): the
    /// message is the bare cause, and the `ferry-error` header marks it as the sidecar's own.
    pub fn callee(cause: Cause) -> Self {
        Self {
            target: None,
            cause,
            from_callee: true,
        }
    }

    pub fn message(&self) -> String {
        match (&self.target, &self.cause) {
            (None, _) => self.cause.to_string(),
            (Some(t), c) => format!("failed to invoke, id: {t}, err: {}{c}", c.grpc_prefix()),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.cause.status()
    }

    /// The response for the app (or, on the callee, for the calling sidecar).
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let kind = self.cause.kind();
        let callee_made = self.from_callee;
        let message = self.message();
        let json = serde_json::json!({"errorCode": self.cause.error_code(), "message": message});
        let mut resp = Response::new(body::full(json.to_string()));
        if !callee_made {
            resp.extensions_mut().insert(SidecarFailure { message });
        }
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if callee_made {
            crate::invoke::headers::mark_callee_error(resp.headers_mut(), kind);
        }
        if matches!(self.cause, Cause::BodyTooLarge { .. }) {
            // The rest of the body was refused unread, so an HTTP/1.1 connection cannot carry
            // another request: say so, or a client that pooled it would send its next request
            // into a socket the server is closing (hyper drops this header on HTTP/2).
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// An error and its sources, joined with ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// The first `T` in an error's source chain (also inside an `io::Error`).
pub fn find_in_chain<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|inner| inner.downcast_ref::<T>())
        {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::headers::FERRY_ERROR;
    use http_body_util::BodyExt;

    async fn json_of(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn only_a_refused_body_closes_the_connection() {
        let refused = InvokeError::callee(Cause::BodyTooLarge { limit: 10 }).into_response();
        assert_eq!(refused.headers()[CONNECTION], "close");
        let other = InvokeError::callee(Cause::AppUnhealthy).into_response();
        assert!(other.headers().get(CONNECTION).is_none());
    }

    #[tokio::test]
    async fn no_target_is_404_with_daprs_text() {
        let resp = InvokeError::no_target("/v1.0/invoke/cart/add").into_response();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert!(resp.headers().get(FERRY_ERROR).is_none());
        assert_eq!(
            json_of(resp).await,
            serde_json::json!({
                "errorCode": "ERR_DIRECT_INVOKE",
                "message": "failed getting app id either from the URL path or the header dapr-app-id: the path has no /method/ after the app ID; call /v1.0/invoke/cart/method/add"
            })
        );
    }

    #[tokio::test]
    async fn caller_errors_name_the_target() {
        let bad = super::super::target::classify("a.b.c").unwrap_err();
        let resp = InvokeError::new("a.b.c", Cause::InvalidAppId(bad)).into_response();
        assert_eq!(resp.status(), 500);
        assert!(resp.headers().get(FERRY_ERROR).is_none());
        assert_eq!(
            json_of(resp).await["message"],
            "failed to invoke, id: a.b.c, err: invalid app id a.b.c: a target is <app-id>, <app-id>.<namespace>, an HTTPEndpoint name or an http(s):// URL, with at most one '.'"
        );
    }

    #[tokio::test]
    async fn grpc_flavoured_texts_as_dapr_writes_them() {
        let method = crate::invoke::Method::normalize(b"a#b").unwrap_err();
        let resp = InvokeError::new("b", Cause::InvalidMethod(method)).into_response();
        assert_eq!(
            json_of(resp).await["message"],
            "failed to invoke, id: b, err: rpc error: code = InvalidArgument desc = invalid method: method contains forbidden character: \"a#b\""
        );
        let callee = Cause::Callee {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: Some(ErrorKind::NoAppChannel),
            message: "app channel is not initialized".into(),
        };
        let resp = InvokeError::new("b", callee).into_response();
        assert_eq!(resp.status(), 500);
        assert_eq!(
            json_of(resp).await["message"],
            "failed to invoke, id: b, err: rpc error: code = Internal desc = app channel is not initialized"
        );
    }

    #[tokio::test]
    async fn callee_errors_are_marked() {
        let resp = InvokeError::callee(Cause::NoAppChannel).into_response();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()[FERRY_ERROR], "no-app-channel");
        assert!(
            json_of(resp).await["message"]
                .as_str()
                .unwrap()
                .starts_with("app channel is not initialized")
        );
    }
}
