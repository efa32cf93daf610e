//! One route compiled for the request path: everything a request on it
//! needs, resolved once per config snapshot (Envoy's per-config filter
//! state). A request holds an `Arc` to it; nothing on the request path
//! looks anything up by name or formats a page.

use std::sync::Arc;

use http::HeaderValue;

use crate::config::{FallbackCause, RouteSpec};
use crate::edge::fallback;
use crate::edge::limits::ScopeLimits;
use crate::proxy::respond::LocalResponse;
use crate::routing::VersionPlan;
use crate::telemetry::metrics::RouteMetrics;
use crate::upstream::Pool;

pub struct RouteRuntime {
    pub spec: RouteSpec,
    /// Buckets, lanes, whitelists, anonymous policy.
    pub plan: VersionPlan,
    /// In the order of `spec.versions`.
    pub versions: Vec<VersionRuntime>,
    /// The default version's pool: what an out-of-range index gets (never, for
    /// a validated route), so no lookup on the request path can panic.
    pub default_pool: Arc<Pool>,
    pub limits: ScopeLimits,
    pub metrics: RouteMetrics,
    pub pages: RoutePages,
}

/// One version of a route: its name as a header value and its pool.
pub struct VersionRuntime {
    pub name: HeaderValue,
    pub pool: Arc<Pool>,
}

/// Every local answer of the route, rendered at load.
pub struct RoutePages {
    /// By [`FallbackCause`] (its `as usize`); `None` where the fallback does not cover the cause.
    pub fallback: [Option<Arc<LocalResponse>>; 5],
    /// By rate-limit key (ip, user, route): the 429 page with its `x-gateway-limit`.
    pub rate_limited: [Arc<LocalResponse>; 3],
    /// The `https_redirect` answers; `None` on a route that does not redirect.
    pub redirect: Option<RedirectPages>,
}

/// What a plain-HTTP request on an `https_redirect` route gets.
pub struct RedirectPages {
    /// The 308 without its `Location`: a request adds only that (its URL on
    /// the TLS listener) to a copy that shares this body.
    pub moved: LocalResponse,
    /// 400 for a request whose Host names no host to redirect to.
    pub no_host: Arc<LocalResponse>,
}

impl RouteRuntime {
    /// The pool of `version` (an index validated at load; out of range falls back to the default's).
    pub fn pool(&self, version: usize) -> &Arc<Pool> {
        self.versions.get(version).map_or(&self.default_pool, |v| &v.pool)
    }

    /// The version's name as a header value (version and lane headers).
    pub fn version_value(&self, version: usize) -> &HeaderValue {
        static UNKNOWN: HeaderValue = HeaderValue::from_static("?");
        self.versions.get(version).map_or(&UNKNOWN, |v| &v.name)
    }

    pub fn version_name(&self, version: usize) -> &str {
        self.spec.versions.get(version).map_or("?", |v| v.name.as_str())
    }

    /// The fallback page for `cause`, when the route has one that covers it.
    pub fn fallback_page(&self, cause: FallbackCause) -> Option<&Arc<LocalResponse>> {
        self.pages.fallback[cause as usize].as_ref()
    }

    /// True when the level in force switches this route to its page.
    pub fn degraded(&self, level: u8) -> bool {
        fallback::degraded(&self.spec, level)
    }
}

impl RoutePages {
    pub fn render(spec: &RouteSpec) -> Self {
        let limited = |key: &'static str| {
            Arc::new(
                LocalResponse::page(429, "Too Many Requests", "Too many requests; please retry shortly.")
                    .with_header("x-gateway-limit", key),
            )
        };
        Self {
            fallback: FallbackCause::ALL.map(|c| fallback::page_for(spec, c).map(Arc::new)),
            rate_limited: [limited("ip"), limited("user"), limited("route")],
            redirect: spec.https_redirect.then(|| RedirectPages {
                moved: LocalResponse::page(308, "Permanent Redirect", "This address is served over HTTPS."),
                no_host: Arc::new(LocalResponse::page(
                    400,
                    "Bad Request",
                    "The Host header is missing or not a host name.",
                )),
            }),
        }
    }
}
