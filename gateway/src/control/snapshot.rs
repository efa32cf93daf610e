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
use bytes::Bytes;
use pingora_http::IntoCaseHeaderName;

use crate::config::{ConfigError, GatewayConfig, LoadedConfig};
use crate::edge::blacklist::StaticBlacklist;
use crate::edge::limits::{LimiterBook, ScopeLimits};
use crate::edge::static_lists::ListCache;
use crate::proxy::respond::LocalResponse;
use crate::routing::{Router, VersionPlan};
use crate::shadow::engine::ShadowEngine;
use crate::telemetry::metrics::{Metrics, VersionMetrics};
use crate::upstream::{HealthBook, Pool};

use super::route_runtime::{RoutePages, RouteRuntime, VersionRuntime};

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
    /// The release guard's shares in force (empty in `gateway check`: the file's apply).
    pub rollouts: Arc<crate::release::book::RolloutBook>,
    /// The response cache, kept across reloads.
    pub cache: Arc<crate::cache::ResponseCache>,
}

impl BuildDeps {
    pub fn new(metrics: Arc<Metrics>, shadow: Arc<ShadowEngine>) -> Self {
        Self { metrics, shadow: Some(shadow), ..Default::default() }
    }

    /// Forget state that no live snapshot uses (called after a swap).
    pub fn retain_for(&self, snapshot: &Snapshot) {
        self.health.retain_only(&snapshot.pools);
        let mut live: Vec<&ScopeLimits> = snapshot.routes.iter().map(|r| &r.limits).collect();
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
    /// Every file besides the config that this snapshot's load read.
    pub files: crate::config::files::FileRecord,
    /// Finds a request's route: an index into `routes`.
    pub router: Router,
    /// One compiled program per `[[routes]]` entry, in file order.
    pub routes: Vec<Arc<RouteRuntime>>,
    pub pools: HashMap<String, Arc<Pool>>,
    pub unrouted_metrics: VersionMetrics,
    pub metrics: Arc<Metrics>,
    /// Config CIDRs and list files; run-time blocks live in `RuntimeState`.
    pub static_blacklist: Arc<StaticBlacklist>,
    pub global_limits: ScopeLimits,
    /// Answers that belong to no route, rendered at load.
    pub pages: SnapshotPages,
    /// `[routes.cache]` answers (the same store in every snapshot).
    pub cache: Arc<crate::cache::ResponseCache>,
    /// The configured names of the gateway's version headers, as written on
    /// the wire: made once here, since Pingora copies a name given as a
    /// `HeaderName` on every insert.
    pub header_names: HeaderNames,
}

/// Header names in the case Pingora writes them (what it makes of a
/// `HeaderName` on each insert), to insert as `Bytes`, which it takes as
/// they are.
pub struct HeaderNames {
    /// `server.version_header`, on answers.
    pub version: Option<Bytes>,
    /// `server.version_request_header`, on requests upstream.
    pub lane: Option<Bytes>,
    /// Whether neither names a field the lean path writes or frames by
    /// itself, so it may splice its fields into the heads it writes
    /// (`proxy::head_splice`); otherwise it changes copies, as Pingora's
    /// path does, and the bytes are the same either way.
    pub splice: bool,
}

impl HeaderNames {
    fn new(server: &crate::config::model::ServerSettings) -> Self {
        let case = |name: &Option<http::HeaderName>| {
            name.as_ref().map(|n| Bytes::copy_from_slice(n.into_case_header_name().as_slice()))
        };
        const WRITTEN: [&str; 10] = [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "date",
            "set-cookie",
            "x-gateway-cache",
            "x-forwarded-for",
            "x-forwarded-proto",
            "upgrade",
        ];
        let clear = |name: &Option<http::HeaderName>| name.as_ref().is_none_or(|n| !WRITTEN.contains(&n.as_str()));
        Self {
            version: case(&server.version_header),
            lane: case(&server.version_request_header),
            splice: clear(&server.version_header) && clear(&server.version_request_header),
        }
    }
}

pub struct SnapshotPages {
    pub not_found: Arc<LocalResponse>,
    pub blocked: Arc<LocalResponse>,
}

impl Snapshot {
    /// Build everything a request needs, off the request path. List files are
    /// read here, so a malformed line rejects the whole config.
    pub fn build(loaded: LoadedConfig, generation: u64, deps: &BuildDeps) -> Result<Self, Vec<ConfigError>> {
        let static_blacklist = deps.lists.build(&loaded.config.blacklist)?;
        Self::build_with_list(loaded, generation, deps, static_blacklist)
    }

    /// The running config again with the release guard's shares in force
    /// now: the same static blacklist (no file is read, so a list file
    /// broken on disk since cannot stop an abort), the same generation.
    pub fn recompile(current: &Snapshot, deps: &BuildDeps) -> Result<Self, Vec<ConfigError>> {
        let loaded = LoadedConfig {
            config: current.config.clone(),
            warnings: Vec::new(),
            hash: current.hash.clone(),
            files: current.files.clone(),
        };
        let mut next = Self::build_with_list(loaded, current.generation, deps, Arc::clone(&current.static_blacklist))?;
        next.loaded_at = current.loaded_at;
        Ok(next)
    }

    fn build_with_list(
        loaded: LoadedConfig,
        generation: u64,
        deps: &BuildDeps,
        static_blacklist: Arc<StaticBlacklist>,
    ) -> Result<Self, Vec<ConfigError>> {
        if let (true, Some(engine)) = (loaded.config.routes.iter().any(|r| r.shadow.is_some()), &deps.shadow) {
            engine.ensure_started(&loaded.config.startup.shadow_store).map_err(|e| {
                let message = e.to_string();
                vec![ConfigError { file: loaded.config.source.clone(), line: 0, key: "shadow.store".into(), message }]
            })?;
        }
        let (book, metrics) = (&deps.health, Arc::clone(&deps.metrics));
        let config = loaded.config;
        let pools: HashMap<String, Arc<Pool>> =
            config.upstreams.values().map(|spec| (spec.name.clone(), Arc::new(Pool::new(spec, book)))).collect();
        let mut routes = Vec::with_capacity(config.routes.len());
        for file_spec in &config.routes {
            // The rolled-out version's share is the rollout's, not the file's.
            let effective = deps.rollouts.effective(file_spec, &config);
            let spec = &effective;
            let mut versions = Vec::with_capacity(spec.versions.len());
            for v in &spec.versions {
                let Some(pool) = pools.get(&v.upstream) else {
                    // Validation resolved every upstream; answered, not panicked, if not.
                    return Err(vec![ConfigError {
                        file: config.source.clone(),
                        line: 0,
                        key: format!("routes.{}", spec.name),
                        message: format!("version {} names no upstream", v.name),
                    }]);
                };
                let name = http::HeaderValue::from_str(&v.name).unwrap_or_else(|_| http::HeaderValue::from_static("?"));
                versions.push(VersionRuntime { name, pool: Arc::clone(pool) });
            }
            let Some(default_pool) = versions.get(spec.default_version).map(|v| Arc::clone(&v.pool)) else {
                return Err(vec![ConfigError {
                    file: config.source.clone(),
                    line: 0,
                    key: format!("routes.{}", spec.name),
                    message: "the route has no default version".into(),
                }]);
            };
            let plan = VersionPlan::compile(spec);
            let shares: Vec<(&str, f64)> = spec
                .versions
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let held = match i == spec.default_version {
                        true => 100.0 - spec.canary_percent(),
                        false => f64::from(v.basis_points) / 100.0,
                    };
                    (v.name.as_str(), held)
                })
                .collect();
            let route_metrics = metrics.route_metrics(&spec.name, &shares, spec.shadow.is_some());
            metrics.set_canary_percent(&spec.name, spec.canary_percent());
            routes.push(Arc::new(RouteRuntime {
                plan,
                versions,
                default_pool,
                limits: ScopeLimits::build(&spec.name, &spec.rate_limit, &deps.limiters),
                metrics: route_metrics,
                pages: RoutePages::render(spec),
                spec: spec.clone(),
            }));
        }
        let router = Router::new(&config.routes);
        // One budget for the whole cache: the largest a route asks for; none without cached routes.
        let cache_budget = config.routes.iter().filter_map(|r| r.cache.as_ref()).map(|c| c.max_size).max().unwrap_or(0);
        deps.cache.store.set_max_bytes(cache_budget);
        for r in config.routes.iter().filter(|r| r.cache.is_some()) {
            let names: Vec<&str> = r.versions.iter().map(|v| v.name.as_str()).collect();
            deps.cache.bind(&r.name, &names);
        }
        deps.cache.update_gauges();
        for pool in pools.values() {
            for b in &pool.backends {
                metrics.set_backend_health(&pool.name, b.addr, b.health.is_healthy());
            }
        }
        let global_limits = ScopeLimits::build("", &config.rate_limit, &deps.limiters);
        let blocked = &config.blacklist.page;
        let pages = SnapshotPages {
            not_found: Arc::new(LocalResponse::page(404, "Not Found", "No route matches this address.")),
            blocked: Arc::new(LocalResponse {
                status: blocked.status,
                content_type: blocked.content_type,
                body: blocked.body.clone(),
                headers: Vec::new(),
            }),
        };
        let header_names = HeaderNames::new(&config.server);
        Ok(Self {
            generation,
            hash: loaded.hash,
            files: loaded.files,
            loaded_at: SystemTime::now(),
            unrouted_metrics: metrics.unrouted(),
            config,
            router,
            routes,
            pools,
            metrics,
            static_blacklist,
            global_limits,
            pages,
            cache: Arc::clone(&deps.cache),
            header_names,
        })
    }

    /// A snapshot from config text, without a running gateway: for table
    /// tests of the pipeline and benchmarks. `path` names the (possibly
    /// absent) file the text stands for; relative paths in it resolve
    /// against its directory.
    pub fn from_toml(path: &std::path::Path, text: &str) -> Result<Self, Vec<ConfigError>> {
        let loaded = crate::config::parse(path, text)?;
        Self::build(loaded, 1, &BuildDeps::default())
    }

    /// A route by name (admin and CLI; never on the request path).
    pub fn route_named(&self, name: &str) -> Option<&Arc<RouteRuntime>> {
        self.routes.iter().find(|r| r.spec.name == name)
    }
}
