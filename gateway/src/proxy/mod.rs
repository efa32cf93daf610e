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
mod request_head;
pub mod request_id;
pub mod respond;
pub mod shadow_capture;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::control::runtime::RuntimeState;
use crate::control::snapshot::SnapshotHandle;
use crate::edge::client_ip;
use crate::listener::connections;
use crate::pipeline::{self, failure, LocalAnswer, Mode, RequestFacts, Verdict};
use crate::shadow::engine::ShadowEngine;

pub use ctx::RequestCtx;

/// How long an idle upstream connection is kept for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
        RequestCtx::new(self.snapshots.load_full())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let server = &snapshot.config.server;
        // A body read waits at most this long for its next bytes (then 408);
        // what is left of a body after the answer is drained as long.
        session.set_read_timeout(Some(server.body_timeout));
        session.set_total_drain_timeout(Some(server.body_timeout));
        let peer = peer_ip(session);
        let ip = client_ip::resolve(peer, &session.req_header().headers, &snapshot.config.client_ip.trusted_proxies);
        ctx.client_ip = Some(ip);
        ctx.request_id = ensure_request_id(session.req_header_mut());
        if connections::pipelined_after(session.req_header()) {
            // Bytes of a next request came with this one, and Pingora does not
            // serve pipelined requests: say so now rather than close silently.
            session.set_keepalive(None);
        }

        if let Err(page) = request_head::check(session.req_header_mut(), server.normalize_path) {
            session.set_keepalive(None);
            ctx.answered = Some(pipeline::AnswerReason::BadRequest);
            return answer(session, ctx, &page, None).await;
        }
        let tls = crate::tls::is_tls(session);
        let req = session.req_header();
        let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri.host());
        let facts = RequestFacts {
            method: &req.method,
            host,
            path: req.uri.path(),
            query: req.uri.query(),
            path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &req.headers,
            client_ip: ip,
            tls,
            now: unix_now(),
        };
        match pipeline::run(&snapshot, &self.runtime, &facts, Mode::Serve) {
            Verdict::Continue(routed) => {
                // Keyed on the request as the pipeline saw it, before the gateway's own headers go.
                ctx.cache = cached::CacheCtx::start(&snapshot, &routed, session.req_header(), tls).map(Box::new);
                strip_client_controls(session.req_header_mut(), &snapshot, &routed);
                let method = &session.req_header().method;
                ctx.shadow = shadow_capture::start(&snapshot, &routed, method, &ctx.request_id).map(Box::new);
                ctx.routed = Some(routed);
                Ok(false)
            }
            Verdict::Respond(LocalAnswer { reason, page, retry_after, routed, copy }) => {
                if reason == pipeline::AnswerReason::Degraded {
                    ctx.upstream.fallback = Some(crate::config::FallbackCause::Degraded);
                }
                ctx.routed = routed;
                if let (Some(copy), pipeline::AnswerReason::Cache(outcome), Some(r)) = (copy, &reason, &ctx.routed) {
                    snapshot.cache.count(&r.route.spec.name, r.version_name(), *outcome);
                    let version = snapshot.config.server.version_header.as_ref();
                    cached::write(session, &copy, *outcome, &ctx.request_id, r, version).await?;
                    ctx.answered = Some(reason);
                    return Ok(true);
                }
                ctx.answered = Some(reason);
                answer(session, ctx, &page, retry_after).await
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
        if let Some(capture) = ctx.shadow.as_mut() {
            capture.request_body(body);
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let Some(routed) = &ctx.routed else {
            return Err(Error::explain(ErrorType::InternalError, "upstream_peer without a route"));
        };
        let pool = Arc::clone(routed.pool());
        let tried = &ctx.upstream.tried;
        let Some(backend) = pool.select(|addr| tried.contains(&addr)) else {
            return Err(failure::no_backend(&ctx.snapshot.metrics, routed, &mut ctx.upstream));
        };
        ctx.upstream.tried.push(backend.addr);
        let mut peer = crate::tls::upstream_peer(backend.addr, pool.tls.as_ref());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let idempotent = session.req_header().method.is_idempotent();
        let Some(routed) = ctx.routed.as_mut() else { return e };
        if failure::connect_failed(&ctx.snapshot.metrics, routed, &mut ctx.upstream, e.etype(), idempotent) {
            tracing::debug!(peer = %peer, "connect failed; retrying");
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // `req` is a copy of the client's request head, which already carries
        // the X-Request-Id set in `request_filter`.
        let proto = HeaderValue::from_static(if crate::tls::is_tls(session) { "https" } else { "http" });
        // Inserted by `&'static str`: by `&HeaderName`, Pingora would
        // title-case a copy of the name on every request.
        match forwarded_for(req.headers.get_all(&X_FORWARDED_FOR), peer_ip(session)) {
            Some(xff) => req.insert_header("x-forwarded-for", xff)?,
            // Unreachable: the client's entries were already a header value.
            None => req.insert_header("x-forwarded-for", peer_ip(session).to_string())?,
        }
        req.insert_header("x-forwarded-proto", proto)?;
        if let (Some(name), Some(routed)) = (&ctx.snapshot.config.server.version_request_header, &ctx.routed) {
            // The client's own value was removed in `strip_client_controls`.
            req.insert_header(name.clone(), routed.route.version_value(routed.decision.version).clone())?;
        }
        if session.is_http2() && !req.headers.contains_key(http::header::CONTENT_LENGTH) && !session.is_body_empty() {
            // Pingora 0.9.1 ends a streamed HTTP/2 body it sends upstream as
            // chunked with a second last-chunk, which the backend reads as a
            // request line `0` whose answer the next request on that pooled
            // connection would get (found by testing). A connection that
            // carried such a body is not reused: the backend closes it.
            req.insert_header(http::header::CONNECTION, "close")?;
        }
        if let Some(capture) = ctx.shadow.as_mut() {
            capture.request_sent(req);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(capture) = ctx.shadow.as_mut() {
            capture.response_header(resp);
        }
        if let Some(routed) = &ctx.routed {
            failure::upstream_status(&ctx.snapshot.metrics, routed, &mut ctx.upstream, resp.status.as_u16());
        }
        if let Some(c) = ctx.cache.as_mut() {
            let status = resp.status.as_u16();
            if let Some(fill) = c.fill.as_mut() {
                match ctx.upstream.failed_over {
                    // The default version answered for the one routed to: not that version's copy.
                    true => fill.cancel(),
                    false => fill.head(status, &resp.headers),
                }
            }
            // A 5xx with a copy to stand in: the copy goes out instead, with its own framing,
            // from `fail_to_proxy` (before any fallback page).
            if status >= 500 {
                c.stale = c.stale_copy(&ctx.snapshot);
                if c.stale.is_some() {
                    return Error::e_explain(
                        ErrorType::HTTPStatus(status),
                        "the upstream failed; a cached copy stands in",
                    );
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(page) = failure::replacement(ctx.routed.as_ref(), &ctx.upstream) {
            // The upstream's 5xx is swapped for the route's page; its body is dropped below.
            let mut header = ResponseHeader::build(page.status, Some(4))?;
            header.insert_header(http::header::CONTENT_TYPE, page.content_type)?;
            header.insert_header(http::header::CONTENT_LENGTH, page.body.len().to_string())?;
            header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
            for (name, value) in &page.headers {
                header.insert_header(*name, value.as_str())?;
            }
            *resp = header;
        }
        if connections::pipelined_after(session.req_header()) {
            // A next request followed this one's chunked body: it will not be
            // served on this connection, so the answer says so.
            session.set_keepalive(None);
        }
        if ctx.cache.as_ref().is_some_and(|c| c.stale.is_none()) {
            resp.insert_header("x-gateway-cache", crate::cache::CacheOutcome::Miss.as_str())?;
        }
        if let Some(routed) = &ctx.routed {
            if let Some(name) = &ctx.snapshot.config.server.version_header {
                resp.insert_header(name.clone(), routed.route.version_value(routed.decision.version).clone())?;
            }
            if let Some(cookie) = &routed.set_cookie {
                resp.append_header(http::header::SET_COOKIE, cookie.clone())?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(capture) = ctx.shadow.as_mut() {
            capture.response_body(body, end_of_stream);
        }
        if let Some(fill) = ctx.cache.as_mut().and_then(|c| c.fill.as_mut()) {
            fill.body(body);
        }
        if let Some(page) = failure::replacement(ctx.routed.as_ref(), &ctx.upstream) {
            *body = end_of_stream.then(|| page.body.clone());
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // The upstream failed (not the client): the last good copy comes before the fallback page.
        let stale = match e.esource() {
            ErrorSource::Downstream => None,
            _ => ctx.cache.as_mut().and_then(|c| c.stale.take().or_else(|| c.stale_copy(&ctx.snapshot))),
        };
        if let (Some(copy), None) = (stale, session.response_written()) {
            session.set_keepalive(None);
            if let Some(r) = &ctx.routed {
                failure::upstream_failed(&ctx.snapshot.metrics, r, &mut ctx.upstream, e);
                ctx.snapshot.cache.count(&r.route.spec.name, r.version_name(), crate::cache::CacheOutcome::Stale);
                let version = ctx.snapshot.config.server.version_header.as_ref();
                let outcome = crate::cache::CacheOutcome::Stale;
                if let Err(err) = cached::write(session, &copy, outcome, &ctx.request_id, r, version).await {
                    tracing::debug!(error = %err, "cannot send the stale copy");
                }
            }
            ctx.answered = Some(pipeline::AnswerReason::Cache(crate::cache::CacheOutcome::Stale));
            return FailToProxy { error_code: copy.status, can_reuse_downstream: false };
        }
        let framing = connections::framing_was_refused();
        let page = failure::proxy_failed(&ctx.snapshot.metrics, ctx.routed.as_ref(), &mut ctx.upstream, e, framing);
        // Pingora does not reuse a client connection after a failed proxy
        // attempt; saying so (`Connection: close`) lets keep-alive clients
        // reconnect instead of sending their next request into a closing socket.
        session.set_keepalive(None);
        let code = page.as_ref().map(|p| p.status).unwrap_or(0);
        // A response already started cannot be replaced; the connection is dropped instead.
        if let Some(page) = page.filter(|_| session.response_written().is_none()) {
            if let Err(err) = respond::write(session, &page, &ctx.request_id).await {
                tracing::debug!(error = %err, "cannot send error page");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// Failures answered with a fallback page, and clients that hung up, are
    /// normal operation: the access log has them; the error log stays for faults.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        ctx.upstream.fallback.is_some()
            || (error.esource() == &ErrorSource::Downstream
                && matches!(error.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError))
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let elapsed = ctx.started.elapsed();
        let snapshot = &ctx.snapshot;
        match &ctx.routed {
            Some(r) => match r.route.metrics.versions.get(r.decision.version) {
                Some(m) => m.observe(status, elapsed.as_secs_f64()),
                None => snapshot.unrouted_metrics.observe(status, elapsed.as_secs_f64()),
            },
            None => snapshot.unrouted_metrics.observe(status, elapsed.as_secs_f64()),
        }
        failure::finish(ctx.routed.as_ref(), &ctx.upstream);
        if let (Some(c), Some(r)) = (ctx.cache.as_mut(), &ctx.routed) {
            // Proxied (not answered from the cache): a miss; a complete answer fills the cache.
            if ctx.answered.is_none() {
                ctx.snapshot.cache.count(&r.route.spec.name, r.version_name(), crate::cache::CacheOutcome::Miss);
            }
            if let (None, Some(fill)) = (e, c.fill.take()) {
                cached::finish_fill(&ctx.snapshot, fill);
            }
        }
        crate::telemetry::access_log::write(session, ctx, status, elapsed, e);
        if let (Some(capture), Some(routed)) = (ctx.shadow.take(), &ctx.routed) {
            capture.finish(&self.shadow, &ctx.snapshot, routed, e.is_some());
        }
    }
}

/// Write a local answer and end the request there.
async fn answer(
    session: &mut Session,
    ctx: &RequestCtx,
    page: &respond::LocalResponse,
    retry_after: Option<u64>,
) -> Result<bool> {
    respond::write_with(session, page, &ctx.request_id, retry_after).await?;
    Ok(true)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The TCP peer, an IPv4-mapped IPv6 address as its IPv4 address.
fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| client_ip::canonical(a.ip()))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The marker of mirrored requests when a route sets none.
static DEFAULT_SHADOW_MARKER: HeaderName = HeaderName::from_static("x-shadow");

/// Remove what a client may not control on the way upstream: `Connection`
/// tokens naming a header the gateway sets, shadow markers, the version
/// lane header and the route's override header (judged already; a backend
/// must never see a forced version the gateway did not apply).
fn strip_client_controls(
    req: &mut RequestHeader,
    snapshot: &crate::control::snapshot::Snapshot,
    routed: &pipeline::Routed,
) {
    // Absent settings repeat an entry already in the list: no allocation on
    // the request path either way.
    let server = &snapshot.config.server;
    let version = server.version_header.as_ref().unwrap_or(&X_REQUEST_ID);
    let lane = server.version_request_header.as_ref().unwrap_or(&DEFAULT_SHADOW_MARKER);
    let owned = [&X_REQUEST_ID, &X_FORWARDED_FOR, &X_FORWARDED_PROTO, version, lane];
    let route = &routed.route.spec;
    let marker = route.shadow.as_ref().map(|s| &s.marker.0).unwrap_or(&DEFAULT_SHADOW_MARKER);
    let forced = route.override_.as_ref().and_then(|o| o.header.as_ref()).unwrap_or(&DEFAULT_SHADOW_MARKER);
    request_head::strip_client_controls(req, &owned, &[&DEFAULT_SHADOW_MARKER, marker, lane, forced]);
    if let Some(cookie) = route.override_.as_ref().and_then(|o| o.cookie.as_deref()) {
        request_head::remove_cookie(req, cookie);
    }
}

/// `X-Forwarded-For` for the upstream: the client's entries (all its
/// headers, as bytes: an entry that is not text is kept, not dropped) with
/// the peer appended, built in one allocation.
fn forwarded_for(previous: http::header::GetAll<'_, HeaderValue>, peer: IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    let entries = || previous.iter().map(|v| v.as_bytes().trim_ascii()).filter(|v| !v.is_empty());
    // 39 bytes: the longest textual IPv6 address.
    let mut xff = Vec::with_capacity(entries().map(|v| v.len() + 2).sum::<usize>() + 39);
    for entry in entries() {
        xff.extend_from_slice(entry);
        xff.extend_from_slice(b", ");
    }
    let _ = write!(xff, "{peer}");
    HeaderValue::from_bytes(&xff).ok()
}

/// Keep the client's `X-Request-Id` when it is short and printable (1 to 128
/// visible ASCII characters, so it cannot break a log line or a header);
/// otherwise make one.
fn ensure_request_id(req: &mut RequestHeader) -> String {
    let existing = req
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    if let Some(id) = existing.map(str::to_string) {
        // One id upstream, like the one we log: drop any further copies.
        if req.headers.get_all("x-request-id").iter().nth(1).is_some() {
            let _ = req.insert_header("x-request-id", id.as_str());
        }
        return id;
    }
    let id = request_id::new_request_id();
    // A fresh hex id is always a valid header value.
    let _ = req.insert_header("x-request-id", id.as_str());
    id
}
