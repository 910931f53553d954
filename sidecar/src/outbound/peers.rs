//! Connections to peer sidecars, over an injected [`Connect`]or.
//!
//! A call whose body is already in memory (none, or a declared length up to 64 KiB, read whole
//! by `body::outgoing`) goes over a pooled HTTP/1.1 keep-alive connection, one request at a
//! time on each, as nginx and Envoy keep their upstreams: head and body leave in one write and
//! the answer comes back in one read. Profiled at 1000 rps, the multiplexed HTTP/2 connection
//! this replaced cost both sidecars an extra write and wake-up per call (hyper's client sends
//! the head, then waits for the connection task to grant flow-control capacity before it
//! sends the body), and about a third more CPU. See BENCHMARKS.md.
//!
//! A streamed body (unknown length, or over 64 KiB) goes over one multiplexed HTTP/2
//! connection per peer instead: a callee that answers before the body has all arrived (a body
//! over its `--max-body-size`) resets just that stream, where HTTP/1.1 would have to close the
//! connection under the caller's feet and could lose the answer with it; and a caller that
//! goes away mid-upload costs a stream, not a connection.
//!
//! Either way the connection is made before the request is handed over, so a failure to
//! connect never consumes the request, and a pooled connection that turns out closed gives
//! the request back (`try_send_request`): the request can go to another instance. A
//! kept-alive HTTP/1.1 connection that the peer closed just as the request went out (the
//! request was written, so it does not come back) costs an idempotent request nothing: it is
//! sent once more on a new connection, as Go's transport does ([`Replay`]), or, when the peer
//! takes no new connection (a sidecar shutting down closes its idle connections and its
//! listener), to another instance.

use std::{
    collections::HashMap,
    future::poll_fn,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, Uri,
    header::HOST,
    uri::{Authority, Scheme},
};
use hyper::{
    body::Incoming,
    client::conn::{TrySendError, http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::Body;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle HTTP/1.1 connections kept per peer (Dapr's `MaxIdleConnsPerHost`); more are closed.
const MAX_IDLE_PER_PEER: usize = 64;
/// An idle HTTP/1.1 connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are looked over.
const REAP_EVERY: Duration = Duration::from_secs(30);
/// HTTP/2 flow-control windows, both ways (to peers, and for the HTTP/2 clients of the
/// sidecar's ports): fixed, not adaptive, whose bandwidth probe is a PING per burst of data,
/// an extra frame, syscall and wake-up for every short call. 1 MiB per stream covers a
/// 10 Gbit/s link at 0.8 ms round trip; the connection window bounds what one connection can
/// make the sidecar buffer.
pub(crate) const H2_STREAM_WINDOW: u32 = 1 << 20;
pub(crate) const H2_CONNECTION_WINDOW: u32 = 4 << 20;

/// A peer sidecar: its internal port's address, and the app it must be (`<app-id>.<namespace>`,
/// the `ferry-callee` value). Connections are pooled per peer, so a connection made to one app
/// is never used for another, even when a recycled address now belongs to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    pub callee: HeaderValue,
}

impl From<SocketAddr> for Peer {
    /// A peer that must be no app in particular: over mTLS, no certificate matches it.
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            callee: HeaderValue::from_static(""),
        }
    }
}

/// How a sidecar reaches a peer's internal port: the connector, injected (TCP, mTLS with the
/// callee's expected identity, an in-memory pipe in tests).
pub trait Connect: Clone + Send + Sync + 'static {
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;
    fn connect(&self, peer: &Peer) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain TCP (with `TCP_NODELAY`), within [`CONNECT_TIMEOUT`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnect;

impl Connect for TcpConnect {
    type Io = TokioIo<tokio::net::TcpStream>;

    async fn connect(&self, peer: &Peer) -> io::Result<Self::Io> {
        connect_tcp(peer.addr).await.map(TokioIo::new)
    }
}

/// Connections per peer address. Requests find their peer's slot without locking (a snapshot
/// swap); the slot's short lock covers taking or returning one idle connection.
pub struct PeerPool<C = TcpConnect> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for PeerPool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl Default for PeerPool<TcpConnect> {
    fn default() -> Self {
        Self::new(TcpConnect)
    }
}

struct Inner<C> {
    connect: C,
    slots: ArcSwap<HashMap<Peer, Arc<PeerSlot<C>>>>,
    insert: Mutex<()>,
    /// The reaper runs from the first peer on, once per pool.
    reaping: AtomicBool,
}

struct PeerSlot<C> {
    connect: C,
    peer: Peer,
    /// `Host` (HTTP/1.1) and `:authority` (HTTP/2) for requests to this peer, made once.
    host: HeaderValue,
    authority: Authority,
    /// Idle HTTP/1.1 connections, most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The multiplexed HTTP/2 connection for streamed bodies, made on first need.
    h2: ArcSwapOption<http2::SendRequest<Body>>,
    h2_connecting: tokio::sync::Mutex<()>,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl<C: Connect> PeerPool<C> {
    pub fn new(connect: C) -> Self {
        Self {
            inner: Arc::new(Inner {
                connect,
                slots: ArcSwap::default(),
                insert: Mutex::new(()),
                reaping: AtomicBool::new(false),
            }),
        }
    }

    /// A connection to `addr` for one request: HTTP/2 when the body is `streamed`, else an
    /// idle HTTP/1.1 connection when there is one, or a new one.
    pub async fn checkout(&self, peer: Peer, streamed: bool) -> io::Result<PeerConn<C>> {
        let slot = self.slot(peer);
        let sender = if streamed {
            Sender::Http2(slot.http2().await?)
        } else if let Some(sender) = slot.take() {
            Sender::Http1 {
                sender,
                reused: true,
            }
        } else {
            Sender::Http1 {
                sender: connect_http1(&slot.connect, &slot.peer).await?,
                reused: false,
            }
        };
        Ok(PeerConn { sender, slot })
    }

    /// Drops the connections to `peer` after one of them failed: they most likely share its
    /// fate (the peer restarted), and the next requests should not find out one by one.
    pub fn evict(&self, peer: &Peer) {
        if let Some(slot) = self.inner.slots.load().get(peer) {
            slot.lock().clear();
            slot.h2.store(None);
        }
    }

    fn slot(&self, peer: Peer) -> Arc<PeerSlot<C>> {
        if let Some(s) = self.inner.slots.load().get(&peer) {
            return s.clone();
        }
        let _g = self.inner.insert.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.inner.slots.load_full();
        if let Some(s) = current.get(&peer) {
            return s.clone();
        }
        if !self.inner.reaping.swap(true, Ordering::AcqRel) {
            // The first peer: from now on, idle connections are looked over now and then.
            tokio::spawn(reap(Arc::downgrade(&self.inner)));
        }
        let text = peer.addr.to_string();
        let mut next = (*current).clone();
        let slot = Arc::new(PeerSlot {
            connect: self.inner.connect.clone(),
            peer: peer.clone(),
            host: HeaderValue::from_str(&text).expect("a socket address is a valid header value"),
            authority: text.parse().expect("a socket address is a valid authority"),
            idle: Mutex::default(),
            h2: ArcSwapOption::empty(),
            h2_connecting: tokio::sync::Mutex::default(),
        });
        next.insert(peer, slot.clone());
        self.inner.slots.store(Arc::new(next));
        slot
    }
}

/// Closes idle connections unused for [`IDLE_TIMEOUT`] and forgets peers with none left,
/// until the pool is dropped.
async fn reap<C: Connect>(inner: Weak<Inner<C>>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let mut unused = false;
        for slot in inner.slots.load().values() {
            let mut idle = slot.lock();
            idle.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT && !c.sender.is_closed());
            unused |= idle.is_empty() && slot.h2.load().as_ref().is_none_or(|s| s.is_closed());
        }
        if unused {
            let _g = inner.insert.lock().unwrap_or_else(|p| p.into_inner());
            let current = inner.slots.load_full();
            let next: HashMap<_, _> = current
                .iter()
                // A slot also held by a request in progress stays: its connection comes back.
                .filter(|(_, s)| {
                    Arc::strong_count(s) > 1
                        || !s.lock().is_empty()
                        || s.h2.load().as_ref().is_some_and(|s| !s.is_closed())
                })
                .map(|(a, s)| (a.clone(), s.clone()))
                .collect();
            if next.len() != current.len() {
                inner.slots.store(Arc::new(next));
            }
        }
    }
}

impl<C: Connect> PeerSlot<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open and free.
    fn take(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if c.sender.is_ready() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    fn put(&self, sender: http1::SendRequest<Body>) {
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE_PER_PEER {
            // Keep the most recently used ones: the oldest is the first to go stale.
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// The live HTTP/2 connection, made first when there is none (one attempt at a time).
    async fn http2(&self) -> io::Result<http2::SendRequest<Body>> {
        if let Some(s) = live(&self.h2) {
            return Ok(s);
        }
        let _g = self.h2_connecting.lock().await;
        if let Some(s) = live(&self.h2) {
            return Ok(s);
        }
        let sender = connect_http2(&self.connect, &self.peer).await?;
        self.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

fn live(sender: &ArcSwapOption<http2::SendRequest<Body>>) -> Option<http2::SendRequest<Body>> {
    let guard = sender.load();
    let s = guard.as_ref()?;
    if s.is_closed() {
        return None;
    }
    Some((**s).clone())
}

enum Sender {
    Http1 {
        sender: http1::SendRequest<Body>,
        /// Taken from the idle list, rather than made for this request.
        reused: bool,
    },
    Http2(http2::SendRequest<Body>),
}

/// A copy of a request that may be sent once more when a kept-alive connection turns out to
/// have been closed by the peer as the request went out: as Go's transport, only for an
/// idempotent method (GET, HEAD, OPTIONS, TRACE) or a request with an idempotency key, and
/// only with its body in memory.
pub struct Replay(Request<Body>);

impl Replay {
    /// A copy of `req`, whose whole body is `body`, when it may be replayed.
    pub fn of(req: &Request<Body>, body: &Bytes) -> Option<Self> {
        let idempotent = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        ) || req.headers().contains_key("idempotency-key")
            || req.headers().contains_key("x-idempotency-key");
        if !idempotent {
            return None;
        }
        let mut copy = Request::new(crate::body::full(body.clone()));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        Some(Self(copy))
    }
}

/// A connection to a peer, checked out for one request.
pub struct PeerConn<C = TcpConnect> {
    sender: Sender,
    slot: Arc<PeerSlot<C>>,
}

impl<C: Connect> PeerConn<C> {
    /// Whether this is a kept-alive HTTP/1.1 connection that served an earlier request (only
    /// such a request may need a [`Replay`]).
    pub fn reused(&self) -> bool {
        matches!(self.sender, Sender::Http1 { reused: true, .. })
    }

    /// Sends `req`, whose URI is the path and query (origin form); `Host` or `:authority` is
    /// the peer's address. An error that hands the request back means nothing of it was
    /// written. On a reused connection that fails before an answer, `replay` is sent once
    /// over a new connection, or handed back in the error when the peer takes no new
    /// connection (it is shutting down), so that it can go to another instance. An HTTP/1.1
    /// connection returns to the pool once the response body has been read to its end; a
    /// response dropped halfway closes it.
    pub async fn send(
        self,
        mut req: Request<Body>,
        replay: Option<Replay>,
    ) -> Result<Response<Incoming>, SendError> {
        let PeerConn { sender, slot } = self;
        match sender {
            Sender::Http1 { mut sender, reused } => {
                for_http1(&mut req, &slot);
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        slot.give_back(sender);
                        Ok(resp)
                    }
                    Err(e) => {
                        let (true, None, Some(Replay(mut again))) = (reused, e.message(), replay)
                        else {
                            return Err(e.into());
                        };
                        let error = e.into_error();
                        let Ok(mut fresh) = connect_http1(&slot.connect, &slot.peer).await else {
                            // The peer is gone (a sidecar shutting down closes its idle
                            // connections and its listener): the idempotent request may go
                            // to another instance.
                            tracing::debug!(peer = %slot.peer.addr, %error, "a kept-alive connection failed and the peer takes no new one; the idempotent request may go elsewhere");
                            return Err(SendError {
                                error,
                                back: Some(again),
                            });
                        };
                        tracing::debug!(peer = %slot.peer.addr, %error, "a kept-alive connection failed; sending the idempotent request again on a new one");
                        for_http1(&mut again, &slot);
                        let resp = fresh.try_send_request(again).await?;
                        slot.give_back(fresh);
                        Ok(resp)
                    }
                }
            }
            Sender::Http2(mut sender) => {
                let mut uri = std::mem::take(req.uri_mut()).into_parts();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(slot.authority.clone());
                *req.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path");
                *req.version_mut() = http::Version::HTTP_2;
                req.headers_mut().remove(HOST);
                Ok(sender.try_send_request(req).await?)
            }
        }
    }
}

/// A request to a peer that failed.
#[derive(Debug)]
pub struct SendError {
    error: hyper::Error,
    /// The request, when it may still go to another instance: nothing of it was written, or
    /// it is an idempotent request whose kept-alive connection failed and whose peer then
    /// refused a new one.
    back: Option<Request<Body>>,
}

impl SendError {
    pub fn error(&self) -> &hyper::Error {
        &self.error
    }

    /// The request, when it may be sent to another instance.
    pub fn take_message(&mut self) -> Option<Request<Body>> {
        self.back.take()
    }

    pub fn into_error(self) -> hyper::Error {
        self.error
    }
}

impl From<TrySendError<Request<Body>>> for SendError {
    fn from(mut e: TrySendError<Request<Body>>) -> Self {
        let back = e.take_message();
        Self {
            error: e.into_error(),
            back,
        }
    }
}

/// Origin form (a request handed back by an HTTP/2 attempt has an absolute URI), HTTP/1.1,
/// and the peer's address as `Host`.
fn for_http1<C>(req: &mut Request<Body>, slot: &PeerSlot<C>) {
    if req.uri().scheme().is_some() {
        let origin = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = Uri::try_from(origin).expect("a valid path stays valid");
    }
    *req.version_mut() = http::Version::HTTP_11;
    req.headers_mut().insert(HOST, slot.host.clone());
}

impl<C: Connect> PeerSlot<C> {
    /// Puts `sender` back in the idle list once its connection is free again: when the
    /// response body has been read to its end (from a task of its own).
    fn give_back(self: &Arc<Self>, mut sender: http1::SendRequest<Body>) {
        let slot = self.clone();
        tokio::spawn(async move {
            if poll_fn(|cx| sender.poll_ready(cx)).await.is_ok() {
                slot.put(sender);
            }
        });
    }
}

/// A TCP connection to `addr` with `TCP_NODELAY`, within [`CONNECT_TIMEOUT`].
pub(crate) async fn connect_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )
        })??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Runs a peer connection's I/O in a task of its own until it ends.
fn drive(addr: SocketAddr, conn: impl Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(peer = %addr, error = %e, "peer connection ended");
        }
    });
}

async fn connect_http1<C: Connect>(
    connect: &C,
    peer: &Peer,
) -> io::Result<http1::SendRequest<Body>> {
    let (sender, conn) = http1::Builder::new()
        .handshake(connect.connect(peer).await?)
        .await
        .map_err(io::Error::other)?;
    drive(peer.addr, conn);
    Ok(sender)
}

async fn connect_http2<C: Connect>(
    connect: &C,
    peer: &Peer,
) -> io::Result<http2::SendRequest<Body>> {
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .handshake(connect.connect(peer).await?)
        .await
        .map_err(io::Error::other)?;
    drive(peer.addr, conn);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    //! The pool against a real HTTP/1.1 server on loopback that counts its connections.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    use super::*;

    /// A listener on loopback that counts its connections and serves each with `serve` in a
    /// task of its own; with `once`, it stops listening after the first connection, as a
    /// sidecar shutting down does.
    async fn listen<F, Fut>(once: bool, serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let serving = tokio::spawn(serve(s));
                if once {
                    drop(l);
                    let _ = serving.await;
                    return;
                }
            }
        });
        (addr, accepted)
    }

    /// HTTP/1.1 and HTTP/2: answers with the request's version, host and path.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        listen(false, |s| async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let host = match req.headers().get(HOST) {
                    Some(h) => h.to_str().unwrap().to_owned(),
                    None => req.uri().authority().unwrap().to_string(),
                };
                let text = format!("{:?} {host} {}", req.version(), req.uri().path());
                Ok::<_, std::convert::Infallible>(Response::new(crate::body::full(text)))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        })
        .await
    }

    /// Lets the task that returns a connection run until the pool holds one for `addr`.
    async fn returned(pool: &PeerPool, addr: SocketAddr) {
        for _ in 0..1000 {
            if !pool.inner.slots.load()[&Peer::from(addr)].lock().is_empty() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the connection never came back to the pool");
    }

    async fn get(pool: &PeerPool, addr: SocketAddr) -> String {
        send(pool, addr, false).await
    }

    async fn send(pool: &PeerPool, addr: SocketAddr, streamed: bool) -> String {
        let conn = pool.checkout(addr.into(), streamed).await.unwrap();
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = "/x".parse().unwrap();
        let resp = conn
            .send(req, None)
            .await
            .map_err(|e| e.into_error())
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, accepted) = server().await;
        let pool = PeerPool::default();
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await, format!("HTTP/1.1 {addr} /x"));
            // The connection goes back to the pool from a task of its own.
            returned(&pool, addr).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_connections_of_their_own() {
        let (addr, accepted) = server().await;
        let pool = PeerPool::default();
        let a = pool.checkout(addr.into(), false).await.unwrap();
        let b = pool.checkout(addr.into(), false).await.unwrap();
        drop((a, b));
        assert_eq!(get(&pool, addr).await, format!("HTTP/1.1 {addr} /x"));
        // Neither of the two checked out was used, so neither came back: a third was made.
        let accepted_now = accepted.load(Ordering::SeqCst);
        assert!(accepted_now >= 2, "{accepted_now}");
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_passed_over() {
        let (addr, accepted) = server().await;
        let pool = PeerPool::default();
        assert_eq!(get(&pool, addr).await, format!("HTTP/1.1 {addr} /x"));
        returned(&pool, addr).await;
        pool.evict(&addr.into());
        assert_eq!(get(&pool, addr).await, format!("HTTP/1.1 {addr} /x"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn streamed_bodies_share_one_http2_connection() {
        let (addr, accepted) = server().await;
        let pool = PeerPool::default();
        for _ in 0..3 {
            assert_eq!(send(&pool, addr, true).await, format!("HTTP/2.0 {addr} /x"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        pool.evict(&addr.into());
        assert_eq!(send(&pool, addr, true).await, format!("HTTP/2.0 {addr} /x"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A peer that answers the first request of every connection and closes the connection
    /// when the second one has arrived, unanswered: a kept-alive connection the peer closed
    /// just as a request went out. With `once`, it closes its listener after the first
    /// connection, as a sidecar shutting down does.
    async fn closing_server(once: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        listen(once, |mut s| async move {
            let mut buf = Vec::new();
            for answered in [true, false] {
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf.clear();
                if answered {
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
            }
        })
        .await
    }

    /// A failed call: its error, and whether the request came back to go elsewhere.
    type Failed = (String, bool);

    async fn call(pool: &PeerPool, addr: SocketAddr, method: Method) -> Result<u16, Failed> {
        let conn = pool.checkout(addr.into(), false).await.unwrap();
        let mut req = Request::new(crate::body::empty());
        *req.method_mut() = method;
        *req.uri_mut() = "/x".parse().unwrap();
        let replay = if conn.reused() {
            Replay::of(&req, &Bytes::new())
        } else {
            None
        };
        match conn.send(req, replay).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                resp.into_body().collect().await.unwrap();
                returned(pool, addr).await;
                Ok(status)
            }
            Err(mut e) => {
                let back = e.take_message().is_some();
                Err((e.into_error().to_string(), back))
            }
        }
    }

    #[tokio::test]
    async fn an_idempotent_request_is_sent_again_when_a_kept_alive_connection_fails() {
        let (addr, accepted) = closing_server(false).await;
        let pool = PeerPool::default();
        assert_eq!(call(&pool, addr, Method::GET).await, Ok(200));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // The kept-alive connection is closed under the request: sent again on a new one.
        assert_eq!(call(&pool, addr, Method::GET).await, Ok(200));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST is not sent twice, nor handed back: the peer may have acted on it.
        let (err, back) = call(&pool, addr, Method::POST).await.unwrap_err();
        assert!(err.contains("closed"), "{err}");
        assert!(!back);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idempotent_request_comes_back_when_its_peer_closed_and_takes_no_new_connection() {
        let (addr, accepted) = closing_server(true).await;
        let pool = PeerPool::default();
        assert_eq!(call(&pool, addr, Method::GET).await, Ok(200));
        // The peer closes the kept-alive connection under the request and no longer listens:
        // the request comes back, for the caller to send to another instance.
        let (err, back) = call(&pool, addr, Method::GET).await.unwrap_err();
        assert!(err.contains("closed"), "{err}");
        assert!(back, "the GET should come back: {err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_idempotent_requests_are_replayed() {
        let req = |m: Method, key: Option<&'static str>| {
            let mut r = Request::new(crate::body::empty());
            *r.method_mut() = m;
            if let Some(k) = key {
                r.headers_mut().insert(k, HeaderValue::from_static("k1"));
            }
            r
        };
        let body = Bytes::from_static(b"b");
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(Replay::of(&req(m.clone(), None), &body).is_some(), "{m}");
        }
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(Replay::of(&req(m.clone(), None), &body).is_none(), "{m}");
            assert!(
                Replay::of(&req(m.clone(), Some("idempotency-key")), &body).is_some(),
                "{m}"
            );
            assert!(
                Replay::of(&req(m.clone(), Some("x-idempotency-key")), &body).is_some(),
                "{m}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_an_error_before_any_request() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = PeerPool::default()
            .checkout(addr.into(), false)
            .await
            .err()
            .expect("nothing listens there");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
