//! The lean HTTP/1 path against Pingora's: one corpus of requests, each
//! followed by a request on the same kept-alive connection, sent through a
//! gateway with `server.lean_http1 = true` and through one with `false`.
//! The bytes every backend received and the bytes every client received
//! must be the same. The backends are written by hand, so they can answer
//! with any framing (chunked, close-delimited, cut off mid-body, trailers).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every request the backend received, by its `X-Request-Id`.
type Received = Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>>;

/// A backend that records each request's bytes and answers by path.
async fn raw_backend() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received: Received = Arc::default();
    let record = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_backend(conn, Arc::clone(&record)));
        }
    });
    (addr, received)
}

async fn serve_backend(mut conn: TcpStream, record: Received) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until_head(&mut conn, &mut buf).await else { return };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let id = header(&head, "x-request-id").unwrap_or_default();
        let method = head.split(' ').next().unwrap_or("").to_string();
        if path.ends_with("/early") {
            // Answers before it reads the upload, then reads it (a 413 that keeps the connection).
            let _ = conn.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!").await;
        }
        let Some(request_end) = read_body(&mut conn, &mut buf, head_end, &head).await else { return };
        record.lock().expect("lock").entry(id).or_default().push(buf[..request_end].to_vec());
        buf.drain(..request_end);
        let answer: Vec<u8> = match path.rsplit('/').next().unwrap_or("").split('?').next().unwrap_or("") {
            "early" => continue,
            // Read, then the connection dies without an answer: what a pooled
            // connection the backend closed as it was reused looks like.
            "vanish" => return,
            "switch" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec(),
            "chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
            "trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n".to_vec(),
            "204" => b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n".to_vec(),
            "304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec(),
            "503" => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\nbusy now".to_vec(),
            "hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "stray" => {
                // An upstream that writes past the end of its answer: a whole
                // second answer nobody asked for, after the first was read.
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTRAY!").await;
                record.lock().expect("lock").entry("stray-written".into()).or_default();
                continue;
            }
            "close" => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end").await;
                return;
            }
            "midbody" => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..").await;
                return;
            }
            "len-big" => {
                let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n".to_vec();
                big.extend((0..300_000u32).map(|i| b'a' + (i % 26) as u8));
                big
            }
            "len-zero" => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Kind: zero\r\n\r\n".to_vec(),
            "overread" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello!!".to_vec(),
            "reason" => b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "no-reason" => b"HTTP/1.1 299 \r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "404" => b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nX-Kind: gone\r\n\r\nnope".to_vec(),
            "spread" => b"HTTP/1.1 200 OK\r\nVary: a\r\nContent-Length: 2\r\nset-cookie: x=1\r\nVARY: b\r\nSet-Cookie: y=2\r\nDate: then\r\nConnection: keep-alive\r\n\r\nok".to_vec(),
            "space-name" => b"HTTP/1.1 200 OK\r\nX-Spaced : v\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "bare-lf" => b"HTTP/1.1 200 OK\nContent-Length: 2\nX-Kind: lf\n\nok".to_vec(),
            "http10-answer" => b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "upstream-close" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
            "dup-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "list-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok".to_vec(),
            "bad-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok".to_vec(),
            "both-framings" => b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
            "folded" => b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n two\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n".to_vec(),
            "bad-head" => b"HTTP/1.1 200 OK\r\nBad Field: x\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "many-fields" => {
                let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
                for i in 0..300 {
                    head.extend(format!("X-F{i}: v\r\n").bytes());
                }
                head.extend(b"\r\nok");
                head
            }
            "chunked-ext" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;name=\"v\"\r\nabc\r\nA\r\n0123456789\r\n0;end\r\n\r\n".to_vec(),
            "chunked-big" => {
                let mut big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for i in 0..40u8 {
                    big.extend(b"1F40\r\n");
                    big.extend(std::iter::repeat_n(b'a' + i % 26, 8000));
                    big.extend(b"\r\n");
                }
                big.extend(b"0\r\n\r\n");
                big
            }
            "chunked-slow" => {
                // Chunks, and a size line, torn across writes.
                for piece in [&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..], b"lo\r\n1", b"0\r\n0123456789abcdef\r", b"\n0\r\nx-t: 1\r"] {
                    if conn.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                b"\n\r\n".to_vec()
            }
            "chunked-overread" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nEXTRA".to_vec(),
            "chunk-no-crlf" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXY0\r\n\r\n".to_vec(),
            "trailer-bare-lf" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: 1\n\r\n".to_vec(),
            "chunked-cut" => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").await;
                return;
            }
            "chunked-gzip" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
            "slow-head" => {
                // The head in three pieces, apart: read in steps.
                for piece in [&b"HTTP/1.1 200 OK\r\nContent-"[..], b"Length: 5\r\nX-Kind: slow\r", b"\n\r\nhel"] {
                    if conn.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                b"lo".to_vec()
            }
            _ if method == "HEAD" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: len\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: len\r\nSet-Cookie: a=1\r\n\r\nhello".to_vec(),
        };
        if conn.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Reads until `buf` holds a whole head; its length.
async fn read_until_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            return Some(i + 4);
        }
        read_more(conn, buf).await?;
    }
}

/// Reads the body the head declares; where the request ends in `buf`.
async fn read_body(conn: &mut TcpStream, buf: &mut Vec<u8>, head_end: usize, head: &str) -> Option<usize> {
    if header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[at..], b"\r\n") {
                    break at + i;
                }
                read_more(conn, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[at..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    if let Some(i) = find(&buf[at..], b"\r\n") {
                        at += i + 2;
                        if i == 0 {
                            return Some(at);
                        }
                        continue;
                    }
                    read_more(conn, buf).await?;
                }
            }
            while buf.len() < at + size + 2 {
                read_more(conn, buf).await?;
            }
            at += size + 2;
        }
    }
    let len: usize = header(head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        read_more(conn, buf).await?;
    }
    Some(head_end + len)
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16384];
    match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        _ => None,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
    })
}

/// One answer read by its framing (interim answers included), or the
/// bytes until the gateway closed; `true` when the connection closed.
async fn read_answer(conn: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> (Vec<u8>, bool) {
    let mut answer = Vec::new();
    loop {
        let Some(head_end) = read_until_head(conn, buf).await else {
            answer.append(buf);
            return (answer, true);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let framed = head_request || matches!(status, 100..=199 | 204 | 304);
        let end = if framed {
            Some(head_end)
        } else if header(&head, "transfer-encoding").is_some() || header(&head, "content-length").is_some() {
            read_body(conn, buf, head_end, &head).await
        } else {
            None
        };
        let Some(end) = end else {
            // Close-delimited, or cut off: everything until the close.
            while read_more(conn, buf).await.is_some() {}
            answer.append(buf);
            return (answer, true);
        };
        let message: Vec<u8> = buf.drain(..end).collect();
        if !framed && header(&head, "transfer-encoding").is_some() {
            // Chunk boundaries are transport, not content: Pingora's path joins
            // the chunks that were queued when it writes, so they depend on timing.
            answer.extend_from_slice(&message[..head_end]);
            answer.extend(dechunk(&message[head_end..]));
        } else {
            answer.extend(message);
        }
        if !(100..=199).contains(&status) {
            let closed = header(&head, "connection").is_some_and(|v| v.contains("close"));
            return (answer, closed);
        }
    }
}

/// A chunked body's content, then its trailer section, marked as such.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = b"[chunked: ".to_vec();
    while let Some(line_end) = find(body, b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        body = &body[line_end + 2..];
        if size == 0 {
            out.extend_from_slice(b"; trailers: ");
            out.extend_from_slice(body);
            break;
        }
        out.extend_from_slice(&body[..size.min(body.len())]);
        body = body.get(size + 2..).unwrap_or_default();
    }
    out.push(b']');
    out
}

/// Cases whose answer is cut off (by the upstream, or by the gateway under
/// a large upload it refuses early): the bytes that reach the client before
/// the close depend on timing on Pingora's path.
const CUT_BY_TIMING: [&str; 2] = ["cut-off", "early-answer"];

/// The bytes with `Connection: close` written as `keep-alive`.
fn same_connection(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(bytes).replace("\r\nConnection: close\r\n", "\r\nConnection: keep-alive\r\n").into_bytes()
}

/// The bytes without `Date` fields, the one part allowed to differ.
fn without_date(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let kept: Vec<&str> = text.split_inclusive("\r\n").filter(|l| !l.starts_with("Date: ")).collect();
    kept.concat().into_bytes()
}

/// The corpus: every method, bodies by length and chunked, HEAD, 204, 304,
/// `Expect`, a large head, trailers, an early answer to a large upload,
/// interim answers, close-delimited and cut-off answers, an upstream 5xx,
/// HTTP/1.0; `{id}` becomes the request's id.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let plain = |method: &str, path: &str| {
        format!("{method} /cart/{path} HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {{id}}\r\n\r\n")
    };
    let with_body = |method: &str, path: &str, body: &str| {
        format!(
            "{method} /cart/{path} HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {{id}}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let big = "x".repeat(40_000);
    let huge = "y".repeat(200_000);
    let long_header = "z".repeat(12_000);
    let cases: Vec<(&str, String)> = vec![
        ("get", plain("GET", "len")),
        ("head", plain("HEAD", "len")),
        ("delete", plain("DELETE", "len")),
        ("options", plain("OPTIONS", "len?x=1&y=%20")),
        ("post", with_body("POST", "len", "hello world")),
        ("put-40k", with_body("PUT", "chunked", &big)),
        ("patch-chunked", "PATCH /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".into()),
        ("chunked-answer", plain("GET", "chunked")),
        ("204", plain("GET", "204")),
        ("304", "GET /cart/304 HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nIf-None-Match: \"v1\"\r\n\r\n".into()),
        ("expect", "POST /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc".into()),
        ("large-head", format!("GET /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {{id}}\r\nX-Long: {long_header}\r\n\r\n")),
        ("trailers", plain("GET", "trailers")),
        ("early-answer", with_body("POST", "early", &huge)),
        ("early-answer-small", with_body("POST", "early", &big)),
        ("hints", plain("GET", "hints")),
        // An interim answer after a body the lean path read: the session that
        // writes it must know the request is over, and keep the connection.
        ("hints-post", with_body("POST", "hints", "abc")),
        // A 101 to a request that asked for no upgrade: a 502 on both paths.
        ("unasked-101", plain("GET", "switch")),
        ("keep-alive", "GET /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n".into()),
        ("http10", "GET /cart/len HTTP/1.0\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("upstream-5xx", plain("GET", "503")),
        ("close-delimited", plain("GET", "close")),
        ("cut-off", plain("GET", "midbody")),
        ("client-close", "GET /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n".into()),
        // Answers the lean path reads itself, and the edges where it leaves
        // them to Pingora's client (`gateway/src/proxy/lean/upstream.rs`).
        ("len-big", plain("GET", "len-big")),
        ("len-zero", plain("GET", "len-zero")),
        ("overread", plain("GET", "overread")),
        ("reason", plain("GET", "reason")),
        ("no-reason", plain("GET", "no-reason")),
        ("404", plain("GET", "404")),
        ("spread-names", plain("GET", "spread")),
        ("space-name", plain("GET", "space-name")),
        ("bare-lf", plain("GET", "bare-lf")),
        ("http10-answer", plain("GET", "http10-answer")),
        ("upstream-close", plain("GET", "upstream-close")),
        ("dup-length", plain("GET", "dup-length")),
        ("list-length", plain("GET", "list-length")),
        ("bad-length", plain("GET", "bad-length")),
        ("both-framings", plain("GET", "both-framings")),
        ("folded", plain("GET", "folded")),
        ("bad-chunk", plain("GET", "bad-chunk")),
        ("bad-head", plain("GET", "bad-head")),
        ("many-fields", plain("GET", "many-fields")),
        ("slow-head", plain("GET", "slow-head")),
        ("head-204", plain("HEAD", "204")),
        ("chunked-ext", plain("GET", "chunked-ext")),
        ("chunked-big", plain("GET", "chunked-big")),
        ("chunked-slow", plain("GET", "chunked-slow")),
        ("chunked-overread", plain("GET", "chunked-overread")),
        ("chunk-no-crlf", plain("GET", "chunk-no-crlf")),
        ("trailer-bare-lf", plain("GET", "trailer-bare-lf")),
        ("chunked-cut", plain("GET", "chunked-cut")),
        ("chunked-gzip", plain("GET", "chunked-gzip")),
        // Requests the lean path reads itself, and those it leaves to
        // Pingora's session (`gateway/src/proxy/lean/request.rs`); answers
        // the gateway writes itself after reading a head here.
        ("no-route", "GET /nothing HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\n".into()),
        // Pages the lean path writes itself (no body), and one it leaves to
        // the session (a body to read).
        ("no-route-head", "HEAD /nothing HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("no-route-close", "GET /nothing HTTP/1.1\r\nHost: shop\r\nConnection: close\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("no-route-body", "POST /nothing HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nContent-Length: 3\r\n\r\nabc".into()),
        // A rate limit's 429, with `Retry-After` and the limit's name.
        ("limited-first", "GET /limited/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("limited-again", "GET /limited/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("no-host", "GET /cart/len HTTP/1.1\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("host-userinfo", "GET /cart/len HTTP/1.1\r\nHost: u@shop\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("two-hosts", "GET /cart/len HTTP/1.1\r\nHost: shop\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("dot-segments", "GET /cart/x/../len?a=/../b HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\n".into()),
        ("odd-target", "GET /cart/len?q=a|b HTTP/1.1\r\nhost: shop\r\nx-request-id: {id}\r\n\r\n".into()),
        ("repeated-length", "POST /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".into()),
        ("zero-length", with_body("POST", "len", "")),
        ("body-later", "POST /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nContent-Length: 11\r\n\r\nhello{pause} world".into()),
        ("head-then-body", "PUT /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\nContent-Length: 5\r\n\r\n{pause}hello".into()),
        // The client's id sent twice: one goes upstream, where the gateway
        // sets it (`exchange::request_id_to_set`), after a marker it removes.
        ("two-ids", "GET /cart/len HTTP/1.1\r\nX-Request-Id: {id}\r\nHost: shop\r\nx-request-id: {id}-again\r\nAccept: */*\r\n\r\n".into()),
        ("ids-after-marker", "GET /cart/len HTTP/1.1\r\nX-Shadow: 1\r\nHost: shop\r\nX-Request-Id: {id}\r\nX-Request-Id: {id}\r\nAccept: */*\r\n\r\n".into()),
        ("pipelined", "GET /cart/len HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\nGET /cart/len?second HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}-second\r\n\r\n".into()),
    ];
    cases.into_iter().map(|(name, text)| (name.to_string(), text.into_bytes())).collect()
}

fn config(backend: SocketAddr, lean: bool) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 1
version_header = "x-gateway-version"
lean_http1 = {lean}

[admin]
listen = "{{admin}}"

[upstreams.cart-v1]
backends = ["{backend}"]
read_timeout = "5s"

[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "cart-v1"

[[routes]]
name = "limited"
path_prefix = "/limited"
stable = "cart-v1"

[routes.rate_limit]
per_ip = {{ rate = "1/h", burst = 1 }}
"#
    )
}

/// What one gateway did with the corpus: the client's bytes per case (the
/// answer, then the next request's answer on the same connection when it
/// stayed open) and the backend's bytes per request id.
struct Run {
    client: BTreeMap<String, Vec<u8>>,
    backend: BTreeMap<String, Vec<Vec<u8>>>,
    lean_requests: f64,
}

async fn run(lean: bool) -> Run {
    let (backend, received) = raw_backend().await;
    let gateway = Gateway::start(&config(backend, lean)).await;
    let mut client = BTreeMap::new();
    for (name, template) in corpus() {
        let id = format!("diff-{name}");
        let request = String::from_utf8_lossy(&template).replace("{id}", &id);
        let mut conn = TcpStream::connect(gateway.listen_addr()).await.expect("connect");
        // `{pause}`: the rest of the request comes in a later write.
        for (i, part) in request.split("{pause}").enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            conn.write_all(part.as_bytes()).await.expect("write");
        }
        let mut buf = Vec::new();
        let (mut seen, closed) = read_answer(&mut conn, &mut buf, request.starts_with("HEAD")).await;
        if !closed {
            let next = format!("GET /cart/len?after={name} HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}-next\r\n\r\n");
            conn.write_all(next.as_bytes()).await.expect("write the next request");
            seen.extend_from_slice(b"\n--- next on the same connection ---\n");
            seen.extend(read_answer(&mut conn, &mut buf, false).await.0);
        }
        client.insert(name, without_date(&seen));
    }
    let metrics = reqwest::get(gateway.admin_url("/metrics")).await.expect("metrics").text().await.expect("text");
    let lean_requests = metrics
        .lines()
        .find(|l| l.starts_with("gateway_requests_by_engine_total{engine=\"lean\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    let backend = received.lock().expect("lock").clone();
    Run { client, backend, lean_requests }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_path_gives_backends_and_clients_the_same_bytes_as_pingoras() {
    let lean = run(true).await;
    let pingora = run(false).await;
    for (name, bytes) in &pingora.client {
        let ours = lean.client.get(name).expect("case ran on both");
        if CUT_BY_TIMING.contains(&name.as_str()) {
            // How much of an answer left the gateway before its connection was
            // cut depends on timing on Pingora's path (it may drop what it had
            // gathered, or the client's socket may be reset under an upload),
            // and so does whether the connection stays open after an early
            // answer (it does when the upload had gone through by then): one
            // side's bytes must be the start of the other's, `Connection`
            // aside.
            let (ours, bytes) = (&same_connection(ours), &same_connection(bytes));
            assert!(
                ours.starts_with(bytes) || bytes.starts_with(ours),
                "case {name}: the client got different bytes (left: lean path, right: Pingora's)\n{}\n{}",
                String::from_utf8_lossy(ours),
                String::from_utf8_lossy(bytes)
            );
            continue;
        }
        assert_eq!(
            String::from_utf8_lossy(ours),
            String::from_utf8_lossy(bytes),
            "case {name}: the client got different bytes (left: lean path, right: Pingora's)"
        );
    }
    // The lean path passes on what it had of an answer cut off upstream,
    // then closes: its length tells the client the body is short.
    let cut = String::from_utf8_lossy(&lean.client["cut-off"]).to_string();
    assert!(
        cut.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n") && cut.ends_with("only ten.."),
        "cut-off on the lean path: {cut}"
    );
    assert_eq!(lean.backend.keys().collect::<Vec<_>>(), pingora.backend.keys().collect::<Vec<_>>());
    for (id, requests) in &pingora.backend {
        let ours: Vec<String> = lean.backend[id].iter().map(|r| String::from_utf8_lossy(r).to_string()).collect();
        let theirs: Vec<String> = requests.iter().map(|r| String::from_utf8_lossy(r).to_string()).collect();
        assert_eq!(ours, theirs, "request {id}: the backend got different bytes (left: lean path)");
    }
    // Each case reached the backend (once, or twice for the next request), as the id says.
    assert!(pingora.backend.contains_key("diff-get") && pingora.backend.contains_key("diff-post"));
    // The lean gateway did serve on its path: most of the corpus is plain HTTP/1.1.
    assert!(lean.lean_requests >= 20.0, "lean path served {} requests", lean.lean_requests);
    assert_eq!(pingora.lean_requests, 0.0, "lean_http1 = false keeps every request on Pingora's path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_writes_past_its_answer_never_reach_the_next_client() {
    let (backend, received) = raw_backend().await;
    let gateway = Gateway::start(&config(backend, true)).await;
    let get = |path: &str| format!("GET /cart/{path} HTTP/1.1\r\nHost: shop\r\nX-Request-Id: stray\r\n\r\n");
    let mut first = TcpStream::connect(gateway.listen_addr()).await.expect("connect");
    first.write_all(get("stray").as_bytes()).await.expect("write");
    let (answer, _) = read_answer(&mut first, &mut Vec::new(), false).await;
    assert!(answer.ends_with(b"ok"), "{}", String::from_utf8_lossy(&answer));
    // The stray answer now sits on the idle upstream connection.
    let written = || received.lock().expect("lock").contains_key("stray-written");
    assert!(integration_tests::wait_until(|| async { written() }, Duration::from_secs(5)).await);
    for _ in 0..3 {
        let mut next = TcpStream::connect(gateway.listen_addr()).await.expect("connect");
        next.write_all(get("len").as_bytes()).await.expect("write");
        let (answer, _) = read_answer(&mut next, &mut Vec::new(), false).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.ends_with("hello") && !text.contains("STRAY"), "another request's bytes: {text}");
    }
}

/// A pooled upstream connection that dies once the request is on it (the
/// backend read it and closed): an idempotent request goes again, once, to
/// the backend (the version has only this one), a `POST` never goes twice,
/// on both paths. Before, the lean path sent the `POST` twice, and Pingora's
/// path answered the `GET` with 503 "no healthy backend" instead of sending
/// it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_with_a_pooled_connection_goes_again_only_when_idempotent() {
    for lean in [true, false] {
        let (backend, received) = raw_backend().await;
        let gateway = Gateway::start(&config(backend, lean)).await;
        let send = |request: String| {
            let addr = gateway.listen_addr();
            async move {
                let mut conn = TcpStream::connect(addr).await.expect("connect");
                conn.write_all(request.as_bytes()).await.expect("write");
                let (answer, _) = read_answer(&mut conn, &mut Vec::new(), false).await;
                String::from_utf8_lossy(&answer).to_string()
            }
        };
        let times = |id: &str| received.lock().expect("lock").get(id).map_or(0, Vec::len);
        for (method, id) in [("POST", "lost-post"), ("GET", "lost-get"), ("DELETE", "lost-delete")] {
            // Three slow answers at once leave three upstream connections in
            // the pool: the lost request goes again at most once, not once on
            // each of them.
            let warm = |n: usize| {
                send(format!("GET /cart/slow-head HTTP/1.1\r\nHost: shop\r\nX-Request-Id: warm-{id}-{n}\r\n\r\n"))
            };
            let (a, b, c) = tokio::join!(warm(1), warm(2), warm(3));
            for answer in [a, b, c] {
                assert!(answer.ends_with("hello"), "lean {lean}: {answer}");
            }
            let lost = format!("{method} /cart/vanish HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {id}\r\n\r\n");
            let answer = send(lost).await;
            assert!(answer.starts_with("HTTP/1.1 502 "), "lean {lean}, {method}: {answer}");
            let expected = if method == "POST" { 1 } else { 2 };
            assert_eq!(times(id), expected, "lean {lean}: how often the backend got the {method}");
        }
    }
}
