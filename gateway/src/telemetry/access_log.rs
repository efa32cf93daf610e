//! One structured line per request, through `tracing` (target `access`).
//! Text or JSON is chosen by the subscriber set up in `logging.rs`.

use std::time::Duration;

use pingora_error::Error;
use pingora_http::RequestHeader;

use crate::config::AccessLogFormat;

use crate::proxy::ctx::RequestCtx;

pub fn write(req: &RequestHeader, ctx: &RequestCtx, status: u16, elapsed: Duration, error: Option<&Error>) {
    if ctx.snapshot.config.startup.server.access_log == AccessLogFormat::Off {
        return;
    }
    let (route, version, reason, pool) = match &ctx.routed {
        Some(r) => (r.route.spec.name.as_str(), r.version_name(), r.decision.reason.label(), r.pool().name.as_str()),
        None => ("", "", "", ""),
    };
    // A local answer says why (blocked, no-route, rate-limited-ip, ...).
    let reason = ctx.answered.as_ref().map_or(reason, |a| a.label());
    let upstream = ctx.upstream.tried.last().map(|a| a.to_string()).unwrap_or_default();
    let client = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    tracing::info!(
        target: "access",
        // Client-controlled values are passed as `&str`: the text format
        // writes them quoted and escaped (Debug), so they cannot forge fields.
        request_id = ctx.request_id.as_str(),
        client = client.as_str(),
        method = req.method.as_str(),
        path = req.uri.path(),
        route,
        version,
        reason,
        pool,
        upstream = upstream.as_str(),
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        attempts = ctx.upstream.tried.len(),
        error = error.map(|e| e.etype().as_str()).unwrap_or(""),
    );
}

/// A request refused before the proxy saw it (a late or unparsable head):
/// no method, path or route is known.
pub fn refused(
    snapshot: &crate::control::snapshot::Snapshot,
    peer: Option<std::net::IpAddr>,
    status: u16,
    error: &'static str,
    elapsed: Duration,
) {
    if snapshot.config.startup.server.access_log == AccessLogFormat::Off {
        return;
    }
    let client = peer.map(|ip| ip.to_string()).unwrap_or_default();
    tracing::info!(
        target: "access",
        request_id = "",
        client = client.as_str(),
        method = "",
        path = "",
        route = "",
        version = "",
        reason = "",
        pool = "",
        upstream = "",
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        attempts = 0,
        error,
    );
}
