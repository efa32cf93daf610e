//! The request phases as plain functions with typed outcomes, so each is
//! testable without a network. The `ProxyHttp` impl only calls them in order.

use std::net::IpAddr;
use std::sync::Arc;

use pingora_http::RequestHeader;

use crate::config::FallbackCause;
use crate::control::runtime::RuntimeState;
use crate::control::snapshot::Snapshot;
use crate::edge::fallback;
use crate::edge::rate_limit::retry_after_secs;
use crate::routing::{decide, find_user_id, RequestView};

use crate::proxy::ctx::Routed;
use crate::proxy::respond::LocalResponse;

/// What routing decided for a request.
pub enum RouteOutcome {
    Proxy(Routed),
    Respond(LocalResponse),
}

/// Route, whitelist, bucket: the whole decision for one request.
pub fn route_request(snapshot: &Snapshot, req: &RequestHeader, client_ip: IpAddr) -> RouteOutcome {
    let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri.host());
    let Some(route) = snapshot.router.route(host, req.uri.path()) else {
        return RouteOutcome::Respond(LocalResponse::page(404, "Not Found", "No route matches this address."));
    };
    let view = RequestView { headers: &req.headers, query: req.uri.query() };
    let user_id = find_user_id(&route.spec.user_id, &view);
    let decision = decide(route, user_id, client_ip);
    match snapshot.pool_for(route, decision.version) {
        Some(pool) => RouteOutcome::Proxy(Routed {
            route_index: route.index,
            decision,
            pool: Arc::clone(pool),
            user_id: user_id.map(str::to_string),
        }),
        // Unreachable for a validated config; answered rather than panicking.
        None => RouteOutcome::Respond(LocalResponse::page(500, "Internal Server Error", "Route has no pool.")),
    }
}

/// The blacklist, run-time blocks first: `Some(page)` refuses the request.
/// In dry-run mode a hit is logged and counted, and the request goes on.
pub fn check_blacklist(snapshot: &Snapshot, runtime: &RuntimeState, ip: IpAddr) -> Option<LocalResponse> {
    let hit = runtime.blacklist.lookup(ip).or_else(|| snapshot.static_blacklist.lookup(ip).cloned())?;
    let spec = &snapshot.config.blacklist;
    snapshot.metrics.blocked(hit.source.label(), spec.dry_run);
    if spec.dry_run {
        tracing::info!(target: "blacklist", %ip, cidr = %hit.cidr, source = hit.source.label(), reason = hit.reason.as_deref().unwrap_or(""), "dry run: would block");
        return None;
    }
    tracing::debug!(target: "blacklist", %ip, cidr = %hit.cidr, source = hit.source.label(), "blocked");
    Some(LocalResponse {
        status: spec.page.status,
        content_type: spec.page.content_type,
        body: spec.page.body.clone(),
        headers: Vec::new(),
    })
}

/// The global limits, then the route's: `Some(429)` when one is exceeded.
pub fn check_rate_limits(snapshot: &Snapshot, routed: &Routed, ip: IpAddr) -> Option<LocalResponse> {
    let user = routed.user_id.as_deref();
    let (key, wait) =
        snapshot.global_limits.check(ip, user).or_else(|| snapshot.route_limits[routed.route_index].check(ip, user))?;
    let counters = &snapshot.route_metrics[routed.route_index].rate_limited;
    counters[key as usize].inc();
    let secs = retry_after_secs(wait);
    Some(
        LocalResponse::page(429, "Too Many Requests", "Too many requests; please retry shortly.")
            .with_header("retry-after", secs.to_string())
            .with_header("x-gateway-limit", key.as_str()),
    )
}

/// The degrade level switches the route to its fallback page.
pub fn check_degrade(snapshot: &Snapshot, runtime: &RuntimeState, routed: &Routed) -> Option<LocalResponse> {
    let route = &snapshot.router.routes()[routed.route_index].spec;
    let level = runtime.degrade_level(snapshot.config.degrade_level);
    if !fallback::degraded(route, level) {
        return None;
    }
    let page = fallback::page_for(route, FallbackCause::Degraded)?;
    snapshot.route_metrics[routed.route_index].fallback(FallbackCause::Degraded);
    Some(page)
}

/// A plain-HTTP request on an `https_redirect` route: 308 to the same URL on
/// the TLS listener (308 keeps the method and body). Requests that came over
/// TLS, and routes without the flag, go on.
pub fn check_https_redirect(
    snapshot: &Snapshot,
    routed: &Routed,
    req: &RequestHeader,
    tls: bool,
) -> Option<LocalResponse> {
    let route = &snapshot.router.routes()[routed.route_index].spec;
    let listener = snapshot.config.server.tls.as_ref().filter(|_| route.https_redirect && !tls)?;
    let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri.host());
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = host.and_then(|h| crate::tls::https_location(h, listener.redirect_port(), path));
    Some(match location {
        Some(url) => LocalResponse::page(308, "Permanent Redirect", "This address is served over HTTPS.")
            .with_header("location", url),
        None => LocalResponse::page(400, "Bad Request", "The Host header is missing or not a host name."),
    })
}
