//! Per-connection guards against slow clients that never hold an idle client back.
//!
//! daprd (Go's `net/http` with `ReadHeaderTimeout`) times a request head from its first byte
//! and lets a keep-alive connection sit idle between requests for as long as the client
//! likes. hyper's own `header_read_timeout` starts its clock as soon as it waits for the next
//! head, so it would close every pooled connection idle for longer than the timeout, and a
//! client reusing it at that moment sees the request fail. [`HeadDeadline`] times the head
//! the way Go does: from the first byte that arrives while no request is in progress on the
//! connection, until hyper hands the parsed request to the service.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

use crate::body::Body;

/// What a connection's requests tell its reader: whether one ever started, and how many are
/// in progress (from the call of the service until the response body is written or dropped).
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicBool,
    in_progress: AtomicUsize,
    http2: AtomicBool,
}

impl Activity {
    /// Whether the connection ever delivered a request.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Whether the connection speaks HTTP/2 (its preface has arrived).
    pub fn http2(&self) -> bool {
        self.http2.load(Ordering::Acquire)
    }

    fn idle(&self) -> bool {
        self.in_progress.load(Ordering::Acquire) == 0
    }

    /// Marks a request as started and in progress for as long as the returned guard lives.
    pub fn begin(self: &Arc<Self>) -> InProgress {
        self.started.store(true, Ordering::Release);
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        InProgress(self.clone())
    }
}

/// One request in progress on a connection; dropping it ends it.
#[derive(Debug)]
pub struct InProgress(Arc<Activity>);

impl InProgress {
    /// Hands this request's end over to the response body: it ends when `body` has been
    /// written out or dropped.
    pub fn until_written(self, body: Body) -> Body {
        crate::body::holding(body, self)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Fewer than three bytes seen: could still be the HTTP/2 preface.
    Unknown,
    Http1,
    /// HTTP/2 has its own frames (pings, window updates) between requests and no head to time.
    Http2,
}

/// A socket whose HTTP/1 request heads must arrive within `timeout` of their first byte.
pub struct HeadDeadline<S> {
    inner: S,
    activity: Arc<Activity>,
    timeout: Duration,
    protocol: Protocol,
    seen: Vec<u8>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> HeadDeadline<S> {
    pub fn new(inner: S, activity: Arc<Activity>, timeout: Duration) -> Self {
        Self {
            inner,
            activity,
            timeout,
            protocol: Protocol::Unknown,
            seen: Vec::new(),
            deadline: None,
        }
    }

    fn sniff(&mut self, new: &[u8]) {
        const PREFACE: &[u8] = b"PRI";
        let need = PREFACE.len() - self.seen.len();
        self.seen.extend_from_slice(&new[..need.min(new.len())]);
        if !PREFACE.starts_with(&self.seen) {
            self.protocol = Protocol::Http1;
        } else if self.seen.len() == PREFACE.len() {
            self.protocol = Protocol::Http2;
            self.activity.http2.store(true, Ordering::Release);
        }
        if self.protocol != Protocol::Unknown {
            self.seen = Vec::new();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.protocol == Protocol::Http2 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if this.protocol == Protocol::Unknown {
                    this.sniff(new);
                    if this.protocol == Protocol::Http2 {
                        this.deadline = None;
                        return Poll::Ready(Ok(()));
                    }
                }
                if !this.activity.idle() {
                    this.deadline = None;
                } else if this.deadline.is_none() {
                    this.deadline = Some(Box::pin(tokio::time::sleep(this.timeout)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    if !this.activity.idle() {
                        this.deadline = None;
                    } else if deadline.as_mut().poll(cx).is_ready() {
                        this.deadline = None;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the request head did not arrive within --read-header-timeout-seconds",
                        )));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const TIMEOUT: Duration = Duration::from_secs(10);

    async fn pair() -> (
        HeadDeadline<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        let (server, client) = duplex(1024);
        let activity = Arc::new(Activity::default());
        (
            HeadDeadline::new(server, activity.clone(), TIMEOUT),
            client,
            activity,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_never_timed() {
        let (mut server, _client, _) = pair().await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(TIMEOUT * 100, server.read(&mut buf)).await;
        assert!(read.is_err(), "the read should still be waiting: {read:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_stalls_after_its_first_byte_times_out() {
        let (mut server, mut client, _) = pair().await;
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).await.unwrap(), 8);
        let started = tokio::time::Instant::now();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_stops_the_clock_and_idling_after_it_is_free() {
        let (mut server, mut client, activity) = pair().await;
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 19);
        // The service got the request: its body may stream for longer than the timeout.
        let request = activity.begin();
        for _ in 0..3 {
            tokio::time::sleep(TIMEOUT).await;
            client.write_all(b"body").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 4);
        }
        drop(request);
        // Idle after the response: never closed.
        let read = tokio::time::timeout(TIMEOUT * 10, server.read(&mut buf)).await;
        assert!(read.is_err(), "{read:?}");
        // The next head is timed from its first byte.
        client.write_all(b"G").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_are_left_to_http2() {
        let (mut server, mut client, _) = pair().await;
        // The preface split across reads, then a ping's worth of bytes and silence.
        client.write_all(b"PR").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 2);
        client
            .write_all(b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 22);
        let read = tokio::time::timeout(TIMEOUT * 10, server.read(&mut buf)).await;
        assert!(read.is_err(), "{read:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tracked_body_keeps_the_request_in_progress_until_dropped() {
        let activity = Arc::new(Activity::default());
        assert!(!activity.started());
        let body = activity.begin().until_written(crate::body::full("x"));
        assert!(activity.started());
        assert!(!activity.idle());
        drop(body);
        assert!(activity.idle());
    }
}
