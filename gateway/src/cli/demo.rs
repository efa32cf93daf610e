//! `gateway demo`: small built-in backends so the sample config works on a
//! fresh machine. Every loopback backend address in the config gets a tiny
//! HTTP server that answers with the name of its upstream (its "version").

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceWithDependents as ServiceTrait;
use serde_json::json;

use crate::config::GatewayConfig;

pub struct DemoBackend {
    pub version: String,
    pub addr: String,
}

#[async_trait]
impl ServeHttp for DemoBackend {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = json!({
            "version": self.version,
            "backend": self.addr,
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "user": header("x-user-id"),
            "request_id": header("x-request-id"),
            "forwarded_for": header("x-forwarded-for"),
        });
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", bytes.len())
            .body(bytes)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// One demo service per loopback backend address of the config.
pub fn services(config: &GatewayConfig) -> Vec<Box<dyn ServiceTrait>> {
    let mut out: Vec<Box<dyn ServiceTrait>> = Vec::new();
    for upstream in config.upstreams.values() {
        for b in upstream.backends.iter().filter(|b| b.addr.ip().is_loopback()) {
            let addr = b.addr.to_string();
            let app = DemoBackend { version: upstream.name.clone(), addr: addr.clone() };
            let mut svc = Service::new(format!("demo {addr}"), app);
            svc.add_tcp(&addr);
            svc.threads = Some(1);
            out.push(Box::new(svc));
        }
    }
    out
}

/// What `gateway demo` prints once it listens.
pub fn banner(config: &GatewayConfig) -> String {
    let listen = config.startup.server.listen.first().map(|a| a.to_string()).unwrap_or_default();
    let proxy = listen.replace("0.0.0.0", "127.0.0.1");
    let admin = config.startup.admin_listen;
    let mut s = String::new();
    s.push_str("gateway demo is running. Demo backends answer with their version.\n\n");
    s.push_str("Try:\n");
    if let Some(route) = config.routes.first() {
        let p = &route.path_prefix;
        s.push_str(&format!(
            "  curl -s -H 'x-user-id: 42' http://{proxy}{p}/items        # user 42's version (by bucket)\n"
        ));
        if let Some(u) = route.versions.iter().find_map(|v| v.whitelist_users.iter().next()) {
            s.push_str(&format!("  curl -s -H 'x-user-id: {u}' http://{proxy}{p}/items      # a whitelisted tester\n"));
        }
        s.push_str(&format!(
            "  gateway explain -c {} --path {p}/x --user 42              # why that version\n",
            config.source.display()
        ));
    }
    s.push_str(&format!("  curl -s http://{admin}/api/status                         # routes, pools, health\n"));
    s.push_str(&format!("  curl -s http://{admin}/metrics | grep gateway_requests    # per-version metrics\n"));
    s.push_str(&format!(
        "  edit canary_percent in {} and save: it applies within a second, no restart\n",
        config.source.display()
    ));
    s
}
