//! Degrade to cached answers (`[routes.cache]`): answers kept in memory per
//! route and version, served while fresh, after an upstream failure up to
//! `stale_if_error` past their freshness, and under a degrade level up to
//! that level's `degrade_ttl` without asking the upstream at all.
//!
//! The rules (`policy`): only GET and HEAD; only the route's `statuses`;
//! never an answer with `Set-Cookie` or `Cache-Control: private`, `no-store`
//! or `no-cache`, nor one that varies on a header the key does not hold;
//! never for a request with `Authorization` (unless
//! `allow_authorization`) or with a cookie named in `bypass_cookies`. The
//! key holds the route, the version the request was routed to, host, path,
//! query and the `vary` headers: a canary copy never reaches a stable user.

pub mod policy;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::config::CacheSpec;
pub use store::CachedResponse;

/// How an answer came from the cache; the `outcome` label and `x-gateway-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// After an upstream failure, past its freshness.
    Stale,
    /// Under a degrade level, without asking the upstream.
    Degraded,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Degraded => "degraded",
        }
    }
}

/// The gateway's one response cache, shared by every snapshot.
#[derive(Default)]
pub struct ResponseCache {
    pub store: store::Store,
    metrics: Option<CacheMetrics>,
}

struct CacheMetrics {
    responses: IntCounterVec,
    bytes: IntGauge,
    entries: IntGauge,
}

impl ResponseCache {
    pub fn new(registry: &Registry) -> ResponseCache {
        let metrics = (|| {
            let responses = IntCounterVec::new(
                Opts::new(
                    "gateway_cache_responses_total",
                    "Answers of cached routes by outcome: hit, miss, stale (after an upstream failure), degraded",
                ),
                &["route", "version", "outcome"],
            )
            .ok()?;
            let bytes = IntGauge::new("gateway_cache_bytes", "Bytes held by the response cache").ok()?;
            let entries = IntGauge::new("gateway_cache_entries", "Answers held by the response cache").ok()?;
            registry.register(Box::new(responses.clone())).ok()?;
            registry.register(Box::new(bytes.clone())).ok()?;
            registry.register(Box::new(entries.clone())).ok()?;
            Some(CacheMetrics { responses, bytes, entries })
        })();
        ResponseCache { store: store::Store::default(), metrics }
    }

    pub fn count(&self, route: &str, version: &str, outcome: CacheOutcome) {
        if let Some(m) = &self.metrics {
            m.responses.with_label_values(&[route, version, outcome.as_str()]).inc();
        }
    }

    /// Bind the counters of a route's versions (so every outcome shows from the first scrape).
    pub fn bind(&self, route: &str, versions: &[&str]) {
        if let Some(m) = &self.metrics {
            for v in versions {
                for o in [CacheOutcome::Hit, CacheOutcome::Miss, CacheOutcome::Stale, CacheOutcome::Degraded] {
                    m.responses.with_label_values(&[route, v, o.as_str()]);
                }
            }
        }
    }

    pub fn update_gauges(&self) {
        if let Some(m) = &self.metrics {
            m.bytes.set(i64::try_from(self.store.bytes()).unwrap_or(i64::MAX));
            m.entries.set(i64::try_from(self.store.len()).unwrap_or(i64::MAX));
        }
    }

    /// A copy for `key` no older than `max_age` (`touch`: counts as a use for the LRU).
    pub fn lookup(&self, key: u128, max_age: Duration, touch: bool) -> Option<Arc<CachedResponse>> {
        let entry = self.store.get(key, touch)?;
        (entry.age(SystemTime::now()) <= max_age).then_some(entry)
    }
}

/// The cache key of a request on a route and version: the route, the
/// version's name (not its position, which a reload may change), the scheme,
/// host, path and query, and the raw bytes of the `vary` headers.
pub struct KeyParts<'a> {
    pub route: &'a str,
    pub version: &'a str,
    pub tls: bool,
    pub host: Option<&'a str>,
    pub path_and_query: &'a str,
}

pub fn key(parts: &KeyParts<'_>, headers: &HeaderMap, spec: &CacheSpec) -> u128 {
    let mut bytes: Vec<u8> = Vec::with_capacity(96 + parts.path_and_query.len());
    for piece in [parts.route, parts.version, if parts.tls { "https" } else { "http" }] {
        bytes.extend_from_slice(piece.as_bytes());
        bytes.push(0);
    }
    bytes.extend_from_slice(parts.host.unwrap_or("").to_ascii_lowercase().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(parts.path_and_query.as_bytes());
    for name in &spec.vary {
        bytes.push(0);
        for v in headers.get_all(name) {
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(b',');
        }
    }
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

/// The largest answer kept: a sixteenth of the budget, at most 1 MiB (a
/// fill buffers the body while it arrives, once per request in flight).
pub fn entry_limit(budget: usize) -> usize {
    (budget / 16).min(1 << 20)
}

/// Status, headers kept, freshness.
type StoredHead = (u16, Vec<(HeaderName, HeaderValue)>, Duration);

/// An answer being received from the upstream, to be kept once complete.
pub struct CacheFill {
    pub key: u128,
    pub route: Arc<str>,
    pub path: String,
    pub spec_ttl: Duration,
    pub statuses: Vec<u16>,
    pub vary: Vec<HeaderName>,
    /// Set once the upstream's head said the answer may be kept.
    head: Option<StoredHead>,
    body: BytesMut,
    /// Larger bodies are not kept (the budget's share of one shard).
    limit: usize,
}

impl CacheFill {
    pub fn start(key: u128, route: &str, path: &str, spec: &CacheSpec, limit: usize) -> CacheFill {
        CacheFill {
            key,
            route: Arc::from(route),
            path: path.to_string(),
            spec_ttl: spec.ttl,
            statuses: spec.statuses.clone(),
            vary: spec.vary.clone(),
            head: None,
            body: BytesMut::new(),
            limit,
        }
    }

    /// The upstream's head: keep the answer only if the rules allow it and it fits.
    pub fn head(&mut self, status: u16, headers: &HeaderMap) {
        let Some(ttl) = policy::storable(status, headers, &self.statuses, &self.vary, self.spec_ttl) else { return };
        let length = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if length.is_some_and(|n| n > self.limit) {
            return;
        }
        let kept = headers
            .iter()
            .filter(|(n, _)| !policy::HOP_BY_HOP.contains(&n.as_str()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        self.head = Some((status, kept, ttl));
    }

    /// Body bytes; past the limit the answer is not kept.
    pub fn body(&mut self, chunk: &Option<Bytes>) {
        if let (Some(_), Some(b)) = (&self.head, chunk) {
            if self.body.len() + b.len() > self.limit {
                self.head = None;
                self.body = BytesMut::new();
            } else {
                self.body.extend_from_slice(b);
            }
        }
    }

    /// The drop of a fill that must not be kept after all (a failover answered it).
    pub fn cancel(&mut self) {
        self.head = None;
        self.body = BytesMut::new();
    }

    /// The complete answer, if it may be kept.
    pub fn finish(self) -> Option<(u128, CachedResponse)> {
        let (status, headers, fresh_for) = self.head?;
        Some((
            self.key,
            CachedResponse {
                status,
                headers,
                body: self.body.freeze(),
                stored_at: SystemTime::now(),
                fresh_for,
                route: self.route,
                path: self.path,
            },
        ))
    }
}

/// Whether `method` is answered from or kept in the cache at all.
pub fn cacheable_method(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}
