//! W3C trace context: every request an app receives carries a `traceparent`.
//!
//! Ferry does not export spans yet; it keeps the trace ID a caller sent (or starts a new trace)
//! and gives each hop its own span ID, so that traces stay connected across sidecars.
//! `tracestate` and `baggage` pass through untouched.

use ferry_api::headers::{BAGGAGE, TRACEPARENT};
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

    /// `00-<trace-id>-<span-id>-<flags>`, written without the formatting machinery (this
    /// runs for every request).
    pub fn to_header(self) -> HeaderValue {
        fn hex(out: &mut [u8], mut v: u128) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for b in out.iter_mut().rev() {
                *b = DIGITS[(v & 0xf) as usize];
                v >>= 4;
            }
        }
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex(&mut buf[3..35], self.trace_id);
        hex(&mut buf[36..52], u128::from(self.span_id));
        hex(&mut buf[53..55], u128::from(self.flags));
        HeaderValue::from_bytes(&buf).expect("hex digits and dashes are a valid header value")
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

/// W3C baggage limits: at most 180 list members and 8192 bytes in all.
const MAX_BAGGAGE_MEMBERS: usize = 180;
const MAX_BAGGAGE_BYTES: usize = 8192;

/// Checks the request's `baggage` (all its header lines together) against the W3C format and
/// returns it, so that it can be given back on the response as Dapr does. `Err` says what is
/// wrong; the caller answers 400.
pub fn baggage(h: &HeaderMap) -> Result<Option<HeaderValue>, String> {
    let mut values = h.get_all(BAGGAGE).iter().peekable();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let combined = if values.peek().is_none() {
        first.clone()
    } else {
        let mut joined = first.as_bytes().to_vec();
        for v in values {
            joined.push(b',');
            joined.extend_from_slice(v.as_bytes());
        }
        HeaderValue::from_bytes(&joined).map_err(|_| "it is not valid text".to_string())?
    };
    let text = combined
        .to_str()
        .map_err(|_| "it is not ASCII text".to_string())?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_BAGGAGE_BYTES {
        return Err(format!("it is longer than {MAX_BAGGAGE_BYTES} bytes"));
    }
    let members: Vec<&str> = text.split(',').collect();
    if members.len() > MAX_BAGGAGE_MEMBERS {
        return Err(format!("it has more than {MAX_BAGGAGE_MEMBERS} members"));
    }
    for member in members {
        check_member(member.trim_matches(OWS))?;
    }
    Ok(Some(combined))
}

const OWS: [char; 2] = [' ', '\t'];

/// `key OWS "=" OWS value *( OWS ";" OWS property )`
fn check_member(member: &str) -> Result<(), String> {
    let mut parts = member.split(';');
    let kv = parts.next().unwrap_or_default();
    let Some((key, value)) = kv.split_once('=') else {
        return Err(format!("member {member:?} is not key=value"));
    };
    check_key(key.trim_matches(OWS), member)?;
    check_value(value.trim_matches(OWS), member)?;
    for prop in parts {
        let prop = prop.trim_matches(OWS);
        match prop.split_once('=') {
            Some((k, v)) => {
                check_key(k.trim_matches(OWS), member)?;
                check_value(v.trim_matches(OWS), member)?;
            }
            None => check_key(prop, member)?,
        }
    }
    Ok(())
}

fn check_key(key: &str, member: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if key.is_empty() || !key.bytes().all(tchar) {
        return Err(format!("member {member:?} has an invalid key {key:?}"));
    }
    Ok(())
}

fn check_value(value: &str, member: &str) -> Result<(), String> {
    let octet = |b: u8| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e);
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if !octet(b) {
            return Err(format!("member {member:?} has an invalid value {value:?}"));
        }
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err(format!(
                    "member {member:?} has a bad percent-escape in its value"
                ));
            }
        }
    }
    Ok(())
}

/// Gives a response the request's baggage when the app did not set its own.
pub fn baggage_on_response(h: &mut HeaderMap, baggage: Option<HeaderValue>) {
    if let Some(b) = baggage
        && !h.contains_key(BAGGAGE)
    {
        h.insert(BAGGAGE, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bag(values: &[&str]) -> Result<Option<String>, String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(BAGGAGE, HeaderValue::from_str(v).unwrap());
        }
        baggage(&h).map(|o| o.map(|v| v.to_str().unwrap().to_owned()))
    }

    #[test]
    fn valid_baggage_passes_as_it_is() {
        assert_eq!(bag(&[]), Ok(None));
        assert_eq!(bag(&[""]), Ok(None));
        for ok in [
            "key1=value1,key2=value2",
            "k=v;prop1;prop2=x",
            " k = v , k2=%20x ",
            "userId=alice,serverNode=DF%2028,isProduction=false",
            "k=",
        ] {
            assert_eq!(bag(&[ok]), Ok(Some(ok.to_owned())), "{ok:?}");
        }
        assert_eq!(bag(&["a=1", "b=2"]), Ok(Some("a=1,b=2".to_owned())));
    }

    #[test]
    fn invalid_baggage_is_refused() {
        for bad in [
            "invalid-baggage",
            "k=v,,x=y",
            "=v",
            "k y=v",
            "k=v\"",
            "k=a b",
            "k=%zz",
            "k=v;=p",
        ] {
            assert!(bag(&[bad]).is_err(), "{bad:?} should be refused");
        }
        let many = vec!["k=v"; 181].join(",");
        assert!(bag(&[&many]).is_err());
        let long = format!("k={}", "v".repeat(8200));
        assert!(bag(&[&long]).is_err());
    }

    #[test]
    fn response_gets_the_request_baggage_unless_it_has_its_own() {
        let b = Some(HeaderValue::from_static("a=1"));
        let mut h = HeaderMap::new();
        baggage_on_response(&mut h, b.clone());
        assert_eq!(h[BAGGAGE], "a=1");
        let mut own = HeaderMap::new();
        own.insert(BAGGAGE, HeaderValue::from_static("z=9"));
        baggage_on_response(&mut own, b);
        assert_eq!(own[BAGGAGE], "z=9");
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn formats_with_leading_zeros_and_all_bits() {
        let s = SpanContext {
            trace_id: 1,
            span_id: u64::MAX,
            flags: 1,
        };
        assert_eq!(
            s.to_header(),
            "00-00000000000000000000000000000001-ffffffffffffffff-01"
        );
        let s = SpanContext {
            trace_id: u128::MAX,
            span_id: 0x0a,
            flags: 0,
        };
        assert_eq!(
            s.to_header(),
            "00-ffffffffffffffffffffffffffffffff-000000000000000a-00"
        );
    }

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
