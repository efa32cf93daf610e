//! The request phases in order, each a plain function with a typed outcome:
//!
//! blacklist -> route -> version (override, whitelist, bucket, anonymous
//! cookie) -> https redirect -> degrade -> rate limits
//!
//! The proxy runs them with `Mode::Serve`; `gateway explain` and
//! `/api/explain` with `Mode::DryRun`, which counts nothing, logs nothing and
//! consumes no rate-limit tokens, and otherwise takes every branch the proxy
//! would (an anonymous visitor without a cookie gets a fresh random ID, as
//! it would from the proxy; explain just never hands it out).

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::FallbackCause;
use crate::control::route_runtime::RouteRuntime;
use crate::control::runtime::RuntimeState;
use crate::control::snapshot::Snapshot;
use crate::edge::rate_limit::retry_after_secs;
use crate::proxy::respond::LocalResponse;
use crate::routing::overrides::{self, OverrideOutcome};
use crate::routing::{find_user_id, sticky, DecisionInput, RequestView};

use super::verdict::{AnswerReason, LocalAnswer, Routed, UserId, Verdict};
use crate::cache::CacheOutcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    DryRun,
}

/// The parts of a request the phases look at, borrowed.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub host: Option<&'a str>,
    /// Normalized, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Path and query as forwarded (for a redirect's `Location`).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The request came over the TLS listener.
    pub tls: bool,
    /// Unix seconds (signed override values expire).
    pub now: u64,
}

/// Run every phase; the first one that answers ends the pipeline.
pub fn run(snapshot: &Snapshot, runtime: &RuntimeState, req: &RequestFacts<'_>, mode: Mode) -> Verdict {
    if let Some(answer) = blacklist(snapshot, runtime, req.client_ip, mode) {
        return Verdict::Respond(answer);
    }
    let view = RequestView { method: req.method, headers: req.headers, query: req.query };
    let Some(index) = snapshot.router.route(req.host, req.path, &view) else {
        return Verdict::Respond(LocalAnswer {
            reason: AnswerReason::NoRoute,
            page: Arc::clone(&snapshot.pages.not_found),
            retry_after: None,
            routed: None,
            copy: None,
        });
    };
    let Some(route) = snapshot.routes.get(index) else {
        return Verdict::Respond(internal_error());
    };
    let routed = version(snapshot, route, req, &view, mode);
    if let Some(answer) = https_redirect(snapshot, &routed, req) {
        return Verdict::Respond(LocalAnswer { routed: Some(routed), ..answer });
    }
    let level = runtime.degrade_level(snapshot.config.degrade_level);
    if let Some(copy) = cached(snapshot, &routed, req, mode, CacheUse::Degraded(level)) {
        return Verdict::Respond(from_cache(routed, copy, CacheOutcome::Degraded));
    }
    if let Some(page) = degrade(snapshot, runtime, &routed, mode) {
        return Verdict::Respond(LocalAnswer {
            reason: AnswerReason::Degraded,
            page,
            retry_after: None,
            routed: Some(routed),
            copy: None,
        });
    }
    let routed = match rate_limits(snapshot, routed, req.client_ip, mode) {
        Verdict::Continue(routed) => routed,
        limited => return limited,
    };
    match cached(snapshot, &routed, req, mode, CacheUse::Fresh) {
        Some(copy) => Verdict::Respond(from_cache(routed, copy, CacheOutcome::Hit)),
        None => Verdict::Continue(routed),
    }
}

/// What a cached copy may stand in for here.
#[derive(Clone, Copy)]
enum CacheUse {
    /// Any request while the copy is fresh.
    Fresh,
    /// At this degrade level, up to the route's `degrade_ttl` for it.
    Degraded(u8),
}

/// The route's cached copy for this request, if one may answer it.
fn cached(
    snapshot: &Snapshot,
    routed: &Routed,
    req: &RequestFacts<'_>,
    mode: Mode,
    purpose: CacheUse,
) -> Option<Arc<crate::cache::CachedResponse>> {
    let spec = routed.route.spec.cache.as_ref()?;
    if !crate::cache::policy::request_cacheable(spec, req.method, req.headers) {
        return None;
    }
    let max_age = match purpose {
        CacheUse::Degraded(level) => spec.degrade_age(level)?,
        CacheUse::Fresh => std::time::Duration::MAX,
    };
    let key = cache_key(routed, req, spec);
    let copy = snapshot.cache.lookup(key, max_age, mode == Mode::Serve)?;
    match purpose {
        CacheUse::Fresh if copy.age(std::time::SystemTime::now()) > copy.fresh_for => None,
        _ => Some(copy),
    }
}

/// The cache key of this request on its route and version (the fill's too: `proxy::cached`).
pub(crate) fn cache_key(routed: &Routed, req: &RequestFacts<'_>, spec: &crate::config::CacheSpec) -> u128 {
    let parts = crate::cache::KeyParts {
        route: &routed.route.spec.name,
        version: routed.version_name(),
        tls: req.tls,
        host: req.host,
        path_and_query: req.path_and_query,
    };
    crate::cache::key(&parts, req.headers, spec)
}

fn from_cache(routed: Routed, copy: Arc<crate::cache::CachedResponse>, outcome: CacheOutcome) -> LocalAnswer {
    LocalAnswer {
        reason: AnswerReason::Cache(outcome),
        page: Arc::clone(&routed.route.pages.rate_limited[0]),
        retry_after: None,
        routed: Some(routed),
        copy: Some(copy),
    }
}

fn internal_error() -> LocalAnswer {
    LocalAnswer {
        reason: AnswerReason::BadRequest,
        page: Arc::new(LocalResponse::page(500, "Internal Server Error", "The gateway failed to route this request.")),
        retry_after: None,
        routed: None,
        copy: None,
    }
}

/// Run-time blocks first, then the config's. In the blacklist's own dry-run
/// mode a hit is logged and counted, and the request goes on.
fn blacklist(snapshot: &Snapshot, runtime: &RuntimeState, ip: IpAddr, mode: Mode) -> Option<LocalAnswer> {
    let hit = runtime.blacklist.lookup(ip).or_else(|| snapshot.static_blacklist.lookup(ip).cloned())?;
    let spec = &snapshot.config.blacklist;
    if mode == Mode::Serve {
        snapshot.metrics.blocked(hit.source.label(), spec.dry_run);
        match spec.dry_run {
            true => {
                tracing::info!(target: "blacklist", %ip, cidr = %hit.cidr, source = hit.source.label(), reason = hit.reason.as_deref().unwrap_or(""), "dry run: would block")
            }
            false => {
                tracing::debug!(target: "blacklist", %ip, cidr = %hit.cidr, source = hit.source.label(), "blocked")
            }
        }
    }
    if spec.dry_run {
        return None;
    }
    Some(LocalAnswer {
        reason: AnswerReason::Blocked { cidr: hit.cidr, source: hit.source.label(), ip },
        page: Arc::clone(&snapshot.pages.blocked),
        retry_after: None,
        routed: None,
        copy: None,
    })
}

/// Override, whitelist, bucket, anonymous policy: the version of the request.
fn version(
    snapshot: &Snapshot,
    route: &Arc<RouteRuntime>,
    req: &RequestFacts<'_>,
    view: &RequestView<'_>,
    mode: Mode,
) -> Routed {
    let spec = &route.spec;
    let override_outcome = spec
        .override_
        .as_ref()
        .map_or(OverrideOutcome::Absent, |o| overrides::find(o, spec, req.headers, req.client_ip, req.now));
    if mode == Mode::Serve {
        match override_outcome {
            OverrideOutcome::Absent => {}
            OverrideOutcome::Applied(..) => route.metrics.overrides[0].inc(),
            OverrideOutcome::Refused(why) => {
                route.metrics.overrides[1].inc();
                tracing::info!(route = %spec.name, ip = %req.client_ip, why = why.as_str(), "tester override refused");
            }
        }
    }
    let forced = match override_outcome {
        OverrideOutcome::Applied(v, how) => Some((v, how)),
        _ => None,
    };
    let user_id = find_user_id(&spec.user_id, view);
    // The anonymous cookie: read when present; issued (a new random ID) when not.
    let mut issued = None;
    let cookie_spec = snapshot.config.anonymous_cookie.as_ref();
    let wants_cookie =
        user_id.is_none() && forced.is_none() && route.plan.anonymous == crate::config::AnonymousPolicy::Cookie;
    let found = cookie_spec.filter(|_| wants_cookie).and_then(|c| sticky::read(c, req.headers));
    if let (true, None, Some(c)) = (wants_cookie, found, cookie_spec) {
        issued = Some(sticky::issue(c, req.tls));
    }
    let anonymous_id = match (&found, &issued) {
        (Some(id), _) => Some((*id, false)),
        (None, Some((id, _))) => Some((id.as_str(), true)),
        _ => None,
    };
    let decision = route.plan.decide(&DecisionInput { user_id, client_ip: req.client_ip, forced, anonymous_id });
    Routed {
        route: Arc::clone(route),
        decision,
        user_id: user_id.map(UserId::new),
        override_outcome,
        set_cookie: issued.map(|(_, header)| header),
    }
}

/// A plain-HTTP request on an `https_redirect` route: 308 to the same URL on
/// the TLS listener (308 keeps the method and body). The pages are rendered
/// at load; a request adds only its `Location`.
fn https_redirect(snapshot: &Snapshot, routed: &Routed, req: &RequestFacts<'_>) -> Option<LocalAnswer> {
    let pages = routed.route.pages.redirect.as_ref().filter(|_| !req.tls)?;
    let listener = snapshot.config.server.tls.as_ref()?;
    let location = req.host.and_then(|h| crate::tls::https_location(h, listener.redirect_port(), req.path_and_query));
    let page = match location {
        Some(url) => Arc::new(pages.moved.clone().with_header("location", url)),
        None => Arc::clone(&pages.no_host),
    };
    Some(LocalAnswer { reason: AnswerReason::Redirect, page, retry_after: None, routed: None, copy: None })
}

/// The degrade level switches the route to its fallback page.
fn degrade(snapshot: &Snapshot, runtime: &RuntimeState, routed: &Routed, mode: Mode) -> Option<Arc<LocalResponse>> {
    let level = runtime.degrade_level(snapshot.config.degrade_level);
    if !routed.route.degraded(level) {
        return None;
    }
    let page = routed.route.fallback_page(FallbackCause::Degraded)?;
    if mode == Mode::Serve {
        routed.route.metrics.fallback(FallbackCause::Degraded);
    }
    Some(Arc::clone(page))
}

/// The global limits, then the route's: 429 when one is exceeded.
fn rate_limits(snapshot: &Snapshot, routed: Routed, ip: IpAddr, mode: Mode) -> Verdict {
    let user = routed.user_id.as_deref();
    let count = mode == Mode::Serve;
    let hit = snapshot.global_limits.check(ip, user, count).or_else(|| routed.route.limits.check(ip, user, count));
    let Some((key, wait)) = hit else { return Verdict::Continue(routed) };
    if count {
        routed.route.metrics.rate_limited[key as usize].inc();
    }
    Verdict::Respond(LocalAnswer {
        reason: AnswerReason::RateLimited(key),
        page: Arc::clone(&routed.route.pages.rate_limited[key as usize]),
        retry_after: Some(retry_after_secs(wait)),
        routed: Some(routed),
        copy: None,
    })
}
