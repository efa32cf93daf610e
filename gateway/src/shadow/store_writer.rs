//! The store's writer: a bounded queue that never blocks the caller, drained
//! by one background thread (SQLite calls block) in batched transactions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::store::{apply_retention, connect, now_unix_ms, DiffRecord, DiffStore};

/// Records per transaction: one fsync-free WAL commit amortised over many rows.
pub const BATCH: usize = 256;

/// Retention runs at most this often (deleting is cheap, but not per batch).
const RETENTION_EVERY: Duration = Duration::from_secs(1);

pub(super) enum Msg {
    Record(Box<DiffRecord>),
    /// Answered once everything queued before it is committed and retention ran.
    Flush(mpsc::Sender<Result<(), String>>),
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
            run(&store, conn, &rx, &thread_dropped);
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
    pub fn flush(&self) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Flush(tx)).map_err(|_| "shadow store writer is gone".to_string())?;
        rx.recv().map_err(|_| "shadow store writer stopped before flushing".to_string())?
    }

    /// A writer whose queue nobody drains, so queue-full drops are deterministic.
    #[cfg(test)]
    pub(super) fn detached(queue: usize) -> (DiffWriter, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(queue);
        (DiffWriter { tx, dropped: Arc::new(AtomicU64::new(0)) }, rx)
    }
}

fn run(store: &DiffStore, mut conn: Connection, rx: &Receiver<Msg>, dropped: &AtomicU64) {
    let mut last_retention = Instant::now();
    loop {
        let first = match rx.recv_timeout(RETENTION_EVERY) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut records = Vec::new();
        let mut flushes = Vec::new();
        // Whatever else is already queued joins the same transaction.
        for msg in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match msg {
                Msg::Record(r) => records.push(*r),
                Msg::Flush(reply) => flushes.push(reply),
            }
            if records.len() + flushes.len() >= BATCH {
                break;
            }
        }
        let mut result = Ok(());
        if !records.is_empty() {
            result = store.insert_batch(&mut conn, &mut records);
            if let Err(e) = &result {
                dropped.fetch_add(records.len() as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, records = records.len(), "shadow records not stored");
            }
        }
        // Age-based retention must also run while no traffic arrives, hence the timeout above.
        if !flushes.is_empty() || last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
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
