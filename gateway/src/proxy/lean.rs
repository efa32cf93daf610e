//! The lean HTTP/1 path: one request of a client connection proxied to an
//! HTTP/1 upstream in a straight line, on Pingora's own building blocks
//! (its HTTP/1 server and client sessions for parsing and framing, its
//! connector and connection pool), without `pingora-proxy`'s generic
//! pipeline: no per-request channel or task, no `try_join` of a downstream
//! and an upstream future, no cache or module hooks, no second copy of the
//! request head.
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

use std::net::IpAddr;
use std::time::Duration;

use pingora_core::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType};
use pingora_http::ResponseHeader;

use super::exchange::{self, Begin};
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
    pub async fn serve(&self, mut session: ServerSession, shutdown: &ShutdownWatch) -> Option<ReusedHttpStream> {
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
        let (peer, tls) = (exchange::peer_ip(&session), exchange::is_tls(&session));
        let failure = match exchange::begin(&self.proxy.runtime, session.req_header_mut(), peer, tls, &mut ctx) {
            Begin::Proxy => self.proxy_request(&mut session, peer, tls, &mut ctx).await.err(),
            answer => respond::local_answer(&mut session, answer, &ctx).await.err(),
        };
        if let Some(e) = &failure {
            respond::failure(&mut session, e, &mut ctx).await;
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
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }

    /// Proxy to a backend of the routed version: retried on another
    /// backend (or the default version) when a connection cannot be made,
    /// and once on a new connection when a pooled one turns out dead before
    /// any of the request's body or the answer passed, as on Pingora's path.
    async fn proxy_request(
        &self,
        session: &mut ServerSession,
        peer: IpAddr,
        tls: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), Box<Error>> {
        let idempotent = session.req_header().method.is_idempotent();
        let has_body = !session.is_body_empty();
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
            let client = match stream {
                Ok(stream) => UpstreamSession::new_with_options(stream, &*upstream),
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
            match self.exchange(session, client, &upstream, peer, tls, ctx).await {
                Ok((mut client, reusable)) => {
                    client.respect_keepalive();
                    if !reusable {
                        client.shutdown().await;
                    } else if let Some(stream) = client.reuse().await {
                        idle_upstreams::put(key, stream, self.idle_per_thread);
                    }
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
    async fn exchange(
        &self,
        session: &mut ServerSession,
        mut client: UpstreamSession,
        upstream: &HttpPeer,
        peer: IpAddr,
        tls: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(UpstreamSession, bool), ExchangeError> {
        client.read_timeout = upstream.options.read_timeout;
        client.write_timeout = upstream.options.write_timeout;
        let mut req = Box::new(session.req_header().clone());
        // Hop-by-hop: only `keep-alive` or `close` reach this path (see `lean_eligible`).
        req.remove_header(&http::header::CONNECTION);
        exchange::upstream_request(&mut req, peer, tls, ctx).map_err(ExchangeError::down)?;
        let has_body = !session.is_body_empty();
        if let Err(e) = client.write_request_header(req).await {
            return Err(ExchangeError { error: e.into_up(), unsent: true });
        }
        // An upstream may answer before it has read the whole body (a 413, a
        // 401) and stop reading: its answer is still read and passed on, as
        // on Pingora's path, and the connection is not kept.
        let mut send_failed = None;
        if has_body {
            loop {
                let chunk = session.read_request_body().await.map_err(ExchangeError::down)?;
                exchange::request_body(&chunk, ctx);
                let Some(bytes) = chunk else { break };
                if let Err(e) = client.write_body(&bytes).await {
                    send_failed = Some(e);
                    break;
                }
            }
            if send_failed.is_none() {
                send_failed = client.finish_body().await.err();
            }
        }
        let mut resp = loop {
            if let Err(e) = client.read_response().await {
                if let Some(send) = send_failed {
                    return Err(ExchangeError::up(send));
                }
                let unsent = session.response_written().is_none();
                return Err(ExchangeError { error: e.into_up(), unsent });
            }
            let Some(head) = client.resp_header() else {
                return Err(ExchangeError::up(Error::explain(ErrorType::InvalidHTTPHeader, "no response head")));
            };
            let status = head.status;
            if status == http::StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::up(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 answer to a request that asked for no upgrade",
                )));
            }
            let mut head = Box::new(head.clone());
            exchange::upstream_response(&head, ctx).map_err(ExchangeError::ours)?;
            if !status.is_informational() {
                break head;
            }
            // Interim answers (103 Early Hints, ...) are passed on through the
            // same filters, as on Pingora's path.
            exchange::response(&mut head, ctx).map_err(ExchangeError::ours)?;
            session.write_response_header(head).await.map_err(ExchangeError::down)?;
        };
        let mut done = client.is_body_done();
        let no_body = session.req_header().method == http::Method::HEAD || matches!(resp.status.as_u16(), 204 | 304);
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
            let mut chunk = client.read_body_bytes().await.map_err(ExchangeError::up)?;
            done = client.is_body_done();
            exchange::response_body(&mut chunk, done, ctx);
            if let Some(bytes) = chunk {
                session.write_response_body(bytes, done).await.map_err(ExchangeError::down)?;
            }
        }
        Ok((client, send_failed.is_none()))
    }
}

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
