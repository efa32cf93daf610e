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

use crate::config::{GatewayConfig, LoadedConfig};
use crate::metrics::{Metrics, RouteMetrics, VersionMetrics};
use crate::routing::{CompiledRoute, Router, Version};
use crate::upstream::{HealthBook, Pool};

pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

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
}

impl Snapshot {
    pub fn build(loaded: LoadedConfig, generation: u64, book: &HealthBook, metrics: Arc<Metrics>) -> Self {
        let config = loaded.config;
        let pools: HashMap<String, Arc<Pool>> =
            config.upstreams.values().map(|spec| (spec.name.clone(), Arc::new(Pool::new(spec, book)))).collect();
        let router = Router::new(&config.routes);
        let route_metrics = config.routes.iter().map(|r| metrics.route_metrics(&r.name, r.canary_percent())).collect();
        for pool in pools.values() {
            for b in &pool.backends {
                metrics.set_backend_health(&pool.name, b.addr, b.health.is_healthy());
            }
        }
        Self {
            generation,
            hash: loaded.hash,
            loaded_at: SystemTime::now(),
            unrouted_metrics: metrics.unrouted(),
            config,
            router,
            pools,
            route_metrics,
            metrics,
        }
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
