//! The client's side of a request on the lean path: Pingora's session
//! until the upstream's answer is ready, then, when the lean path writes
//! that answer itself, the stream, its head spliced (`head_splice`) and
//! its body framed as Pingora's session frames it.

use std::io;
use std::time::Duration;

use http::header::{CONNECTION, DATE, SET_COOKIE, TRANSFER_ENCODING};
use http::HeaderName;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;

use super::upstream::{AnswerHead, Framing};
use crate::proxy::exchange;
use crate::proxy::head_splice::{self, Edit};
use crate::proxy::RequestCtx;

/// The client's side of a proxied request.
#[allow(
    clippy::large_enum_variant,
    reason = "one per request, in place of the session it holds; boxing would cost an allocation"
)]
pub(super) enum Client {
    /// Pingora's session: it read the request, and writes interim answers
    /// and whatever the gateway answers itself.
    Session(ServerSession),
    /// The stream, once the lean path writes the upstream's answer itself.
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
    /// `server.body_timeout`, for each write.
    pub(super) timeout: Duration,
}

impl RawClient {
    /// Write `bytes` (bounded like the session's writes), then send what is
    /// gathered when `flush`.
    pub(super) async fn write(&mut self, bytes: &[u8], flush: bool) -> Result<(), Box<Error>> {
        let write = async {
            if !bytes.is_empty() {
                self.stream.write_all(bytes).await?;
            }
            if flush {
                self.stream.flush().await?;
            }
            Ok::<_, io::Error>(())
        };
        match pingora_timeout::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::because(ErrorType::WriteError, "while writing the answer", e)),
            Err(_) => Err(Error::explain(ErrorType::WriteTimedout, "while writing the answer")),
        }
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
    pub(super) head: Vec<u8>,
    pub(super) body: BodyFraming,
    pub(super) status: u16,
}

impl Client {
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
        let Client::Session(ServerSession::H1(session)) = self else { return None };
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
        // As the session decides when it writes a head (the body is always
        // read whole here first, so the second part holds).
        let keepalive = session.will_keepalive() && session.is_body_done();
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
        let mut head = Vec::with_capacity(512);
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
        *self = Client::Raw(RawClient { stream: session.into_inner(), req, keepalive, status: 0, timeout });
        Some(RawAnswer { head, body, status })
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
}
