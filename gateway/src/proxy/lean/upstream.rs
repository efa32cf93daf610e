//! The upstream's answer read by the lean path itself, when it is the
//! common kind: a final answer from 200 to 499, its body framed by one
//! valid `Content-Length` (or none at all: 204, 304) or by
//! `Transfer-Encoding: chunked` alone (`chunked.rs`), from a plain TCP
//! upstream, on a route that neither mirrors nor caches. Its head is parsed
//! by httparse with the settings and limits of Pingora's client, into
//! slices of the bytes read, and spliced out to the client from them
//! (`head_splice::raw_response_head`); its body is read into one buffer and
//! written on from there.
//!
//! Why: Pingora's client builds a `ResponseHeader` for every answer (two
//! `HeaderMap`s, a `Bytes` and a `HeaderName` for every field) that the
//! lean path only reads and splices, and copies every piece of the body
//! into a new `Bytes`. That was the largest single cost left on the path
//! (`benches/README.md`, session 12).
//!
//! Everything else goes to Pingora's client session, from the start: the
//! bytes read so far are put back in front of the stream
//! (`l4::Stream::rewind`), and the session reads the answer as it did
//! before this file existed: interim answers, 5xx (a fallback page or a
//! cached copy may stand in), close-delimited bodies or other codings, a
//! `Content-Length` that is repeated or a list, or beside a coding (which
//! Pingora drops), an obs-folded value (which
//! Pingora rewrites), a head httparse refuses or that is too large (whose
//! error Pingora gives, as before). So whatever the lean path reads itself
//! is read exactly as Pingora would, and the rest is Pingora's.

use std::time::Duration;

use http::{StatusCode, Version};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType, RetryType};
use smallvec::SmallVec;
use tokio::io::AsyncReadExt;

use super::deadline::within;

/// As Pingora's client: at most this many fields in an answer head,
const MAX_HEADERS: usize = 256;
/// a head read in steps of at least this much room,
const HEAD_READ: usize = 4096;
/// and no further read once this much is gathered without its end.
pub(super) const MAX_HEAD_SIZE: usize = 1_048_575;
/// A body is read in pieces of at most this much, as Pingora's reader.
pub(super) const BODY_READ: usize = 64 * 1024;

/// Whether an upstream connection can carry an answer read here: plain
/// TCP, whose read bytes can be put back for Pingora's session.
pub(super) fn can_read(stream: &Stream) -> bool {
    stream.as_any().is::<L4Stream>()
}

/// An answer head read and parsed here, ready to be spliced out.
pub(super) struct AnswerHead<'b> {
    /// Its length in the buffer; what follows is the start of the body.
    pub len: usize,
    pub status: StatusCode,
    pub reason: &'b [u8],
    pub version: Version,
    /// `(name, value)`, in the order they came.
    pub fields: SmallVec<[(&'b [u8], &'b [u8]); 24]>,
    /// How its body is framed.
    pub body: Framing,
    /// Whether the upstream lets the connection carry another request, as
    /// Pingora's client judges it (`respect_keepalive`): its first
    /// `Connection` value, else HTTP/1.1's default.
    pub keepalive: bool,
}

/// How the body of an answer read here is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes (0: 204, 304).
    Length(u64),
    /// `Transfer-Encoding: chunked` (`chunked.rs`).
    Chunked,
}

/// Read more of an answer's body into `buf`, after what it holds (room
/// for up to [`BODY_READ`] made first); errors as Pingora's body reader
/// gives them. `Ok(0)`: the upstream closed the connection.
pub(super) async fn read_body_more(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    timeout: Option<Duration>,
) -> Result<usize, Box<Error>> {
    if buf.capacity() - buf.len() < BODY_READ / 2 {
        buf.reserve(BODY_READ);
    }
    let read = stream.read_buf(buf);
    let read = match timeout {
        Some(t) => match within(t, read).await {
            Ok(read) => read,
            Err(_) => return Err(Error::explain(ErrorType::ReadTimedout, format!("reading body, timeout: {t:?}"))),
        },
        None => read.await,
    };
    read.map_err(|e| Error::because(ErrorType::ReadError, "when reading body", e))
}

/// Read more of an answer head into `buf`; errors as Pingora's client
/// gives them, so a dead pooled connection is retried as there.
pub(super) async fn read_more(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    timeout: Option<Duration>,
) -> Result<(), Box<Error>> {
    if buf.capacity() - buf.len() < HEAD_READ {
        buf.reserve(HEAD_READ);
    }
    let already = buf.len();
    let read = stream.read_buf(buf);
    let read = match timeout {
        Some(t) => match within(t, read).await {
            Ok(read) => read,
            Err(_) => return Err(Error::explain(ErrorType::ReadTimedout, "while reading response headers")),
        },
        None => read.await,
    };
    match read {
        Ok(0) => {
            let what = format!("while reading response headers, bytes already read: {already}");
            let mut e = Error::explain(ErrorType::ConnectionClosed, what);
            e.retry = RetryType::ReusedOnly;
            Err(e)
        }
        Ok(_) => Ok(()),
        Err(io) => {
            // An OS error is typical of a pooled connection the upstream dropped.
            let os = io.raw_os_error().is_some();
            let what = format!("while reading response headers, bytes already read: {already}");
            let mut e = Error::because(ErrorType::ReadError, what, io);
            if os {
                e.retry = RetryType::ReusedOnly;
            }
            Err(e)
        }
    }
}

/// Whether `buf` holds a blank line, the end of a head (httparse takes a
/// bare LF as a line end in answers). `searched`: how far earlier calls
/// looked, so a head that trickles in is not searched from the start
/// again each time.
pub(super) fn head_ended(buf: &[u8], searched: &mut usize) -> bool {
    let from = searched.saturating_sub(2);
    *searched = buf.len();
    let rest = &buf[from..];
    memchr::memchr_iter(b'\n', rest).any(|i| matches!(&rest[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// The answer head at the start of `buf`, when the lean path reads this
/// answer itself; `None` when Pingora's session must (see the file's
/// comment), including when the head is not whole or not valid.
pub(super) fn parse(buf: &[u8]) -> Option<AnswerHead<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let mut parser = httparse::ParserConfig::default();
    parser.allow_spaces_after_header_name_in_responses(true);
    parser.allow_obsolete_multiline_headers_in_responses(true);
    let httparse::Status::Complete(len) = parser.parse_response(&mut resp, buf).ok()? else { return None };
    let code = resp.code?;
    if !(200..500).contains(&code) {
        return None;
    }
    let status = StatusCode::from_u16(code).ok()?;
    let version = match resp.version? {
        1 => Version::HTTP_11,
        0 => Version::HTTP_10,
        _ => return None,
    };
    let mut fields = SmallVec::new();
    let (mut lengths, mut length, mut connection) = (0, None, None);
    let (mut codings, mut chunked) = (0, false);
    for field in resp.headers.iter() {
        let (name, value) = (field.name.as_bytes(), field.value);
        // Pingora rewrites a folded value (CR, LF and NUL become spaces).
        if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) || name.len() > u16::MAX as usize {
            return None;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings += 1;
            chunked = value.eq_ignore_ascii_case(b"chunked");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = from_digits(value);
        }
        if connection.is_none() && name.eq_ignore_ascii_case(b"connection") {
            connection = Some(value);
        }
        fields.push((name, value));
    }
    let body = match (status.as_u16(), codings, lengths, length) {
        // No body by definition; Pingora still refuses an invalid length.
        (204 | 304, 0, 0, _) => Framing::Length(0),
        (204 | 304, 0, 1, Some(_)) => Framing::Length(0),
        (_, 0, 1, Some(n)) => Framing::Length(n),
        // Exactly `chunked`, no length (Pingora drops a length beside it),
        // and HTTP/1.1 (an HTTP/1.0 answer with a coding ends its connection).
        (204 | 304, ..) => return None,
        (_, 1, 0, _) if chunked && version == Version::HTTP_11 => Framing::Chunked,
        _ => return None,
    };
    let keepalive = connection.and_then(connection_keepalive).unwrap_or(version == Version::HTTP_11);
    let reason = resp.reason.unwrap_or("").as_bytes();
    Some(AnswerHead { len, status, reason, version, fields, body, keepalive })
}

/// Give the bytes read back to the stream, for Pingora's session to read
/// the answer from its start. `None` cannot happen: only a stream
/// [`can_read`] accepted is read here.
pub(super) fn rewind(stream: Stream, read: &[u8]) -> Option<Stream> {
    let mut stream = stream.into_any().downcast::<L4Stream>().ok()?;
    stream.rewind(read);
    Some(stream)
}

/// A `Content-Length` value as Pingora reads one: ASCII digits only.
pub(super) fn from_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// A `Connection` value as Pingora's client reads it for keep-alive:
/// exactly `keep-alive`, or a `close` token among others; `None` leaves it
/// to the version.
pub(super) fn connection_keepalive(value: &[u8]) -> Option<bool> {
    if value.eq_ignore_ascii_case(b"close") {
        return Some(false);
    }
    if value.eq_ignore_ascii_case(b"keep-alive") {
        return Some(true);
    }
    let tokens = std::str::from_utf8(value).unwrap_or("");
    tokens.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")).then_some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_first_blank_line_however_it_arrives() {
        let head = b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody";
        for split in 1..head.len() {
            let mut searched = 0;
            let ended = head_ended(&head[..split], &mut searched) || head_ended(head, &mut searched);
            assert!(ended, "split at {split}");
            let mut searched = 0;
            let early = head_ended(&head[..split], &mut searched);
            assert_eq!(early, split >= 25, "split at {split}");
        }
        assert!(head_ended(b"HTTP/1.1 204 No Content\n\n", &mut 0));
        assert!(!head_ended(b"HTTP/1.1 200 OK\r\nA: 1\r\n", &mut 0));
    }

    #[test]
    fn plain_answers_are_read_here_and_the_rest_left_to_pingora() {
        let raw = b"HTTP/1.1 200 Fine\r\nContent-Length: 5\r\nX-A: 1\r\nconnection: close\r\n\r\nhello";
        let head = parse(raw).expect("read here");
        let read = (head.len, head.status.as_u16(), head.reason, head.body, head.keepalive);
        assert_eq!(read, (raw.len() - 5, 200, &b"Fine"[..], Framing::Length(5), false));
        assert_eq!(head.fields.len(), 3);
        let ok = |raw: &str| parse(raw.as_bytes()).map(|h| (h.body, h.keepalive));
        let length = Framing::Length;
        assert_eq!(ok("HTTP/1.1 204 No Content\r\n\r\n"), Some((length(0), true)));
        assert_eq!(ok("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"), Some((length(0), true)));
        assert_eq!(ok("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"), Some((length(0), false)));
        let http10_keepalive = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n";
        assert_eq!(ok(http10_keepalive), Some((length(0), true)));
        let closing = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: x, close\r\n\r\n";
        assert_eq!(ok(closing), Some((length(3), false)));
        let listed = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, x\r\n\r\n";
        assert_eq!(ok(listed), Some((length(3), true)));
        assert_eq!(ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"), Some((Framing::Chunked, true)));
        for pingora in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Folded: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nBad Name: a\r\n\r\n",
            "HTTP/2.0 200 OK\r\nContent-Length: 1\r\n\r\n",
        ] {
            assert!(parse(pingora.as_bytes()).is_none(), "{pingora:?}");
        }
    }

    #[test]
    fn a_connection_value_is_read_as_pingora_reads_it() {
        assert_eq!(connection_keepalive(b"Close"), Some(false));
        assert_eq!(connection_keepalive(b"KEEP-ALIVE"), Some(true));
        assert_eq!(connection_keepalive(b"upgrade"), None);
        assert_eq!(connection_keepalive(b"keep-alive, te"), None);
        assert_eq!(connection_keepalive(b"te, close"), Some(false));
    }
}
