//! The app behind every path: a minimal HTTP/1.1 server (hyper, one thread) that is never the
//! bottleneck.
//!
//! * `POST /echo` reads the request body (counting it, not keeping it) and answers `200` with a
//!   body of the same length, cut from one preallocated buffer (no per-request copy).
//! * `GET /sse?events=N&interval_ms=M` streams `N` server-sent events `M` ms apart; each event's
//!   data is the wall-clock time (ns since the epoch) at which it was handed to the socket, so the
//!   client can compute each event's delivery latency.
//! * `GET /healthz` answers `200`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, time::Interval};

/// The largest body `/echo` answers with; requests beyond it get this many bytes back.
pub const MAX_BODY: usize = 4 << 20;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

type AppBody = Either<Full<Bytes>, SseBody>;

/// Serves forever on `addr`, on the calling thread.
pub fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let payload = Bytes::from(vec![b'x'; MAX_BODY]);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let payload = payload.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, payload.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

async fn handle(req: Request<Incoming>, payload: Bytes) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path();
    Ok(match (req.method(), path) {
        (_, "/echo") => {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, Bytes::len),
                    Err(_) => return Ok(plain(StatusCode::BAD_REQUEST)),
                }
            }
            Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Either::Left(Full::new(payload.slice(..n.min(MAX_BODY)))))
                .expect("static response parts")
        }
        (&Method::GET, "/sse") => {
            let (events, interval_ms) = sse_params(req.uri().query().unwrap_or(""));
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Either::Right(SseBody::new(events, interval_ms)))
                .expect("static response parts")
        }
        (&Method::GET, "/healthz") => plain(StatusCode::OK),
        _ => plain(StatusCode::NOT_FOUND),
    })
}

fn plain(status: StatusCode) -> Response<AppBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
    *r.status_mut() = status;
    r
}

/// `events` (default 100) and `interval_ms` (default 20) from a query string.
pub fn sse_params(query: &str) -> (u32, u64) {
    let mut events = 100;
    let mut interval_ms = 20;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("events", v)) => events = v.parse().unwrap_or(events),
            Some(("interval_ms", v)) => interval_ms = v.parse().unwrap_or(interval_ms),
            _ => {}
        }
    }
    (events, interval_ms.max(1))
}

/// One server-sent event carrying its send time.
pub fn sse_event(sent_ns: u64) -> Bytes {
    Bytes::from(format!("data: {sent_ns}\n\n"))
}

/// A body yielding one event per tick, stamped when it is produced (right before hyper writes
/// it), then ending.
pub struct SseBody {
    left: u32,
    ticks: Interval,
}

impl SseBody {
    fn new(events: u32, interval_ms: u64) -> Self {
        let mut ticks = tokio::time::interval(Duration::from_millis(interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            left: events,
            ticks,
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        match self.ticks.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.left -= 1;
                Poll::Ready(Some(Ok(Frame::data(sse_event(now_ns())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_query_parameters() {
        assert_eq!(sse_params("events=5&interval_ms=10"), (5, 10));
        assert_eq!(sse_params(""), (100, 20));
        assert_eq!(sse_params("interval_ms=0&x=1"), (100, 1));
    }

    #[test]
    fn sse_events_are_framed() {
        assert_eq!(&sse_event(42)[..], b"data: 42\n\n");
    }
}
