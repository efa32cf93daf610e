//! "Which version would this request get, and why?" — shared by
//! `gateway explain` and `GET /api/explain`, and computed by the very same
//! functions the proxy uses.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::GatewayConfig;
use crate::edge::client_ip;
use crate::routing::{decide, find_user_id, Decision, Explanation, RequestView, Router};

#[derive(Debug, Clone, Default)]
pub struct ExplainRequest {
    pub host: Option<String>,
    /// Path, optionally with `?query`.
    pub path: String,
    /// The user ID, as if found by the route's first source.
    pub user: Option<String>,
    /// The TCP peer; defaults to 127.0.0.1.
    pub ip: Option<IpAddr>,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ExplainAnswer {
    pub route: String,
    pub pool: String,
    pub decision: Decision,
    pub client_ip: IpAddr,
    pub user_id: Option<String>,
    /// One line, e.g. `route cart -> canary: bucket 731 < 1000 (10.00%)`.
    pub text: String,
}

pub fn explain(config: &GatewayConfig, router: &Router, req: &ExplainRequest) -> Result<ExplainAnswer, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &req.headers {
        let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| format!("bad header name {k:?}"))?;
        let value = HeaderValue::from_str(v.trim()).map_err(|_| format!("bad header value {v:?}"))?;
        headers.append(name, value);
    }
    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path.as_str(), None),
    };
    // Routed on the normalized path, as the proxy does.
    let normalized = match config.server.normalize_path {
        true => crate::edge::path::normalize(path).map_err(|e| format!("the proxy answers 400: {e}"))?,
        false => std::borrow::Cow::Borrowed(path),
    };
    let path = normalized.as_ref();
    let peer = req.ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let ip = client_ip::resolve(peer, &headers, &config.client_ip.trusted_proxies);
    let host = req.host.as_deref().or_else(|| headers.get("host").and_then(|h| h.to_str().ok()));
    let route =
        router.route(host, path).ok_or_else(|| format!("no route matches {}{}", host.unwrap_or(""), req.path))?;
    let found = find_user_id(&route.spec.user_id, &RequestView { headers: &headers, query });
    let user = req.user.as_deref().or(found);
    let decision = decide(route, user, ip);
    let pool = match decision.version {
        crate::routing::Version::Canary => route.spec.canary.clone().unwrap_or_else(|| route.spec.stable.clone()),
        crate::routing::Version::Stable => route.spec.stable.clone(),
    };
    let text = Explanation { route: &route.spec.name, decision: &decision, user_id: user, client_ip: ip }.to_string();
    Ok(ExplainAnswer {
        route: route.spec.name.clone(),
        pool,
        user_id: user.map(str::to_string),
        client_ip: ip,
        decision,
        text,
    })
}
