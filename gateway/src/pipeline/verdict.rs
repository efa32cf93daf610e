//! The one outcome of the request pipeline: go on to an upstream, or answer
//! here, with the reason as an enum (logged, counted, explained).

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;
use ipnet::IpNet;

use crate::cache::{CacheOutcome, CachedResponse};
use crate::control::route_runtime::RouteRuntime;
use crate::edge::rate_limit::LimitKey;
use crate::proxy::respond::LocalResponse;
use crate::routing::overrides::OverrideOutcome;
use crate::routing::Decision;
use crate::upstream::Pool;

pub enum Verdict {
    Continue(Routed),
    Respond(LocalAnswer),
}

/// A request on its way to a version of a route.
pub struct Routed {
    pub route: Arc<RouteRuntime>,
    pub decision: Decision,
    pub user_id: Option<UserId>,
    /// What the request's tester override came to.
    pub override_outcome: OverrideOutcome,
    /// A fresh anonymous cookie to hand out with the answer.
    pub set_cookie: Option<HeaderValue>,
}

impl Routed {
    /// The pool serving the request's version now.
    pub fn pool(&self) -> &Arc<Pool> {
        self.route.pool(self.decision.version)
    }

    pub fn version_name(&self) -> &str {
        self.route.version_name(self.decision.version)
    }
}

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerReason {
    /// The client IP is on the blacklist (`source`: config, file or api).
    Blocked {
        cidr: IpNet,
        source: &'static str,
        ip: IpAddr,
    },
    NoRoute,
    /// A plain-HTTP request on an `https_redirect` route.
    Redirect,
    /// The degrade level switched the route to its fallback page.
    Degraded,
    RateLimited(LimitKey),
    BadRequest,
    /// A copy from the route's cache: fresh (hit), or under a degrade level (degraded).
    Cache(CacheOutcome),
}

impl AnswerReason {
    pub fn label(&self) -> &'static str {
        match self {
            AnswerReason::Blocked { .. } => "blocked",
            AnswerReason::NoRoute => "no-route",
            AnswerReason::Redirect => "redirect",
            AnswerReason::Degraded => "degraded",
            AnswerReason::RateLimited(LimitKey::Ip) => "rate-limited-ip",
            AnswerReason::RateLimited(LimitKey::User) => "rate-limited-user",
            AnswerReason::RateLimited(LimitKey::Route) => "rate-limited-route",
            AnswerReason::BadRequest => "bad-request",
            AnswerReason::Cache(CacheOutcome::Hit | CacheOutcome::Miss) => "cache-hit",
            AnswerReason::Cache(CacheOutcome::Stale) => "cache-stale",
            AnswerReason::Cache(CacheOutcome::Degraded) => "cache-degraded",
        }
    }
}

/// A local answer: a page rendered at load (for a redirect, a copy of it
/// with the request's `Location`), plus the one header that depends on the
/// moment.
pub struct LocalAnswer {
    pub reason: AnswerReason,
    pub page: Arc<LocalResponse>,
    /// Seconds for `Retry-After` (rate limits).
    pub retry_after: Option<u64>,
    /// The route and version, when the request got that far.
    pub routed: Option<Routed>,
    /// A cached answer to write instead of `page`.
    pub copy: Option<Arc<CachedResponse>>,
}

/// The user ID a request was routed by, kept inline up to 32 bytes: most
/// IDs are that short, and a `String` was one heap allocation on every
/// request that carried one (`benches/README.md`, session 14).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserId(smallvec::SmallVec<[u8; 32]>);

impl UserId {
    pub fn new(id: &str) -> Self {
        Self(smallvec::SmallVec::from_slice(id.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // Only ever made from a `&str` (`new`): always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for UserId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}
