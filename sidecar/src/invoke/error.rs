//! Sidecar-made errors, turned into HTTP responses in exactly one place.
//!
//! The body is Dapr's: `{"errorCode":"ERR_DIRECT_INVOKE","message":"failed to invoke, id:
//! <target>, err: <cause>"}`. 404 when the request names no target; 500 for everything else
//! the sidecar itself fails at (the callee's access-control denial will be 403).

use crate::body::{self, Body};
use ferry_api::headers::FERRY_ERROR;
use http::{
    HeaderValue, Response, StatusCode,
    header::{CONNECTION, CONTENT_TYPE},
};

pub const ERR_DIRECT_INVOKE: &str = "ERR_DIRECT_INVOKE";

/// One variant per step that can fail.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("failed getting app id either from the URL path or the header dapr-app-id")]
    NoTarget,
    #[error("invalid baggage header: {0}")]
    InvalidBaggage(String),
    #[error("invalid app id {0}")]
    InvalidAppId(String),
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
    #[error("failed to resolve address for '{app}' in namespace '{namespace}': {reason}")]
    Resolve {
        app: String,
        namespace: String,
        reason: String,
    },
    /// An HTTPEndpoint of that name exists, but cannot be called.
    #[error("HTTPEndpoint '{name}' cannot be used: {reason}")]
    EndpointUnusable { name: String, reason: String },
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
    #[error("{message}")]
    Callee {
        status: StatusCode,
        /// The callee's `ferry-error` kind.
        kind: String,
        message: String,
    },
}

impl Cause {
    pub fn status(&self) -> StatusCode {
        match self {
            Cause::NoTarget => StatusCode::NOT_FOUND,
            Cause::InvalidBaggage(_) | Cause::RequestBody(_) => StatusCode::BAD_REQUEST,
            Cause::Callee { status, .. } => *status,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A fixed label for logs, metrics and the `ferry-error` header.
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::NoTarget => "no-target",
            Cause::InvalidBaggage(_) => "invalid-baggage",
            Cause::InvalidAppId(_) => "invalid-app-id",
            Cause::InvalidMethod(_) => "invalid-method",
            Cause::InvalidVerb(_) => "invalid-verb",
            Cause::InvalidUrl { .. } => "invalid-url",
            Cause::FqdnDisabled => "fqdn-disabled",
            Cause::BlockedAddress { .. } => "blocked-address",
            Cause::Resolve { .. } => "resolve",
            Cause::EndpointUnusable { .. } => "endpoint-unusable",
            Cause::NoLocalAppChannel | Cause::NoAppChannel => "no-app-channel",
            Cause::AppChannel(_) => "app-channel",
            Cause::AppUnhealthy => "app-unhealthy",
            Cause::BodyTooLarge { .. } => "body-too-large",
            Cause::RequestBody(_) => "request-body",
            Cause::Remote(_) => "remote",
            Cause::External { .. } => "external",
            Cause::WrongCallee { .. } => "wrong-callee",
            Cause::Callee { .. } => "callee",
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
            Cause::Callee { status, .. } if *status == StatusCode::FORBIDDEN => {
                "rpc error: code = PermissionDenied desc = "
            }
            Cause::Callee { kind, .. } if kind == "invalid-method" => {
                "rpc error: code = InvalidArgument desc = "
            }
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

    pub fn no_target() -> Self {
        Self::untargeted(Cause::NoTarget)
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
        let json =
            serde_json::json!({"errorCode": self.cause.error_code(), "message": self.message()});
        let mut resp = Response::new(body::full(json.to_string()));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if callee_made {
            resp.headers_mut()
                .insert(FERRY_ERROR, HeaderValue::from_static(kind));
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

#[cfg(test)]
mod tests {
    use super::*;
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
        let resp = InvokeError::no_target().into_response();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert!(resp.headers().get(FERRY_ERROR).is_none());
        assert_eq!(
            json_of(resp).await,
            serde_json::json!({
                "errorCode": "ERR_DIRECT_INVOKE",
                "message": "failed getting app id either from the URL path or the header dapr-app-id"
            })
        );
    }

    #[tokio::test]
    async fn caller_errors_name_the_target() {
        let resp = InvokeError::new("a.b.c", Cause::InvalidAppId("a.b.c".into())).into_response();
        assert_eq!(resp.status(), 500);
        assert!(resp.headers().get(FERRY_ERROR).is_none());
        assert_eq!(
            json_of(resp).await["message"],
            "failed to invoke, id: a.b.c, err: invalid app id a.b.c"
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
            kind: "no-app-channel".into(),
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
