//! The request phases as plain functions with typed outcomes, so each is
//! testable without a network. The `ProxyHttp` impl only calls them in order.

use std::net::IpAddr;
use std::sync::Arc;

use pingora_http::RequestHeader;

use crate::routing::{decide, find_user_id, RequestView};
use crate::snapshot::Snapshot;

use super::ctx::Routed;
use super::respond::LocalResponse;

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
        Some(pool) => RouteOutcome::Proxy(Routed { route_index: route.index, decision, pool: Arc::clone(pool) }),
        // Unreachable for a validated config; answered rather than panicking.
        None => RouteOutcome::Respond(LocalResponse::page(500, "Internal Server Error", "Route has no pool.")),
    }
}
