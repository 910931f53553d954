//! The connector to peer sidecars: plain TCP, or mTLS that proves this sidecar's identity and
//! accepts the peer only when its verified SPIFFE ID is the app and namespace the call is for.
//! A recycled pod IP that now belongs to another app fails the handshake's check, before any
//! request is written, so the call can go to another instance.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::peers::{Connect, Peer, connect_tcp};

/// How long a TLS handshake with a peer may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP, or mTLS with each peer's expected identity.
#[derive(Clone)]
pub enum PeerConnect {
    Tcp,
    Mtls(TlsConnector),
}

impl PeerConnect {
    pub fn mtls(config: Arc<rustls::ClientConfig>) -> Self {
        Self::Mtls(TlsConnector::from(config))
    }
}

impl Connect for PeerConnect {
    type Io = TokioIo<PeerIo>;

    async fn connect(&self, peer: &Peer) -> io::Result<Self::Io> {
        let tcp = connect_tcp(peer.addr).await?;
        match self {
            Self::Tcp => Ok(TokioIo::new(PeerIo::Tcp(tcp))),
            Self::Mtls(tls) => {
                let name = ServerName::IpAddress(peer.addr.ip().into());
                let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake timed out")
                    })??;
                check_identity(&stream, peer)?;
                Ok(TokioIo::new(PeerIo::Tls(Box::new(stream))))
            }
        }
    }
}

/// The peer's verified identity must be `<app-id>.<namespace>` of the call.
fn check_identity(stream: &TlsStream<TcpStream>, peer: &Peer) -> io::Result<()> {
    let id = ferry_identity::tls::peer_identity(stream.get_ref().1.peer_certificates());
    let wanted = peer.callee.as_bytes();
    let matches = id.as_ref().is_some_and(|id| {
        let (app, ns) = (
            id.app_id.as_str().as_bytes(),
            id.namespace.as_str().as_bytes(),
        );
        wanted.len() == app.len() + 1 + ns.len()
            && wanted.starts_with(app)
            && wanted[app.len()] == b'.'
            && wanted.ends_with(ns)
    });
    if matches {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "the sidecar at {} is {}, not {}",
            peer.addr,
            id.map_or_else(|| "without a SPIFFE ID".to_owned(), |id| id.to_string()),
            String::from_utf8_lossy(wanted)
        ),
    ))
}

/// A connection to a peer.
pub enum PeerIo {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for PeerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
