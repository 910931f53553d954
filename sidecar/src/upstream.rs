//! Connections out of the sidecar: to its own app, to peer sidecars, and to external servers.
//!
//! * The app channel keeps HTTP/1.1 connections alive (or one HTTP/2 connection for `h2c`).
//! * Peers: see [`crate::outbound::peers`].
//! * External calls (HTTPEndpoints and URLs) never follow redirects, and URL calls refuse
//!   link-local and cloud metadata addresses at resolution time (so DNS cannot smuggle them in).

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector, connect::dns::Name},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tower_service::Service;

use crate::{
    auth::Token,
    body::{self, Body, BoxError},
    config::AppProtocol,
};

pub type HttpClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Body>;

/// How long to wait for a TCP connection (Dapr uses 15 s for HTTPEndpoints).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Idle keep-alive connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The crypto provider every TLS config uses (installed explicitly, never guessed).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client config trusting the machine's root certificates.
pub fn native_roots_tls() -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!("no system root certificates found; https:// URL calls will fail to verify");
    }
    ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Builds a pooled HTTP client over the given TLS config.
pub fn http_client(tls: ClientConfig, resolver: GuardedResolver, http2_only: bool) -> HttpClient {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if http2_only {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(http2_only)
        .build(connector)
}

// === Upstream ===

/// A future the upstreams return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where the stacks end: one kind of upstream (the app, an HTTPEndpoint, URLs), injected, so a
/// test can put the app in memory. Requests carry an absolute URI.
pub trait Upstream: Send + Sync + 'static {
    fn send(&self, req: Request<Body>) -> BoxFuture<Result<Response<Body>, BoxError>>;
}

impl Upstream for HttpClient {
    fn send(&self, req: Request<Body>) -> BoxFuture<Result<Response<Body>, BoxError>> {
        let sent = self.request(req);
        Box::pin(async move {
            sent.await
                .map(|resp| resp.map(body::boxed))
                .map_err(Into::into)
        })
    }
}

impl std::fmt::Debug for dyn Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream")
    }
}

/// An [`Upstream`] made of a function (an app that lives in a test).
pub fn upstream_fn<F, Fut, B>(f: F) -> Arc<dyn Upstream>
where
    F: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, BoxError>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    struct FnUpstream<F>(F);
    impl<F, Fut, B> Upstream for FnUpstream<F>
    where
        F: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<B>, BoxError>> + Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        fn send(&self, req: Request<Body>) -> BoxFuture<Result<Response<Body>, BoxError>> {
            let answer = (self.0)(req);
            Box::pin(async move { answer.await.map(|resp| resp.map(body::boxed)) })
        }
    }
    Arc::new(FnUpstream(f))
}

// === the app channel ===

/// The sidecar's connection to its own app: the client, and the base URL the app is called at.
#[derive(Debug, Clone)]
pub struct AppChannel {
    pub client: Arc<dyn Upstream>,
    /// `http://127.0.0.1:5000` (no trailing slash).
    pub base: Arc<str>,
    /// `APP_API_TOKEN`, set on every request to the app.
    pub token: Option<Token>,
}

impl AppChannel {
    pub fn new(protocol: AppProtocol, address: &str, port: u16) -> Self {
        Self {
            client: app_client(protocol),
            base: app_base(protocol, address, port).into(),
            token: None,
        }
    }

    /// Sends `token` (`APP_API_TOKEN`) with every request to the app.
    pub fn with_token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    /// An app that lives in this process (tests).
    pub fn in_memory(client: Arc<dyn Upstream>) -> Self {
        Self {
            client,
            base: "http://app".into(),
            token: None,
        }
    }

    /// Sends a request to the app: the only place a `dapr-api-token` is set on a request,
    /// the app's own token or none (whatever came with the request is dropped first).
    pub fn send(&self, mut req: Request<Body>) -> BoxFuture<Result<Response<Body>, BoxError>> {
        let h = req.headers_mut();
        h.remove(ferry_api::headers::DAPR_API_TOKEN);
        if let Some(t) = &self.token {
            t.set_on(h);
        }
        self.client.send(req)
    }
}

/// The client of the sidecar's own app: HTTP/1.1 keep-alive (or one HTTP/2 connection for
/// `h2c`), TLS without verification for `https` (as Dapr's app-ssl).
pub fn app_client(protocol: AppProtocol) -> Arc<dyn Upstream> {
    let (tls, h2) = match protocol {
        AppProtocol::Http => (native_roots_or_empty(), false),
        AppProtocol::Https => (insecure_tls(), false),
        AppProtocol::H2c => (native_roots_or_empty(), true),
    };
    Arc::new(http_client(tls, GuardedResolver::open(), h2))
}

/// `http://127.0.0.1:5000` (no trailing slash): where the app is called.
pub fn app_base(protocol: AppProtocol, address: &str, port: u16) -> String {
    let scheme = match protocol {
        AppProtocol::Http | AppProtocol::H2c => "http",
        AppProtocol::Https => "https",
    };
    let host = match address.parse::<Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => address.to_owned(),
    };
    format!("{scheme}://{host}:{port}")
}

fn native_roots_or_empty() -> ClientConfig {
    // Plain-HTTP channels never use TLS; an empty config avoids reading the system store.
    ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// TLS to the app without verifying its certificate, as Dapr's `app-protocol https` does: the
/// app is on the same host (or pod) and typically has a self-signed certificate. Handshake
/// signatures are still checked.
fn insecure_tls() -> ClientConfig {
    let provider = crypto_provider();
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoServerVerification(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct NoServerVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// === impl GuardedResolver ===

/// A DNS resolver that can refuse link-local and cloud metadata addresses.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    block_link_local: bool,
}

impl GuardedResolver {
    /// Resolves anything (the app channel, operator-declared HTTPEndpoints).
    pub fn open() -> Self {
        Self {
            block_link_local: false,
        }
    }

    /// Refuses link-local and metadata addresses (URL calls).
    pub fn guarded() -> Self {
        Self {
            block_link_local: true,
        }
    }
}

/// A URL call reached a link-local or cloud metadata address.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to link-local or cloud metadata addresses")]
pub struct Blocked {
    pub host: String,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let block = self.block_link_local;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !block {
                return Ok(addrs.into_iter());
            }
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| !is_blocked(a.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    Blocked { host },
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Link-local addresses (which hold every major cloud's instance metadata service) and the
/// metadata addresses that are not link-local.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_blocked_v4(v4);
            }
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            // AWS's IPv6 instance metadata endpoint.
            let aws = v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
            link_local || aws
        }
    }
}

fn is_blocked_v4(v4: Ipv4Addr) -> bool {
    v4.is_link_local()
        // Alibaba Cloud metadata, Azure's wire server.
        || v4 == Ipv4Addr::new(100, 100, 100, 200)
        || v4 == Ipv4Addr::new(168, 63, 129, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_link_local_and_metadata() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "168.63.129.16",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_blocked(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "8.8.8.8",
            "::1",
            "2001:db8::1",
            "100.100.100.201",
        ] {
            assert!(!is_blocked(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn guarded_resolver_refuses_blocked_names() {
        let mut r = GuardedResolver::guarded();
        let name: Name = "169.254.169.254".parse().unwrap();
        let err = r.call(name).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let ok: Name = "127.0.0.1".parse().unwrap();
        assert!(r.call(ok).await.unwrap().next().is_some());
    }
}
