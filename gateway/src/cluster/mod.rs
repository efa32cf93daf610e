//! The fleet: run-time state (blocks, the degrade level) and cluster rate
//! limits shared by every replica through one Redis (`[cluster]`).
//!
//! Every replica serves from its own memory: the request path never waits
//! on the store. Changes flow both ways in the background (`sync`): a
//! local change is written to the state file, applied, then pushed and
//! published; other replicas take it in from the channel at once and from
//! a full read every `reconcile` interval. While the store is unreachable a
//! replica keeps serving what it last saw (and what the state file holds
//! after a restart), and pushes its own changes when the store returns.

pub mod limits;
pub mod record;
pub mod store;
pub mod sync;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, oneshot};

pub use crate::config::ClusterSpec;
use record::unix_ms;

/// The store as this replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    /// No call has finished yet (the first sync runs at start).
    Starting,
    Ok,
    Unreachable,
}

/// Health of the link to the store: read by `/api/status`, metrics and the
/// cluster rate limits (per request, one atomic load).
pub struct StoreHealth {
    state: AtomicU8,
    since_ms: AtomicU64,
    last_sync_ms: AtomicU64,
}

impl StoreHealth {
    fn new(last_sync: Option<SystemTime>) -> StoreHealth {
        StoreHealth {
            state: AtomicU8::new(0),
            since_ms: AtomicU64::new(unix_ms(SystemTime::now())),
            last_sync_ms: AtomicU64::new(last_sync.map_or(0, unix_ms)),
        }
    }

    pub fn state(&self) -> StoreState {
        match self.state.load(Ordering::Relaxed) {
            1 => StoreState::Ok,
            2 => StoreState::Unreachable,
            _ => StoreState::Starting,
        }
    }

    /// Record the outcome of a call; `true` when the state changed.
    fn set(&self, state: StoreState) -> bool {
        let v = match state {
            StoreState::Starting => 0,
            StoreState::Ok => 1,
            StoreState::Unreachable => 2,
        };
        let changed = self.state.swap(v, Ordering::Relaxed) != v;
        if changed {
            self.since_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        }
        changed
    }

    /// Since when the store has been in its current state.
    pub fn since(&self) -> SystemTime {
        from_ms(self.since_ms.load(Ordering::Relaxed))
    }

    /// The last complete read of the store (persisted, so known after a restart).
    pub fn last_sync(&self) -> Option<SystemTime> {
        match self.last_sync_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(from_ms(ms)),
        }
    }

    /// The last sync known from the state file, at start.
    pub fn restore_last_sync(&self, unix_secs: Option<u64>) {
        if let Some(secs) = unix_secs.filter(|s| *s > 0) {
            self.last_sync_ms.store(secs.saturating_mul(1000), Ordering::Relaxed);
        }
    }

    fn synced(&self, at: SystemTime) {
        self.last_sync_ms.store(unix_ms(at), Ordering::Relaxed);
    }
}

fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The cluster's series, registered only when `[cluster]` is set.
pub struct ClusterMetrics {
    pub store_up: IntGauge,
    pub store_errors: IntCounterVec,
    pub sync_age: IntGauge,
    pub pending_changes: IntGauge,
    pub changes_received: prometheus::IntCounter,
}

impl ClusterMetrics {
    fn register(registry: &Registry) -> ClusterMetrics {
        let must = |r: prometheus::Result<()>| {
            // Static definitions; a second registration is a programming bug caught by every test.
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot register a cluster metric");
            }
        };
        let store_up =
            IntGauge::new("gateway_cluster_store_up", "1 while the last call to the cluster store succeeded")
                .expect("static metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "gateway_cluster_store_errors_total",
                "Failed calls to the cluster store, by operation (ping, push, read, subscribe, rate_limit, gc)",
            ),
            &["op"],
        )
        .expect("static metric");
        let sync_age = IntGauge::new(
            "gateway_cluster_sync_age_seconds",
            "Seconds since this replica last read the whole shared state from the store",
        )
        .expect("static metric");
        let pending_changes = IntGauge::new(
            "gateway_cluster_pending_changes",
            "Run-time changes made on this replica that the store does not have yet",
        )
        .expect("static metric");
        let changes_received = prometheus::IntCounter::new(
            "gateway_cluster_changes_received_total",
            "Changes made on other replicas and taken in from the store's channel",
        )
        .expect("static metric");
        for op in ["ping", "push", "read", "subscribe", "rate_limit", "gc"] {
            store_errors.with_label_values(&[op]);
        }
        must(registry.register(Box::new(store_up.clone())));
        must(registry.register(Box::new(store_errors.clone())));
        must(registry.register(Box::new(sync_age.clone())));
        must(registry.register(Box::new(pending_changes.clone())));
        must(registry.register(Box::new(changes_received.clone())));
        ClusterMetrics { store_up, store_errors, sync_age, pending_changes, changes_received }
    }
}

/// Where a run-time change applies, as the admin API and CLI report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A single gateway: there is no fleet.
    ThisGateway,
    /// In the store and published: every replica takes it within a second.
    Fleet,
    /// Applied and persisted here; pushed to the store when it returns.
    ThisReplicaOnly,
    /// Applied and persisted here; the push did not finish in time (the sync
    /// task is busy) and goes on in the background.
    Pending,
}

impl Reach {
    /// The API's `applied` field.
    pub fn label(self) -> &'static str {
        match self {
            Reach::ThisGateway => "gateway",
            Reach::Fleet => "cluster",
            Reach::ThisReplicaOnly => "replica",
            Reach::Pending => "pending",
        }
    }

    /// The line the API and CLI show with a change that did not (yet) reach the fleet.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            Reach::ThisReplicaOnly => Some("applied on this replica only: cluster store unreachable"),
            Reach::Pending => Some("applied on this replica; the push to the cluster store is still under way"),
            Reach::ThisGateway | Reach::Fleet => None,
        }
    }
}

/// A request to the sync task.
pub(crate) enum Command {
    /// Push every pending change now; answers whether the store took them all.
    Push(oneshot::Sender<bool>),
}

/// This replica's handle on the fleet: what the admin API, status, metrics
/// and cluster limits use. The store itself belongs to the sync task.
pub struct ClusterLink {
    pub spec: ClusterSpec,
    /// This replica's name in stamps.
    pub origin: String,
    pub health: StoreHealth,
    pub metrics: ClusterMetrics,
    /// When this process started: the sync age counts from here before a first sync.
    pub started: SystemTime,
    pub limits: limits::SharedLimits,
    commands: mpsc::Sender<Command>,
    /// Taken once by the sync task.
    inbox: std::sync::Mutex<Option<mpsc::Receiver<Command>>>,
}

impl ClusterLink {
    pub fn new(spec: ClusterSpec, registry: &Registry, last_sync: Option<SystemTime>) -> Arc<ClusterLink> {
        let (commands, inbox) = mpsc::channel(64);
        Arc::new(ClusterLink {
            origin: replica_name(&spec),
            health: StoreHealth::new(last_sync),
            started: SystemTime::now(),
            metrics: ClusterMetrics::register(registry),
            limits: limits::SharedLimits::default(),
            spec,
            commands,
            inbox: std::sync::Mutex::new(Some(inbox)),
        })
    }

    /// Push this replica's pending changes and say how far they reached.
    /// Waits at most a few store timeouts; runs on an admin request.
    pub async fn push(&self) -> Reach {
        let (reply, answer) = oneshot::channel();
        // A full queue means the sync task is busy: the change is pending and pushed with the next batch.
        if self.commands.try_send(Command::Push(reply)).is_err() {
            return Reach::Pending;
        }
        // Connect, push, and a retry's worth of slack.
        match tokio::time::timeout(self.spec.timeout * 4 + Duration::from_millis(100), answer).await {
            Ok(Ok(true)) => Reach::Fleet,
            Ok(Ok(false)) => Reach::ThisReplicaOnly,
            Ok(Err(_)) | Err(_) => Reach::Pending,
        }
    }

    fn take_inbox(&self) -> Option<mpsc::Receiver<Command>> {
        self.inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

/// `[cluster] replica_name`, else `<host name>/<process ID>`.
pub fn replica_name(spec: &ClusterSpec) -> String {
    spec.replica_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        format!("{}/{}", if host.is_empty() { "gateway" } else { host }, std::process::id())
    })
}
