//! Method normalization: done exactly once, at the edge.
//!
//! A [`Method`] can only be made by [`Method::normalize`], and it carries the one form that is
//! used everywhere after: for access control (later) and, unchanged, as the path delivered to the
//! app. Because the form is canonical (normalizing it again gives it back), the callee sidecar
//! re-checks what it receives with the same function and refuses anything that is not canonical,
//! so the path an access check sees and the path the app receives cannot differ
//! (the CVE-2026-41491 class of bug).

use std::fmt;

/// Why a method was refused. The texts are Dapr's (`invalid method: ...`), with the method quoted
/// as Go's `%q` quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("invalid method: method contains forbidden character: {0}")]
    ForbiddenChar(Quoted),
    #[error("invalid method: method contains control character at position {at}: {method}")]
    ControlChar { at: usize, method: Quoted },
    #[error("invalid method: invalid URL escape {0:?}")]
    BadEscape(String),
    #[error("invalid method: method contains an encoded dot segment {0:?} (\"..\" or \".\")")]
    EncodedDotSegment(String),
    #[error("invalid method: {0:?} is not a canonical method path")]
    NotCanonical(String),
}

/// A method as Go's `%q` prints it (what Dapr's error texts show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted(pub String);

impl Quoted {
    fn of(bytes: &[u8]) -> Self {
        let mut out = String::with_capacity(bytes.len() + 2);
        out.push('"');
        for chunk in bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\0'..='\x1f' | '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
                    c => out.push(c),
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        out.push('"');
        Self(out)
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalized method path, without its leading `/`.
///
/// The text is what goes on the wire: percent-decoded once, lexically cleaned (no `.` or `..`
/// segments, no empty segments; a trailing slash is kept, as Dapr keeps it since dapr#7686), and
/// percent-encoded where a URI path needs it.
/// `%XX` sequences that were in the decoded method stay as they are, so a client that
/// double-encodes (`%252F`) reaches the app with `%2F`, as with Dapr.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Method(String);

impl Method {
    /// Normalizes a percent-decoded method (bytes, since a decoded path need not be UTF-8).
    pub fn normalize(decoded: &[u8]) -> Result<Self, MethodError> {
        // Cleaned first, as Dapr's HTTP API does (it cleans the decoded path before checking it):
        // a character in a segment that `..` removes is never delivered, so it does not count;
        // `public%23/../admin` is `admin`, checked and delivered as such.
        let cleaned = clean(decoded);
        if cleaned.iter().any(|b| matches!(b, b'#' | b'?' | 0)) {
            return Err(MethodError::ForbiddenChar(Quoted::of(&cleaned)));
        }
        if let Some(at) = cleaned.iter().position(|b| matches!(b, 0x01..=0x1f | 0x7f)) {
            return Err(MethodError::ControlChar {
                at,
                method: Quoted::of(&cleaned),
            });
        }
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
/// `.` and `..` are empty. Leading and repeated slashes collapse; a trailing slash stays (apps
/// may tell `/x` from `/x/`), except on the root.
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
    let mut cleaned = out.join(&b'/');
    if !cleaned.is_empty() && path.ends_with(b"/") {
        cleaned.push(b'/');
    }
    cleaned
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
            ("//foo//bar/", "foo/bar/"),
            ("foo/bar/", "foo/bar/"),
            ("admin/../public/", "public/"),
            ("/foo//bar//", "foo/bar/"),
            ("./", ""),
            ("a/../", ""),
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
        // Dapr's texts, with the method quoted as Go's %q does.
        for (input, want) in [
            (
                "a#b",
                r#"invalid method: method contains forbidden character: "a#b""#,
            ),
            (
                "x/a?b",
                r#"invalid method: method contains forbidden character: "x/a?b""#,
            ),
            (
                "a\0b",
                r#"invalid method: method contains forbidden character: "a\x00b""#,
            ),
            (
                "a\"#",
                r##"invalid method: method contains forbidden character: "a\"#""##,
            ),
            (
                "a\x1fb",
                r#"invalid method: method contains control character at position 1: "a\x1fb""#,
            ),
            (
                "ab\rc",
                r#"invalid method: method contains control character at position 2: "ab\rc""#,
            ),
            (
                "a\nb",
                r#"invalid method: method contains control character at position 1: "a\nb""#,
            ),
            (
                "a\tb",
                r#"invalid method: method contains control character at position 1: "a\tb""#,
            ),
            (
                "a\x7fb",
                r#"invalid method: method contains control character at position 1: "a\x7fb""#,
            ),
        ] {
            assert_eq!(
                norm(input).unwrap_err().to_string(),
                want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn checks_what_remains_after_cleaning() {
        // Dapr cleans the decoded HTTP path before checking it: a forbidden character in a
        // segment that `..` removes is never delivered.
        for (input, want) in [
            ("public#/../admin", "admin"),
            ("public?/../admin", "admin"),
            ("public\r/../admin", "admin"),
            ("public#\0/../admin", "admin"),
            ("x\n/..", ""),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "input {input:?}");
        }
        assert!(matches!(
            norm("admin/../pub#lic"),
            Err(MethodError::ForbiddenChar(_))
        ));
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
        for input in [
            "a b",
            "x/%2F/y",
            "caf\u{e9}",
            "../a//b/",
            "[q]",
            "a\"b",
            "x/y/",
        ] {
            let once = Method::normalize(input.as_bytes()).unwrap();
            let twice = Method::normalize(once.as_str().as_bytes()).unwrap();
            assert_eq!(once, twice, "input {input:?}");
            assert_eq!(Method::from_wire(once.as_str()), Ok(once));
        }
    }

    #[test]
    fn from_wire_refuses_non_canonical_paths() {
        for wire in ["a/../b", "a//b", "a//", "/a", "a b"] {
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
