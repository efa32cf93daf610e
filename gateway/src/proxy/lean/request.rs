//! The client's request head read by the lean path itself, from the bytes
//! the connection's wait gathered (`listener::head_wait`), into the same
//! `RequestHeader` Pingora's server session would build, without the
//! session.
//!
//! Why: the session was most of what a request cost before the pipeline
//! saw it. Made for every request, it boxed itself and the head, took a
//! timing digest, kept the fields' offsets in a `Vec` and built the head's
//! two header maps one field short, so inserting the request id grew both
//! (`benches/README.md`, session 13). Here the head is built once, with
//! room for that field, and the body of at most `MAX_BODY` bytes is read
//! straight from what arrived and the stream.
//!
//! Which heads: those `lean_eligible` let through (HTTP/1.1, origin-form,
//! no coding, a small length), parsed by httparse with the settings and
//! the limits of Pingora's server, with at most one `Content-Length` of
//! digits only, and that Pingora's own checks of the authority accept.
//! Anything else (a head httparse refuses or that Pingora would rewrite, a
//! repeated or listed length, a `Host` Pingora refuses) goes to Pingora's
//! session, which reads it from its first byte and answers as it always
//! did. The line is drawn so that whatever is read here is read exactly as
//! Pingora would read it; `integration-tests/tests/lean_path.rs` compares
//! both on a corpus.
//!
//! The session is still made for what only it writes (a local answer, an
//! error page, interim answers, an answer whose framing the lean path
//! leaves to it): it then reads the same bytes again, and takes over the
//! head as the gateway changed it (`client.rs`, `Client::session`).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::CONNECTION;
use http::Version;
use pingora_core::protocols::http::authority::validate_request_authority;
use pingora_http::RequestHeader;

use super::arrived;
use super::upstream::{connection_keepalive, from_digits};

/// Pingora's limit on a request head's fields (`MAX_HEADERS`).
const MAX_HEADERS: usize = 256;

/// A request head read here, and what the rest of the request needs of it.
pub(super) struct OwnRequest {
    pub(super) req: RequestHeader,
    /// Every byte the wait read: the head, then what followed it (the
    /// body's start, or a pipelined request). A session that must take
    /// the request over reads them again.
    pub(super) arrived: Bytes,
    /// Where the head ends in `arrived`.
    pub(super) head_len: usize,
    /// The body's length (`Content-Length`; 0 without one).
    pub(super) body_len: usize,
    /// The client's `Connection` as Pingora's session reads it (the
    /// first value; HTTP/1.1 keeps the connection unless it says `close`).
    pub(super) keepalive: bool,
}

/// The request head at the start of `read`, when the lean path reads it
/// itself; the bytes back, untouched, when Pingora's session must.
pub(super) fn parse(read: BytesMut) -> Result<OwnRequest, BytesMut> {
    let (arrived, storage) = arrived::split(read);
    match build(&arrived) {
        Some((req, head_len, body_len)) => {
            // The rest of the storage goes back to the thread at once, for
            // the next heads (`arrived.rs`).
            drop(storage);
            let connection = req.headers.get(CONNECTION).and_then(|v| connection_keepalive(v.as_bytes()));
            Ok(OwnRequest { req, arrived, head_len, body_len, keepalive: connection.unwrap_or(true) })
        }
        // Nothing was sliced from it: the same bytes back (a copy only
        // when other requests' bytes share its storage).
        None => Err(storage.unsplit(arrived)),
    }
}

/// The head, its length and the body's, as Pingora's `read_request` builds
/// them (names and values are slices of `arrived`, the original case kept).
fn build(arrived: &Bytes) -> Option<(RequestHeader, usize, usize)> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let httparse::Status::Complete(head_len) =
        config.parse_request_with_uninit_headers(&mut parsed, arrived, &mut fields).ok()?
    else {
        return None;
    };
    if parsed.version != Some(1) {
        return None;
    }
    let (mut lengths, mut body_len) = (0, 0);
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            body_len = usize::try_from(from_digits(field.value)?).ok()?;
        }
    }
    if lengths > 1 || body_len as u64 > super::MAX_BODY {
        return None;
    }
    // One more field than came: the request id the gateway may insert.
    let size = parsed.headers.len() + 1;
    let target = parsed.path?.as_bytes();
    // An origin-form target (`lean_eligible`) without a fragment, in UTF-8,
    // is what Pingora keeps as the `Uri` alone (`parse_request_target`): it
    // is made here from a slice of `arrived`, where Pingora copies it.
    // Anything else would be kept otherwise: Pingora's session reads it.
    if target.first() != Some(&b'/') || target.contains(&b'#') || std::str::from_utf8(target).is_err() {
        return None;
    }
    let uri = http::Uri::from_maybe_shared(arrived.slice_ref(target)).ok()?;
    let mut req = RequestHeader::build(parsed.method?, b"", Some(size)).ok()?;
    req.set_uri(uri);
    req.set_version(Version::HTTP_11);
    for field in parsed.headers.iter() {
        let value = http::HeaderValue::from_maybe_shared(arrived.slice_ref(field.value)).ok()?;
        req.append_header(arrived.slice_ref(field.name.as_bytes()), value).ok()?;
    }
    validate_request_authority(&req).ok()?;
    Some((req, head_len, body_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(head: &str) -> Option<OwnRequest> {
        parse(BytesMut::from(head.as_bytes())).ok()
    }

    #[test]
    fn a_plain_head_is_read_as_pingora_builds_it() {
        let text = "POST /cart/x?a=1 HTTP/1.1\r\nHost: shop\r\nX-Mixed-Case: v\r\nx-mixed-case: w\r\n\
                    Content-Length: 3\r\nConnection: keep-alive\r\n\r\nabcGET";
        let own = own(text).expect("read here");
        assert_eq!(own.head_len, text.len() - 6);
        assert_eq!(own.body_len, 3);
        assert!(own.keepalive);
        assert_eq!(&own.arrived[own.head_len..], b"abcGET");
        let req = &own.req;
        assert_eq!((req.method.as_str(), req.raw_path()), ("POST", &b"/cart/x?a=1"[..]));
        assert_eq!(req.version, Version::HTTP_11);
        let values: Vec<_> = req.headers.get_all("x-mixed-case").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(values, [b"v", b"w"]);
        // The original case of every name, in order, as Pingora's session keeps it.
        let names: Vec<_> = req.case_header_iter().map(|(c, _)| c.as_slice().to_vec()).collect();
        assert_eq!(names[..2], [b"Host".to_vec(), b"X-Mixed-Case".to_vec()]);
    }

    #[test]
    fn the_target_is_kept_as_pingora_keeps_it() {
        for target in ["/", "/cart/x?a=1&b=%20", "/a//b/../c?", "/?", "/a;p=1?q=a|b", "/~x"] {
            let own = own(&format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n")).expect("read here");
            let theirs = RequestHeader::build("GET", target.as_bytes(), None).expect("Pingora's");
            assert_eq!(own.req.uri, theirs.uri, "{target}");
            assert_eq!(own.req.raw_path(), theirs.raw_path(), "{target}");
            assert_eq!(own.req.uri.path(), theirs.uri.path(), "{target}");
            assert_eq!(own.req.uri.query(), theirs.uri.query(), "{target}");
        }
    }

    #[test]
    fn connection_is_read_as_pingoras_session_reads_it() {
        let keepalive = |connection: &str| {
            own(&format!("GET / HTTP/1.1\r\nHost: h\r\nConnection: {connection}\r\n\r\n")).map(|o| o.keepalive)
        };
        assert_eq!(keepalive("close"), Some(false));
        assert_eq!(keepalive("Keep-Alive"), Some(true));
        assert_eq!(keepalive("keep-alive, close"), Some(false));
        assert_eq!(own("GET / HTTP/1.1\r\nHost: h\r\n\r\n").map(|o| o.keepalive), Some(true));
    }

    #[test]
    fn heads_pingora_reads_otherwise_are_left_to_its_session_untouched() {
        for refused in [
            // httparse refuses it, or Pingora would rewrite the target first.
            "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a\u{1}b HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n",
            // Targets Pingora keeps otherwise than as a plain `Uri`.
            "GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
            // Framing Pingora reconciles or refuses.
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65537\r\n\r\n",
            // Authorities Pingora refuses.
            "GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n",
        ] {
            let bytes = BytesMut::from(refused.as_bytes());
            let back = parse(bytes).err().unwrap_or_else(|| panic!("read here: {refused:?}"));
            assert_eq!(&back[..], refused.as_bytes());
        }
    }
}
