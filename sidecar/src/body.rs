//! Bodies: streamed both ways, limited on the way in, and framed honestly on the way out.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header::CONTENT_LENGTH};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every response and forwarded request uses.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn boxed<B>(b: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// The request body grew past `--max-body-size`.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the limit of {limit} bytes")]
pub struct TooLarge {
    pub limit: u64,
}

/// Finds a [`TooLarge`] anywhere in an error's source chain.
pub fn find_too_large(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<TooLarge>() {
            return Some(t.limit);
        }
        cur = e.source();
    }
    None
}

/// Streams a request body and fails it as soon as more than `limit` bytes have passed, so an
/// oversized body is refused without ever being held in memory.
pub struct Limited<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            tripped: Arc::default(),
        }
    }

    /// Becomes true once the body went over the limit. The error itself can be lost on the way
    /// (an HTTP/2 client turns a failed request body into a bare stream reset).
    pub fn tripped(&self) -> Arc<AtomicBool> {
        self.tripped.clone()
    }
}

impl<B> HttpBody for Limited<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(TooLarge { limit: this.limit }))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body on its way to an upstream.
pub struct Outgoing {
    pub body: Body,
    /// Its length is known, so the request may go to another instance when the first could
    /// not be reached before anything was sent.
    pub fixed: bool,
    /// The body when it is in memory already (empty, or read whole): nothing of it is left
    /// to stream, and the request can be sent again.
    pub whole: Option<Bytes>,
    /// Set once the body went over `--max-body-size` (see [`Limited::tripped`]).
    pub tripped: Arc<AtomicBool>,
}

/// Prepares a request body for forwarding. One that declares a length up to [`SMALL_BODY`]
/// is read whole first (it is normally in the same packets as the head): the upstream then
/// gets head and body in one write, instead of the head alone and the body after a second
/// wake-up of the connection. Larger and unknown-length bodies stream.
pub async fn outgoing<B>(body: Limited<B>) -> Result<Outgoing, BoxError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let tripped = body.tripped();
    let declared = body.size_hint().exact();
    let (body, whole) = match declared {
        Some(n) if n > 0 && n <= SMALL_BODY => {
            let bytes = body.collect().await?.to_bytes();
            (full(bytes.clone()), Some(bytes))
        }
        Some(0) => (boxed(body), Some(Bytes::new())),
        _ => (boxed(body), None),
    };
    Ok(Outgoing {
        body,
        fixed: declared.is_some(),
        whole,
        tripped,
    })
}

/// An upstream HTTP/1 response body that ends cleanly when the upstream closes before the length
/// it declared: the truncated body counts as complete (Dapr does the same), and the stale length
/// never reaches the caller because it was never forwarded.
struct Lenient(Body);

impl HttpBody for Lenient {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                if ended_early(&*e) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(e)))
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    // The size hint is left unknown on purpose: the declared length is not to be trusted.
}

/// Whether the upstream closed its connection cleanly before sending the length it declared
/// (as opposed to a reset, which stays an error).
fn ended_early(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_incomplete_message)
    {
        return true;
    }
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Responses up to this declared size are read whole so that the caller gets an exact
/// `Content-Length`; larger ones stream (chunked), like every response of unknown length.
const SMALL_BODY: u64 = 64 * 1024;

/// Turns an upstream HTTP/1 response (from an app or an external server) into one for our
/// caller: the declared `Content-Length` is never passed on as such.
pub async fn frame_upstream(resp: Response<Body>, head_request: bool) -> Response<Body> {
    let (mut parts, incoming) = resp.into_parts();
    if head_request || is_bodiless(parts.status) {
        // No body follows; a Content-Length here describes the resource and passes as it is.
        return Response::from_parts(parts, empty());
    }
    let declared = content_length(&parts.headers);
    parts.headers.remove(CONTENT_LENGTH);
    let lenient = Lenient(incoming);
    let body = match declared {
        Some(n) if n <= SMALL_BODY => match lenient.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
                full(bytes)
            }
            Err(e) => {
                // The upstream failed mid-body: end the response with the error so the client
                // sees a broken message rather than a silently short one.
                let err: BoxError = e;
                return Response::from_parts(
                    parts,
                    http_body_util::StreamBody::new(futures_util::stream::once(async move {
                        Err::<Frame<Bytes>, BoxError>(err)
                    }))
                    .boxed_unsync(),
                );
            }
        },
        _ => lenient.boxed_unsync(),
    };
    Response::from_parts(parts, body)
}

fn is_bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// The value of a single, well-formed `Content-Length`.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    let mut values = h.get_all(CONTENT_LENGTH).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    v.to_str().ok()?.trim().parse().ok()
}

/// A response body that holds something until it has been read to its end, failed, or been
/// dropped (the client went away): one of the app's concurrency slots (`--app-max-concurrency`),
/// or a peer's in-flight count (`balance::InFlight`). The app (or the peer) is still busy with
/// a request while it sends the body.
struct Holding<G> {
    inner: Body,
    slot: Option<G>,
}

/// Ties `slot` to `body`'s lifetime.
pub fn holding<G: Send + Unpin + 'static>(body: Body, slot: G) -> Body {
    if body.is_end_stream() {
        return body; // nothing left to send: the slot is free now
    }
    Holding {
        inner: body,
        slot: Some(slot),
    }
    .boxed_unsync()
}

impl<G: Unpin> HttpBody for Holding<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.slot = None,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.slot = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes it sends and reports them once: when it has been read
/// to its end, has failed, or has been dropped (the client went away). `--enable-api-logging`
/// logs a call with its size after its last byte, as Dapr does.
struct Counted<F: FnOnce(u64)> {
    inner: Body,
    sent: u64,
    done: Option<F>,
}

/// Calls `done` with the number of body bytes sent once `body` is over.
pub fn counted<F: FnOnce(u64) + Send + Unpin + 'static>(body: Body, done: F) -> Body {
    Counted {
        inner: body,
        sent: 0,
        done: Some(done),
    }
    .boxed_unsync()
}

impl<F: FnOnce(u64)> Counted<F> {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.sent);
        }
    }
}

impl<F: FnOnce(u64) + Unpin> HttpBody for Counted<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64)> Drop for Counted<F> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn a_slot_is_held_until_the_body_ends() {
        let slots = Arc::new(Semaphore::new(1));
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
            },
        ));
        let mut body = holding(
            stream.boxed_unsync(),
            slots.clone().try_acquire_owned().unwrap(),
        );
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        assert_eq!(slots.available_permits(), 0, "mid-body, the slot is taken");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(slots.available_permits(), 1, "read to the end: released");
    }

    #[tokio::test]
    async fn a_dropped_body_releases_its_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let (_tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
            },
        ));
        let body = holding(
            stream.boxed_unsync(),
            slots.clone().try_acquire_owned().unwrap(),
        );
        assert_eq!(slots.available_permits(), 0);
        drop(body);
        assert_eq!(slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_known_length_body_releases_on_its_last_frame() {
        let slots = Arc::new(Semaphore::new(1));
        let mut body = holding(
            full("all of it"),
            slots.clone().try_acquire_owned().unwrap(),
        );
        assert_eq!(slots.available_permits(), 0);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "all of it"
        );
        // hyper stops polling once is_end_stream says so: the last frame must release.
        assert!(body.is_end_stream());
        assert_eq!(slots.available_permits(), 1);
        // An empty body never takes the slot.
        let _empty = holding(empty(), slots.clone().try_acquire_owned().unwrap());
        assert_eq!(slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn limited_passes_small_and_fails_large() {
        let ok = Limited::new(Full::new(Bytes::from_static(b"12345")), 5);
        assert_eq!(ok.collect().await.unwrap().to_bytes(), "12345");
        let too_big = Limited::new(Full::new(Bytes::from_static(b"123456")), 5);
        let err = too_big.collect().await.unwrap_err();
        assert_eq!(find_too_large(&*err), Some(5));
    }

    #[test]
    fn content_length_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(CONTENT_LENGTH, "12".parse().unwrap());
        assert_eq!(content_length(&h), Some(12));
        h.append(CONTENT_LENGTH, "12".parse().unwrap());
        assert_eq!(content_length(&h), None);
    }
    #[tokio::test]
    async fn counted_reports_the_bytes_sent_once() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = counted(full("hello"), move |n| s.lock().unwrap().push(n));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(*seen.lock().unwrap(), [5], "reported once, at the end");

        let s = seen.clone();
        drop(counted(full("never read"), move |n| {
            s.lock().unwrap().push(n)
        }));
        assert_eq!(
            *seen.lock().unwrap(),
            [5, 0],
            "a dropped body reports what it sent"
        );

        let s = seen.clone();
        let empty_body = counted(empty(), move |n| s.lock().unwrap().push(n));
        assert_eq!(empty_body.collect().await.unwrap().to_bytes().len(), 0);
        assert_eq!(*seen.lock().unwrap(), [5, 0, 0]);
    }
}
