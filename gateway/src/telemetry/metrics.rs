//! Prometheus metrics. One registry per process, owned by [`Metrics`] (no
//! global singletons). Label values for routes and versions are resolved
//! once per config snapshot into [`RouteMetrics`], so the request path only
//! bumps pre-bound counters.

use std::net::SocketAddr;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::FallbackCause;

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    upstream_errors: IntCounterVec,
    reloads: IntCounterVec,
    /// 1 while the config in use is what the file says, 0 while the last reload attempt failed.
    last_reload_ok: IntGauge,
    last_reload_success_time: IntGauge,
    pub config_generation: IntGauge,
    pub downstream_connections: IntGauge,
    pub in_flight: IntGauge,
    /// Requests served by the lean HTTP/1 path and by `pingora-proxy`.
    pub lean_requests: prometheus::IntCounter,
    pub pingora_requests: prometheus::IntCounter,
    backend_up: IntGaugeVec,
    canary_percent: prometheus::GaugeVec,
    version_percent: prometheus::GaugeVec,
    overrides: IntCounterVec,
    proxy_protocol_refused: IntCounterVec,
    /// Indexed by [`Metrics::blocked_index`]: source (config, file, api) × dry run.
    blocked: [IntCounter; 6],
    rate_limited: IntCounterVec,
    fallbacks: IntCounterVec,
    pub degrade_level: IntGauge,
    shadow_requests: IntCounterVec,
    shadow_duration: HistogramVec,
    /// Diff records dropped because the store's write queue was full.
    pub shadow_store_dropped: IntCounter,
}

/// Outcomes of a shadowed request, the `outcome` label of `gateway_shadow_requests_total`.
pub const SHADOW_OUTCOMES: [&str; 8] =
    ["identical", "different", "noise-only", "error", "timeout", "dropped", "skipped_body_too_large", "skipped"];

const BLOCK_SOURCES: [&str; 3] = ["config", "file", "api"];

/// Why an upstream attempt failed, as counted in `gateway_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Status5xx,
    NoHealthyBackend,
    Other,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] =
        [Self::Connect, Self::Timeout, Self::Status5xx, Self::NoHealthyBackend, Self::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Status5xx => "5xx",
            Self::NoHealthyBackend => "no-healthy-backend",
            Self::Other => "other",
        }
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; an error here is a programming bug caught by every test.
    r.expect("static metric definition is valid")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new("gateway_requests_total", "Requests answered, by route, version and status class"),
            &["route", "version", "class"],
        ));
        // 100 µs .. ~13 s in steps of 30%: fine enough to read p99 and p99.9.
        let latency = must(HistogramVec::new(
            HistogramOpts::new("gateway_request_duration_seconds", "Time from request to last response byte")
                .buckets(must(exponential_buckets(0.0001, 1.3, 46))),
            &["route", "version"],
        ));
        let upstream_errors = must(IntCounterVec::new(
            Opts::new("gateway_upstream_errors_total", "Failed upstream attempts by pool and kind"),
            &["pool", "kind"],
        ));
        let reloads = must(IntCounterVec::new(
            Opts::new("gateway_config_reloads_total", "Config reloads by result (ok, error)"),
            &["result"],
        ));
        // Named as Prometheus names its own (prometheus_config_last_reload_successful).
        let last_reload_ok = must(IntGauge::new(
            "gateway_config_last_reload_successful",
            "1 when the last config load or reload succeeded, 0 while the last attempt failed",
        ));
        let last_reload_success_time = must(IntGauge::new(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load or reload",
        ));
        let config_generation = must(IntGauge::new("gateway_config_generation", "Generation of the config in use"));
        let downstream_connections =
            must(IntGauge::new("gateway_downstream_connections", "Client connections open now"));
        let in_flight = must(IntGauge::new("gateway_requests_in_flight", "Requests being proxied now"));
        let engines = must(prometheus::IntCounterVec::new(
            Opts::new(
                "gateway_requests_by_engine_total",
                "Requests by the code that served them: the lean HTTP/1 path or pingora-proxy",
            ),
            &["engine"],
        ));
        let lean_requests = engines.with_label_values(&["lean"]);
        let pingora_requests = engines.with_label_values(&["pingora"]);
        let backend_up = must(IntGaugeVec::new(
            Opts::new("gateway_backend_up", "1 when the backend passes its health check"),
            &["pool", "backend"],
        ));
        let canary_percent = must(prometheus::GaugeVec::new(
            Opts::new(
                "gateway_route_canary_percent",
                "Configured share of each route held by versions other than the default",
            ),
            &["route"],
        ));
        let version_percent = must(prometheus::GaugeVec::new(
            Opts::new(
                "gateway_route_version_percent",
                "Configured share of each version; the default's is what the others leave",
            ),
            &["route", "version"],
        ));
        let proxy_protocol_refused = must(IntCounterVec::new(
            Opts::new(
                "gateway_proxy_protocol_refused_total",
                "Connections from a server.proxy_protocol peer closed without a valid header: late, closed or invalid",
            ),
            &["reason"],
        ));
        let overrides = must(IntCounterVec::new(
            Opts::new(
                "gateway_version_overrides_total",
                "Tester overrides by outcome: applied, or refused (IP not allowed, bad or expired signature, unknown version)",
            ),
            &["route", "outcome"],
        ));
        let blocked_vec = must(IntCounterVec::new(
            Opts::new(
                "gateway_blocked_requests_total",
                "Requests refused by the IP blacklist, by source; dry_run=true only counted",
            ),
            &["source", "dry_run"],
        ));
        let blocked = [0, 1, 2, 3, 4, 5]
            .map(|i| blocked_vec.with_label_values(&[BLOCK_SOURCES[i / 2], if i % 2 == 1 { "true" } else { "false" }]));
        let rate_limited = must(IntCounterVec::new(
            Opts::new(
                "gateway_rate_limited_total",
                "Requests answered 429, by route and the limit's key (ip, user, route)",
            ),
            &["route", "key"],
        ));
        let fallbacks = must(IntCounterVec::new(
            Opts::new("gateway_fallback_responses_total", "Fallback pages served, by route and cause"),
            &["route", "cause"],
        ));
        let degrade_level = must(IntGauge::new("gateway_degrade_level", "The degrade level in force"));
        let shadow_requests = must(IntCounterVec::new(
            Opts::new("gateway_shadow_requests_total", "Shadowed requests by route and outcome"),
            &["route", "outcome"],
        ));
        let shadow_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "gateway_shadow_duration_seconds",
                "Latency of shadow answers, by route and the version shadowed",
            )
            .buckets(must(exponential_buckets(0.0001, 1.5, 30))),
            &["route", "version"],
        ));
        let shadow_store_dropped = must(IntCounter::new(
            "gateway_shadow_store_dropped_total",
            "Diff records dropped because the store's write queue was full",
        ));
        for c in [
            Box::new(blocked_vec) as Box<dyn prometheus::core::Collector>,
            Box::new(rate_limited.clone()),
            Box::new(version_percent.clone()),
            Box::new(overrides.clone()),
            Box::new(proxy_protocol_refused.clone()),
            Box::new(fallbacks.clone()),
            Box::new(degrade_level.clone()),
            Box::new(shadow_requests.clone()),
            Box::new(shadow_duration.clone()),
            Box::new(shadow_store_dropped.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(reloads.clone()),
            Box::new(last_reload_ok.clone()),
            Box::new(last_reload_success_time.clone()),
            Box::new(config_generation.clone()),
            Box::new(downstream_connections.clone()),
            Box::new(in_flight.clone()),
            Box::new(engines),
            Box::new(backend_up.clone()),
            Box::new(canary_percent.clone()),
        ] {
            must(registry.register(c));
        }
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds,
        // process_max_fds, process_virtual_memory_bytes, process_start_time_seconds,
        // process_threads: read from /proc at each scrape.
        #[cfg(target_os = "linux")]
        must(registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())));
        // Make both reload results visible from the first scrape.
        reloads.with_label_values(&["ok"]);
        reloads.with_label_values(&["error"]);
        Self {
            registry,
            requests,
            latency,
            upstream_errors,
            reloads,
            last_reload_ok,
            last_reload_success_time,
            config_generation,
            downstream_connections,
            in_flight,
            lean_requests,
            pingora_requests,
            backend_up,
            canary_percent,
            version_percent,
            overrides,
            proxy_protocol_refused,
            blocked,
            rate_limited,
            fallbacks,
            degrade_level,
            shadow_requests,
            shadow_duration,
            shadow_store_dropped,
        }
    }

    /// Count a blacklist hit (`dry_run`: logged and counted, not refused).
    pub fn blocked(&self, source: &str, dry_run: bool) {
        let i = BLOCK_SOURCES.iter().position(|s| *s == source).unwrap_or(0);
        self.blocked[i * 2 + usize::from(dry_run)].inc();
    }

    /// Bind every series of one route: `versions` are (name, percent) in
    /// the route's order, the default's percent being what the others leave.
    pub fn route_metrics(&self, route: &str, versions: &[(&str, f64)], shadowed: bool) -> RouteMetrics {
        let version = |v: &str| VersionMetrics {
            classes: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| self.requests.with_label_values(&[route, v, c])),
            latency: self.latency.with_label_values(&[route, v]),
        };
        for (name, percent) in versions {
            self.version_percent.with_label_values(&[route, name]).set(*percent);
        }
        RouteMetrics {
            versions: versions.iter().map(|(name, _)| version(name)).collect(),
            rate_limited: ["ip", "user", "route"].map(|k| self.rate_limited.with_label_values(&[route, k])),
            fallbacks: FallbackCause::ALL.map(|c| self.fallbacks.with_label_values(&[route, c.as_str()])),
            overrides: ["applied", "refused"].map(|o| self.overrides.with_label_values(&[route, o])),
            shadow: shadowed.then(|| {
                std::sync::Arc::new(ShadowMetrics {
                    outcomes: SHADOW_OUTCOMES.map(|o| self.shadow_requests.with_label_values(&[route, o])),
                    latency: versions
                        .iter()
                        .map(|(v, _)| self.shadow_duration.with_label_values(&[route, v]))
                        .collect(),
                })
            }),
        }
    }

    pub fn proxy_protocol_refused(&self, reason: &str) {
        self.proxy_protocol_refused.with_label_values(&[reason]).inc();
    }

    /// `gateway_route_canary_percent{route}`: the non-default versions' share together.
    pub fn set_canary_percent(&self, route: &str, percent: f64) {
        self.canary_percent.with_label_values(&[route]).set(percent);
    }

    /// Counters for requests that matched no route, or were answered before a version was chosen.
    pub fn unrouted(&self) -> VersionMetrics {
        VersionMetrics {
            classes: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| self.requests.with_label_values(&["", "none", c])),
            latency: self.latency.with_label_values(&["", "none"]),
        }
    }

    /// The value of `gateway_shadow_requests_total{route, outcome}`. Binds the
    /// (zero) series when it does not exist yet, so ask only for shadowed routes.
    pub fn shadow_count(&self, route: &str, outcome: &str) -> u64 {
        self.shadow_requests.get_metric_with_label_values(&[route, outcome]).map_or(0, |c| c.get())
    }

    /// Drop the series of removed `versions` of a route, and the route's own
    /// when the route itself is `removed`.
    pub fn forget_route(&self, route: &str, removed: bool, versions: &[&str]) {
        if removed {
            let _ = self.canary_percent.remove_label_values(&[route]);
        }
        for v in versions {
            let _ = self.version_percent.remove_label_values(&[route, v]);
        }
    }

    pub fn upstream_error(&self, pool: &str, kind: UpstreamErrorKind) {
        self.upstream_errors.with_label_values(&[pool, kind.as_str()]).inc();
    }

    /// Bind `gateway_upstream_errors_total{pool, kind}` at 0 for every kind;
    /// runs for every pool of every snapshot, so alerts see a series from the start.
    pub fn init_upstream_errors(&self, pool: &str) {
        for kind in UpstreamErrorKind::ALL {
            self.upstream_errors.with_label_values(&[pool, kind.as_str()]);
        }
    }

    /// Drop the upstream error series of a pool that no longer exists.
    pub fn forget_upstream_errors(&self, pool: &str) {
        for kind in UpstreamErrorKind::ALL {
            let _ = self.upstream_errors.remove_label_values(&[pool, kind.as_str()]);
        }
    }

    /// A reload attempt: counted by result; the last-reload gauges follow.
    pub fn reload(&self, ok: bool) {
        self.reloads.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
        self.loaded(ok);
    }

    /// Whether the config in use is what the file says: true after the load
    /// at start, a reload applied, or the file restored to the running
    /// config; false after a rejected attempt.
    pub fn loaded(&self, ok: bool) {
        self.last_reload_ok.set(i64::from(ok));
        if ok {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            self.last_reload_success_time.set(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        }
    }

    pub fn set_backend_health(&self, pool: &str, addr: SocketAddr, up: bool) {
        self.backend_up.with_label_values(&[pool, &addr.to_string()]).set(i64::from(up));
    }

    pub fn forget_backend(&self, pool: &str, addr: SocketAddr) {
        let _ = self.backend_up.remove_label_values(&[pool, &addr.to_string()]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Pre-bound counters for one route.
pub struct RouteMetrics {
    /// In the order of the route's versions.
    pub versions: Vec<VersionMetrics>,
    /// Tester overrides: applied, refused.
    pub overrides: [IntCounter; 2],
    /// 429s by key: ip, user, route.
    pub rate_limited: [IntCounter; 3],
    /// Fallback pages by cause, in the order of [`FallbackCause::ALL`].
    pub fallbacks: [IntCounter; 5],
    /// Present for routes with `[routes.shadow]`; shared with running shadows.
    pub shadow: Option<std::sync::Arc<ShadowMetrics>>,
}

/// Pre-bound shadow counters of one route.
pub struct ShadowMetrics {
    /// In the order of [`SHADOW_OUTCOMES`].
    outcomes: [IntCounter; 8],
    /// Shadow answer latency, in the order of the route's versions.
    latency: Vec<Histogram>,
}

impl ShadowMetrics {
    pub fn outcome(&self, outcome: &str) {
        if let Some(i) = SHADOW_OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].inc();
        }
    }

    pub fn latency(&self, version: usize, seconds: f64) {
        if let Some(h) = self.latency.get(version) {
            h.observe(seconds);
        }
    }
}

impl RouteMetrics {
    pub fn fallback(&self, cause: FallbackCause) {
        self.fallbacks[cause as usize].inc();
    }
}

pub struct VersionMetrics {
    classes: [IntCounter; 5],
    latency: Histogram,
}

/// A version's counters so far (the release guard subtracts two of these).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionTotals {
    pub requests: u64,
    /// Answers with a 5xx status: the upstream's, and the gateway's own
    /// (connect errors, timeouts, fallback pages).
    pub errors: u64,
    /// The latency histogram's cumulative buckets: (upper bound in seconds, count).
    pub buckets: Vec<(f64, u64)>,
    /// Every latency observed (the buckets leave out those above the last bound).
    pub observed: u64,
}

impl VersionMetrics {
    pub fn totals(&self) -> VersionTotals {
        use prometheus::core::Metric;
        let requests = self.classes.iter().map(IntCounter::get).sum();
        let proto = self.latency.metric();
        let buckets =
            proto.get_histogram().get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        let observed = proto.get_histogram().get_sample_count();
        VersionTotals { requests, errors: self.classes[4].get(), buckets, observed }
    }

    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].inc();
        self.latency.observe(seconds);
    }
}

#[cfg(test)]
mod tests;
