//! Connections out of the sidecar: to its own app, to peer sidecars, and to external servers.
//!
//! * The app channel keeps HTTP/1.1 connections alive (or one HTTP/2 connection for `h2c`).
//! * Peers get one multiplexed HTTP/2 (h2c) connection each, made before a request is handed
//!   over, so that a failure to connect never consumes the request body and the request can go
//!   to another instance.
//! * External calls (HTTPEndpoints and URLs) never follow redirects, and URL calls refuse
//!   link-local and cloud metadata addresses at resolution time (so DNS cannot smuggle them in).

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::Request;
use hyper::{body::Incoming, client::conn::http2};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector, connect::dns::Name},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tower_service::Service;

use crate::{body::Body, config::AppProtocol};

pub type HttpClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Body>;

/// How long to wait for a TCP connection (Dapr uses 15 s for HTTPEndpoints).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// HTTP/2 flow-control windows between sidecars, both ways. Fixed rather than adaptive:
/// hyper's adaptive window measures the bandwidth-delay product with a PING per burst of
/// data, which on short requests is an extra frame, syscall and wake-up on both sidecars for
/// every call. 1 MiB per stream covers a 10 Gbit/s link at 0.8 ms round trip; the connection
/// window bounds what one peer can make this sidecar buffer.
pub const H2_STREAM_WINDOW: u32 = 1 << 20;
pub const H2_CONNECTION_WINDOW: u32 = 4 << 20;
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

// === impl AppChannel ===

/// The sidecar's connection to its own app.
#[derive(Debug, Clone)]
pub struct AppChannel {
    client: HttpClient,
    /// `http://127.0.0.1:5000` (no trailing slash).
    pub base: String,
    pub protocol: AppProtocol,
    pub port: u16,
    pub address: String,
}

impl AppChannel {
    pub fn new(protocol: AppProtocol, address: &str, port: u16) -> Self {
        let (scheme, tls, h2) = match protocol {
            AppProtocol::Http => ("http", native_roots_or_empty(), false),
            AppProtocol::Https => ("https", insecure_tls(), false),
            AppProtocol::H2c => ("http", native_roots_or_empty(), true),
        };
        let host = match address.parse::<Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) => address.to_owned(),
        };
        Self {
            client: http_client(tls, GuardedResolver::open(), h2),
            base: format!("{scheme}://{host}:{port}"),
            protocol,
            port,
            address: address.to_owned(),
        }
    }

    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
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

// === impl PeerPool ===

pub type PeerSender = http2::SendRequest<Body>;

/// One multiplexed HTTP/2 connection per peer sidecar. Requests read the map without locking
/// (a snapshot swap); a lock is taken only to connect.
#[derive(Default)]
pub struct PeerPool {
    slots: ArcSwap<HashMap<SocketAddr, Arc<PeerSlot>>>,
    insert: std::sync::Mutex<()>,
}

#[derive(Default)]
struct PeerSlot {
    sender: ArcSwapOption<PeerSender>,
    connecting: tokio::sync::Mutex<()>,
}

impl PeerPool {
    /// A sender on a live connection to `addr`, connecting first when there is none.
    pub async fn ready(&self, addr: SocketAddr) -> io::Result<PeerSender> {
        let slot = self.slot(addr);
        if let Some(s) = live(&slot.sender) {
            return Ok(s);
        }
        let _g = slot.connecting.lock().await;
        if let Some(s) = live(&slot.sender) {
            return Ok(s);
        }
        let sender = connect_peer(addr).await?;
        slot.sender.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    /// Drops the connection to `addr` (after it failed), so the next request reconnects.
    pub fn evict(&self, addr: SocketAddr) {
        if let Some(slot) = self.slots.load().get(&addr) {
            slot.sender.store(None);
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<PeerSlot> {
        if let Some(s) = self.slots.load().get(&addr) {
            return s.clone();
        }
        let _g = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.slots.load_full();
        if let Some(s) = current.get(&addr) {
            return s.clone();
        }
        let mut next = (*current).clone();
        let slot = Arc::new(PeerSlot::default());
        next.insert(addr, slot.clone());
        self.slots.store(Arc::new(next));
        slot
    }
}

fn live(sender: &ArcSwapOption<PeerSender>) -> Option<PeerSender> {
    let guard = sender.load();
    let s = guard.as_ref()?;
    if s.is_closed() {
        return None;
    }
    Some((**s).clone())
}

async fn connect_peer(addr: SocketAddr) -> io::Result<PeerSender> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )
        })??;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(peer = %addr, error = %e, "peer connection ended");
        }
    });
    Ok(sender)
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
