//! The upstream's answer on its way to the client, each of three ways: read
//! by the lean path itself (`upstream.rs`) and written to the client's
//! stream, its body a length as is or chunks decoded (`chunked.rs`) and
//! framed again; read by Pingora's client and written to the stream, its
//! head spliced (`client.rs`); or read by Pingora's client and written
//! through Pingora's server session as a changed copy.

use std::io::Write;
use std::time::Duration;

use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};

use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_http::ResponseHeader;

use super::buffers::Buffer;
use super::client::{BodyFraming, Client, RawAnswer, RawClient, UpstreamAnswer};
use super::upstream::{self, Framing};
use super::{chunked, ExchangeError};
use crate::proxy::{exchange, RequestCtx};

/// What became of an answer the lean path began to read.
pub(super) enum LeanRead {
    /// Read and written to the client; whether the connection may carry another request.
    Done(bool),
    /// Pingora's session reads it, from these bytes on.
    Pingora(Buffer),
}

/// Read the upstream's answer head; when it is one the lean path reads
/// itself (`upstream::parse`), write it to the client with the
/// gateway's fields spliced in, then its body. Otherwise the bytes read
/// go back, for Pingora's session to read the answer from its start.
pub(super) async fn lean_answer(
    client: &mut Client,
    stream: &mut Stream,
    upstream: &HttpPeer,
    send_failed: &mut Option<Box<Error>>,
    ctx: &mut RequestCtx,
) -> Result<LeanRead, ExchangeError> {
    let timeout = upstream.options.read_timeout;
    let mut read = Buffer::take(0);
    let mut searched = 0;
    loop {
        if let Err(e) = upstream::read_more(stream, &mut read, timeout).await {
            return Err(match send_failed.take() {
                Some(send) => ExchangeError::up(send),
                // Nothing of the answer was written yet.
                None => ExchangeError { error: e.into_up(), unsent: true },
            });
        }
        if upstream::head_ended(&read, &mut searched) || read.len() > upstream::MAX_HEAD_SIZE {
            break;
        }
    }
    // The parsed head borrows `read`; it is used up before the next await.
    let Some((answer, head_len, framing, keepalive)) = lean_head(client, &read, ctx) else {
        return Ok(LeanRead::Pingora(read));
    };
    exchange::upstream_status(answer.status, ctx);
    let Client::Raw(raw) = client else {
        return Err(ExchangeError::lost("the lean path lost its stream"));
    };
    raw.write(&answer.head, false).await.map_err(ExchangeError::down)?;
    // As the session records a head once it is written.
    raw.status = answer.status;
    let whole = match framing {
        Framing::Length(length) => relay_length(raw, stream, read, head_len, length, timeout).await?,
        Framing::Chunked => relay_chunked(raw, stream, read, head_len, timeout).await?,
    };
    Ok(LeanRead::Done(whole && keepalive && send_failed.is_none()))
}

/// The answer head in `read` parsed and, when the lean path reads this
/// answer itself, spliced for the client (which then holds the stream):
/// the head to write, its length in `read`, the body's length, and whether
/// the upstream lets the connection go on.
fn lean_head(client: &mut Client, read: &[u8], ctx: &RequestCtx) -> Option<(RawAnswer, usize, Framing, bool)> {
    let head = upstream::parse(read)?;
    let answer = client.answer_raw(UpstreamAnswer::Lean(&head), false, false, ctx)?;
    Some((answer, head.len, head.body, head.keepalive))
}

/// The body of an answer framed by a length, from the upstream to the
/// client: what came with the head, then pieces of at most
/// `upstream::BODY_READ`, each sent on as it comes (as a close-delimited or
/// chunked body is). `Ok(true)` when nothing came after its end: Pingora's
/// client keeps a connection only then, since more bytes than promised
/// likely mean more are coming.
async fn relay_length(
    raw: &mut RawClient,
    stream: &mut Stream,
    mut read: Buffer,
    head_len: usize,
    length: u64,
    timeout: Option<Duration>,
) -> Result<bool, ExchangeError> {
    let with_head = read.get(head_len..).unwrap_or_default();
    let first = with_head.len().min(usize::try_from(length).unwrap_or(usize::MAX));
    let mut overread = with_head.len() > first;
    let mut remaining = length - first as u64;
    raw.write(&with_head[..first], true).await.map_err(ExchangeError::down)?;
    while remaining > 0 {
        read.clear();
        let n = upstream::read_body_more(stream, &mut read, timeout).await.map_err(ExchangeError::up)?;
        if n == 0 {
            let what = format!("Peer prematurely closed connection with {remaining} bytes of body remaining to read");
            return Err(ExchangeError::up(Error::explain(ErrorType::ConnectionClosed, what)));
        }
        let take = n.min(usize::try_from(remaining).unwrap_or(usize::MAX));
        overread |= n > take;
        remaining -= take as u64;
        raw.write(&read[..take], true).await.map_err(ExchangeError::down)?;
    }
    Ok(!overread)
}

/// A chunked body, from the upstream to the client: decoded as Pingora's
/// client decodes it (`chunked.rs`), and framed again as its server
/// session frames one, a chunk for each piece of data found, then the last
/// chunk (trailers are dropped, as there). What was found in one read goes
/// out in one write. `Ok(true)` when nothing came after the body's end.
async fn relay_chunked(
    raw: &mut RawClient,
    stream: &mut Stream,
    mut read: Buffer,
    head_len: usize,
    timeout: Option<Duration>,
) -> Result<bool, ExchangeError> {
    let mut decoder = chunked::Decoder::new();
    let mut out = Buffer::take(0);
    let mut at = head_len;
    let mut total = 0u64;
    loop {
        let found = match decoder.decode(&read[at..]) {
            Ok(found) => found,
            Err(e) => {
                // What was found before goes out first: Pingora's reader hands
                // on each piece before it reads the next.
                raw.write(&out, true).await.map_err(ExchangeError::down)?;
                return Err(ExchangeError::up(e));
            }
        };
        match found {
            chunked::Found::Data { start, end } => {
                let data = &read[at + start..at + end];
                let _ = write!(out, "{:X}\r\n", data.len());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
                total += data.len() as u64;
                at += end;
            }
            chunked::Found::More { consumed } => {
                // What was found goes out (the head too, the first time), then more is read.
                raw.write(&out, true).await.map_err(ExchangeError::down)?;
                out.clear();
                read.drain(..at + consumed);
                at = 0;
                if upstream::read_body_more(stream, &mut read, timeout).await.map_err(ExchangeError::up)? == 0 {
                    let what =
                        format!("Connection prematurely closed without the termination chunk, read {total} bytes");
                    return Err(ExchangeError::up(Error::explain(ErrorType::ConnectionClosed, what)));
                }
            }
            chunked::Found::End { consumed } => {
                out.extend_from_slice(b"0\r\n\r\n");
                raw.write(&out, true).await.map_err(ExchangeError::down)?;
                return Ok(at + consumed == read.len());
            }
        }
    }
}

/// The answer through Pingora's session: its head changed as a copy.
pub(super) async fn relay_session(
    client: &mut Client,
    up: &mut UpstreamSession,
    head_request: bool,
    ctx: &mut RequestCtx,
) -> Result<(), ExchangeError> {
    let Client::Session(session) = client else {
        return Err(ExchangeError::lost("the lean path lost its session"));
    };
    let Some(resp) = up.resp_header() else {
        return Err(ExchangeError::up(Error::explain(ErrorType::InvalidHTTPHeader, "no response head")));
    };
    let mut resp = Box::new(resp.clone());
    let mut done = up.is_body_done();
    let no_body = head_request || matches!(resp.status.as_u16(), 204 | 304);
    if !no_body && !done && !has_framing(&resp) {
        // A close-delimited answer goes out chunked, so the client's connection survives it.
        resp.set_version(http::Version::HTTP_11);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked").map_err(ExchangeError::down)?;
    }
    exchange::response(&mut resp, ctx).map_err(ExchangeError::ours)?;
    session.write_response_header(resp).await.map_err(ExchangeError::down)?;
    if done {
        // No body came: the end still passes the body phase (a fallback page's body).
        let mut none = None;
        exchange::response_body(&mut none, true, ctx);
        if let Some(bytes) = none {
            session.write_response_body(bytes, true).await.map_err(ExchangeError::down)?;
        }
    }
    while !done {
        let mut chunk = up.read_body_bytes().await.map_err(ExchangeError::up)?;
        done = up.is_body_done();
        exchange::response_body(&mut chunk, done, ctx);
        if let Some(bytes) = chunk {
            session.write_response_body(bytes, done).await.map_err(ExchangeError::down)?;
        }
    }
    Ok(())
}

/// The answer written to the client's stream by the lean path: the
/// head spliced (`head_splice`), the body framed as Pingora's session
/// frames it.
pub(super) async fn relay_raw(
    client: &mut Client,
    up: &mut UpstreamSession,
    framing: RawAnswer,
    ctx: &mut RequestCtx,
) -> Result<(), ExchangeError> {
    let Client::Raw(raw) = client else {
        return Err(ExchangeError::lost("the lean path lost its stream"));
    };
    let RawAnswer { head, body, status } = framing;
    raw.write(&head, body == BodyFraming::Chunked).await.map_err(ExchangeError::down)?;
    // As the session records a head once it is written.
    raw.status = status;
    let mut done = up.is_body_done();
    if done {
        // No body came: the end still passes the body phase (a cache fill,
        // a capture); no fallback page replaces an answer written here.
        exchange::response_body(&mut None, true, ctx);
    }
    while !done {
        let mut chunk = up.read_body_bytes().await.map_err(ExchangeError::up)?;
        done = up.is_body_done();
        exchange::response_body(&mut chunk, done, ctx);
        match (body, chunk) {
            (BodyFraming::Chunked, Some(bytes)) if !bytes.is_empty() => {
                // As Pingora's chunked writer: one chunk per piece read.
                let mut piece = Buffer::take(bytes.len() + 20);
                let _ = write!(piece, "{:X}\r\n", bytes.len());
                piece.extend_from_slice(&bytes);
                piece.extend_from_slice(b"\r\n");
                raw.write(&piece, !done).await.map_err(ExchangeError::down)?;
            }
            (BodyFraming::Length, Some(bytes)) => raw.write(&bytes, false).await.map_err(ExchangeError::down)?,
            _ => {}
        }
    }
    let end: &[u8] = if body == BodyFraming::Chunked { b"0\r\n\r\n" } else { b"" };
    raw.write(end, true).await.map_err(ExchangeError::down)
}

/// Whether an answer head says how its body ends.
fn has_framing(resp: &ResponseHeader) -> bool {
    resp.headers.contains_key(http::header::TRANSFER_ENCODING)
        || resp.headers.contains_key(http::header::CONTENT_LENGTH)
}
