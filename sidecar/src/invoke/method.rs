//! Method normalization: done exactly once, at the edge.
//!
//! A [`Method`] can only be made by [`Method::normalize`], and it carries the one form that is
//! used everywhere after: for access control (later) and, unchanged, as the path delivered to the
//! app. Because the form is canonical (normalizing it again gives it back), the callee sidecar
//! re-checks what it receives with the same function and refuses anything that is not canonical,
//! so the path an access check sees and the path the app receives cannot differ
//! (the CVE-2026-41491 class of bug).

use std::fmt;

/// Why a method was refused. The texts follow Dapr's (`invalid method: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("invalid method: method contains forbidden character: {0:?}")]
    ForbiddenChar(char),
    #[error("invalid method: method contains forbidden control character 0x{0:02x}")]
    ControlChar(u8),
    #[error("invalid method: invalid URL escape {0:?}")]
    BadEscape(String),
    #[error("invalid method: method contains an encoded dot segment {0:?} (\"..\" or \".\")")]
    EncodedDotSegment(String),
    #[error("invalid method: {0:?} is not a canonical method path")]
    NotCanonical(String),
}

/// A normalized method path, without its leading `/`.
///
/// The text is what goes on the wire: percent-decoded once, lexically cleaned (no `.` or `..`
/// segments, no empty segments, no trailing slash), and percent-encoded where a URI path needs it.
/// `%XX` sequences that were in the decoded method stay as they are, so a client that
/// double-encodes (`%252F`) reaches the app with `%2F`, as with Dapr.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Method(String);

impl Method {
    /// Normalizes a percent-decoded method (bytes, since a decoded path need not be UTF-8).
    pub fn normalize(decoded: &[u8]) -> Result<Self, MethodError> {
        for &b in decoded {
            match b {
                b'#' | b'?' => return Err(MethodError::ForbiddenChar(b as char)),
                0 => return Err(MethodError::ForbiddenChar('\0')),
                0x01..=0x1f | 0x7f => return Err(MethodError::ControlChar(b)),
                _ => {}
            }
        }
        let cleaned = clean(decoded);
        let encoded = encode(&cleaned)?;
        check_encoded_dot_segments(&encoded)?;
        Ok(Self(encoded))
    }

    /// Accepts a method path received from a peer sidecar (without the leading `/`), which must
    /// already be canonical.
    pub fn from_wire(path: &str) -> Result<Self, MethodError> {
        let m = Self::normalize(path.as_bytes())?;
        if m.0 == path {
            Ok(m)
        } else {
            Err(MethodError::NotCanonical(path.to_owned()))
        }
    }

    /// The method without its leading `/`; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path to deliver: `/` followed by the method.
    pub fn path(&self) -> String {
        let mut p = String::with_capacity(self.0.len() + 1);
        p.push('/');
        p.push_str(&self.0);
        p
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lexical cleaning with POSIX `path.Clean` semantics for a relative path, then dropping what
/// would climb above the root: `admin/../public` is `public`, `../../etc/passwd` is `etc/passwd`,
/// `.` and `..` are empty. Leading and repeated slashes collapse; a trailing slash is dropped.
fn clean(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in path.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join(&b'/')
}

/// Bytes a URI path segment may carry as they are (RFC 3986 `pchar` without `%`, plus `/`).
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn encode(path: &[u8]) -> Result<String, MethodError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            // Dapr hands the decoded method to Go's URL parser, which refuses a '%' that does not
            // start an escape; the caller then gets a 500. Keep that answer.
            match path.get(i + 1..i + 3) {
                Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    out.push('%');
                    out.push(*h as char);
                    out.push(*l as char);
                    i += 3;
                    continue;
                }
                _ => {
                    let end = (i + 3).min(path.len());
                    let esc = String::from_utf8_lossy(&path[i..end]).into_owned();
                    return Err(MethodError::BadEscape(esc));
                }
            }
        }
        if is_path_byte(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
        i += 1;
    }
    Ok(out)
}

/// Refuses a method whose segments, decoded once more, are `.` or `..` (split on `/` and `\`).
/// Such a method would be read as a traversal by an app that decodes before it resolves dot
/// segments, while an access check of the method as given would see a harmless name.
fn check_encoded_dot_segments(encoded: &str) -> Result<(), MethodError> {
    if !encoded.contains('%') {
        return Ok(());
    }
    let decoded = percent_encoding::percent_decode_str(encoded).collect::<Vec<u8>>();
    for seg in decoded.split(|b| *b == b'/' || *b == b'\\') {
        if seg == b".." || seg == b"." {
            return Err(MethodError::EncodedDotSegment(encoded.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, MethodError> {
        Method::normalize(s.as_bytes()).map(|m| m.0)
    }

    #[test]
    fn normalizes_like_dapr() {
        let cases = [
            ("", ""),
            ("/", ""),
            (".", ""),
            ("..", ""),
            ("foo", "foo"),
            ("/foo", "foo"),
            ("//foo//bar/", "foo/bar"),
            ("foo/bar/baz", "foo/bar/baz"),
            ("admin/../public", "public"),
            ("../../etc/passwd", "etc/passwd"),
            ("a/./b/../c", "a/c"),
            ("public///extra", "public/extra"),
            ("a b", "a%20b"),
            ("a\"b\\c", "a%22b%5Cc"),
            ("x*y:z@w;v=1,2", "x*y:z@w;v=1,2"),
            ("%2F", "%2F"),
            ("caf\u{e9}", "caf%C3%A9"),
            ("[x]", "%5Bx%5D"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn refuses_forbidden_characters() {
        for (input, want) in [
            ("a#b", MethodError::ForbiddenChar('#')),
            ("a?b", MethodError::ForbiddenChar('?')),
            ("a\0b", MethodError::ForbiddenChar('\0')),
            ("a\x1fb", MethodError::ControlChar(0x1f)),
            ("a\rb", MethodError::ControlChar(b'\r')),
            ("a\nb", MethodError::ControlChar(b'\n')),
            ("a\tb", MethodError::ControlChar(b'\t')),
            ("a\x7fb", MethodError::ControlChar(0x7f)),
        ] {
            assert_eq!(norm(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn refuses_bare_percent() {
        // Dapr's pinned quirk: `test%25stream` decodes to `test%stream`, and that is a 500.
        assert_eq!(
            norm("test%stream"),
            Err(MethodError::BadEscape("%st".into()))
        );
        assert_eq!(norm("end%"), Err(MethodError::BadEscape("%".into())));
        assert_eq!(norm("end%4"), Err(MethodError::BadEscape("%4".into())));
    }

    #[test]
    fn refuses_encoded_dot_segments() {
        for input in [
            "%2E%2E/admin",
            "public/%2e%2e/admin",
            "a/.%2E",
            "x%5C..%5Cy",
            "a\\..\\b",
        ] {
            assert!(
                matches!(norm(input), Err(MethodError::EncodedDotSegment(_))),
                "input {input:?} gave {:?}",
                norm(input)
            );
        }
        // Dots inside a segment are fine.
        assert_eq!(norm("v1.2/..x/x..").as_deref(), Ok("v1.2/..x/x.."));
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for input in ["a b", "x/%2F/y", "caf\u{e9}", "../a//b/", "[q]", "a\"b"] {
            let once = Method::normalize(input.as_bytes()).unwrap();
            let twice = Method::normalize(once.as_str().as_bytes()).unwrap();
            assert_eq!(once, twice, "input {input:?}");
            assert_eq!(Method::from_wire(once.as_str()), Ok(once));
        }
    }

    #[test]
    fn from_wire_refuses_non_canonical_paths() {
        for wire in ["a/../b", "a//b", "a/", "/a", "a b"] {
            assert!(
                matches!(Method::from_wire(wire), Err(MethodError::NotCanonical(_))),
                "wire {wire:?}"
            );
        }
        assert!(Method::from_wire("a#b").is_err());
    }

    #[test]
    fn path_has_one_leading_slash() {
        assert_eq!(Method::normalize(b"").unwrap().path(), "/");
        assert_eq!(Method::normalize(b"a/b").unwrap().path(), "/a/b");
    }
}
