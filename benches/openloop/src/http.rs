//! HTTP/1.1 response framing: where one response ends in a byte buffer that
//! may hold only part of it. Stateless: called again on the whole buffer after
//! every read (the responses of the benchmark are small).

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A whole response of `len` bytes (interim 1xx responses included).
    Done { status: u16, len: usize, close: bool },
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadResponse(pub String);

const MAX_HEADERS: usize = 100;
/// A chunk-size line or trailer longer than this is not HTTP we accept.
const MAX_LINE: usize = 8192;

/// Frames the response at the start of `buf`. `eof`: the peer has closed, so
/// a response without Content-Length or chunked encoding ends here.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, BadResponse> {
    let mut off = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let head = match res.parse(&buf[off..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(e) => return Err(BadResponse(format!("bad response head: {e}"))),
        };
        let status = res.code.unwrap_or(0);
        let body_at = off + head;
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(BadResponse("unexpected 101 Switching Protocols".into()));
            }
            off = body_at; // interim response (100 Continue, 103 Early Hints): the real one follows
            continue;
        }
        let mut close = res.version == Some(0);
        let (mut length, mut chunked, mut other_coding) = (None::<usize>, false, false);
        for h in res.headers.iter() {
            let value = std::str::from_utf8(h.value).map_err(|_| BadResponse("non-UTF-8 header value".into()))?;
            if h.name.eq_ignore_ascii_case("content-length") {
                let n =
                    value.trim().parse::<usize>().map_err(|_| BadResponse(format!("bad Content-Length '{value}'")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadResponse("conflicting Content-Length headers".into()));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only the last coding decides the framing.
                for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    chunked = coding.eq_ignore_ascii_case("chunked");
                    other_coding = !chunked;
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") && res.version == Some(0) {
                        close = false;
                    }
                }
            }
        }
        let end = if status == 204 || status == 304 {
            Some(body_at)
        } else if chunked {
            chunked_end(&buf[body_at..])?.map(|n| body_at + n)
        } else if let (Some(n), false) = (length, other_coding) {
            body_at.checked_add(n).filter(|&end| end <= buf.len())
        } else if eof {
            // Delimited by the close of the connection (RFC 9112, 6.3).
            return Ok(Parsed::Done { status, len: buf.len(), close: true });
        } else {
            None
        };
        return Ok(match end {
            Some(len) => Parsed::Done { status, len, close: close || other_coding },
            None => Parsed::Partial,
        });
    }
}

/// Length of a complete chunked body at the start of `b` (last chunk and
/// trailers included), or None when it is not all there yet.
fn chunked_end(b: &[u8]) -> Result<Option<usize>, BadResponse> {
    let bad = |what: &str| BadResponse(format!("bad chunked body: {what}"));
    let mut pos = 0;
    loop {
        let Some(eol) = find_crlf(&b[pos..]) else {
            return if b.len() - pos > MAX_LINE { Err(bad("chunk-size line too long")) } else { Ok(None) };
        };
        let line = &b[pos..pos + eol];
        let size_hex = line.split(|&c| c == b';').next().unwrap_or_default();
        let size_hex = size_hex.trim_ascii();
        if size_hex.is_empty() || size_hex.len() > 15 || !size_hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad("chunk size"));
        }
        let size = size_hex.iter().fold(0usize, |acc, &d| acc * 16 + (d as char).to_digit(16).unwrap_or(0) as usize);
        pos += eol + 2;
        if size == 0 {
            // Trailer section: header lines up to an empty line.
            loop {
                let Some(eol) = find_crlf(&b[pos..]) else {
                    return if b.len() - pos > MAX_LINE { Err(bad("trailer too long")) } else { Ok(None) };
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        let data_end = pos + size;
        if b.len() < data_end + 2 {
            return Ok(None);
        }
        if &b[data_end..data_end + 2] != b"\r\n" {
            return Err(bad("no CRLF after chunk data"));
        }
        pos = data_end + 2;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: u16, len: usize, close: bool) -> Result<Parsed, BadResponse> {
        Ok(Parsed::Done { status, len, close })
    }

    /// Every strict prefix is Partial; the whole is `want`; bytes after it are not consumed.
    fn check_split(resp: &[u8], want: Result<Parsed, BadResponse>) {
        for cut in 0..resp.len() {
            assert_eq!(parse_response(&resp[..cut], false), Ok(Parsed::Partial), "prefix of {cut} bytes");
        }
        assert_eq!(parse_response(resp, false), want);
        let mut more = resp.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(parse_response(&more, false), want);
    }

    #[test]
    fn content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
        check_split(r, done(200, r.len(), false));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        check_split(r, done(200, r.len(), true));
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        check_split(r, done(200, r.len(), true));
        let r = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi";
        check_split(r, done(200, r.len(), false));
    }

    #[test]
    fn chunked() {
        let r =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\n\r\n";
        check_split(r, done(200, r.len(), false));
        // trailers; chunk data that looks like a chunk-size line and a CRLF
        let r =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\n\r\n0\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n";
        check_split(r, done(200, r.len(), false));
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad, false).is_err());
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n";
        assert!(parse_response(bad, false).is_err());
    }

    #[test]
    fn statuses() {
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnah";
        check_split(r, done(404, r.len(), false));
        let r = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        check_split(r, done(503, r.len(), false));
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        check_split(r, done(204, r.len(), false));
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
        check_split(r, done(200, r.len(), false));
    }

    #[test]
    fn close_delimited_and_errors() {
        let r = b"HTTP/1.1 200 OK\r\n\r\nbody until close";
        assert_eq!(parse_response(r, false), Ok(Parsed::Partial));
        assert_eq!(parse_response(r, true), done(200, r.len(), true));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", true), Ok(Parsed::Partial));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
    }
}
