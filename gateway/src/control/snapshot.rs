//! Everything one request needs, immutable, behind an `ArcSwap`.
//!
//! A request loads the current snapshot once (in `new_ctx`) and uses it from
//! start to end, so a reload never changes the rules under a request in
//! flight. A reload builds a whole new snapshot off to the side and swaps it
//! in with one atomic store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{ConfigError, GatewayConfig, LoadedConfig};
use crate::edge::blacklist::StaticBlacklist;
use crate::edge::limits::{LimiterBook, ScopeLimits};
use crate::edge::static_lists::ListCache;
use crate::routing::{CompiledRoute, Router, Version};
use crate::shadow::engine::ShadowEngine;
use crate::telemetry::metrics::{Metrics, RouteMetrics, VersionMetrics};
use crate::upstream::{HealthBook, Pool};

pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// State that outlives snapshots and that building one reuses: backend
/// health, rate-limit counters, parsed list files, the metrics registry.
#[derive(Default)]
pub struct BuildDeps {
    pub health: HealthBook,
    pub limiters: LimiterBook,
    pub lists: ListCache,
    pub metrics: Arc<Metrics>,
    /// Opened (its store) when a config first shadows a route.
    pub shadow: Option<Arc<ShadowEngine>>,
}

impl BuildDeps {
    pub fn new(metrics: Arc<Metrics>, shadow: Arc<ShadowEngine>) -> Self {
        Self { metrics, shadow: Some(shadow), ..Default::default() }
    }

    /// Forget state that no live snapshot uses (called after a swap).
    pub fn retain_for(&self, snapshot: &Snapshot) {
        self.health.retain_only(&snapshot.pools);
        let mut live: Vec<&ScopeLimits> = snapshot.route_limits.iter().collect();
        live.push(&snapshot.global_limits);
        self.limiters.retain_only(&live);
    }
}

pub struct Snapshot {
    /// 1 for the config loaded at start, +1 per successful reload.
    pub generation: u64,
    /// Short SHA-256 of the config file's bytes.
    pub hash: String,
    pub loaded_at: SystemTime,
    pub config: GatewayConfig,
    pub router: Router,
    pub pools: HashMap<String, Arc<Pool>>,
    /// Indexed by `CompiledRoute::index`.
    pub route_metrics: Vec<RouteMetrics>,
    pub unrouted_metrics: VersionMetrics,
    pub metrics: Arc<Metrics>,
    /// Config CIDRs and list files; run-time blocks live in `RuntimeState`.
    pub static_blacklist: Arc<StaticBlacklist>,
    pub global_limits: ScopeLimits,
    /// Indexed by `CompiledRoute::index`.
    pub route_limits: Vec<ScopeLimits>,
}

impl Snapshot {
    /// Build everything a request needs, off the request path. List files are
    /// read here, so a malformed line rejects the whole config.
    pub fn build(loaded: LoadedConfig, generation: u64, deps: &BuildDeps) -> Result<Self, Vec<ConfigError>> {
        let static_blacklist = deps.lists.build(&loaded.config.blacklist)?;
        if let (true, Some(engine)) = (loaded.config.routes.iter().any(|r| r.shadow.is_some()), &deps.shadow) {
            engine.ensure_started(&loaded.config.shadow_store).map_err(|message| {
                vec![ConfigError { file: loaded.config.source.clone(), line: 0, key: "shadow.store".into(), message }]
            })?;
        }
        let (book, metrics) = (&deps.health, Arc::clone(&deps.metrics));
        let config = loaded.config;
        let pools: HashMap<String, Arc<Pool>> =
            config.upstreams.values().map(|spec| (spec.name.clone(), Arc::new(Pool::new(spec, book)))).collect();
        let router = Router::new(&config.routes);
        let route_metrics = config
            .routes
            .iter()
            .map(|r| metrics.route_metrics(&r.name, r.canary_percent(), r.shadow.is_some()))
            .collect();
        for pool in pools.values() {
            for b in &pool.backends {
                metrics.set_backend_health(&pool.name, b.addr, b.health.is_healthy());
            }
        }
        let global_limits = ScopeLimits::build("", &config.rate_limit, &deps.limiters);
        let route_limits =
            config.routes.iter().map(|r| ScopeLimits::build(&r.name, &r.rate_limit, &deps.limiters)).collect();
        Ok(Self {
            generation,
            hash: loaded.hash,
            loaded_at: SystemTime::now(),
            unrouted_metrics: metrics.unrouted(),
            config,
            router,
            pools,
            route_metrics,
            metrics,
            static_blacklist,
            global_limits,
            route_limits,
        })
    }

    /// The pool that serves `version` on `route`. Validation guarantees both exist.
    pub fn pool_for(&self, route: &CompiledRoute, version: Version) -> Option<&Arc<Pool>> {
        let name = match version {
            Version::Stable => &route.spec.stable,
            Version::Canary => route.spec.canary.as_ref().unwrap_or(&route.spec.stable),
        };
        self.pools.get(name)
    }
}
