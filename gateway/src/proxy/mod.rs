//! The `ProxyHttp` implementation: thin, calls the phases in order.
//!
//! request_filter  -> client IP, request id, blacklist, route + version
//!                    decision, degrade level, rate limits
//! upstream_peer   -> next healthy backend of the chosen pool
//! fail_to_connect -> one retry on another backend of the same pool, or on
//!                    stable when the canary cannot be reached (canary_failover)
//! upstream_request_filter -> X-Forwarded-For/-Proto, X-Request-Id
//! response_filter -> version header; a 5xx replaced by the fallback page
//! fail_to_proxy   -> the fallback page, or a small error page
//! logging         -> metrics and the access log line

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

use crate::config::FallbackCause;
use crate::control::runtime::RuntimeState;
use crate::control::snapshot::SnapshotHandle;
use crate::edge::client_ip;
use crate::edge::fallback;
use crate::routing::Version;
use crate::shadow::engine::ShadowEngine;
use crate::telemetry::metrics::UpstreamErrorKind;

use crate::pipeline::phases::{self, RouteOutcome};
pub use ctx::RequestCtx;
use respond::LocalResponse;

/// How long an idle upstream connection is kept for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Backends tried per request: the first plus one retry on connect failure
/// (one more when a canary failure moved the request to stable).
const MAX_ATTEMPTS: usize = 2;

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
        crate::listener::connections::head_parsed();
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
        if crate::listener::connections::pipelined_after(session.req_header()) {
            // Bytes of a next request came with this one, and Pingora does not
            // serve pipelined requests: say so now rather than close silently.
            session.set_keepalive(None);
        }

        if let Err(page) = request_head::check(session.req_header_mut(), server.normalize_path) {
            session.set_keepalive(None);
            return answer(session, ctx, &page).await;
        }
        if let Some(page) = phases::check_blacklist(&snapshot, &self.runtime, ip) {
            return answer(session, ctx, &page).await;
        }
        let routed = match phases::route_request(&snapshot, session.req_header(), ip) {
            RouteOutcome::Proxy(routed) => routed,
            RouteOutcome::Respond(resp) => return answer(session, ctx, &resp).await,
        };
        strip_client_controls(session.req_header_mut(), &snapshot, &routed);
        let local = phases::check_https_redirect(&snapshot, &routed, session.req_header(), crate::tls::is_tls(session))
            .map(|page| (page, None))
            .or_else(|| {
                phases::check_degrade(&snapshot, &self.runtime, &routed)
                    .map(|page| (page, Some(FallbackCause::Degraded)))
            })
            .or_else(|| phases::check_rate_limits(&snapshot, &routed, ip).map(|page| (page, None)));
        if local.is_none() {
            let method = &session.req_header().method;
            ctx.shadow = shadow_capture::start(&snapshot, &routed, method, &ctx.request_id);
        }
        ctx.routed = Some(routed);
        match local {
            Some((page, cause)) => {
                ctx.upstream.fallback = cause;
                answer(session, ctx, &page).await
            }
            None => Ok(false),
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
        let pool = Arc::clone(&routed.pool);
        let tried = &ctx.upstream.tried;
        let Some(backend) = pool.select(|addr| tried.contains(&addr)) else {
            let kind = if tried.is_empty() { UpstreamErrorKind::NoHealthyBackend } else { UpstreamErrorKind::Connect };
            ctx.upstream.error = Some(kind);
            ctx.snapshot.metrics.upstream_error(&pool.name, UpstreamErrorKind::NoHealthyBackend);
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                format!("no healthy backend left in pool {}", pool.name),
            ));
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
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => UpstreamErrorKind::Timeout,
            _ => UpstreamErrorKind::Connect,
        };
        ctx.upstream.error = Some(kind);
        let snapshot = Arc::clone(&ctx.snapshot);
        let idempotent = session.req_header().method.is_idempotent();
        let Some(routed) = ctx.routed.as_mut() else { return e };
        snapshot.metrics.upstream_error(&routed.pool.name, kind);
        let route = &snapshot.router.routes()[routed.route_index].spec;
        let failover = route.fallback.as_ref().is_some_and(|f| f.canary_failover);
        if failover && idempotent && routed.decision.version == Version::Canary && !ctx.upstream.failed_over {
            // The canary is the experiment; stable is known to work. Nothing was sent yet.
            if let Some(stable) = snapshot.pools.get(&route.stable) {
                tracing::info!(peer = %peer, route = %route.name, "canary unreachable; retrying on stable");
                routed.pool = Arc::clone(stable);
                routed.decision.version = Version::Stable;
                ctx.upstream.failed_over = true;
                e.set_retry(true);
                return e;
            }
        }
        // Nothing reached the backend, so any method may go to another one.
        let limit = MAX_ATTEMPTS + usize::from(ctx.upstream.failed_over);
        let another = routed.pool.backends.iter().any(|b| !ctx.upstream.tried.contains(&b.addr));
        if ctx.upstream.tried.len() < limit && another {
            tracing::debug!(peer = %peer, "connect failed; retrying on another backend");
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
        if resp.status.is_server_error() {
            if let Some(routed) = &ctx.routed {
                ctx.snapshot.metrics.upstream_error(&routed.pool.name, UpstreamErrorKind::Status5xx);
                let route = &ctx.snapshot.router.routes()[routed.route_index].spec;
                if route.fallback.as_ref().is_some_and(|f| f.covers(FallbackCause::Status5xx)) {
                    ctx.upstream.fallback = Some(FallbackCause::Status5xx);
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
        if let Some(page) = self.replacement(ctx) {
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
        if crate::listener::connections::pipelined_after(session.req_header()) {
            // A next request followed this one's chunked body: it will not be
            // served on this connection, so the answer says so.
            session.set_keepalive(None);
        }
        if let (Some(name), Some(routed)) = (&ctx.snapshot.config.server.version_header, &ctx.routed) {
            resp.insert_header(name.clone(), HeaderValue::from_static(routed.decision.version.as_str()))?;
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
        if let Some(page) = self.replacement(ctx) {
            *body = end_of_stream.then(|| page.body.clone());
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let cause = failure_cause(e, ctx);
        if cause == Some(FallbackCause::Timeout) && ctx.upstream.error.is_none() {
            ctx.upstream.error = Some(UpstreamErrorKind::Timeout);
            if let Some(r) = &ctx.routed {
                ctx.snapshot.metrics.upstream_error(&r.pool.name, UpstreamErrorKind::Timeout);
            }
        }
        let page = cause.and_then(|cause| {
            let routed = ctx.routed.as_ref()?;
            let route = &ctx.snapshot.router.routes()[routed.route_index].spec;
            let page = fallback::page_for(route, cause)?;
            ctx.snapshot.route_metrics[routed.route_index].fallback(cause);
            ctx.upstream.fallback = Some(cause);
            Some(page)
        });
        // Pingora does not reuse a client connection after a failed proxy
        // attempt; saying so (`Connection: close`) lets keep-alive clients
        // reconnect instead of sending their next request into a closing socket.
        session.set_keepalive(None);
        let page = page.or_else(|| error_page(e));
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
            Some(r) => {
                snapshot.route_metrics[r.route_index].version(r.decision.version).observe(status, elapsed.as_secs_f64())
            }
            None => snapshot.unrouted_metrics.observe(status, elapsed.as_secs_f64()),
        }
        if ctx.upstream.fallback == Some(FallbackCause::Status5xx) {
            if let Some(r) = &ctx.routed {
                snapshot.route_metrics[r.route_index].fallback(FallbackCause::Status5xx);
            }
        }
        crate::telemetry::access_log::write(session, ctx, status, elapsed, e);
        if let (Some(capture), Some(routed)) = (ctx.shadow.take(), &ctx.routed) {
            capture.finish(&self.shadow, &ctx.snapshot, routed, e.is_some());
        }
    }
}

impl GatewayProxy {
    /// The page that replaces an upstream 5xx answer, when the route asks for it.
    fn replacement(&self, ctx: &RequestCtx) -> Option<LocalResponse> {
        if ctx.upstream.fallback != Some(FallbackCause::Status5xx) {
            return None;
        }
        let routed = ctx.routed.as_ref()?;
        fallback::page_for(&ctx.snapshot.router.routes()[routed.route_index].spec, FallbackCause::Status5xx)
    }
}

/// Write a local answer and end the request there.
async fn answer(session: &mut Session, ctx: &RequestCtx, page: &LocalResponse) -> Result<bool> {
    respond::write(session, page, &ctx.request_id).await?;
    Ok(true)
}

/// What went wrong, in the words of `fallback.on`.
fn failure_cause(e: &Error, ctx: &RequestCtx) -> Option<FallbackCause> {
    // The client's own failures (a late body, a reset) are not the backend's.
    if e.esource() == &ErrorSource::Downstream {
        return None;
    }
    match e.etype() {
        ErrorType::HTTPStatus(503) if ctx.upstream.error == Some(UpstreamErrorKind::NoHealthyBackend) => {
            Some(FallbackCause::NoHealthyBackend)
        }
        // Retries ran out on connect failures: no backend could be reached.
        ErrorType::HTTPStatus(503) => Some(FallbackCause::ConnectError),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(FallbackCause::Timeout),
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure => Some(FallbackCause::ConnectError),
        // The backend went away mid-exchange (killed, reset): no answer came.
        _ if e.esource() == &ErrorSource::Upstream => Some(FallbackCause::ConnectError),
        _ => None,
    }
}

/// The gateway's own small page for a failure no fallback covers.
fn error_page(e: &Error) -> Option<LocalResponse> {
    let (code, title, detail) = match e.etype() {
        // `server.body_timeout` passed between two reads of the client's body.
        ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => {
            (408, "Request Timeout", "The request body did not arrive in time.")
        }
        ErrorType::HTTPStatus(503) => {
            (503, "Service Unavailable", "No healthy backend can take this request right now.")
        }
        ErrorType::HTTPStatus(code) => (*code, "Error", "The request could not be served."),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            (504, "Gateway Timeout", "The backend did not answer in time.")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "Bad Gateway", "The backend could not be reached."),
            ErrorSource::Downstream => match e.etype() {
                // The body's chunked framing was refused as it was read.
                ErrorType::ReadError if crate::listener::connections::framing_was_refused() => {
                    (400, "Bad Request", "The request body's chunked framing is invalid.")
                }
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => return None,
                _ => (400, "Bad Request", "The request could not be read."),
            },
            _ => (500, "Internal Server Error", "The gateway failed to serve this request."),
        },
    };
    Some(LocalResponse::page(code, title, detail))
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
/// tokens naming a header the gateway sets, and shadow markers.
fn strip_client_controls(req: &mut RequestHeader, snapshot: &crate::control::snapshot::Snapshot, routed: &ctx::Routed) {
    // Without a version header the fourth entry repeats the first: no
    // allocation on the request path either way.
    let version = snapshot.config.server.version_header.as_ref().unwrap_or(&X_REQUEST_ID);
    let owned = [&X_REQUEST_ID, &X_FORWARDED_FOR, &X_FORWARDED_PROTO, version];
    let route = &snapshot.router.routes()[routed.route_index].spec;
    let marker = route.shadow.as_ref().map(|s| &s.marker.0).unwrap_or(&DEFAULT_SHADOW_MARKER);
    request_head::strip_client_controls(req, &owned, &[&DEFAULT_SHADOW_MARKER, marker]);
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
