//! Request paths normalized before they are routed (`server.normalize_path`,
//! on by default), so that a route-level rule (degrade, limits, a future auth
//! route) cannot be walked around with a path the backend will resolve
//! differently: `/recommendations/../cart/x` is routed, and forwarded, as
//! `/cart/x`.
//!
//! Normalization per RFC 3986 section 6.2.2, in this order:
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded (`%2e` is `.`, `%7E` is `~`); every other escape keeps its
//!    encoding with upper-case hex digits (`%2f` becomes `%2F`);
//! 2. repeated slashes are merged (`//a` is `/a`), as nginx's `merge_slashes`;
//! 3. dot segments are removed (`/a/./b/../c` is `/a/c`).
//!
//! A path that climbs above `/` and a `%` not followed by two hex digits are
//! refused (400), and so are two forms that some backends read as something
//! this normalization does not: a backslash (IIS and some Node servers take
//! it for `/`) and a dot segment with parameters (`/..;/`, which Tomcat and
//! Spring resolve as `..`). An encoded slash (`%2F`) is not a separator: it stays as it
//! is, so `/a%2F..%2Fb` is one segment, routed and forwarded unchanged; a
//! backend that decodes `%2F` before resolving dot segments must not be
//! trusted with route-level rules either way. The query is never touched.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path climbs above /")]
    AboveRoot,
    #[error("a % is not followed by two hex digits")]
    BadEscape,
    #[error("a backslash is not a path character")]
    Backslash,
    #[error("a dot segment with parameters (`..;`) is ambiguous")]
    DotSegmentParameter,
}

/// The normalized form of `path` (a request path without its query);
/// borrowed when it is already normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        // `*` (OPTIONS *) and other non-paths are not ours to change.
        return Ok(Cow::Borrowed(path));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    let decoded = decode_unreserved(path)?;
    let normalized = remove_dot_segments(&decoded)?;
    // `/.well-known/x` looks like work and is already normal.
    Ok(if normalized == path { Cow::Borrowed(path) } else { Cow::Owned(normalized) })
}

/// No escape, no backslash, no empty segment, no segment starting with a
/// dot: nothing to do.
fn is_normal(path: &[u8]) -> bool {
    !path.iter().any(|b| *b == b'%' || *b == b'\\')
        && !path.windows(2).any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
        let (hi, lo) = (hex_value(hex[0])?, hex_value(hex[1])?);
        let byte = hi << 4 | lo;
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(hex[0].to_ascii_uppercase()));
            out.push(char::from(hex[1].to_ascii_uppercase()));
        }
        i += 3;
    }
    Ok(out)
}

fn hex_value(b: u8) -> Result<u8, PathError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(PathError::BadEscape),
    }
}

/// RFC 3986 section 5.2.4 on an absolute path, with empty segments merged.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path.split('/').skip(1).peekable();
    // A path that ends in a directory (`/a/`, `/a/.`, `/a/b/..`) keeps its trailing slash.
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => trailing_slash = last,
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = last;
            }
            s if matches!(s.split(';').next(), Some("." | "..")) => return Err(PathError::DotSegmentParameter),
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in ["/", "/cart", "/cart/items", "/cart/items/", "/a.b/c..d/.e", "/.well-known/x", "*"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(s)) if s == p), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(norm("/recommendations/../cart/x").as_deref(), Ok("/cart/x"));
        assert_eq!(norm("/a/./b/../c").as_deref(), Ok("/a/c"));
        assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(norm("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(norm("/a/..").as_deref(), Ok("/"));
        assert_eq!(norm("/./").as_deref(), Ok("/"));
    }

    #[test]
    fn encoded_dots_and_unreserved_characters_are_decoded() {
        assert_eq!(norm("/recommendations/%2e%2E/cart/x").as_deref(), Ok("/cart/x"));
        assert_eq!(norm("/recommendations/.%2e/cart").as_deref(), Ok("/cart"));
        assert_eq!(norm("/%63art/%7Eme").as_deref(), Ok("/cart/~me"));
        assert_eq!(norm("/a%2fb%3a").as_deref(), Ok("/a%2Fb%3A"));
    }

    #[test]
    fn encoded_slashes_are_not_separators() {
        assert_eq!(norm("/a%2F..%2Fb").as_deref(), Ok("/a%2F..%2Fb"));
        assert_eq!(norm("/recommendations/..%2Fcart").as_deref(), Ok("/recommendations/..%2Fcart"));
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(norm("//cart///items").as_deref(), Ok("/cart/items"));
        assert_eq!(norm("/cart//").as_deref(), Ok("/cart/"));
    }

    #[test]
    fn climbing_above_the_root_and_bad_escapes_are_refused() {
        for p in ["/..", "/../etc/passwd", "/a/../..", "/%2e%2e/x", "//../x"] {
            assert_eq!(norm(p), Err(PathError::AboveRoot), "{p}");
        }
        for p in ["/a%", "/a%2", "/a%zz", "/%%41"] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p}");
        }
    }

    #[test]
    fn forms_other_servers_read_as_separators_or_dot_segments_are_refused() {
        for p in ["/reco/..\\cart", "/a\\b", "\\"] {
            assert_eq!(norm(&format!("/{p}")), Err(PathError::Backslash), "{p}");
        }
        for p in ["/reco/..;/cart/x", "/reco/%2e%2e;/admin", "/reco/.;x/y"] {
            assert_eq!(norm(p), Err(PathError::DotSegmentParameter), "{p}");
        }
        assert_eq!(norm("/a;b/c").as_deref(), Ok("/a;b/c"), "parameters on a name are kept");
    }
}
