//! The streaming case: a client that holds several server-sent-event streams open and measures
//! the delivery latency of every event (receive time minus the app's send time, one machine, one
//! clock). Per-event latency, not time to first byte, because what a proxy can get wrong with a
//! stream is holding events back (buffering, late flushes); time to first byte only prices the
//! request, which the other cells already do.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::{app::now_ns, loadgen::Latency, stats::nearest_rank};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SseRun {
    pub streams: u32,
    pub expected: u64,
    pub received: u64,
    /// Streams that failed: no 200, a broken connection, or events missing.
    pub errors: u64,
    pub secs: f64,
    pub latency: Option<Latency>,
}

/// Takes every complete event (`data: <ns>` ... blank line) off the front of `buf`, returning
/// their timestamps; an incomplete tail stays in `buf`.
pub fn drain_events(buf: &mut Vec<u8>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(end) = buf[start..].windows(2).position(|w| w == b"\n\n") {
        let event = &buf[start..start + end];
        for line in event.split(|&b| b == b'\n') {
            if let Some(v) = line.strip_prefix(b"data: ")
                && let Some(ns) = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
            {
                out.push(ns);
            }
        }
        start += end + 2;
    }
    buf.drain(..start);
    out
}

/// Percentiles (µs) of per-event latencies in ns.
pub fn summarize(mut latencies_ns: Vec<u64>) -> Option<Latency> {
    latencies_ns.sort_unstable();
    let us = |q| nearest_rank(&latencies_ns, q).map(|v| v as f64 / 1000.0);
    Some(Latency {
        p50: us(0.5)?,
        p90: us(0.9)?,
        p99: us(0.99)?,
        p999: us(0.999)?,
    })
}

/// Opens `streams` streams to `url` (`?events=..&interval_ms=..` is added), staggered evenly over
/// one interval so events do not all fall due at once, and waits for all of them.
pub fn run(url: &str, streams: u32, events: u32, interval_ms: u64) -> Result<SseRun, String> {
    let uri: Uri = format!("{url}?events={events}&interval_ms={interval_ms}")
        .parse()
        .map_err(|e| format!("bad url {url}: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..streams {
            let uri = uri.clone();
            let delay = Duration::from_micros(interval_ms * 1000 * i as u64 / streams as u64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                one_stream(uri).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        out
    });
    let secs = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut errors = 0;
    for r in results {
        match r {
            Ok(l) => {
                if l.len() < events as usize {
                    errors += 1;
                }
                all.extend(l);
            }
            Err(e) => {
                eprintln!("sse stream failed: {e}");
                errors += 1;
            }
        }
    }
    Ok(SseRun {
        streams,
        expected: streams as u64 * events as u64,
        received: all.len() as u64,
        errors,
        secs,
        latency: summarize(all),
    })
}

async fn one_stream(uri: Uri) -> Result<Vec<u64>, String> {
    let authority = uri.authority().ok_or("url without host")?.clone();
    let tcp = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut latencies = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let now = now_ns();
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            latencies.extend(
                drain_events(&mut buf)
                    .into_iter()
                    .map(|sent| now.saturating_sub(sent)),
            );
        }
    }
    Ok(latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut buf = b"data: 10\n\ndata: 2".to_vec();
        assert_eq!(drain_events(&mut buf), vec![10]);
        assert_eq!(buf, b"data: 2");
        buf.extend_from_slice(b"0\n\n: comment\n\ndata: 30\n\n");
        assert_eq!(drain_events(&mut buf), vec![20, 30]);
        assert!(buf.is_empty());
    }

    #[test]
    fn latency_summary_in_microseconds() {
        let l = summarize((1..=1000).map(|i| i * 1000).collect()).unwrap();
        assert_eq!((l.p50, l.p90, l.p99, l.p999), (500.0, 900.0, 990.0, 999.0));
        assert_eq!(summarize(Vec::new()), None);
    }
}
