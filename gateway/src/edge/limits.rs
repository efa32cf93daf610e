//! The rate limits of one config snapshot: a global set and one set per
//! route, each checked by client IP, user ID and route.
//!
//! Limiters hold counting state, so a reload must not hand every client a
//! fresh budget: the [`LimiterBook`] keeps the limiter of a (scope, key, spec)
//! across snapshots, and only a changed spec starts a new one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::limits::SharedBudget;
use crate::cluster::ClusterLink;
use crate::config::{LimitScope, LimitSpec, RateLimitSpec};

use super::rate_limit::{LimitKey, RateLimiter, Verdict};

type BookKey = (String, LimitKey, LimitSpec);

#[derive(Default)]
pub struct LimiterBook {
    limiters: Mutex<HashMap<BookKey, Arc<RateLimiter>>>,
    /// The fleet, for `scope = "cluster"` limits; without it they count locally (`gateway check`).
    cluster: Option<Arc<ClusterLink>>,
}

impl LimiterBook {
    pub fn with_cluster(cluster: Option<Arc<ClusterLink>>) -> Self {
        Self { limiters: Mutex::default(), cluster }
    }

    fn get(&self, scope: &str, key: LimitKey, spec: LimitSpec) -> Arc<RateLimiter> {
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let make = || match (spec.scope, &self.cluster) {
            (LimitScope::Cluster(on_error), Some(link)) => {
                // The same name on every replica with the same config: the fleet's shared bucket.
                let name = format!("{}:{}:{}/{}ms", scope_name(scope), key.as_str(), spec.rate, spec.per.as_millis());
                let limiter = Arc::new(RateLimiter::shared(spec, SharedBudget::new(name, on_error, Arc::clone(link))));
                link.limits.register(&limiter);
                limiter
            }
            _ => Arc::new(RateLimiter::new(spec)),
        };
        Arc::clone(map.entry((scope.to_string(), key, spec)).or_insert_with(make))
    }

    /// Drop limiters no snapshot uses any more (called after a swap).
    pub fn retain_only(&self, live: &[&ScopeLimits]) {
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, l| live.iter().any(|s| s.uses(l)));
    }
}

/// A route's name, or `global` for the top-level `[rate_limit]`.
fn scope_name(scope: &str) -> &str {
    if scope.is_empty() {
        "global"
    } else {
        scope
    }
}

/// The limits of one scope (the whole gateway, or one route).
#[derive(Default)]
pub struct ScopeLimits {
    ip: Option<Arc<RateLimiter>>,
    user: Option<Arc<RateLimiter>>,
    route: Option<Arc<RateLimiter>>,
}

impl ScopeLimits {
    pub fn build(scope: &str, spec: &RateLimitSpec, book: &LimiterBook) -> Self {
        Self {
            ip: spec.per_ip.map(|s| book.get(scope, LimitKey::Ip, s)),
            user: spec.per_user.map(|s| book.get(scope, LimitKey::User, s)),
            route: spec.per_route.map(|s| book.get(scope, LimitKey::Route, s)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ip.is_none() && self.user.is_none() && self.route.is_none()
    }

    fn uses(&self, l: &Arc<RateLimiter>) -> bool {
        [&self.ip, &self.user, &self.route].iter().any(|x| x.as_ref().is_some_and(|x| Arc::ptr_eq(x, l)))
    }

    /// Count the request against each limit; the first one exceeded wins.
    /// Requests without a user ID are not counted by `per_user`. With
    /// `count = false` (explain), the answer is the same and nothing is counted.
    pub fn check(&self, ip: IpAddr, user: Option<&str>, count: bool) -> Option<(LimitKey, Duration)> {
        let limited = |v: Verdict| match v {
            Verdict::Allow => None,
            Verdict::Limit { retry_after } => Some(retry_after),
        };
        let judge = |l: &RateLimiter, key: &[u8]| if count { l.check(key) } else { l.peek(key) };
        if let Some(l) = &self.ip {
            let key = match ip {
                IpAddr::V4(v4) => limited(judge(l, &v4.octets())),
                IpAddr::V6(v6) => limited(judge(l, &v6.octets())),
            };
            if let Some(wait) = key {
                return Some((LimitKey::Ip, wait));
            }
        }
        if let (Some(l), Some(user)) = (&self.user, user) {
            if let Some(wait) = limited(judge(l, user.as_bytes())) {
                return Some((LimitKey::User, wait));
            }
        }
        if let Some(l) = &self.route {
            if let Some(wait) = limited(judge(l, b"route")) {
                return Some((LimitKey::Route, wait));
            }
        }
        None
    }
}
