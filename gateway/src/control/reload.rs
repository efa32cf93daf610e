//! Config reload: build and validate a new snapshot off to the side, then
//! swap it in with one atomic store. Triggered by the file watcher
//! (`watch.rs`), SIGHUP, and `POST /api/reload`.
//!
//! A rejected config changes nothing: the old snapshot keeps serving, the
//! errors are logged, counted, and shown by `/api/status` until a good config
//! loads. Settings that only apply at start (listen addresses, threads) are
//! reported as needing a restart while the rest of the change applies.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::cluster::ClusterLink;
use crate::config::{self, ConfigError, GatewayConfig, LoadedConfig};
use crate::control::runtime::{RuntimeState, Sharing};
use crate::control::snapshot::{BuildDeps, Snapshot, SnapshotHandle};
use crate::control::state::OpenMode;
use crate::edge::limits::LimiterBook;
use crate::shadow::engine::ShadowEngine;
use crate::shadow::DiffStore;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied {
        generation: u64,
        restart_needed: Vec<String>,
    },
    /// The file's bytes match the config in use; nothing to do.
    Unchanged {
        generation: u64,
    },
    Rejected {
        errors: Vec<String>,
    },
}

/// What `/api/status` reports about reloads.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_error: Option<Vec<String>>,
    pub last_error_at: Option<SystemTime>,
    pub restart_needed: Vec<String>,
}

pub struct Reloader {
    path: PathBuf,
    pub snapshots: SnapshotHandle,
    deps: BuildDeps,
    pub metrics: Arc<Metrics>,
    /// Blocks and degrade level entered at run time; opened once at start.
    pub runtime: Arc<RuntimeState>,
    /// The fleet's shared store, with `[cluster]`; bound at start.
    pub cluster: Option<Arc<ClusterLink>>,
    pub shadow: Arc<ShadowEngine>,
    /// Set by a SIGHUP that arrives before the reload task listens (see `server::build`).
    pub early_hup: Arc<std::sync::atomic::AtomicBool>,
    /// True once the control plane listens for SIGHUP and file changes; `/readyz` waits for it.
    pub control_ready: std::sync::atomic::AtomicBool,
    /// The TLS listener's certificates; each applied reload installs its own.
    pub tls: Arc<crate::tls::CertResolver>,
    status: Mutex<ReloadStatus>,
    /// The settings the process was started with (listeners cannot move at run time).
    started_with: GatewayConfig,
    /// Serialises reloads, and remembers the hash of the last rejected text so
    /// the watcher does not re-reject (and re-count) the same bad file per event.
    reload_lock: Mutex<Option<String>>,
}

impl Reloader {
    /// Load the initial config; errors here stop the process before it listens.
    pub fn start(path: &Path, metrics: Arc<Metrics>, shadow: Arc<ShadowEngine>) -> Result<Arc<Self>, Vec<ConfigError>> {
        let loaded = config::load_file(path)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        Self::start_with(path, loaded, metrics, shadow).map(Arc::new)
    }

    /// The steps of [`Reloader::start`] after the config file parsed.
    fn start_with(
        path: &Path,
        loaded: LoadedConfig,
        metrics: Arc<Metrics>,
        shadow: Arc<ShadowEngine>,
    ) -> Result<Self, Vec<ConfigError>> {
        let cluster = loaded.config.startup.cluster.clone().map(|spec| ClusterLink::new(spec, &metrics.registry, None));
        let mut deps = BuildDeps::new(Arc::clone(&metrics), Arc::clone(&shadow));
        deps.limiters = LimiterBook::with_cluster(cluster.clone());
        deps.cache = Arc::new(crate::cache::ResponseCache::new(&metrics.registry));
        let runtime = prepare(path, &loaded, Steps::Run(&shadow), &deps)?;
        deps.rollouts = Arc::clone(&runtime.rollouts);
        if let (Some(link), Ok(state)) = (&cluster, runtime.state.load()) {
            link.health.restore_last_sync(state.cluster.and_then(|c| c.last_sync_unix));
        }
        let started_with = loaded.config.clone();
        let tls = crate::tls::CertResolver::new(&metrics.registry, loaded.config.server.tls.as_ref());
        let snapshot = Snapshot::build(loaded, 1, &deps)?;
        metrics.config_generation.set(1);
        metrics.degrade_level.set(i64::from(runtime.degrade_level(snapshot.config.degrade_level)));
        init_series(&metrics, &snapshot);
        metrics.loaded(true);
        Ok(Self {
            path: path.to_path_buf(),
            snapshots: Arc::new(ArcSwap::from_pointee(snapshot)),
            deps,
            metrics,
            runtime: Arc::new(runtime),
            cluster,
            shadow,
            early_hup: Arc::default(),
            control_ready: Default::default(),
            tls,
            status: Mutex::new(ReloadStatus::default()),
            started_with,
            reload_lock: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reload now. With `only_if_changed`, a file whose bytes match the running
    /// config is skipped (the watcher sees many events for one save).
    pub fn reload(&self, trigger: &str, only_if_changed: bool) -> ReloadOutcome {
        let mut last_rejected = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshots.load_full();
        let text = match config::read_file(&self.path) {
            Ok(t) => t,
            Err(errors) => return self.reject(trigger, errors.iter().map(ToString::to_string).collect()),
        };
        let hash = config::text_hash(&text);
        // A renewed certificate, an edited page or list file, a rotated key:
        // the files change, not the config text. One record says which files.
        let unchanged = hash == current.hash && current.files.is_current();
        // What a rejected attempt is remembered by: the text, and the files the running config reads.
        let attempt = format!("{hash}/{:?}", current.files.fresh());
        if only_if_changed && unchanged {
            // The file is the running config again (an edit was rejected, then
            // undone): nothing to apply, and nothing is failing any more.
            *last_rejected = None;
            self.clear_error(trigger);
            return ReloadOutcome::Unchanged { generation: current.generation };
        }
        if only_if_changed && last_rejected.as_deref() == Some(attempt.as_str()) {
            return ReloadOutcome::Unchanged { generation: current.generation };
        }
        match config::parse(&self.path, &text).and_then(|loaded| self.apply(trigger, loaded, current.generation + 1)) {
            Ok(outcome) => {
                *last_rejected = None;
                outcome
            }
            Err(errors) => {
                *last_rejected = Some(attempt);
                self.reject(trigger, errors.iter().map(ToString::to_string).collect())
            }
        }
    }

    fn apply(
        &self,
        trigger: &str,
        loaded: LoadedConfig,
        generation: u64,
    ) -> Result<ReloadOutcome, Vec<config::ConfigError>> {
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let restart_needed = restart_needed(&self.started_with, &loaded.config);
        // The process keeps what it bound at start; the snapshot says so.
        let mut loaded = loaded;
        loaded.config.startup = self.started_with.startup.clone();
        let old = self.snapshots.load_full();
        let snapshot = match Snapshot::build(loaded, generation, &self.deps) {
            Ok(s) => Arc::new(s),
            Err(errors) => return Err(errors),
        };
        self.snapshots.store(Arc::clone(&snapshot));
        self.tls.follow(snapshot.config.server.tls.as_ref());
        self.deps.retain_for(&snapshot);
        self.metrics.degrade_level.set(i64::from(self.runtime.degrade_level(snapshot.config.degrade_level)));
        forget_removed_series(&self.metrics, &old, &snapshot);
        init_series(&self.metrics, &snapshot);
        self.metrics.reload(true);
        self.metrics.config_generation.set(generation as i64);
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.last_error = None;
            status.last_error_at = None;
            status.restart_needed = restart_needed.clone();
        }
        for r in &restart_needed {
            tracing::warn!(trigger, "{r}: the new value applies after a restart");
        }
        tracing::info!(trigger, generation, hash = %snapshot.hash, "config reloaded");
        Ok(ReloadOutcome::Applied { generation, restart_needed })
    }

    /// Build the running config again with the shares in force now (the
    /// release guard moved a rollout): same generation, same file; the next
    /// request routes with the new share.
    pub fn recompile(&self) -> Result<(), Vec<config::ConfigError>> {
        let _serialised = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshots.load_full();
        let snapshot = Snapshot::recompile(&current, &self.deps)?;
        self.snapshots.store(Arc::new(snapshot));
        Ok(())
    }

    /// Forget the last rejected attempt once the file matches the running config.
    fn clear_error(&self, trigger: &str) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.last_error.take().is_some() {
            status.last_error_at = None;
            self.metrics.loaded(true);
            tracing::info!(trigger, "the config file is the running config again; the last reload error is cleared");
        }
    }

    fn reject(&self, trigger: &str, errors: Vec<String>) -> ReloadOutcome {
        for e in &errors {
            tracing::error!(trigger, "config rejected, still serving the previous one: {e}");
        }
        self.metrics.reload(false);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_error = Some(errors.clone());
        status.last_error_at = Some(SystemTime::now());
        ReloadOutcome::Rejected { errors }
    }
}

/// What a reload cannot change in the running process: the startup
/// settings' keys, from their types (`config/startup.rs`).
fn restart_needed(started: &GatewayConfig, new: &GatewayConfig) -> Vec<String> {
    started.startup.changed(&new.startup).into_iter().map(str::to_string).collect()
}

/// Who runs the load steps: `gateway run` opens and creates, `gateway
/// check` runs the same steps but only looks where `run` would create.
enum Steps<'a> {
    Run(&'a ShadowEngine),
    Check,
}

/// Every load step between a parsed config and a snapshot, shared by `run`
/// and `check`: the state file (readable, values in range, its directory
/// writable), the list files, the diff store when a route shadows. The
/// errors of every step come back together, as `file:line: key: message`.
/// List files are read again by `Snapshot::build`, which reuses this parse.
fn prepare(
    path: &Path,
    loaded: &LoadedConfig,
    steps: Steps<'_>,
    deps: &BuildDeps,
) -> Result<RuntimeState, Vec<ConfigError>> {
    let config = &loaded.config;
    let mut errors = Vec::new();
    let mode = match steps {
        Steps::Run(_) => OpenMode::Create,
        Steps::Check => OpenMode::Inspect,
    };
    let sharing = match &config.startup.cluster {
        Some(spec) => Sharing { origin: crate::cluster::replica_name(spec), fleet: true },
        None => Sharing::single(),
    };
    let runtime = RuntimeState::open_shared(&config.startup.state_path, mode, sharing)
        .map_err(|e| {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line: 0,
                key: "state.path".into(),
                message: e.to_string(),
            })
        })
        .ok();
    if let Err(mut e) = deps.lists.build(&config.blacklist) {
        errors.append(&mut e);
    }
    if config.routes.iter().any(|r| r.shadow.is_some()) {
        let store = &config.startup.shadow_store;
        let opened = match steps {
            Steps::Run(engine) => engine.ensure_started(store),
            Steps::Check => DiffStore::check(&store.path),
        };
        if let Err(e) = opened {
            let message = e.to_string();
            let shown = store.path.display().to_string();
            let message = if message.contains(&shown) { message } else { format!("{shown}: {message}") };
            errors.push(ConfigError { file: config.source.clone(), line: 0, key: "shadow.store".into(), message });
        }
    }
    match runtime {
        Some(runtime) if errors.is_empty() => Ok(runtime),
        _ => Err(errors),
    }
}

/// `gateway check`: the load steps of `gateway run` ([`prepare`], then the
/// snapshot), without listening and without creating the state directory or
/// the diff store. Returns the config for the summary.
pub fn check(path: &Path) -> Result<LoadedConfig, Vec<ConfigError>> {
    let loaded = config::load_file(path)?;
    // No shadow engine: the snapshot does not open the store, `prepare` checked it.
    let deps = BuildDeps { metrics: Arc::new(Metrics::new()), ..BuildDeps::default() };
    prepare(path, &loaded, Steps::Check, &deps)?;
    Snapshot::build(loaded.clone(), 1, &deps)?;
    Ok(loaded)
}

/// Series that must exist at 0 before their first event, so `rate()` and
/// alerts work from the first scrape: upstream errors of every pool and kind.
fn init_series(metrics: &Metrics, snapshot: &Snapshot) {
    for pool in snapshot.pools.keys() {
        metrics.init_upstream_errors(pool);
    }
}

/// Drop metric series for routes, pools and backends that no longer exist,
/// so dashboards do not show ghosts.
fn forget_removed_series(metrics: &Metrics, old: &Snapshot, new: &Snapshot) {
    for r in &old.routes {
        let kept = new.route_named(&r.spec.name);
        let gone: Vec<&str> = r
            .spec
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .filter(|v| kept.is_none_or(|k| k.spec.version_index(v).is_none()))
            .collect();
        if kept.is_none() || !gone.is_empty() {
            metrics.forget_route(&r.spec.name, kept.is_none(), &gone);
        }
    }
    for (name, pool) in &old.pools {
        if !new.pools.contains_key(name) {
            metrics.forget_upstream_errors(name);
        }
        for b in &pool.backends {
            let kept = new.pools.get(name).is_some_and(|p| p.backends.iter().any(|nb| nb.addr == b.addr));
            if !kept {
                metrics.forget_backend(name, b.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> GatewayConfig {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n{extra}\n[upstreams.v1]\nbackends = [\"127.0.0.1:9001\"]\n\n\
             [[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\nstable = \"v1\"\n"
        );
        crate::config::parse(std::path::Path::new("gateway.toml"), &text).expect("valid").config
    }

    #[test]
    fn settings_bound_at_start_are_reported_when_a_reload_changes_them() {
        let started = config("");
        assert!(restart_needed(&started, &config("")).is_empty());
        let changed = config("work_stealing = true\naccess_log = \"json\"\n[shadow]\nstore_per_second = 5\nqueue = 10");
        let keys = restart_needed(&started, &changed);
        for key in ["server.work_stealing", "server.access_log", "shadow.store_per_second", "shadow.queue"] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
    }
}
