//! The client's side of a request on the lean path: the stream and the
//! request head the lean path read itself (`request.rs`), or Pingora's
//! session when it read the head or must write the answer; when the lean
//! path writes the upstream's answer itself, the stream, its head spliced
//! (`head_splice`) and its body framed as Pingora's session frames it.

use std::time::Duration;

use bytes::Bytes;

use http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, DATE, RETRY_AFTER, SET_COOKIE, TRANSFER_ENCODING,
};
use http::HeaderName;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::buffers::Buffer;
use super::deadline::within;
use super::upstream::{AnswerHead, Framing};
use crate::proxy::exchange;
use crate::proxy::head_splice::{self, Edit};
use crate::proxy::respond::LocalResponse;
use crate::proxy::RequestCtx;

/// The client's side of a proxied request.
#[allow(
    clippy::large_enum_variant,
    reason = "one per request, in place of the session it holds; boxing would cost an allocation"
)]
pub(super) enum Client {
    /// Pingora's session: it read the request, or took it over to write
    /// interim answers and whatever the gateway answers itself.
    Session(ServerSession),
    /// The stream: with the request the lean path read itself (until an
    /// answer head is written, a session may still take it over), or once
    /// the lean path writes the upstream's answer itself.
    Raw(RawClient),
    /// Only inside [`Client::answer_raw`], never seen outside it.
    Switching,
}

pub(super) struct RawClient {
    pub(super) stream: Stream,
    /// The request, taken out of the session (not boxed: this variant is
    /// smaller than the session's anyway).
    pub(super) req: RequestHeader,
    /// What the session decided (the client's `Connection`, the keep-alive
    /// request limit, shutdown, pipelining), and whether the answer's
    /// framing lets the connection go on.
    pub(super) keepalive: bool,
    /// The answer's status once its head is written (0 before), for the
    /// log and the metrics.
    pub(super) status: u16,
    /// `server.body_timeout`, for each read and write.
    pub(super) timeout: Duration,
    /// Until an answer head is written to a request the lean path read
    /// itself: what a session needs to take it over.
    pub(super) unanswered: Option<Unanswered>,
    /// Small writes gathered until a flush (see [`RawClient::write`]).
    pub(super) gathered: Option<Buffer>,
    /// Whether a session made for this request gathers its writes (a plain
    /// TCP stream of a listener whose streams have no write buffer).
    pub(super) gather_writes: bool,
}

/// The most [`RawClient::write`] gathers: a head with the body that came
/// with it, in one write.
const GATHER: usize = 16 * 1024;

/// The bytes of a request the lean path read itself, for a session to
/// read again (`Client::session`), and what that session is told.
pub(super) struct Unanswered {
    /// Every byte the connection's wait read: the head, then what followed.
    pub(super) arrived: Bytes,
    pub(super) head_len: usize,
    pub(super) body_len: usize,
    /// The body's bytes read from the stream after `arrived`.
    pub(super) from_stream: Bytes,
    /// Whether the body was read whole (`RawClient::read_body`).
    pub(super) body_read: bool,
    /// Requests the connection may still carry (the keep-alive request limit).
    pub(super) reuses_remaining: Option<u32>,
}

impl RawClient {
    /// The body of a request read here (at most `MAX_BODY` bytes, by
    /// `Content-Length`): what came with the head, then reads bounded by
    /// what is left of it (nothing of a next request is read), each within
    /// `timeout`, failing as Pingora's session's body reads fail.
    pub(super) async fn read_body(&mut self) -> Result<Option<Bytes>, Box<Error>> {
        let Some(u) = self.unanswered.as_mut() else {
            return Err(Error::explain(ErrorType::InternalError, "the lean path lost the request's bytes"));
        };
        if u.body_len == 0 {
            return Ok(None);
        }
        let start = u.head_len;
        let came = (u.arrived.len() - start).min(u.body_len);
        if came == u.body_len {
            u.body_read = true;
            return Ok(Some(u.arrived.slice(start..start + came)));
        }
        let mut body = Vec::with_capacity(u.body_len);
        body.extend_from_slice(&u.arrived[start..start + came]);
        while body.len() < u.body_len {
            let left = u.body_len - body.len();
            let mut rest = (&mut self.stream).take(left as u64);
            match within(self.timeout, rest.read_buf(&mut body)).await {
                Ok(Ok(0)) => {
                    return Error::e_explain(
                        ErrorType::ConnectionClosed,
                        format!("Peer prematurely closed connection with {left} bytes of body remaining to read"),
                    )
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Error::because(ErrorType::ReadError, "when reading body", e)),
                Err(_) => {
                    let message = format!("reading body, timeout: {:?}", self.timeout);
                    return Error::e_explain(ErrorType::ReadTimedout, message);
                }
            }
        }
        let body = Bytes::from(body);
        u.from_stream = body.slice(came..);
        u.body_read = true;
        Ok(Some(body))
    }

    /// Write `bytes` (bounded like the session's writes); small writes are
    /// gathered until one that `flush`es, so that an answer's head and the
    /// body that came with it go out in one write. The client's stream
    /// gathers nothing itself (the connection loop wraps none for the lean
    /// path: `listener::connections`).
    pub(super) async fn write(&mut self, bytes: &[u8], flush: bool) -> Result<(), Box<Error>> {
        let mut gathered = self.gathered.take();
        let fits = gathered.as_ref().map_or(0, |g| g.len()) + bytes.len() <= GATHER;
        let mut rest = bytes;
        if fits && (!flush || gathered.is_some()) {
            gathered.get_or_insert_with(|| Buffer::take(GATHER)).extend_from_slice(bytes);
            if !flush {
                self.gathered = gathered;
                return Ok(());
            }
            rest = &[];
        }
        let first = gathered.as_deref().map_or(&[][..], Vec::as_slice);
        let write = async {
            for part in [first, rest] {
                if !part.is_empty() {
                    self.stream.write_all(part).await?;
                }
            }
            self.stream.flush().await
        };
        match within(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::because(ErrorType::WriteError, "while writing the answer", e)),
            Err(_) => Err(Error::explain(ErrorType::WriteTimedout, "while writing the answer")),
        }
    }

    /// End the connection: what was gathered goes out first, as a write
    /// buffer's would (bounded like any write).
    pub(super) async fn close(&mut self) {
        if self.gathered.as_ref().is_some_and(|g| !g.is_empty()) {
            let _ = self.write(&[], true).await;
        }
        let _ = within(self.timeout, self.stream.shutdown()).await;
    }
}

/// How the body of an answer the lean path writes is framed for the client.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    /// `HEAD`, 204, 304: no body.
    None,
    Length,
    Chunked,
}

/// The upstream's answer head, as read by Pingora's client session or by
/// the lean path itself (`upstream.rs`).
pub(super) enum UpstreamAnswer<'a, 'b> {
    Session(&'a ResponseHeader),
    Lean(&'a AnswerHead<'b>),
}

/// An answer head ready to go, and how its body goes.
pub(super) struct RawAnswer {
    pub(super) head: Buffer,
    pub(super) body: BodyFraming,
    pub(super) status: u16,
}

impl Client {
    /// The request's head, as the gateway has changed it so far.
    pub(super) fn req(&self) -> Option<&RequestHeader> {
        match self {
            Client::Session(session) => Some(session.req_header()),
            Client::Raw(raw) => Some(&raw.req),
            Client::Switching => None,
        }
    }

    pub(super) fn req_mut(&mut self) -> Option<&mut RequestHeader> {
        match self {
            Client::Session(session) => Some(session.req_header_mut()),
            Client::Raw(raw) => Some(&mut raw.req),
            Client::Switching => None,
        }
    }

    /// Whether an answer head was written (nothing can be said after it).
    pub(super) fn answer_started(&self) -> bool {
        match self {
            Client::Session(session) => session.response_written().is_some(),
            Client::Raw(raw) => raw.unanswered.is_none(),
            Client::Switching => true,
        }
    }

    /// The request's body, whole (the lean path takes at most `MAX_BODY`).
    pub(super) async fn read_body(&mut self, ctx: &mut RequestCtx) -> Result<Option<Bytes>, Box<Error>> {
        let body = match self {
            Client::Raw(raw) => raw.read_body().await.map_err(|e| e.into_down())?,
            Client::Session(session) => Box::pin(read_session_body(session, ctx)).await?,
            Client::Switching => return Err(Error::explain(ErrorType::InternalError, "the lean path lost its client")),
        };
        if let (Client::Raw(_), Some(bytes)) = (&*self, &body) {
            exchange::request_body(&Some(bytes.clone()), ctx);
            exchange::request_body(&None, ctx);
        }
        Ok(body)
    }

    /// Pingora's session, for what only it writes. A request the lean path
    /// read itself is handed over: the session reads the same bytes again
    /// (the head, and the body as far as it was read), then takes the head
    /// as the gateway changed it and the keep-alive decided for it. Only
    /// before an answer head was written.
    pub(super) async fn session(&mut self) -> Result<&mut ServerSession, Box<Error>> {
        if let Client::Raw(raw) = self {
            if raw.unanswered.is_none() {
                return Err(Error::explain(ErrorType::InternalError, "an answer was written without the session"));
            }
            let Client::Raw(raw) = std::mem::replace(self, Client::Switching) else {
                return Err(Error::explain(ErrorType::InternalError, "the lean path lost its client"));
            };
            *self = Client::Session(Box::pin(take_over(raw)).await?);
        }
        match self {
            Client::Session(session) => Ok(session),
            _ => Err(Error::explain(ErrorType::InternalError, "the lean path lost its client")),
        }
    }

    /// When the lean path can write the upstream's answer itself, its head
    /// spliced, and switch to the stream to do it: the session's plain
    /// HTTP/1 stream, an answer no fallback page replaces, framed by a
    /// chunked coding, a valid length or the close (sent chunked), config
    /// names that leave the fields it writes alone. Otherwise `None`, and
    /// the session writes the answer, as before.
    pub(super) fn answer_raw(
        &mut self,
        answer: UpstreamAnswer<'_, '_>,
        head_request: bool,
        done: bool,
        ctx: &RequestCtx,
    ) -> Option<RawAnswer> {
        // As the session decides when it writes a head (the body is always
        // read whole here first, so the second part holds).
        let keepalive = match self {
            Client::Session(ServerSession::H1(session)) => session.will_keepalive() && session.is_body_done(),
            Client::Raw(raw) if raw.unanswered.is_some() => raw.keepalive,
            _ => return None,
        };
        if !ctx.snapshot.header_names.splice || exchange::answer_replaced(ctx) {
            return None;
        }
        let (status, resp_version) = match &answer {
            UpstreamAnswer::Session(resp) => (resp.status.as_u16(), resp.version),
            UpstreamAnswer::Lean(head) => (head.status.as_u16(), head.version),
        };
        let (body, add_chunked) = if head_request || matches!(status, 204 | 304) {
            (BodyFraming::None, false)
        } else if let UpstreamAnswer::Session(resp) = &answer {
            let te = resp.headers.get_all(http::header::TRANSFER_ENCODING);
            let chunked = te.iter().next_back().map(|v| last_token(v.as_bytes()).eq_ignore_ascii_case(b"chunked"));
            let length = resp.headers.contains_key(http::header::CONTENT_LENGTH);
            match (chunked, length) {
                (Some(true), _) => (BodyFraming::Chunked, false),
                (None, true) if content_length(&resp.headers).is_some() => (BodyFraming::Length, false),
                // A close-delimited answer goes out chunked, so the client's connection survives it.
                (None, false) if !done => (BodyFraming::Chunked, true),
                // Not chunked, an invalid length, or a close-delimited body
                // already over: Pingora's session frames these.
                _ => return None,
            }
        } else if let UpstreamAnswer::Lean(head) = &answer {
            match head.body {
                Framing::Length(_) => (BodyFraming::Length, false),
                Framing::Chunked => (BodyFraming::Chunked, false),
            }
        } else {
            return None;
        };
        let fields = exchange::AnswerFields::new(ctx);
        let date = pingora_core::protocols::http::date::get_cached_date();
        let version_name = ctx.snapshot.config.server.version_header.as_ref();
        let connection: &[u8] = if keepalive { b"keep-alive" } else { b"close" };
        let mut edits: [Option<Edit<'_>>; 6] = [
            add_chunked.then(|| Edit::insert(&TRANSFER_ENCODING, b"Transfer-Encoding", b"chunked")),
            fields.cache_miss.then(|| Edit::insert(&X_GATEWAY_CACHE, b"x-gateway-cache", b"miss")),
            None,
            fields.cookie.map(|c| Edit::append(&SET_COOKIE, b"Set-Cookie", c.as_bytes())),
            Some(Edit::insert(&DATE, b"Date", date.as_bytes())),
            Some(Edit::insert(&CONNECTION, b"Connection", connection)),
        ];
        if let (Some((wire, value)), Some(name)) = (fields.version, version_name) {
            edits[2] = Some(Edit::insert(name, wire, value.as_bytes()));
        }
        let edits: SmallVec<[Edit<'_>; 6]> = edits.into_iter().flatten().collect();
        let mut head = Buffer::take(512);
        let version = if add_chunked { http::Version::HTTP_11 } else { resp_version };
        let written = match &answer {
            UpstreamAnswer::Session(resp) => head_splice::response_head(&mut head, resp, version, &edits),
            UpstreamAnswer::Lean(h) => {
                let fields = h.fields.iter().copied();
                head_splice::raw_response_head(
                    &mut head,
                    h.status.as_str().as_bytes(),
                    h.reason,
                    version,
                    fields,
                    &edits,
                )
            }
        };
        if !written {
            return None;
        }
        if let Client::Raw(raw) = self {
            // The head goes out now: no session can take the request over.
            raw.unanswered = None;
            return Some(RawAnswer { head, body, status });
        }
        let timeout = ctx.snapshot.config.server.body_timeout;
        // The session's head is taken, not copied: an empty one stands in,
        // made without parsing a target or allocating (`Request::new`'s
        // parts: `GET /`, no fields).
        let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
        // Matched above; nothing can fail from here on.
        let Client::Session(ServerSession::H1(mut session)) = std::mem::replace(self, Client::Switching) else {
            return None;
        };
        let req = std::mem::replace(session.req_header_mut(), empty);
        let stream = session.into_inner();
        *self = Client::Raw(RawClient {
            stream,
            req,
            keepalive,
            status: 0,
            timeout,
            unanswered: None,
            gathered: None,
            gather_writes: false,
        });
        Some(RawAnswer { head, body, status })
    }
}

impl Client {
    /// Write a page the gateway answers with itself (no route, a refusal,
    /// a rate limit, a fallback page) straight to the stream: only for a
    /// request the lean path read itself, with no body. The head is the one
    /// Pingora's session writes for `exchange::local_header`'s, with its
    /// `Date` and `Connection`. `None`: the session writes it, as before.
    ///
    /// Why: a session made to write a page parsed the head again and built
    /// both heads as Pingora's maps, 39 allocations and 38.6k instructions
    /// per 404 against 7 and 33k for a proxied request (`benches/README.md`,
    /// session 14), on the answers that come in floods (a blocked range, a
    /// rate limit, a degraded route).
    pub(super) async fn answer_page(
        &mut self,
        page: &LocalResponse,
        request_id: &str,
        retry_after: Option<u64>,
        close: bool,
    ) -> Option<Result<(), Box<Error>>> {
        let Client::Raw(raw) = self else { return None };
        if raw.unanswered.as_ref()?.body_len != 0 || matches!(page.status, 204 | 304) {
            // The session reads or drains a body as it always did, and
            // leaves out the body of a page whose status has none.
            return None;
        }
        let keepalive = raw.keepalive && !close;
        let mut head = Buffer::take(512);
        if !local_head(&mut head, page, request_id, retry_after, keepalive) {
            return None;
        }
        // The head goes out now: no session can take the request over.
        raw.unanswered = None;
        raw.keepalive = keepalive;
        let written = if raw.req.method == http::Method::HEAD {
            raw.write(&head, true).await
        } else {
            match raw.write(&head, false).await {
                Ok(()) => raw.write(&page.body, true).await,
                Err(e) => Err(e),
            }
        };
        // As the session's: a status once the head went out (head and body
        // go out in one write here).
        if written.is_ok() {
            raw.status = page.status;
        }
        Some(written.map_err(|e| e.into_down()))
    }
}

/// The head Pingora's session writes for a local page: the fields
/// `exchange::local_header` inserts, in its order, then the session's
/// `Date` and `Connection`, each name written as Pingora writes it. `false`
/// when a page's field name is not one (the session writes the page).
fn local_head(out: &mut Vec<u8>, page: &LocalResponse, id: &str, retry_after: Option<u64>, keepalive: bool) -> bool {
    let Ok(status) = http::StatusCode::from_u16(page.status) else { return false };
    let mut names: SmallVec<[HeaderName; 2]> = SmallVec::new();
    for (name, _) in &page.headers {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => names.push(header),
            Err(_) => return false,
        }
    }
    let (mut length, mut retry) = ([0; 20], [0; 20]);
    let date = pingora_core::protocols::http::date::get_cached_date();
    let mut edits: SmallVec<[Edit<'_>; 10]> = SmallVec::new();
    edits.push(Edit::insert(&CONTENT_TYPE, b"Content-Type", page.content_type.as_bytes()));
    edits.push(Edit::insert(&CONTENT_LENGTH, b"Content-Length", decimal(&mut length, page.body.len() as u64)));
    edits.push(Edit::insert(&CACHE_CONTROL, b"Cache-Control", b"no-store"));
    if !id.is_empty() {
        edits.push(Edit::insert(&X_REQUEST_ID, b"x-request-id", id.as_bytes()));
    }
    for (header, (wire, value)) in names.iter().zip(&page.headers) {
        edits.push(Edit::insert(header, wire.as_bytes(), value.as_bytes()));
    }
    if let Some(secs) = retry_after {
        edits.push(Edit::insert(&RETRY_AFTER, b"retry-after", decimal(&mut retry, secs)));
    }
    edits.push(Edit::insert(&DATE, b"Date", date.as_bytes()));
    edits.push(Edit::insert(&CONNECTION, b"Connection", if keepalive { b"keep-alive" } else { b"close" }));
    let reason = status.canonical_reason().unwrap_or("").as_bytes();
    let no_fields = std::iter::empty();
    head_splice::raw_response_head(out, status.as_str().as_bytes(), reason, http::Version::HTTP_11, no_fields, &edits)
}

/// `n` in decimal, written into `buf`, without an allocation.
fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// A session made for a request the lean path read itself: it reads the
/// same bytes again (its own checks pass, as `request.rs` read only what
/// Pingora reads the same way), then takes over the head as changed.
async fn take_over(raw: RawClient) -> Result<ServerSession, Box<Error>> {
    let RawClient { mut stream, req, keepalive, timeout, unanswered, gather_writes, .. } = raw;
    let Some(u) = unanswered else {
        return Err(Error::explain(ErrorType::InternalError, "the lean path lost the request's bytes"));
    };
    let mut again = bytes::BytesMut::with_capacity(u.arrived.len() + u.from_stream.len());
    again.extend_from_slice(&u.arrived);
    again.extend_from_slice(&u.from_stream);
    if gather_writes {
        // As the connection loop wraps a stream for Pingora's path.
        stream = crate::listener::connections::gathering_writes(stream);
    }
    let mut session = ServerSession::new_http1(stream);
    session.set_pipelined_prefix(again);
    if !session.read_request().await? {
        return Err(Error::explain(ErrorType::InternalError, "the session could not read the request again"));
    }
    *session.req_header_mut() = req;
    if !keepalive {
        session.set_keepalive(None);
    }
    session.set_keepalive_reuses_remaining(u.reuses_remaining);
    session.set_read_timeout(Some(timeout));
    session.set_total_drain_timeout(Some(timeout));
    session.set_write_timeout(Some(timeout));
    if u.body_read {
        // The lean path read the body whole: the session reads it again
        // from the same bytes (no read from the stream), so that it knows
        // the request is over. Otherwise it would close a connection that
        // can carry the next request (an interim answer, a fallback page).
        while session.read_request_body().await?.is_some() {}
    }
    Ok(session)
}

/// Read the client's whole body through the session.
async fn read_session_body(session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<Option<Bytes>, Box<Error>> {
    if session.is_body_empty() {
        return Ok(None);
    }
    let mut body = Vec::new();
    loop {
        let chunk = session.read_request_body().await.map_err(|e| e.into_down())?;
        exchange::request_body(&chunk, ctx);
        match chunk {
            Some(bytes) => body.extend_from_slice(&bytes),
            None => return Ok(Some(Bytes::from(body))),
        }
    }
}

/// The last coding of a `Transfer-Encoding` value.
fn last_token(value: &[u8]) -> &[u8] {
    value.rsplit(|b| *b == b',').next().unwrap_or(value).trim_ascii()
}

/// A `Content-Length` that frames a body: every value (and every item of a
/// list) the same number, as Pingora's `content_length_parse_all` reads it.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for item in value.to_str().ok()?.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = item.parse().ok()?;
            match length {
                Some(previous) if previous != n => return None,
                _ => length = Some(n),
            }
        }
    }
    length
}

static X_GATEWAY_CACHE: HeaderName = HeaderName::from_static("x-gateway-cache");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_frames_a_body_only_when_every_value_agrees() {
        let length = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(http::header::CONTENT_LENGTH, http::HeaderValue::from_str(v).expect("value"));
            }
            content_length(&headers)
        };
        assert_eq!(length(&["5"]), Some(5));
        assert_eq!(length(&["5", " 5 "]), Some(5));
        assert_eq!(length(&["5, 5"]), Some(5));
        assert_eq!(length(&[]), None);
        for refused in [&["5", "6"][..], &["5, 6"], &["+5"], &["-1"], &["5 5"], &[""], &["99999999999999999999"]] {
            assert_eq!(length(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn the_last_coding_decides_whether_an_answer_is_chunked() {
        assert_eq!(last_token(b"chunked"), b"chunked");
        assert_eq!(last_token(b"gzip, Chunked "), b"Chunked");
        assert_eq!(last_token(b"chunked, gzip"), b"gzip");
    }

    #[test]
    fn decimal_writes_every_width() {
        let mut buf = [0; 20];
        for n in [0, 7, 10, 164, 3600, 1_000_000, u64::MAX] {
            assert_eq!(decimal(&mut buf, n), n.to_string().as_bytes());
        }
    }
}
