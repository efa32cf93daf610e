//! "What would the proxy do with this request, and why?" — shared by
//! `gateway explain` and `GET /api/explain`. Runs the proxy's own pipeline
//! (`phases::run`) in `Mode::DryRun`: blacklist, route and rules, version,
//! redirect, degrade and rate limits, without counting or consuming anything.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::UserIdSource;
use crate::control::runtime::RuntimeState;
use crate::control::snapshot::Snapshot;
use crate::edge::client_ip;
use crate::routing::overrides::OverrideOutcome;
use crate::routing::{Explanation, RequestView};

use super::phases::{run, Mode, RequestFacts};
use super::verdict::{AnswerReason, Routed, Verdict};

#[derive(Debug, Clone, Default)]
pub struct ExplainRequest {
    pub host: Option<String>,
    /// Path, optionally with `?query`.
    pub path: String,
    /// GET when absent.
    pub method: Option<String>,
    /// The user ID, as if found by the route's first source.
    pub user: Option<String>,
    /// The TCP peer; defaults to 127.0.0.1.
    pub ip: Option<IpAddr>,
    pub headers: Vec<(String, String)>,
    /// Explain as if the request came over the TLS listener.
    pub tls: bool,
}

/// Why explain could not run the pipeline: the request itself is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("bad header name {0:?}")]
    HeaderName(String),
    #[error("bad header value {0:?}")]
    HeaderValue(String),
    #[error("bad method {0:?}")]
    Method(String),
    #[error("the proxy answers 400: {0}")]
    BadPath(String),
}

#[derive(Debug, Clone)]
pub struct ExplainAnswer {
    /// `proxy`, or `respond` for an answer the gateway makes itself.
    pub verdict: &'static str,
    /// The local answer's status (absent when proxied).
    pub status: Option<u16>,
    /// The local answer's reason label (`blocked`, `no-route`, `rate-limited-ip`, ...).
    pub answer: Option<&'static str>,
    pub route: Option<String>,
    pub version: Option<String>,
    pub pool: Option<String>,
    /// The version decision's label (`user-bucket`, `override`, ...).
    pub reason: Option<&'static str>,
    pub bucket: Option<u32>,
    /// The route's match rules, as written.
    pub rules: Option<String>,
    /// A tester override that was refused, and why.
    pub override_refused: Option<&'static str>,
    /// The route's release-guard rollout: state, step and the share in force.
    pub rollout: Option<String>,
    pub client_ip: IpAddr,
    pub user_id: Option<String>,
    /// One line, e.g. `route cart -> v2: bucket 731 in v2's range [0, 1000) (10.00%)`.
    pub text: String,
}

pub fn explain(
    snapshot: &Snapshot,
    runtime: &RuntimeState,
    req: &ExplainRequest,
) -> Result<ExplainAnswer, ExplainError> {
    let config = &snapshot.config;
    let mut headers = HeaderMap::new();
    for (k, v) in &req.headers {
        let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| ExplainError::HeaderName(k.clone()))?;
        let value = HeaderValue::from_str(v.trim()).map_err(|_| ExplainError::HeaderValue(v.clone()))?;
        headers.append(name, value);
    }
    let method_text = req.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    let method = Method::from_bytes(method_text.as_bytes()).map_err(|_| ExplainError::Method(method_text.clone()))?;
    let (path, mut query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (req.path.as_str(), None),
    };
    // Routed on the normalized path, as the proxy does.
    let normalized = match config.server.normalize_path {
        true => crate::edge::path::normalize(path).map_err(|e| ExplainError::BadPath(e.to_string()))?,
        false => std::borrow::Cow::Borrowed(path),
    };
    let path = normalized.as_ref();
    let peer = req.ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let ip = client_ip::resolve(peer, &headers, &config.client_ip.trusted_proxies);
    let host = req.host.clone().or_else(|| headers.get("host").and_then(|h| h.to_str().ok()).map(str::to_string));
    if let Some(user) = &req.user {
        // The user ID goes where the matching route would look for it first.
        let view = RequestView { method: &method, headers: &headers, query: query.as_deref() };
        let route = snapshot.router.route(host.as_deref(), path, &view).and_then(|i| snapshot.routes.get(i));
        match route.and_then(|r| r.spec.user_id.first()) {
            Some(UserIdSource::Header(name)) => {
                if let Ok(v) = HeaderValue::from_str(user) {
                    headers.insert(name.clone(), v);
                }
            }
            Some(UserIdSource::Cookie(name)) => {
                if let Ok(v) = HeaderValue::from_str(&format!("{name}={user}")) {
                    headers.append(http::header::COOKIE, v);
                }
            }
            Some(UserIdSource::Query(name)) => {
                let pair = format!("{name}={user}");
                query = Some(match query {
                    Some(q) if !q.is_empty() => format!("{pair}&{q}"),
                    _ => pair,
                });
            }
            None => {}
        }
    }
    let path_and_query = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let facts = RequestFacts {
        method: &method,
        host: host.as_deref(),
        path,
        query: query.as_deref(),
        path_and_query: &path_and_query,
        headers: &headers,
        client_ip: ip,
        tls: req.tls,
        now,
    };
    let mut answer = match run(snapshot, runtime, &facts, Mode::DryRun) {
        Verdict::Continue(routed) => {
            let mut text = routed_line(&routed, ip);
            if let Some(line) = cache_line(snapshot, &routed, &facts) {
                text = format!("{text}; {line}");
            }
            answer_for(Some(&routed), "proxy", None, None, ip, text)
        }
        Verdict::Respond(local) => {
            // A cached answer's status is the copy's.
            let status = local.copy.as_ref().map_or(local.page.status, |c| c.status);
            let why = local_line(&local.reason, host.as_deref(), path, status, local.retry_after);
            let text = match &local.routed {
                Some(r) => format!("{}; then {why}", routed_line(r, ip)),
                None => why,
            };
            answer_for(local.routed.as_ref(), "respond", Some(status), Some(local.reason.label()), ip, text)
        }
    };
    let route = answer.route.as_deref().and_then(|name| snapshot.route_named(name));

    if let Some(line) = route.and_then(|r| rollout_line(snapshot, runtime, r)) {
        answer.text = format!("{}; {line}", answer.text);
        answer.rollout = Some(line);
    }
    Ok(answer)
}

/// For a proxied request on a cached route: a miss, and what answers if the upstream fails.
fn cache_line(snapshot: &Snapshot, routed: &Routed, facts: &RequestFacts<'_>) -> Option<String> {
    let spec = routed.route.spec.cache.as_ref()?;
    if !crate::cache::policy::request_cacheable(spec, facts.method, facts.headers) {
        return Some("the route's cache does not apply to this request".into());
    }
    let Some(window) = spec.stale_if_error else {
        return Some("cache miss: the upstream answers and fills the cache".into());
    };
    let key = super::phases::cache_key(routed, facts, spec);
    let copy = snapshot.cache.store.get(key, false);
    let fallback = match copy {
        Some(c) => format!(
            "a copy {}s old (fresh for {}s) answers if it is at most {} past its freshness",
            c.age(std::time::SystemTime::now()).as_secs(),
            c.fresh_for.as_secs(),
            humantime::format_duration(window)
        ),
        None => "there is no copy to stand in yet".to_string(),
    };
    Some(format!("cache miss: the upstream answers; if it fails, {fallback}, before the fallback page"))
}

/// `rollout of v2 running: step 2 of 5, 5% in force (the file says 1%)`.
fn rollout_line(
    snapshot: &Snapshot,
    runtime: &RuntimeState,
    route: &crate::control::route_runtime::RouteRuntime,
) -> Option<String> {
    let spec = route.spec.rollout.as_ref()?;
    let version = &route.spec.versions.get(spec.version)?.name;
    let file_bp = crate::release::controller::file_share(snapshot, &route.spec.name, spec.version);
    let pct = |bp: u32| format!("{}%", f64::from(bp) / 100.0);
    Some(match runtime.rollouts.get(&route.spec.name) {
        None => format!("rollout of {version} pending: the file's {} until `gateway rollout start`", pct(file_bp)),
        Some(r) => {
            use crate::release::plan::Phase;
            let share = pct(r.share_bp.unwrap_or(file_bp));
            match r.phase {
                Phase::Pending => {
                    format!("rollout of {version} pending: the file's {share} until `gateway rollout start`")
                }
                Phase::Running | Phase::Paused => format!(
                    "rollout of {version} {}: step {} of {}, {share} in force (the file says {})",
                    r.phase.as_str(),
                    r.step + 1,
                    spec.steps.len(),
                    pct(file_bp)
                ),
                Phase::Promoted => format!("rollout of {version} promoted: {share} in force"),
                Phase::Aborted => {
                    let why = r.events.iter().rev().find(|e| e.kind == "aborted").map_or("", |e| e.reason.as_str());
                    format!("rollout of {version} aborted: 0% in force ({why}); whitelists and overrides still apply")
                }
            }
        }
    })
}

fn answer_for(
    routed: Option<&Routed>,
    verdict: &'static str,
    status: Option<u16>,
    answer: Option<&'static str>,
    client_ip: IpAddr,
    text: String,
) -> ExplainAnswer {
    ExplainAnswer {
        verdict,
        status,
        answer,
        route: routed.map(|r| r.route.spec.name.clone()),
        version: routed.map(|r| r.version_name().to_string()),
        pool: routed.map(|r| r.pool().name.clone()),
        reason: routed.map(|r| r.decision.reason.label()),
        bucket: routed.and_then(|r| r.decision.reason.bucket()),
        rules: routed
            .map(|r| r.route.spec.rules.canonical())
            .filter(|_| routed.is_some_and(|r| r.route.spec.rules.count() > 0)),
        override_refused: routed.and_then(|r| match r.override_outcome {
            OverrideOutcome::Refused(why) => Some(why.as_str()),
            _ => None,
        }),
        rollout: None,
        client_ip,
        user_id: routed.and_then(|r| r.user_id.as_deref().map(str::to_string)),
        text,
    }
}

fn routed_line(routed: &Routed, ip: IpAddr) -> String {
    let route = &routed.route;
    let line = Explanation {
        route: &route.spec,
        plan: &route.plan,
        decision: &routed.decision,
        user_id: routed.user_id.as_deref(),
        client_ip: ip,
    }
    .to_string();
    match routed.override_outcome {
        OverrideOutcome::Refused(why) => format!("{line} (tester override refused: {})", why.as_str()),
        _ => line,
    }
}

fn local_line(reason: &AnswerReason, host: Option<&str>, path: &str, status: u16, retry_after: Option<u64>) -> String {
    match reason {
        AnswerReason::Blocked { cidr, source, ip } => {
            format!("{status}: client ip {ip} is blocked by {cidr} ({source})")
        }
        AnswerReason::NoRoute => format!("{status}: no route matches {}{path}", host.unwrap_or("")),
        AnswerReason::Redirect => format!("{status}: redirect to the TLS listener"),
        AnswerReason::Degraded => format!("{status}: degraded: the route's fallback page"),
        AnswerReason::RateLimited(key) => format!(
            "{status}: rate limited by per_{} (retry after {}s; explain consumed no token)",
            key.as_str(),
            retry_after.unwrap_or(1)
        ),
        AnswerReason::BadRequest => format!("{status}: refused"),
        AnswerReason::Cache(outcome) => {
            format!("{status}: answered from the route's cache ({}), the upstream is not asked", outcome.as_str())
        }
    }
}
