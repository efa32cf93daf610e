//! The lean HTTP/1 path: one request of a client connection proxied to an
//! HTTP/1 upstream in a straight line, on Pingora's own building blocks
//! (its HTTP/1 server session parses the request and reads its body, its
//! connector makes upstream connections), without `pingora-proxy`'s
//! generic pipeline: no per-request channel or task, no `try_join` of a
//! downstream and an upstream future, no cache or module hooks.
//!
//! The heads the gateway changes are written here, not by the sessions:
//! the request head goes upstream, and the answer's head to the client,
//! written straight from the parsed heads with the gateway's fields spliced
//! in (`head_splice.rs`), in the same bytes as a changed copy serialised by
//! Pingora, without the copy. The answer's body is then framed here as
//! Pingora's session frames it. Whatever this does not cover (a `HEAD` or a
//! mirrored request upstream; an answer replaced by a fallback page, or
//! framed oddly) goes through the sessions as a changed copy, as before.
//!
//! The common upstream answer (2xx to 4xx, framed by one length or by
//! chunks, from a plain TCP upstream, on a route that does not cache) is
//! read here too,
//! without Pingora's client session (`upstream.rs`); any other is read by
//! that session, from its first byte.
//!
//! Every decision is the same code as on Pingora's path (`exchange.rs`):
//! the pipeline's verdict, the headers either side gets, failover and
//! retries, fallback pages and cached copies, shadow capture, metrics and
//! the access log.
//!
//! Which requests come here is decided from the raw head before it is
//! parsed (`listener::head_wait::lean_eligible`): HTTP/1.1, origin-form,
//! no body or a `Content-Length` body of at most [`MAX_BODY`], no upgrade,
//! no `Expect`, no hop-by-hop field but `Connection: keep-alive|close`.
//! Everything else (HTTP/2, chunked uploads, upgrades, 100-continue, large
//! uploads, whose answer may come before the body is sent) stays on
//! Pingora's path, so nothing is lost.

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::CONNECTION;
use http::HeaderName;
use pingora_core::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;

mod chunked;
mod client;
mod upstream;

use client::{BodyFraming, Client, RawAnswer, RawClient, UpstreamAnswer};
use upstream::Framing;

use super::exchange::{self, Begin};
use super::head_splice::{self, Edit};
use super::{idle_upstreams, respond, GatewayProxy, RequestCtx};
use crate::listener::connections;

/// The largest request body the lean path carries. The body is sent before
/// the answer is read, which the socket buffers absorb at this size; a
/// larger upload, whose upstream may answer before reading it all, takes
/// Pingora's path, which reads both sides at once.
pub const MAX_BODY: u64 = 64 * 1024;

pub struct LeanPath {
    proxy: GatewayProxy,
    /// Makes upstream connections; idle ones are kept in `idle_upstreams`
    /// (Pingora's path keeps its own pool).
    upstreams: TransportConnector,
    /// Idle upstream connections each proxy thread keeps: Pingora's
    /// `upstream_keepalive_pool_size` shared among the threads.
    idle_per_thread: usize,
}

/// Why an upstream exchange failed. `unsent`: nothing of the request's
/// body and nothing of the answer had passed yet, so Pingora's own
/// judgement of the error (`RetryType::ReusedOnly`: the pooled connection
/// was dead) may send the request again on a new connection.
struct ExchangeError {
    error: Box<Error>,
    unsent: bool,
}

/// The upstream connection after an exchange.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; boxing would cost an allocation"
)]
enum Upstream {
    /// Pingora's client session read the answer; whether the request went
    /// out whole (else the connection is not kept).
    Session(UpstreamSession, bool),
    /// The lean path read it (`upstream.rs`); whether the connection may
    /// carry another request.
    Stream(Stream, bool),
}

/// What became of an answer the lean path began to read.
enum LeanRead {
    /// Read and written to the client; whether the connection may carry another request.
    Done(bool),
    /// Pingora's session reads it, from these bytes on.
    Pingora(Vec<u8>),
}

impl ExchangeError {
    fn up(error: Box<Error>) -> Self {
        Self { error: error.into_up(), unsent: false }
    }

    fn down(error: Box<Error>) -> Self {
        Self { error: error.into_down(), unsent: false }
    }

    fn ours(error: Box<Error>) -> Self {
        Self { error, unsent: false }
    }

    /// The client is not in the state this step needs (cannot happen: each
    /// step runs only in its own state); an error, not a panic.
    fn lost(what: &'static str) -> Self {
        Self::ours(Error::explain(ErrorType::InternalError, what))
    }
}

impl LeanPath {
    pub fn new(proxy: GatewayProxy, conf: &ServerConf) -> Self {
        Self {
            proxy,
            upstreams: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
            idle_per_thread: (conf.upstream_keepalive_pool_size / conf.threads.max(1)).max(1),
        }
    }

    /// Serve the request whose head has arrived on `session`; the stream
    /// comes back when the connection may carry another request.
    ///
    /// A block, not an `async fn`, and the session kept in one place
    /// (`client`), used there: an `async fn` keeps its arguments twice, and
    /// every move of the 680-byte session into a new binding is another copy
    /// kept in the future, which is moved to the heap whole for every
    /// request (`benches/README.md`, session 11).
    #[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice (above)")]
    pub fn serve(
        self: Arc<Self>,
        session: ServerSession,
        shutdown: ShutdownWatch,
    ) -> impl std::future::Future<Output = Option<ReusedHttpStream>> + Send + 'static {
        let mut client = Client::Session(session);
        async move {
            let Client::Session(session) = &mut client else { return None };
            match session.read_request().await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    // As Pingora's path: a head its parser refuses gets 400 (logged and
                    // counted by the connection loop); anything else is a broken connection.
                    if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                        let _ = session.respond_error(400).await;
                    }
                    session.shutdown().await;
                    return None;
                }
            }
            connections::head_parsed();
            if *shutdown.borrow() {
                // Stop the client from reusing a connection of a process going away.
                session.set_keepalive(None);
            }
            let mut ctx = RequestCtx::new(self.proxy.snapshots.load_full());
            ctx.snapshot.metrics.lean_requests.inc();
            let body_timeout = ctx.snapshot.config.server.body_timeout;
            session.set_read_timeout(Some(body_timeout));
            session.set_total_drain_timeout(Some(body_timeout));
            session.set_write_timeout(Some(body_timeout));
            if connections::pipelined_after(session.req_header()) {
                // Pipelined requests are not served (as on Pingora's path): say so.
                session.set_keepalive(None);
            }
            let (peer, tls) = (exchange::peer_ip(session), exchange::is_tls(session));
            let failure = match exchange::begin(&self.proxy.runtime, session.req_header_mut(), peer, tls, &mut ctx) {
                Begin::Proxy => self.proxy_request(&mut client, peer, tls, &mut ctx).await.err(),
                answer => respond::local_answer(session, answer, &ctx).await.err(),
            };
            let Client::Session(session) = &mut client else {
                let Client::Raw(raw) = std::mem::replace(&mut client, Client::Switching) else { return None };
                return self.end_raw(raw, failure, &mut ctx).await;
            };
            if let Some(e) = &failure {
                respond::failure(session, e, &mut ctx).await;
            }
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            exchange::finish(&self.proxy.shadow, session.req_header(), status, failure.as_deref(), &mut ctx);
            if let Some(e) = failure {
                if !exchange::quiet_error(&ctx, &e) {
                    tracing::error!(error = %e, request = %session.request_summary(), "fail to proxy");
                }
                // As on Pingora's path, a failed request ends its connection, after
                // what was written of the answer went out (bounded like any write).
                let _ = pingora_timeout::timeout(body_timeout, session.shutdown()).await;
                return None;
            }
            let settings = HttpPersistentSettings::for_session(session);
            let Client::Session(session) = std::mem::replace(&mut client, Client::Switching) else { return None };
            // Boxed: Pingora's `finish` is a 4 KiB future, and only answers the
            // session wrote (local answers, replaced or oddly framed ones) get here.
            let reusable = Box::pin(session.finish()).await.ok().flatten()?;
            Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
        }
    }

    /// The end of a request whose answer the lean path wrote to the stream.
    /// A failure came while or after its head was written, so nothing more
    /// can be said: it is accounted for, and the connection ends.
    async fn end_raw(
        &self,
        mut raw: RawClient,
        failure: Option<Box<Error>>,
        ctx: &mut RequestCtx,
    ) -> Option<ReusedHttpStream> {
        if let Some(e) = &failure {
            let _ = exchange::failed(e, ctx, true);
        }
        exchange::finish(&self.proxy.shadow, &raw.req, raw.status, failure.as_deref(), ctx);
        if let Some(e) = failure {
            if !exchange::quiet_error(ctx, &e) {
                tracing::error!(error = %e, request = %request_summary(&raw.req), "fail to proxy");
            }
            let _ = pingora_timeout::timeout(raw.timeout, raw.stream.shutdown()).await;
            return None;
        }
        if !raw.keepalive {
            let _ = pingora_timeout::timeout(raw.timeout, raw.stream.shutdown()).await;
            return None;
        }
        Some(ReusedHttpStream::new(raw.stream, None))
    }

    /// Proxy to a backend of the routed version: retried on another
    /// backend (or the default version) when a connection cannot be made,
    /// and once on a new connection when a pooled one turns out dead before
    /// any of the request's body or the answer passed, as on Pingora's path.
    async fn proxy_request(
        &self,
        client: &mut Client,
        peer: IpAddr,
        tls: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), Box<Error>> {
        let Client::Session(session) = client else {
            return Err(Error::explain(ErrorType::InternalError, "the lean path lost its session"));
        };
        let idempotent = session.req_header().method.is_idempotent();
        // The body (at most `MAX_BODY`, see `lean_eligible`) is read whole
        // first, so the request goes upstream in one write.
        let body = if session.is_body_empty() { None } else { Box::pin(read_body(session, ctx)).await? };
        let has_body = body.is_some();
        let mut retried_reused = false;
        loop {
            let upstream = exchange::next_peer(ctx)?;
            let key = upstream.reuse_hash();
            let max_idle = upstream.options.idle_timeout.unwrap_or(Duration::ZERO);
            let pooled = if retried_reused { None } else { idle_upstreams::take(key, max_idle) };
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(stream) => Ok(stream),
                // Boxed: connecting (TCP and TLS) is an 8 KiB future, and this
                // path's future is moved to the heap whole for every request.
                None => Box::pin(self.upstreams.new_stream(&*upstream)).await,
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    let mut e = exchange::connect_failed(ctx, idempotent, &upstream, e.into_up());
                    // A new connection: "retry only if reused" means no.
                    e.retry.decide_reuse(false);
                    if e.retry() {
                        continue;
                    }
                    return Err(e);
                }
            };
            match self.exchange(client, stream, body.as_deref(), &upstream, peer, tls, ctx).await {
                Ok(Upstream::Session(mut up, reusable)) => {
                    up.respect_keepalive();
                    if !reusable {
                        up.shutdown().await;
                    } else if let Some(stream) = up.reuse().await {
                        idle_upstreams::put(key, stream, self.idle_per_thread);
                    }
                    return Ok(());
                }
                Ok(Upstream::Stream(stream, true)) => {
                    idle_upstreams::put(key, stream, self.idle_per_thread);
                    return Ok(());
                }
                Ok(Upstream::Stream(mut stream, false)) => {
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
                Err(ExchangeError { mut error, unsent }) => {
                    error.retry.decide_reuse(reused);
                    let retry = unsent && error.retry() && !has_body && !retried_reused;
                    if !retry {
                        return Err(error);
                    }
                    // The pooled connection was dead: the same request goes
                    // again on a new connection to the same backend.
                    retried_reused = true;
                    ctx.upstream.tried.pop();
                }
            }
        }
    }

    /// One request and its answer over an upstream connection; the
    /// connection comes back with whether it may carry another request.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        client: &mut Client,
        mut stream: Stream,
        body: Option<&[u8]>,
        upstream: &HttpPeer,
        peer: IpAddr,
        tls: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Upstream, ExchangeError> {
        // Whether the lean path reads the answer itself (`upstream.rs`):
        // not on a route that caches (the fill reads Pingora's head).
        let lean_read = ctx.cache.is_none() && upstream::can_read(&stream);
        // An upstream may answer before it has read the whole body (a 413, a
        // 401) and stop reading: its answer is still read and passed on, as
        // on Pingora's path, and the connection is not kept.
        let mut send_failed = None;
        let mut head = Vec::new();
        let spliced = match &*client {
            Client::Session(session) => splice_request(&mut head, session.req_header(), peer, tls, ctx),
            _ => return Err(ExchangeError::lost("the lean path lost its session")),
        };
        let mut up = if spliced {
            if let Some(body) = body {
                head.extend_from_slice(body);
            }
            let write = async {
                stream.write_all(&head).await?;
                stream.flush().await
            };
            let written = match upstream.options.write_timeout {
                Some(t) => {
                    pingora_timeout::timeout(t, write).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                }
                None => write.await,
            }
            .err();
            if let Some(e) = written {
                let etype = match e.kind() {
                    io::ErrorKind::TimedOut => ErrorType::WriteTimedout,
                    _ => ErrorType::WriteError,
                };
                let e = Error::because(etype, "while writing the request upstream", e).into_up();
                if body.is_none() {
                    return Err(ExchangeError { error: e, unsent: true });
                }
                send_failed = Some(e);
            }
            if lean_read {
                match self.lean_answer(client, &mut stream, upstream, &mut send_failed, ctx).await? {
                    LeanRead::Done(reusable) => return Ok(Upstream::Stream(stream, reusable)),
                    LeanRead::Pingora(read) => {
                        stream =
                            upstream::rewind(stream, &read).ok_or_else(|| ExchangeError::lost("no plain stream"))?;
                    }
                }
            }
            let mut up = UpstreamSession::new_with_options(stream, upstream);
            set_timeouts(&mut up, upstream);
            up
        } else {
            let Client::Session(session) = &*client else {
                return Err(ExchangeError::lost("the lean path lost its session"));
            };
            // Boxed, as the other rare paths: this path's future is moved to
            // the heap whole for every request, so its size is paid by all.
            let mut up = UpstreamSession::new_with_options(stream, upstream);
            set_timeouts(&mut up, upstream);
            send_failed = Box::pin(send_copy(&mut up, session.req_header(), body, peer, tls, ctx)).await?;
            up
        };
        let Client::Session(session) = client else {
            return Err(ExchangeError::lost("the lean path lost its session"));
        };
        loop {
            if let Err(e) = up.read_response().await {
                if let Some(send) = send_failed {
                    return Err(ExchangeError::up(send));
                }
                let unsent = session.response_written().is_none();
                return Err(ExchangeError { error: e.into_up(), unsent });
            }
            let Some(resp) = up.resp_header() else {
                return Err(ExchangeError::up(Error::explain(ErrorType::InvalidHTTPHeader, "no response head")));
            };
            let status = resp.status;
            if status == http::StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::up(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 answer to a request that asked for no upgrade",
                )));
            }
            exchange::upstream_response(resp, ctx).map_err(ExchangeError::ours)?;
            if !status.is_informational() {
                break;
            }
            // Interim answers (103 Early Hints, ...) are passed on through the
            // same filters, as on Pingora's path.
            let mut interim = Box::new(resp.clone());
            exchange::response(&mut interim, ctx).map_err(ExchangeError::ours)?;
            session.write_response_header(interim).await.map_err(ExchangeError::down)?;
        }
        let no_body = session.req_header().method == http::Method::HEAD;
        let reusable = send_failed.is_none();
        let done = up.is_body_done();
        let answer =
            up.resp_header().and_then(|resp| client.answer_raw(UpstreamAnswer::Session(resp), no_body, done, ctx));
        match answer {
            Some(framing) => self.relay_raw(client, &mut up, framing, ctx).await?,
            None => Box::pin(self.relay_session(client, &mut up, no_body, ctx)).await?,
        }
        Ok(Upstream::Session(up, reusable))
    }

    /// Read the upstream's answer head; when it is one the lean path reads
    /// itself (`upstream::parse`), write it to the client with the
    /// gateway's fields spliced in, then its body. Otherwise the bytes read
    /// go back, for Pingora's session to read the answer from its start.
    async fn lean_answer(
        &self,
        client: &mut Client,
        stream: &mut Stream,
        upstream: &HttpPeer,
        send_failed: &mut Option<Box<Error>>,
        ctx: &mut RequestCtx,
    ) -> Result<LeanRead, ExchangeError> {
        let timeout = upstream.options.read_timeout;
        let mut read = Vec::new();
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

    /// The answer through Pingora's session: its head changed as a copy.
    async fn relay_session(
        &self,
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
    async fn relay_raw(
        &self,
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
                    let mut piece = Vec::with_capacity(bytes.len() + 20);
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
    mut read: Vec<u8>,
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
    mut read: Vec<u8>,
    head_len: usize,
    timeout: Option<Duration>,
) -> Result<bool, ExchangeError> {
    let mut decoder = chunked::Decoder::new();
    let mut out = Vec::new();
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

/// The request head sent upstream by Pingora's client, as a changed copy (a
/// `HEAD`, whose answer's framing Pingora reads from the request it wrote;
/// a mirrored request, whose capture keeps the head as sent), then the
/// body. `Ok(Some)`: the body could not be sent (the answer is still read).
async fn send_copy(
    up: &mut UpstreamSession,
    client_req: &RequestHeader,
    body: Option<&[u8]>,
    peer: IpAddr,
    tls: bool,
    ctx: &mut RequestCtx,
) -> Result<Option<Box<Error>>, ExchangeError> {
    let mut req = Box::new(client_req.clone());
    // Hop-by-hop: only `keep-alive` or `close` reach this path (see `lean_eligible`).
    req.remove_header(&http::header::CONNECTION);
    exchange::upstream_request(&mut req, peer, tls, ctx).map_err(ExchangeError::down)?;
    if let Err(e) = up.write_request_header(req).await {
        return Err(ExchangeError { error: e.into_up(), unsent: true });
    }
    let Some(body) = body else { return Ok(None) };
    if let Err(e) = up.write_body(body).await {
        return Ok(Some(e));
    }
    Ok(up.finish_body().await.err())
}

/// Read the client's whole body (the lean path takes at most `MAX_BODY`).
async fn read_body(session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<Option<Vec<u8>>, Box<Error>> {
    let mut body = Vec::new();
    loop {
        let chunk = session.read_request_body().await.map_err(|e| e.into_down())?;
        exchange::request_body(&chunk, ctx);
        match chunk {
            Some(bytes) => body.extend_from_slice(&bytes),
            None => return Ok(Some(body)),
        }
    }
}

/// The request head for the upstream written into `out` with the gateway's
/// fields spliced in, as `exchange::upstream_request` would set them.
/// `false` when it must go as a changed copy through Pingora's client (see
/// `exchange`).
fn splice_request(out: &mut Vec<u8>, req: &RequestHeader, peer: IpAddr, tls: bool, ctx: &RequestCtx) -> bool {
    if req.method == http::Method::HEAD || ctx.shadow.is_some() || !ctx.snapshot.header_names.splice {
        return false;
    }
    let fields = exchange::UpstreamFields::new(req, peer, tls, ctx);
    let lane_name = ctx.snapshot.config.server.version_request_header.as_ref();
    let mut edits = [
        Some(Edit::remove(&CONNECTION)),
        Some(Edit::insert(&X_FORWARDED_FOR, b"x-forwarded-for", fields.forwarded_for.as_bytes())),
        Some(Edit::insert(&X_FORWARDED_PROTO, b"x-forwarded-proto", fields.proto.as_bytes())),
        None,
    ];
    if let (Some((wire, value)), Some(name)) = (&fields.lane, lane_name) {
        edits[3] = Some(Edit::insert(name, wire, value.as_bytes()));
    }
    let edits: SmallVec<[Edit<'_>; 6]> = edits.into_iter().flatten().collect();
    out.reserve(512);
    head_splice::request_head(out, req, &edits)
}

fn set_timeouts(up: &mut UpstreamSession, upstream: &HttpPeer) {
    up.read_timeout = upstream.options.read_timeout;
    up.write_timeout = upstream.options.write_timeout;
}

/// `METHOD path, Host: host`, as Pingora's session summarises a request.
fn request_summary(req: &RequestHeader) -> String {
    let host = req.headers.get(http::header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    format!("{} {}, Host: {}", req.method, String::from_utf8_lossy(req.raw_path()), host.unwrap_or_default())
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The lean path is switched off (`server.lean_http1 = false`): its idle
/// upstream connections on this thread are closed.
pub fn switched_off() {
    idle_upstreams::clear();
}

/// Whether an answer head says how its body ends.
fn has_framing(resp: &ResponseHeader) -> bool {
    resp.headers.contains_key(http::header::TRANSFER_ENCODING)
        || resp.headers.contains_key(http::header::CONTENT_LENGTH)
}
