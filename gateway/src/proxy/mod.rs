//! The `ProxyHttp` implementation: thin, calls the phases in order.
//!
//! request_filter  -> client IP, request id, route + version decision
//! upstream_peer   -> next healthy backend of the chosen pool
//! fail_to_connect -> one retry on another backend of the same pool
//! upstream_request_filter -> X-Forwarded-For/-Proto, X-Request-Id
//! response_filter -> version header
//! logging         -> metrics and the access log line

pub mod access_log;
pub mod connections;
pub mod ctx;
pub mod phases;
pub mod respond;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::edge::client_ip;
use crate::metrics::UpstreamErrorKind;
use crate::snapshot::SnapshotHandle;

pub use ctx::RequestCtx;
use phases::RouteOutcome;
use respond::LocalResponse;

/// How long an idle upstream connection is kept for reuse.
const UPSTREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Backends tried per request: the first plus one retry on connect failure.
const MAX_ATTEMPTS: usize = 2;

pub struct GatewayProxy {
    pub snapshots: SnapshotHandle,
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.snapshots.load_full())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let peer = peer_ip(session);
        let ip = client_ip::resolve(peer, &session.req_header().headers, &snapshot.config.client_ip.trusted_proxies);
        ctx.client_ip = Some(ip);
        ctx.request_id = ensure_request_id(session.req_header_mut());

        match phases::route_request(&snapshot, session.req_header(), ip) {
            RouteOutcome::Proxy(routed) => {
                ctx.routed = Some(routed);
                Ok(false)
            }
            RouteOutcome::Respond(resp) => {
                respond::write(session, &resp, &ctx.request_id).await?;
                Ok(true)
            }
        }
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
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => UpstreamErrorKind::Timeout,
            _ => UpstreamErrorKind::Connect,
        };
        ctx.upstream.error = Some(kind);
        if let Some(routed) = &ctx.routed {
            ctx.snapshot.metrics.upstream_error(&routed.pool.name, kind);
            // Nothing reached the backend, so any method may go to another one.
            let another = routed.pool.backends.len() > ctx.upstream.tried.len();
            if ctx.upstream.tried.len() < MAX_ATTEMPTS && another {
                tracing::debug!(peer = %peer, "connect failed; retrying on another backend");
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let peer = peer_ip(session).to_string();
        let xff = match req.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev}, {peer}"),
            _ => peer,
        };
        req.insert_header("x-forwarded-for", xff)?;
        req.insert_header("x-forwarded-proto", "http")?;
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status.is_server_error() {
            if let Some(routed) = &ctx.routed {
                ctx.snapshot.metrics.upstream_error(&routed.pool.name, UpstreamErrorKind::Status5xx);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(name), Some(routed)) = (&ctx.snapshot.config.server.version_header, &ctx.routed) {
            resp.insert_header(name.clone(), routed.decision.version.as_str())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let (code, title, detail) = match e.etype() {
            ErrorType::HTTPStatus(503) => {
                (503, "Service Unavailable", "No healthy backend can take this request right now.")
            }
            ErrorType::HTTPStatus(code) => (*code, "Error", "The request could not be served."),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                if ctx.upstream.error.is_none() {
                    ctx.upstream.error = Some(UpstreamErrorKind::Timeout);
                    if let Some(r) = &ctx.routed {
                        ctx.snapshot.metrics.upstream_error(&r.pool.name, UpstreamErrorKind::Timeout);
                    }
                }
                (504, "Gateway Timeout", "The backend did not answer in time.")
            }
            _ => match e.esource() {
                pingora_error::ErrorSource::Upstream => (502, "Bad Gateway", "The backend could not be reached."),
                pingora_error::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => (0, "", ""),
                    _ => (400, "Bad Request", "The request could not be read."),
                },
                _ => (500, "Internal Server Error", "The gateway failed to serve this request."),
            },
        };
        // A response already started cannot be replaced; the connection is dropped instead.
        if code > 0 && session.response_written().is_none() {
            let resp = LocalResponse::page(code, title, detail);
            if let Err(err) = respond::write(session, &resp, &ctx.request_id).await {
                tracing::debug!(error = %err, "cannot send error page");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
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
        access_log::write(session, ctx, status, elapsed, e);
    }
}

fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Keep the client's `X-Request-Id` when it sent a sane one; otherwise make one.
fn ensure_request_id(req: &mut RequestHeader) -> String {
    let existing =
        req.headers.get("x-request-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty() && v.len() <= 128);
    if let Some(id) = existing {
        return id.to_string();
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    // A fresh hex id is always a valid header value.
    let _ = req.insert_header("x-request-id", id.as_str());
    id
}
