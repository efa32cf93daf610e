//! The shadow engine: owns what mirroring needs across requests — its own
//! upstream connection pool, its own low-priority runtime (`lane`), the
//! in-flight limits, the noise tracker and the diff store — so that shadows
//! never share the client path's connections, threads or CPU priority.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use pingora_core::connectors::http::Connector;

use crate::config::ShadowStoreSpec;
use crate::telemetry::metrics::Metrics;

use super::mirror::{run_job, ShadowJob};
use super::{DiffStore, DiffWriter, NoiseTracker, StoreError};

struct OpenStore {
    store: Arc<DiffStore>,
    writer: DiffWriter,
}

pub struct ShadowEngine {
    store: Mutex<Option<OpenStore>>,
    pub noise: NoiseTracker,
    pub(super) connector: Connector,
    /// The shadow lane's runtime, started with the first shadowed config.
    runtime: OnceLock<tokio::runtime::Handle>,
    pub(super) metrics: Arc<Metrics>,
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// A slot under a route's `max_in_flight`, released on drop.
pub struct Reservation(Arc<AtomicUsize>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl ShadowEngine {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            store: Mutex::new(None),
            noise: NoiseTracker::new(),
            connector: Connector::new(None),
            runtime: OnceLock::new(),
            metrics,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Start the shadow lane and open the diff store if not done yet; runs
    /// when a config with a shadowed route is loaded (off the request path).
    /// The store's path is fixed from then on, like the state file.
    pub fn ensure_started(&self, spec: &ShadowStoreSpec) -> Result<(), StoreError> {
        if self.runtime.get().is_none() {
            let _ = self.runtime.set(super::lane::start()?);
        }
        let mut open = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if open.is_some() {
            return Ok(());
        }
        if let Some(dir) = spec.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::File { path: dir.to_path_buf(), message: format!("cannot create: {e}") })?;
        }
        let store = Arc::new(DiffStore::open(&spec.path, spec.retention)?);
        store.set_redacted_headers(spec.redact_headers.iter());
        let writer = store.writer_with_budget(spec.queue, Some(spec.store_per_second).filter(|n| *n > 0));
        *open = Some(OpenStore { store, writer });
        Ok(())
    }

    pub fn store(&self) -> Option<Arc<DiffStore>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| Arc::clone(&s.store))
    }

    /// Queue a record; never blocks. False when dropped (queue full or no store).
    pub(super) fn save(&self, record: super::DiffRecord) -> bool {
        let open = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match open.as_ref() {
            Some(s) => {
                let ok = s.writer.try_send(record);
                if !ok {
                    self.metrics.shadow_store_dropped.inc();
                }
                ok
            }
            None => false,
        }
    }

    /// Wait until queued records are written (tests, shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        let open = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match open.as_ref() {
            Some(s) => s.writer.flush(),
            None => Ok(()),
        }
    }

    /// Take a slot under `max`; `None` means the shadow must be dropped.
    pub fn reserve(&self, route: &str, max: usize) -> Option<Reservation> {
        let counter = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(route.to_string()).or_default())
        };
        // Acquire, paired with the Release of a slot given back: a slot freed
        // before its shadow was counted (`mirror::run_job`) is seen free here.
        if counter.fetch_add(1, Ordering::Acquire) >= max {
            counter.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Reservation(counter))
    }

    /// Run a shadow off the request path, on the shadow lane. Without a lane
    /// (no shadowed config loaded yet) the shadow is dropped and counted.
    pub fn submit(self: &Arc<Self>, job: ShadowJob, reservation: Reservation) -> bool {
        match self.runtime.get() {
            Some(rt) => {
                let engine = Arc::clone(self);
                rt.spawn(async move { run_job(&engine, job, reservation).await });
                true
            }
            None => false,
        }
    }
}
