//! The admin listener: health, readiness, metrics, status, reload, explain.
//!
//! Served by Pingora's own HTTP service (`ServeHttp`), so requests are parsed
//! by the same battle-tested code as the proxy's. With `admin.token_file`,
//! every call but the `/healthz` and `/readyz` probes needs
//! `Authorization: Bearer <token>` (scheme in any case, RFC 9110; token
//! compared in constant time); without it, only loopback clients are served.

mod diffs;
mod edge;
pub(crate) mod rollouts;
mod status;
pub(crate) mod times;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::control::reload::{ReloadOutcome, Reloader};
use crate::pipeline::explain::{explain, ExplainRequest};

pub struct AdminApp {
    pub reloader: Arc<Reloader>,
    /// True while the server runs and listens; false before start and once draining.
    pub ready: Arc<AtomicBool>,
}

pub(crate) type Reply = Response<Vec<u8>>;

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Reply {
        // The proxy's rules where RFC 9112 is strict, for the admin listener too.
        let req = session.req_header();
        if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
            session.set_keepalive(None);
            return text(StatusCode::BAD_REQUEST, "an HTTP/1.1 request needs a Host header\n");
        }
        if crate::listener::connections::pipelined_after(req) {
            // Pingora's loop does not serve pipelined requests: say so.
            session.set_keepalive(None);
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        // Liveness and readiness reveal nothing and must work for probes
        // (kubelet, load balancers) that cannot carry a secret.
        let is_probe = method == Method::GET && (path == "/healthz" || path == "/readyz");
        if !is_probe {
            if let Some(denied) = self.authorize(session) {
                return denied;
            }
        }
        let query = parse_query(session.req_header().uri.query().unwrap_or(""));
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                // Listening, and the reload triggers (SIGHUP, file watch) are armed.
                if self.ready.load(Ordering::Relaxed) && self.reloader.control_ready.load(Ordering::Relaxed) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let body = self.reloader.metrics.render();
                reply(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            (&Method::GET, "/api/status") => json_reply(StatusCode::OK, &status::render(&self.reloader)),
            (&Method::POST, "/api/reload") => self.reload().await,
            (&Method::GET, "/api/explain") => self.explain(&query, session.req_header().uri.query().unwrap_or("")),
            (&Method::GET, "/api/blacklist") => edge::list_blocks(&self.reloader),
            (&Method::POST, "/api/blacklist") => match read_body(session).await {
                Ok(body) => edge::add_block(&self.reloader, &body).await,
                Err(reply) => reply,
            },
            (&Method::DELETE, p) if p.starts_with("/api/blacklist/") => {
                edge::remove_block(&self.reloader, &percent_decode(&p["/api/blacklist/".len()..])).await
            }
            (&Method::GET, "/api/degrade") => edge::degrade(&self.reloader),
            (&Method::PUT, "/api/degrade") => match read_body(session).await {
                Ok(body) => edge::set_degrade(&self.reloader, Some(&body)).await,
                Err(reply) => reply,
            },
            (&Method::DELETE, "/api/degrade") => edge::set_degrade(&self.reloader, None).await,
            (&Method::POST, "/api/cache/purge") => match read_body(session).await {
                Ok(body) => edge::purge_cache(&self.reloader, &body),
                Err(reply) => reply,
            },
            (&Method::GET, "/api/rollouts") => rollouts::list(&self.reloader),
            (&Method::GET, p) if p.starts_with("/api/rollouts/") => {
                rollouts::route(&self.reloader, &p["/api/rollouts/".len()..], false).await
            }
            (&Method::POST, p) if p.starts_with("/api/rollouts/") => {
                rollouts::route(&self.reloader, &p["/api/rollouts/".len()..], true).await
            }
            (&Method::GET, "/releases") => rollouts::page(&self.reloader),
            // QA's shadow diffs: /api/diffs[/summary|/{id}] and the /diffs pages (405 for other methods).
            (_, p) if diffs::handles(p) => {
                diffs::serve(Arc::clone(&self.reloader), method.clone(), path.clone(), query).await
            }
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/api/status" | "/api/reload" | "/api/explain" | "/api/blacklist"
                | "/api/degrade" | "/api/rollouts" | "/releases" | "/api/cache/purge",
            ) => json_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": format!("{method} is not allowed on {path}")}),
            ),
            _ => json_reply(StatusCode::NOT_FOUND, &json!({"error": format!("no admin endpoint {path}")})),
        }
    }
}

impl AdminApp {
    fn authorize(&self, session: &ServerSession) -> Option<Reply> {
        let snapshot = self.reloader.snapshots.load();
        match &snapshot.config.admin.token {
            Some(token) => {
                let presented = session
                    .req_header()
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| bearer_token(v.as_bytes()))
                    .unwrap_or(b"");
                let ok: bool = presented.ct_eq(token.as_bytes()).into();
                (!ok).then(|| json_reply(StatusCode::UNAUTHORIZED, &json!({"error": "missing or wrong bearer token"})))
            }
            None => {
                let loopback = session.client_addr().and_then(|a| a.as_inet()).is_some_and(|a| a.ip().is_loopback());
                (!loopback).then(|| {
                    json_reply(
                        StatusCode::FORBIDDEN,
                        &json!({"error": "admin API serves loopback clients only unless admin.token_file is set"}),
                    )
                })
            }
        }
    }

    async fn reload(&self) -> Reply {
        let r = Arc::clone(&self.reloader);
        let outcome = tokio::task::spawn_blocking(move || r.reload("admin-api", false)).await;
        match outcome {
            Ok(ReloadOutcome::Applied { generation, restart_needed }) => json_reply(
                StatusCode::OK,
                &json!({"result": "applied", "generation": generation, "restart_needed": restart_needed}),
            ),
            Ok(ReloadOutcome::Unchanged { generation }) => {
                json_reply(StatusCode::OK, &json!({"result": "unchanged", "generation": generation}))
            }
            Ok(ReloadOutcome::Rejected { errors }) => {
                json_reply(StatusCode::UNPROCESSABLE_ENTITY, &json!({"result": "rejected", "errors": errors}))
            }
            Err(e) => json_reply(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.to_string()})),
        }
    }

    /// `GET /api/explain?path=..&method=..&host=..&user=..&ip=..&tls=1&header=name:value`
    /// (`header` repeatable): the proxy's pipeline in dry-run mode.
    fn explain(&self, query: &HashMap<String, String>, raw_query: &str) -> Reply {
        let ip = match query.get("ip").map(|s| s.parse::<IpAddr>()) {
            None => None,
            Some(Ok(ip)) => Some(crate::edge::client_ip::canonical(ip)),
            Some(Err(_)) => return json_reply(StatusCode::BAD_REQUEST, &json!({"error": "ip is not an IP address"})),
        };
        let Some(path) = query.get("path") else {
            return json_reply(StatusCode::BAD_REQUEST, &json!({"error": "path is required"}));
        };
        let mut headers = Vec::new();
        for pair in raw_query.split('&').filter_map(|p| p.strip_prefix("header=")) {
            let pair = percent_decode(pair);
            let Some((name, value)) = pair.split_once(':') else {
                return json_reply(StatusCode::BAD_REQUEST, &json!({"error": "header must be NAME:VALUE"}));
            };
            headers.push((name.to_string(), value.to_string()));
        }
        let req = ExplainRequest {
            host: query.get("host").cloned(),
            path: path.clone(),
            method: query.get("method").cloned(),
            user: query.get("user").cloned(),
            ip,
            headers,
            tls: query.get("tls").is_some_and(|v| v == "1" || v == "true"),
        };
        let snapshot = self.reloader.snapshots.load();
        match explain(&snapshot, &self.reloader.runtime, &req) {
            Ok(a) => json_reply(
                StatusCode::OK,
                &json!({
                    "verdict": a.verdict,
                    "status": a.status,
                    "answer": a.answer,
                    "route": a.route,
                    "version": a.version,
                    "pool": a.pool,
                    "reason": a.reason,
                    "bucket": a.bucket,
                    "rules": a.rules,
                    "override_refused": a.override_refused,
                    "rollout": a.rollout,
                    "client_ip": a.client_ip.to_string(),
                    "user_id": a.user_id,
                    "explanation": a.text,
                    "generation": snapshot.generation,
                }),
            ),
            Err(e) => json_reply(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value. RFC 9110 §11.1: the
/// scheme is case-insensitive (`bearer`, `BEARER`) and is followed by one or
/// more spaces; surrounding whitespace is not part of the token (RFC 6750's
/// token68 has none). Bytes, not text: the comparison that follows is
/// constant-time over whatever was sent.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || !rest.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return None;
    }
    Some(rest.trim_ascii_start())
}

/// The request body, at most 64 KiB (admin calls are small JSON documents).
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Reply> {
    const MAX: usize = 64 * 1024;
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX {
                    return Err(json_reply(StatusCode::PAYLOAD_TOO_LARGE, &json!({"error": "body over 64 KiB"})));
                }
            }
            Ok(None) => return Ok(body),
            // `server.body_timeout` passed between two reads: the client is late, not wrong.
            Err(e) if e.etype() == &pingora_error::ErrorType::ReadTimedout => {
                session.set_keepalive(None);
                return Err(json_reply(
                    StatusCode::REQUEST_TIMEOUT,
                    &json!({"error": "the request body did not arrive in time"}),
                ));
            }
            Err(e) => {
                session.set_keepalive(None);
                return Err(json_reply(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})));
            }
        }
    }
}

/// Percent-decoded `key=value` pairs; the last one of a repeated key wins.
fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Reply {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn text(status: StatusCode, body: &str) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

pub(crate) fn json_reply(status: StatusCode, value: &serde_json::Value) -> Reply {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        for header in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "bEaReR   s3cret", " Bearer\ts3cret "] {
            assert_eq!(bearer_token(header.as_bytes()), Some(&b"s3cret"[..]), "{header:?}");
        }
        for header in ["Bearers3cret", "Basic s3cret", "Bearer", "", "Bear s3cret", "Token s3cret"] {
            assert!(bearer_token(header.as_bytes()).is_none_or(<[u8]>::is_empty), "{header:?}");
        }
        // The token's case is its own: only the scheme is case-insensitive.
        assert_eq!(bearer_token(b"bearer S3CRET"), Some(&b"S3CRET"[..]));
    }

    #[test]
    fn query_strings_are_decoded() {
        let q = parse_query("path=%2Fcart%2Fx&user=42&ip=1.2.3.4&x=a+b&bad=%zz");
        assert_eq!(q["path"], "/cart/x");
        assert_eq!(q["user"], "42");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
    }
}
