//! The store's writer: a bounded queue that never blocks the caller, drained
//! by one background thread (SQLite calls block) in batched transactions.
//!
//! Past `shadow.store_per_second` records per route and outcome, records are
//! counted instead of stored: they are added to the `weight` of the newest
//! stored record of that route and outcome, so the summary's outcome counts
//! stay exact counts of comparisons while the disk sees a bounded write rate.
//! Rare outcomes (errors, timeouts, differences) are not crowded out by
//! identical answers, because each outcome has its own budget. Per-path
//! counts become estimates once records are skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::store::{apply_retention, connect, now_unix_ms, DiffRecord, DiffStore, StoreError};

/// Records per transaction: one fsync-free WAL commit amortised over many rows.
pub const BATCH: usize = 256;

/// How long the writer gathers records into one transaction.
const COLLECT: Duration = Duration::from_millis(100);

/// Retention runs at most this often (deleting is cheap, but not per batch).
const RETENTION_EVERY: Duration = Duration::from_secs(1);

pub(super) enum Msg {
    Record(Box<DiffRecord>),
    /// Answered once everything queued before it is committed and retention ran.
    Flush(mpsc::Sender<Result<(), StoreError>>),
}

/// The sending side, cloned into every task that finishes a comparison.
#[derive(Clone)]
pub struct DiffWriter {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl DiffStore {
    /// Starts a writer thread with a queue of `queue` records. The thread ends
    /// once every clone of the returned writer is dropped and the queue is drained.
    pub fn writer(self: &Arc<Self>, queue: usize) -> DiffWriter {
        self.writer_with_budget(queue, None)
    }

    /// Like [`writer`](Self::writer), storing at most `per_second` records per
    /// route and outcome (`None`: every record).
    pub fn writer_with_budget(self: &Arc<Self>, queue: usize, per_second: Option<u32>) -> DiffWriter {
        let (tx, rx) = mpsc::sync_channel(queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let store = Arc::clone(self);
        let thread_dropped = Arc::clone(&dropped);
        let conn = self.first_writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        let spawned = std::thread::Builder::new().name("shadow-store".into()).spawn(move || {
            // Storing diffs is shadow work too: it yields the CPU to real traffic.
            super::lane::lower_priority_of_this_thread();
            let conn = match conn.map_or_else(|| connect(&store.path, true), Ok) {
                Ok(c) => c,
                Err(e) => {
                    // The receiver drops with this closure: every send then counts as dropped.
                    tracing::error!(error = %e, "shadow store writer cannot start");
                    return;
                }
            };
            run(&store, conn, &rx, &thread_dropped, StoreBudget::new(per_second));
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn the shadow store writer");
        }
        DiffWriter { tx, dropped }
    }
}

impl DiffWriter {
    /// Queues a record for storing; never blocks. False when it was dropped
    /// because the queue is full or the writer thread is gone.
    pub fn try_send(&self, record: DiffRecord) -> bool {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records not stored: queue full, writer gone, or the insert failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until every record queued before the call is committed and
    /// retention has run; for tests and shutdown, not the request path.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Flush(tx)).map_err(|_| StoreError::Writer("is gone"))?;
        rx.recv().map_err(|_| StoreError::Writer("stopped before flushing"))?
    }

    /// A writer whose queue nobody drains, so queue-full drops are deterministic.
    #[cfg(test)]
    pub(super) fn detached(queue: usize) -> (DiffWriter, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(queue);
        (DiffWriter { tx, dropped: Arc::new(AtomicU64::new(0)) }, rx)
    }
}

/// Token buckets per (route, outcome), and what each key skipped since its
/// last stored record.
pub(super) struct StoreBudget {
    per_second: Option<f64>,
    keys: HashMap<(String, String), Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// The key's newest stored record, which the skipped ones are added to.
    last_id: Option<i64>,
    /// A record was admitted: skipping can start (the first is always kept).
    admitted: bool,
    skipped: u64,
}

fn key_of(record: &DiffRecord) -> (String, String) {
    (record.route.clone(), record.outcome.clone())
}

impl StoreBudget {
    pub(super) fn new(per_second: Option<u32>) -> Self {
        StoreBudget { per_second: per_second.map(f64::from), keys: HashMap::new() }
    }

    /// Whether to store `record`; a record not stored is counted instead.
    pub(super) fn admit(&mut self, record: &DiffRecord, now: Instant) -> bool {
        let Some(rate) = self.per_second else {
            return true;
        };
        let bucket = self.keys.entry(key_of(record)).or_insert(Bucket {
            tokens: rate,
            refilled: now,
            last_id: None,
            admitted: false,
            skipped: 0,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * rate).min(rate);
        bucket.refilled = now;
        if bucket.tokens < 1.0 && bucket.admitted {
            bucket.skipped += 1;
            return false;
        }
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        bucket.admitted = true;
        true
    }

    /// Records stored (with their ids): skipped records of their keys are
    /// added to them from now on.
    pub(super) fn stored(&mut self, records: &[DiffRecord]) {
        if self.per_second.is_none() {
            return;
        }
        for r in records {
            if let Some(bucket) = self.keys.get_mut(&key_of(r)) {
                bucket.last_id = Some(r.id);
            }
        }
    }

    /// Adds the skipped counts to each key's newest stored record, so a
    /// summary counts every comparison (at most a batch or a second late).
    pub(super) fn write_skipped(&mut self, conn: &Connection) -> Result<(), StoreError> {
        for bucket in self.keys.values_mut().filter(|b| b.skipped > 0) {
            let Some(id) = bucket.last_id else { continue };
            let n = i64::try_from(bucket.skipped).unwrap_or(i64::MAX);
            let updated = conn
                .execute("UPDATE shadow_records SET weight = weight + ?1 WHERE id = ?2", [n, id])
                .map_err(super::store::sql_err("weight"))?;
            if updated == 0 {
                // Retention removed that record: these comparisons are older
                // than what the store keeps anyway.
                bucket.last_id = None;
            }
            bucket.skipped = 0;
        }
        Ok(())
    }
}

fn run(store: &DiffStore, mut conn: Connection, rx: &Receiver<Msg>, dropped: &AtomicU64, mut budget: StoreBudget) {
    let mut last_retention = Instant::now();
    loop {
        let first = match rx.recv_timeout(RETENTION_EVERY) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut records = Vec::new();
        let mut flushes = Vec::new();
        // What arrives within COLLECT joins the same transaction: a few
        // commits a second however busy the route, since every commit is disk
        // work (measured: it shows in the primary's p99 on a shared machine).
        let until = Instant::now() + COLLECT;
        let more = || rx.recv_timeout(until.saturating_duration_since(Instant::now())).ok();
        for msg in first.into_iter().chain(std::iter::from_fn(more)) {
            match msg {
                Msg::Record(r) => {
                    if budget.admit(&r, Instant::now()) {
                        records.push(*r);
                    }
                }
                Msg::Flush(reply) => flushes.push(reply),
            }
            if records.len() >= BATCH || !flushes.is_empty() {
                break;
            }
        }
        let mut result = Ok(());
        if !records.is_empty() {
            result = store.insert_batch(&mut conn, &mut records);
            match &result {
                Ok(()) => budget.stored(&records),
                Err(e) => {
                    dropped.fetch_add(records.len() as u64, Ordering::Relaxed);
                    tracing::warn!(error = %e, records = records.len(), "shadow records not stored");
                }
            }
        }
        // Age-based retention must also run while no traffic arrives, hence the timeout above.
        if !flushes.is_empty() || last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            // Counts of records not stored: once a second, or when asked to flush.
            if let Err(e) = budget.write_skipped(&conn) {
                tracing::warn!(error = %e, "shadow store: counts of unstored records not written");
                result = result.and(Err(e));
            }
            if let Err(e) = apply_retention(&conn, store.retention, now_unix_ms()) {
                tracing::warn!(error = %e, "shadow store retention failed");
                result = result.and(Err(e));
            }
        }
        for reply in flushes {
            // The flusher may have given up waiting; nothing to do then.
            let _ = reply.send(result.clone());
        }
    }
}
