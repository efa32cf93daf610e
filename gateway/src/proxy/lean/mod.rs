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

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::CONNECTION;
use http::HeaderName;
use pingora_core::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;

mod arrival;
pub mod arrived;
mod buffers;
mod chunked;
mod client;
mod deadline;
mod relay;
mod request;
mod upstream;

pub use arrival::Arrival;
use buffers::Buffer;
use client::{Client, RawClient, UpstreamAnswer};
use deadline::within;

use super::exchange::{self, Begin};
use super::head_splice::{self, Edit};
use super::{idle_upstreams, respond, GatewayProxy, RequestCtx};
use crate::listener::connections;
use crate::pipeline::failure::{self, PooledLoss};

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

    /// Serve the request whose head has arrived; the stream comes back when
    /// the connection may carry another request.
    ///
    /// A block, not an `async fn`, and the client kept in one place
    /// (`client`), used there: an `async fn` keeps its arguments twice, and
    /// every move of the 680-byte session into a new binding is another copy
    /// kept in the future, which is moved to the heap whole for every
    /// request (`benches/README.md`, session 11).
    #[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice (above)")]
    pub fn serve(
        self: Arc<Self>,
        arrival: Arrival,
        shutdown: ShutdownWatch,
    ) -> impl std::future::Future<Output = Option<ReusedHttpStream>> + Send + 'static {
        let mut client = arrival.into_client(&shutdown);
        async move {
            if let Client::Session(session) = &mut client {
                // Pingora's session reads the head (see `request.rs`).
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
                if *shutdown.borrow() {
                    // Stop the client from reusing a connection of a process going away.
                    session.set_keepalive(None);
                }
            }
            connections::head_parsed();
            let mut ctx = RequestCtx::new(self.proxy.snapshots.load_full());
            ctx.snapshot.metrics.lean_requests.inc();
            let body_timeout = ctx.snapshot.config.server.body_timeout;
            let (peer, tls) = match &mut client {
                Client::Session(session) => {
                    session.set_read_timeout(Some(body_timeout));
                    session.set_total_drain_timeout(Some(body_timeout));
                    session.set_write_timeout(Some(body_timeout));
                    if connections::pipelined_after(session.req_header()) {
                        // Pipelined requests are not served (as on Pingora's path): say so.
                        session.set_keepalive(None);
                    }
                    (exchange::peer_ip(session), exchange::is_tls(session))
                }
                Client::Raw(raw) => {
                    raw.timeout = body_timeout;
                    raw.keepalive &= !connections::pipelined_after(&raw.req);
                    {
                        let digest = raw.stream.get_socket_digest();
                        (
                            exchange::peer_ip_of(digest.as_deref().and_then(|d| d.peer_addr())),
                            raw.stream.get_ssl_digest().is_some(),
                        )
                    }
                }
                Client::Switching => return None,
            };
            let begin = match client.req_mut() {
                Some(req) => exchange::begin(&self.proxy.runtime, req, peer, tls, &mut ctx),
                None => return None,
            };
            let mut failure = match begin {
                Begin::Proxy => self.proxy_request(&mut client, peer, tls, &mut ctx).await.err(),
                answer => {
                    let written = match &answer {
                        Begin::Page { page, retry_after, close } => {
                            client.answer_page(page, &ctx.request_id, *retry_after, *close).await
                        }
                        _ => None,
                    };
                    match written {
                        Some(written) => written.err(),
                        None => match client.session().await {
                            Ok(session) => respond::local_answer(session, answer, &ctx).await.err(),
                            Err(e) => Some(e),
                        },
                    }
                }
            };
            if failure.is_some() && !client.answer_started() {
                // The failure is answered through the session (a page, a stale copy).
                if let Err(e) = client.session().await {
                    tracing::debug!(error = %e, "no session to answer a failed request");
                }
            }
            let Client::Session(session) = &mut client else {
                let Client::Raw(raw) = std::mem::replace(&mut client, Client::Switching) else { return None };
                return self.end_raw(raw, failure.take(), &mut ctx).await;
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
                let _ = within(body_timeout, session.shutdown()).await;
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
            raw.close().await;
            return None;
        }
        if !raw.keepalive {
            raw.close().await;
            return None;
        }
        Some(ReusedHttpStream::new(raw.stream, None))
    }

    /// Proxy to a backend of the routed version: retried on another
    /// backend (or the default version) when a connection cannot be made,
    /// and, for an idempotent method, once more on a new connection when a
    /// pooled one turns out dead before any of the request's body or the
    /// answer passed, as on Pingora's path.
    async fn proxy_request(
        &self,
        client: &mut Client,
        peer: IpAddr,
        tls: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), Box<Error>> {
        let Some(req) = client.req() else {
            return Err(Error::explain(ErrorType::InternalError, "the lean path lost its client"));
        };
        let idempotent = req.method.is_idempotent();
        // The body (at most `MAX_BODY`, see `lean_eligible`) is read whole
        // first, so the request goes upstream in one write.
        let body = client.read_body(ctx).await?;
        let has_body = body.is_some();
        loop {
            let upstream = exchange::next_peer(ctx)?;
            let key = upstream.reuse_hash();
            let max_idle = upstream.options.idle_timeout.unwrap_or(Duration::ZERO);
            // After a dead pooled connection, the request goes on a new one.
            let lost_one = ctx.upstream.pooled_loss != PooledLoss::None;
            let pooled = if lost_one { None } else { idle_upstreams::take(key, max_idle) };
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
                    // A method that is not idempotent never goes twice: the
                    // backend may have read it before the connection died (a
                    // `POST` would be applied twice). As Pingora's path decides
                    // (`ProxyHttp::error_while_proxy`), and nginx's
                    // `proxy_next_upstream` without `non_idempotent`.
                    let retry = unsent
                        && idempotent
                        && error.retry()
                        && !has_body
                        && failure::pooled_connection_lost(&mut ctx.upstream);
                    if !retry {
                        return Err(error);
                    }
                    // The pooled connection was dead: the same request goes
                    // again on a new connection, to any backend of the pool.
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
        let mut head = Buffer::take(512 + body.map_or(0, <[u8]>::len));
        let spliced = match client.req() {
            Some(req) => splice_request(&mut head, req, peer, tls, ctx),
            None => return Err(ExchangeError::lost("the lean path lost its client")),
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
                Some(t) => within(t, write).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
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
                match relay::lean_answer(client, &mut stream, upstream, &mut send_failed, ctx).await? {
                    relay::LeanRead::Done(reusable) => return Ok(Upstream::Stream(stream, reusable)),
                    relay::LeanRead::Pingora(read) => {
                        stream =
                            upstream::rewind(stream, &read).ok_or_else(|| ExchangeError::lost("no plain stream"))?;
                    }
                }
            }
            let mut up = UpstreamSession::new_with_options(stream, upstream);
            set_timeouts(&mut up, upstream);
            up
        } else {
            let Some(req) = client.req() else {
                return Err(ExchangeError::lost("the lean path lost its client"));
            };
            // Boxed, as the other rare paths: this path's future is moved to
            // the heap whole for every request, so its size is paid by all.
            let mut up = UpstreamSession::new_with_options(stream, upstream);
            set_timeouts(&mut up, upstream);
            send_failed = Box::pin(send_copy(&mut up, req, body, peer, tls, ctx)).await?;
            up
        };
        loop {
            if let Err(e) = up.read_response().await {
                if let Some(send) = send_failed {
                    return Err(ExchangeError::up(send));
                }
                let unsent = !client.answer_started();
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
            let session = client.session().await.map_err(ExchangeError::ours)?;
            session.write_response_header(interim).await.map_err(ExchangeError::down)?;
        }
        let no_body = client.req().is_some_and(|req| req.method == http::Method::HEAD);
        let reusable = send_failed.is_none();
        let done = up.is_body_done();
        let answer =
            up.resp_header().and_then(|resp| client.answer_raw(UpstreamAnswer::Session(resp), no_body, done, ctx));
        match answer {
            Some(framing) => relay::relay_raw(client, &mut up, framing, ctx).await?,
            None => {
                client.session().await.map_err(ExchangeError::ours)?;
                Box::pin(relay::relay_session(client, &mut up, no_body, ctx)).await?
            }
        }
        Ok(Upstream::Session(up, reusable))
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
    // In the order `exchange::upstream_request` makes them, after Pingora
    // removed `Connection` (`sanitize_h1_upstream_request`).
    let mut edits = [
        Some(Edit::remove(&CONNECTION)),
        exchange::request_id_to_set(req, ctx).map(|id| Edit::insert(&X_REQUEST_ID, b"x-request-id", id)),
        Some(Edit::insert(&X_FORWARDED_FOR, b"x-forwarded-for", &fields.forwarded_for)),
        Some(Edit::insert(&X_FORWARDED_PROTO, b"x-forwarded-proto", fields.proto.as_bytes())),
        None,
    ];
    if let (Some((wire, value)), Some(name)) = (&fields.lane, lane_name) {
        edits[4] = Some(Edit::insert(name, wire, value.as_bytes()));
    }
    let edits: SmallVec<[Edit<'_>; 6]> = edits.into_iter().flatten().collect();
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

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The lean path is switched off (`server.lean_http1 = false`): its idle
/// upstream connections on this thread are closed.
pub fn switched_off() {
    idle_upstreams::clear();
}
