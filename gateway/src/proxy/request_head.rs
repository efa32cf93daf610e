//! What the gateway refuses or rewrites in a client's request head before
//! anything routes on it: the rules where RFC 9112 is strict and Pingora's
//! parser is not, path normalization, and the headers the gateway owns.
//!
//! Runs in `request_filter` before the blacklist and routing look at the
//! request, so a refused request is logged and counted like any other local
//! answer (route `""`).

use http::header::{CONNECTION, CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue, Version};
use pingora_http::RequestHeader;

use crate::edge::path;

use super::respond::LocalResponse;

/// Refuse a request head the RFCs call invalid, and route on the normalized
/// path: `Err(400 page)` to answer, else the head (possibly rewritten) goes on.
pub fn check(req: &mut RequestHeader, normalize_path: bool) -> Result<(), LocalResponse> {
    match req.headers.get(HOST) {
        // RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        None if req.version == Version::HTTP_11 => return Err(bad_request("The request has no Host header.")),
        Some(host) if !is_host_value(host.as_bytes()) => {
            return Err(bad_request("The Host header is not a host name."));
        }
        _ => {}
    }
    // RFC 9112 section 3.2: origin-form starts with `/`; absolute-form has
    // a scheme; `*` is for OPTIONS only. Anything else (`GET admin/x`) would
    // be routed as `/` and forwarded as written.
    let target = req.raw_path();
    let origin_form = target.first() == Some(&b'/');
    let asterisk = target == b"*" && req.method == http::Method::OPTIONS;
    if !(origin_form || asterisk || is_absolute_form(target)) {
        return Err(bad_request("The request target must start with /."));
    }
    single_content_length(req);
    if normalize_path {
        normalize(req)?;
    }
    Ok(())
}

/// `scheme "://" ...` (Pingora has checked the authority and keeps the URI's
/// path only).
fn is_absolute_form(target: &[u8]) -> bool {
    let Some(colon) = target.windows(3).position(|w| w == b"://") else { return false };
    let scheme = &target[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Pingora accepts repeated `Content-Length` fields and `3, 3` lists when
/// every value is the same, and refuses the rest; forward one value.
fn single_content_length(req: &mut RequestHeader) {
    let mut values = req.headers.get_all(CONTENT_LENGTH).iter();
    let (Some(first), more) = (values.next(), values.next().is_some()) else { return };
    if !more && !first.as_bytes().contains(&b',') {
        return;
    }
    let one = first.as_bytes().split(|b| *b == b',').next().unwrap_or_default().trim_ascii();
    if let Ok(value) = HeaderValue::from_bytes(one) {
        let _ = req.insert_header(CONTENT_LENGTH, value);
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 section 7.2, RFC 3986 section 3.2.2):
/// a bracketed IP literal or a name of unreserved, sub-delim and
/// percent-encoded characters (no whitespace, no control characters, no
/// `/`, `@` or quotes), then an optional port of digits.
fn is_host_value(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|b| *b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
                    return false;
                }
                match &host[end + 1..] {
                    [] => return true,
                    [b':', port @ ..] => (&[][..], Some(port)),
                    _ => return false,
                }
            }
            None => return false,
        },
        _ => match host.iter().rposition(|b| *b == b':') {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        },
    };
    let name_ok = name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')')
            || matches!(b, b'*' | b'+' | b',' | b';' | b'=')
    });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    name_ok && port_ok
}

fn normalize(req: &mut RequestHeader) -> Result<(), LocalResponse> {
    // Checked on the bytes as received too: the URI may hold an escaped copy.
    if req.raw_path().contains(&b'\\') {
        return Err(bad_request("The path is refused: a backslash is not a path character."));
    }
    if !req.raw_path_is_utf8() {
        return Err(bad_request("The request target is not valid."));
    }
    let normalized = match path::normalize(req.uri.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(bad_request(&format!("The path is refused: {e}."))),
    };
    let path_and_query = match req.uri.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query =
        Some(path_and_query.parse().map_err(|_| bad_request("The normalized path is not a valid request target."))?);
    let uri = http::Uri::from_parts(parts).map_err(|_| bad_request("The request target is not valid."))?;
    req.set_uri(uri);
    Ok(())
}

fn bad_request(detail: &str) -> LocalResponse {
    LocalResponse::page(400, "Bad Request", detail)
}

/// Headers the gateway sets itself. A client may not remove them on the way
/// to the upstream by naming them in `Connection` (a hop-by-hop header the
/// gateway forwards), and may not send the shadow marker that tells a backend
/// "this is a mirrored request, skip side effects".
pub fn strip_client_controls(req: &mut RequestHeader, owned: &[&HeaderName], markers: &[&HeaderName]) {
    for (i, marker) in markers.iter().enumerate() {
        // Usually the route's marker is the default one: look it up once.
        if !markers[..i].contains(marker) && req.headers.contains_key(*marker) {
            req.remove_header(*marker);
        }
    }
    let Some(kept) = connection_without(req, owned) else { return };
    if kept.is_empty() {
        req.remove_header(&CONNECTION);
    } else if let Ok(value) = HeaderValue::from_str(&kept) {
        let _ = req.insert_header(CONNECTION, value);
    }
}

/// Remove the cookie `name` from the request's `Cookie` headers (a tester
/// override cookie, judged already). Allocation-free when it is absent.
pub fn remove_cookie(req: &mut RequestHeader, name: &str) {
    let named = |pair: &str| pair.trim().split_once('=').is_some_and(|(k, _)| k == name);
    let cookies = || req.headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    if !cookies().any(|v| v.split(';').any(named)) {
        return;
    }
    let kept: Vec<&str> =
        cookies().flat_map(|v| v.split(';')).map(str::trim).filter(|p| !p.is_empty() && !named(p)).collect();
    let joined = kept.join("; ");
    if joined.is_empty() {
        req.remove_header(&http::header::COOKIE);
    } else if let Ok(value) = HeaderValue::from_str(&joined) {
        let _ = req.insert_header(http::header::COOKIE, value);
    }
}

/// The `Connection` tokens that do not name an owned header, joined; None
/// when there is nothing to remove (the common case, allocation-free).
fn connection_without(req: &RequestHeader, owned: &[&HeaderName]) -> Option<String> {
    let names_owned = |token: &[u8]| owned.iter().any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(token));
    let tokens = || req.headers.get_all(CONNECTION).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
    if !tokens().any(|t| names_owned(t.trim_ascii())) {
        return None;
    }
    let kept: Vec<&str> = tokens()
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty() && !names_owned(t))
        .filter_map(|t| std::str::from_utf8(t).ok())
        .collect();
    Some(kept.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: Version, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", path.as_bytes(), None).expect("head");
        req.set_version(version);
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        req
    }

    fn status(r: Result<(), LocalResponse>) -> u16 {
        r.err().map_or(0, |p| p.status)
    }

    #[test]
    fn the_override_cookie_is_removed_and_the_others_kept() {
        let mut req = head(Version::HTTP_11, "/", &[("cookie", "a=1; gw_version=v2"), ("cookie", "my_gw_version=x")]);
        remove_cookie(&mut req, "gw_version");
        let left: Vec<&str> = req.headers.get_all("cookie").iter().filter_map(|v| v.to_str().ok()).collect();
        assert_eq!(left, ["a=1; my_gw_version=x"]);
        let mut only = head(Version::HTTP_11, "/", &[("cookie", "gw_version=v2")]);
        remove_cookie(&mut only, "gw_version");
        assert!(only.headers.get("cookie").is_none());
    }

    #[test]
    fn http11_needs_a_host_and_a_host_is_a_name() {
        assert_eq!(status(check(&mut head(Version::HTTP_11, "/", &[]), true)), 400);
        assert_eq!(status(check(&mut head(Version::HTTP_10, "/", &[]), true)), 0);
        for bad in [
            "shop .example",
            "shop\t.example",
            "a b",
            "shop.example/x",
            "\"x\"",
            "shop.example:abc",
            "a:b:c",
            "[::1",
            "[zz]",
        ] {
            assert_eq!(status(check(&mut head(Version::HTTP_11, "/", &[("host", bad)]), true)), 400, "{bad:?}");
        }
        for good in ["shop.example", "shop.example:8080", "127.0.0.1:80", "[::1]:8080", "[::1]", "shop.example.", ""] {
            assert_eq!(status(check(&mut head(Version::HTTP_11, "/", &[("host", good)]), true)), 0, "{good:?}");
        }
    }

    #[test]
    fn the_path_is_normalized_and_the_query_kept() {
        let mut req = head(Version::HTTP_11, "/recommendations/%2e%2e/cart/x?a=/../b", &[("host", "h")]);
        assert_eq!(status(check(&mut req, true)), 0);
        assert_eq!(req.uri.path(), "/cart/x");
        assert_eq!(req.uri.query(), Some("a=/../b"));
        assert_eq!(req.raw_path(), b"/cart/x?a=/../b");
        let mut raw = head(Version::HTTP_11, "/recommendations/../cart/x", &[("host", "h")]);
        assert_eq!(status(check(&mut raw, false)), 0);
        assert_eq!(raw.uri.path(), "/recommendations/../cart/x");
        assert_eq!(status(check(&mut head(Version::HTTP_11, "/../x", &[("host", "h")]), true)), 400);
    }

    #[test]
    fn a_target_is_a_path_an_absolute_url_or_an_options_asterisk() {
        for bad in ["admin/secret", "../admin", ".", "*"] {
            assert_eq!(status(check(&mut head(Version::HTTP_11, bad, &[("host", "h")]), false)), 400, "{bad}");
        }
        assert_eq!(status(check(&mut head(Version::HTTP_11, "http://h/cart", &[("host", "h")]), true)), 0);
        let mut options = RequestHeader::build("OPTIONS", b"*", None).expect("head");
        options.append_header("host", "h").expect("host");
        assert_eq!(status(check(&mut options, true)), 0);
    }

    #[test]
    fn identical_content_lengths_are_forwarded_as_one() {
        for lengths in [&["3", "3"][..], &["3, 3"], &["3,3", "3"]] {
            let mut req = head(Version::HTTP_11, "/", &[("host", "h")]);
            for l in lengths {
                req.append_header("content-length", *l).expect("cl");
            }
            assert_eq!(status(check(&mut req, true)), 0);
            let values: Vec<_> = req.headers.get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(values, [&HeaderValue::from_static("3")], "{lengths:?}");
        }
    }

    #[test]
    fn connection_cannot_strip_owned_headers_and_markers_are_removed() {
        let rid = HeaderName::from_static("x-request-id");
        let xff = HeaderName::from_static("x-forwarded-for");
        let marker = HeaderName::from_static("x-shadow");
        let mut req = head(
            Version::HTTP_11,
            "/",
            &[("connection", "keep-alive, X-Request-Id"), ("connection", "x-forwarded-for"), ("x-shadow", "1")],
        );
        strip_client_controls(&mut req, &[&rid, &xff], &[&marker]);
        let connection: Vec<_> = req.headers.get_all(CONNECTION).iter().collect();
        assert_eq!(connection, [&HeaderValue::from_static("keep-alive")]);
        assert!(req.headers.get("x-shadow").is_none());

        let mut only = head(Version::HTTP_11, "/", &[("connection", "x-request-id")]);
        strip_client_controls(&mut only, &[&rid], &[]);
        assert!(only.headers.get(CONNECTION).is_none());

        let mut untouched = head(Version::HTTP_11, "/", &[("connection", "Upgrade")]);
        strip_client_controls(&mut untouched, &[&rid], &[]);
        assert_eq!(untouched.headers.get(CONNECTION), Some(&HeaderValue::from_static("Upgrade")));
    }
}
