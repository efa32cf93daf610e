//! The `ProxyHttp` implementation: thin, runs the pipeline and hands
//! failures to `pipeline::failure`.
//!
//! request_filter  -> client IP, request id, request head checks, then the
//!                    pipeline (blacklist, route, version, redirect, degrade,
//!                    rate limits): proxy on, or answer here
//! upstream_peer   -> next healthy backend of the version's pool
//! fail_to_connect -> retry on another backend, or on the default version
//!                    when a canary cannot be reached (canary_failover)
//! upstream_request_filter -> X-Forwarded-For/-Proto, the version lane header
//! response_filter -> version header, anonymous cookie; a 5xx replaced by
//!                    the fallback page
//! fail_to_proxy   -> the fallback page, or a small error page
//! logging         -> metrics and the access log line

pub mod cached;
pub mod ctx;
pub mod exchange;
mod head_splice;
mod idle_upstreams;
pub mod lean;
mod request_head;
pub mod request_id;
pub mod respond;
pub mod shadow_capture;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::control::runtime::RuntimeState;
use crate::control::snapshot::SnapshotHandle;
use crate::listener::connections;
use crate::pipeline::failure;
use crate::shadow::engine::ShadowEngine;
use exchange::Begin;

pub use ctx::RequestCtx;

#[derive(Clone)]
pub struct GatewayProxy {
    pub snapshots: SnapshotHandle,
    pub runtime: Arc<RuntimeState>,
    pub shadow: Arc<ShadowEngine>,
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // Called once Pingora has parsed the head.
        connections::head_parsed();
        let ctx = RequestCtx::new(self.snapshots.load_full());
        ctx.snapshot.metrics.pingora_requests.inc();
        ctx
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let server = &ctx.snapshot.config.server;
        // A body read waits at most this long for its next bytes (then 408);
        // what is left of a body after the answer is drained as long.
        session.set_read_timeout(Some(server.body_timeout));
        session.set_total_drain_timeout(Some(server.body_timeout));
        // And a client that stops reading its answer is given up on as late.
        session.set_write_timeout(Some(server.body_timeout));
        if connections::pipelined_after(session.req_header()) {
            // Bytes of a next request came with this one, and Pingora does not
            // serve pipelined requests: say so now rather than close silently.
            session.set_keepalive(None);
        }
        let (peer, tls) = (exchange::peer_ip(session), exchange::is_tls(session));
        match exchange::begin(&self.runtime, session.req_header_mut(), peer, tls, ctx) {
            Begin::Proxy => Ok(false),
            answer => {
                respond::local_answer(session.as_downstream_mut(), answer, ctx).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        exchange::request_body(body, ctx);
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        exchange::next_peer(ctx).map(|peer| Box::new(HttpPeer::clone(&peer)))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        let idempotent = session.req_header().method.is_idempotent();
        exchange::connect_failed(ctx, idempotent, peer, e)
    }

    /// An upstream failed after its connection was made. Whether the request
    /// may go again is Pingora's own rule (never for a method that is not
    /// idempotent or a body no longer buffered; otherwise only when the
    /// connection came from the pool and died before any answer), and then
    /// once per request (`failure::pooled_connection_lost`), to any backend
    /// of the pool, the one tried included. Without that, a version with one
    /// backend answered 503 "no healthy backend" to a dead pooled connection.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if e.retry() && !failure::pooled_connection_lost(&mut ctx.upstream) {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if session.is_http2() && !req.headers.contains_key(http::header::CONTENT_LENGTH) && !session.is_body_empty() {
            // Pingora 0.9.1 ends a streamed HTTP/2 body it sends upstream as
            // chunked with a second last-chunk, which the backend reads as a
            // request line `0` whose answer the next request on that pooled
            // connection would get (found by testing). A connection that
            // carried such a body is not reused: the backend closes it.
            req.insert_header(http::header::CONNECTION, "close")?;
        }
        exchange::upstream_request(req, exchange::peer_ip(session), exchange::is_tls(session), ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && !session.is_upgrade_req() {
            // Pingora would pass it on as an interim answer, then wait for a
            // final one that never comes (a 504 after `read_timeout`, on a
            // connection the client thinks switched). A 502 at once, as on
            // the lean path.
            let e = Error::explain(ErrorType::InvalidHTTPHeader, "101 answer to a request that asked for no upgrade");
            return Err(e.into_up());
        }
        exchange::upstream_response(resp, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if connections::pipelined_after(session.req_header()) {
            // A next request followed this one's chunked body: it will not be
            // served on this connection, so the answer says so.
            session.set_keepalive(None);
        }
        exchange::response(resp, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        exchange::response_body(body, end_of_stream, ctx);
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // Pingora does not reuse a client connection after a failed proxy
        // attempt; the answer says so (`Connection: close`), so keep-alive
        // clients reconnect instead of sending their next request into a
        // closing socket.
        let error_code = respond::failure(session.as_downstream_mut(), e, ctx).await;
        FailToProxy { error_code, can_reuse_downstream: false }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        exchange::quiet_error(ctx, error)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        exchange::finish(&self.shadow, session.req_header(), status, e, ctx);
    }
}
