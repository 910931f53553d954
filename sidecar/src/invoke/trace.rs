//! W3C trace context: every request an app receives carries a `traceparent`.
//!
//! Ferry does not export spans yet; it keeps the trace ID a caller sent (or starts a new trace)
//! and gives each hop its own span ID, so that traces stay connected across sidecars.
//! `tracestate` and `baggage` pass through untouched.

use ferry_api::headers::TRACEPARENT;
use http::{HeaderMap, HeaderValue};

/// One span's context: a 128-bit trace ID, a 64-bit span ID and the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl SpanContext {
    /// Parses a `traceparent` (version 00, or a later version read as 00 allows).
    pub fn parse(v: &str) -> Option<Self> {
        let v = v.trim();
        let mut parts = v.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let extra = parts.next();
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        if version == "00" && extra.is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// A new root span (not sampled: Ferry records no spans yet).
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            flags: 0,
        }
    }

    /// A child span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: nonzero_u64(),
            flags: self.flags,
        }
    }

    pub fn to_header(self) -> HeaderValue {
        let s = format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        );
        HeaderValue::from_str(&s).expect("hex digits and dashes are a valid header value")
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            return v;
        }
    }
}

/// Starts this hop's span from the request's `traceparent` (or a new trace when it is absent or
/// invalid) and writes it into the headers. Returns the span.
pub fn enter(h: &mut HeaderMap) -> SpanContext {
    let parent = h
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(SpanContext::parse);
    let span = match parent {
        Some(p) => p.child(),
        None => SpanContext::new_root(),
    };
    h.insert(TRACEPARENT, span.to_header());
    span
}

/// Gives a response a `traceparent` when the app did not send one.
pub fn on_response(h: &mut HeaderMap, span: SpanContext) {
    if !h.contains_key(TRACEPARENT) {
        h.insert(TRACEPARENT, span.to_header());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats() {
        let s = SpanContext::parse(TP).unwrap();
        assert_eq!(s.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(s.span_id, 0x00f067aa0ba902b7);
        assert_eq!(s.flags, 1);
        assert_eq!(s.to_header(), TP);
    }

    #[test]
    fn refuses_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(SpanContext::parse(bad), None, "{bad:?}");
        }
        // A future version may carry more fields.
        assert!(
            SpanContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn enter_keeps_the_trace_and_makes_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        let span = enter(&mut h);
        assert_eq!(span.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(span.span_id, 0x00f067aa0ba902b7);
        assert_eq!(span.flags, 1);
        assert_eq!(h[TRACEPARENT], span.to_header());
    }

    #[test]
    fn enter_creates_a_trace_when_absent() {
        let mut h = HeaderMap::new();
        let span = enter(&mut h);
        assert!(SpanContext::parse(h[TRACEPARENT].to_str().unwrap()).is_some());
        assert_eq!(span.flags, 0);
    }

    #[test]
    fn response_keeps_the_apps_traceparent() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        on_response(&mut h, SpanContext::new_root());
        assert_eq!(h[TRACEPARENT], TP);
        let mut empty = HeaderMap::new();
        let s = SpanContext::new_root();
        on_response(&mut empty, s);
        assert_eq!(empty[TRACEPARENT], s.to_header());
    }
}
