//! What one invocation asks for once its target is known: the same for the caller's stack, the
//! callee's and (later) the gRPC API, whatever the request came in as.

use ferry_api::SpiffeId;
use http::{HeaderMap, Request, Uri};

use super::{Cause, Method};
use crate::body::{Body, Outgoing};

/// Verb, normalized method, query, headers and body of one invocation. The caller's stack
/// carries the body as [`Outgoing`] (whether it may be sent again); what is delivered to an
/// app carries a plain [`Body`].
pub struct Invocation<B = Outgoing> {
    pub verb: http::Method,
    pub method: Method,
    /// The query exactly as received (no `?`).
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: B,
    /// The caller's verified identity: set on the callee's side from the mTLS peer
    /// certificate (server.rs puts it in the request's extensions); `None` without one.
    pub caller: Option<SpiffeId>,
}

impl Invocation {
    /// The same invocation with its body as it is, for delivery.
    pub fn into_delivery(self) -> Invocation<Body> {
        Invocation {
            verb: self.verb,
            method: self.method,
            query: self.query,
            headers: self.headers,
            body: self.body.body,
            caller: self.caller,
        }
    }
}

impl Invocation<Body> {
    /// The request to send to `url` (`base` + method + query, see [`Self::url`]).
    pub fn into_request(self, url: &str) -> Result<Request<Body>, Cause> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| Cause::InvalidUrl {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let mut req = Request::new(self.body);
        *req.method_mut() = self.verb;
        *req.uri_mut() = uri;
        *req.headers_mut() = self.headers;
        Ok(req)
    }
}

impl<B> Invocation<B> {
    /// `base` + `/method` + `?query`.
    pub fn url(&self, base: &str) -> String {
        join_url(base, &self.method, self.query.as_deref())
    }

    /// The path and query, in origin form.
    pub fn path_and_query(&self) -> String {
        join_url("", &self.method, self.query.as_deref())
    }

    pub fn is_head(&self) -> bool {
        self.verb == http::Method::HEAD
    }
}

/// `base` + `/method` + `?query`.
pub fn join_url(base: &str, method: &Method, query: Option<&str>) -> String {
    let mut url =
        String::with_capacity(base.len() + method.as_str().len() + 2 + query.map_or(0, str::len));
    url.push_str(base);
    url.push('/');
    url.push_str(method.as_str());
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_base_method_and_query() {
        let m = Method::normalize(b"a/b").unwrap();
        assert_eq!(
            join_url("http://x:1", &m, Some("q=1")),
            "http://x:1/a/b?q=1"
        );
        assert_eq!(join_url("", &m, None), "/a/b");
        let root = Method::normalize(b"").unwrap();
        assert_eq!(join_url("http://x", &root, None), "http://x/");
    }
}
