//! The sync task: the only code that talks to the store for shared state.
//!
//! It runs on the control plane's runtime and serialises everything that
//! touches the store and the merged state: pushes of local changes,
//! messages from the subscriber, full reads (at start, after every
//! (re)subscription, and every `reconcile`), garbage collection of spent
//! records, and the cluster rate-limit exchange. While the store is
//! unreachable it retries every second; the replica keeps serving from
//! memory. State-file writes run on the blocking pool, one per batch, so the
//! control plane's other tasks (health checks, the config watcher) never
//! wait on a disk.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use ipnet::IpNet;
use pingora_core::server::ShutdownWatch;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::record::{self, RecordKey, SharedRecord, Stamp};
use super::store::{Store, StoreError};
use super::{ClusterLink, Command, StoreState};
use crate::control::reload::Reloader;
use crate::control::runtime::RuntimeState;
use crate::control::state::PersistedCluster;

/// What the subscriber hands the sync task.
enum Inbound {
    /// A change published by a replica (maybe this one).
    Change(String),
    /// (Re)subscribed: messages may have been missed, read everything.
    Subscribed,
    /// The subscription's connection dropped: check the store now.
    Lost,
}

/// How often a replica whose store is unreachable tries again; also the ping interval.
const RETRY: Duration = Duration::from_secs(1);
/// The last-sync time is written to the state file at most this often.
const PERSIST_SYNC_EVERY: Duration = Duration::from_secs(60);
/// Keys per rate-limit script call.
const LIMIT_BATCH: usize = 1000;
/// Messages merged in one state-file write.
const MESSAGE_BATCH: usize = 256;

pub async fn run(reloader: Arc<Reloader>, link: Arc<ClusterLink>, mut shutdown: ShutdownWatch) {
    let Some(mut commands) = link.take_inbox() else { return };
    let mut store = match Store::new(&link.spec) {
        Ok(s) => s,
        Err(e) => {
            // `check` refuses such a URL; reaching here is a bug, and the replica still serves.
            tracing::error!(error = %e, "cluster store cannot be used; serving from the state file only");
            return;
        }
    };
    let (inbound_tx, mut inbound) = mpsc::channel(4096);
    let (client, channel) = (store.client(), store.keys.channel.clone());
    let subscribe_to = |link: &Arc<ClusterLink>| -> JoinHandle<()> {
        tokio::spawn(subscribe(client.clone(), channel.clone(), Arc::clone(link), inbound_tx.clone()))
    };
    let mut subscriber = subscribe_to(&link);
    let mut sync =
        Sync { runtime: Arc::clone(&reloader.runtime), reloader, link: Arc::clone(&link), last_persisted: None };
    let mut reconcile = tokio::time::interval(link.spec.reconcile);
    let mut limits = tokio::time::interval(link.spec.rate_limit_sync);
    let mut second = tokio::time::interval(RETRY);
    for t in [&mut reconcile, &mut limits, &mut second] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // The first reconcile tick fires at once: the start-up read.
    let mut started = false;
    loop {
        let was = link.health.state();
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(cmd) = commands.recv() => match cmd {
                Command::Push(reply) => {
                    let ok = sync.push_pending(&mut store).await.is_ok();
                    let _ = reply.send(ok);
                }
            },
            Some(first) = inbound.recv() => {
                // Everything already queued goes into one merge (one state-file write).
                let mut changes = Vec::new();
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg {
                        Inbound::Change(payload) => changes.push(payload),
                        Inbound::Subscribed => sync.reconcile(&mut store).await,
                        Inbound::Lost => sync.ping(&mut store).await,
                    }
                    if changes.len() < MESSAGE_BATCH {
                        next = inbound.try_recv().ok();
                    }
                }
                sync.take_messages(changes).await;
            },
            _ = reconcile.tick() => {
                sync.reconcile(&mut store).await;
                if !started {
                    started = true;
                    if link.health.state() != StoreState::Ok {
                        tracing::warn!(
                            target: "cluster",
                            blocks = sync.runtime.blacklist.len(),
                            last_sync = ?link.health.last_sync().map(crate::admin::times::rfc3339_seconds),
                            "cluster store unreachable at start: enforcing the blocks and degrade level last seen (state file)"
                        );
                    }
                }
            }
            _ = limits.tick() => sync.flush_limits(&mut store).await,
            _ = second.tick() => {
                match link.health.state() {
                    StoreState::Unreachable => sync.reconcile(&mut store).await,
                    // A hung or vanished store is noticed within a second even when nothing changes.
                    StoreState::Ok | StoreState::Starting => sync.ping(&mut store).await,
                }
                sync.update_gauges();
            }
        }
        if was == StoreState::Unreachable && link.health.state() == StoreState::Ok {
            // A subscription that outlived the outage may be dead without knowing it
            // (a partition that dropped packets sends no reset): start a fresh one.
            subscriber.abort();
            subscriber = subscribe_to(&link);
        }
    }
    subscriber.abort();
}

struct Sync {
    reloader: Arc<Reloader>,
    runtime: Arc<RuntimeState>,
    link: Arc<ClusterLink>,
    last_persisted: Option<SystemTime>,
}

/// Run state-file work on the blocking pool; a failure is logged with `what`.
async fn on_disk<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, crate::control::state::StateError> + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(target: "cluster", error = %e, "cannot persist {what}");
            None
        }
        Err(e) => {
            tracing::warn!(target: "cluster", error = %e, "persisting {what} failed");
            None
        }
    }
}

impl Sync {
    /// Note a call's outcome: status, metrics, and a log line on each change
    /// of state. An error answer from a reachable store is counted and
    /// logged but does not make it "unreachable".
    fn outcome<T>(&self, op: &str, result: &Result<T, StoreError>) {
        let health = &self.link.health;
        let reached = match result {
            Ok(_) => true,
            Err(e) => {
                self.link.metrics.store_errors.with_label_values(&[op]).inc();
                if !e.is_unreachable() {
                    tracing::warn!(target: "cluster", op, error = %e, "the cluster store refused a call");
                }
                !e.is_unreachable()
            }
        };
        if reached {
            if health.set(StoreState::Ok) {
                tracing::info!(target: "cluster", store = %self.link.spec.redis_display(), "cluster store reachable");
            }
            self.link.metrics.store_up.set(1);
        } else {
            if health.set(StoreState::Unreachable) {
                if let Err(e) = result {
                    tracing::warn!(
                        target: "cluster", store = %self.link.spec.redis_display(), error = %e,
                        "cluster store unreachable: serving what this replica last saw; changes made here are pushed when it returns"
                    );
                }
            }
            self.link.metrics.store_up.set(0);
        }
    }

    async fn ping(&mut self, store: &mut Store) {
        let result = store.ping().await;
        self.outcome("ping", &result);
    }

    /// Push every local change the store does not have, together.
    async fn push_pending(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let runtime = Arc::clone(&self.runtime);
        let mut records: Vec<(RecordKey, SharedRecord)> =
            runtime.blacklist.pending().into_iter().map(|(cidr, r)| (RecordKey::Block(cidr), r)).collect();
        if let Some(d) = runtime.pending_degrade() {
            records.push((RecordKey::Degrade, d));
        }
        records.extend(runtime.rollouts.pending().into_iter().map(|(route, r)| (RecordKey::Rollout(route), r)));
        if records.is_empty() {
            return Ok(());
        }
        let calls: Vec<(String, u64, String, String)> =
            records.iter().map(|(key, r)| (key.field(), r.stamp.at_ms, r.stamp.origin.clone(), r.to_json())).collect();
        let result = store.put_all(&calls).await;
        self.outcome("push", &result);
        let answers = result?;
        let mut stored_blocks: Vec<(IpNet, Stamp)> = Vec::new();
        let mut stored_rollouts: Vec<(String, Stamp)> = Vec::new();
        let mut stored_degrade = None;
        let mut theirs = Vec::new();
        for ((key, record), answer) in records.into_iter().zip(answers) {
            let field = key.field();
            let stored = match answer {
                None => true,
                // The store had this change already, or a newer one: take that in.
                Some(json) => match SharedRecord::parse(&field, &json) {
                    Ok((_, r)) if r.stamp == record.stamp => true,
                    Ok(parsed) => {
                        theirs.push(parsed);
                        false
                    }
                    Err(e) => {
                        tracing::warn!(target: "cluster", error = %e, "unreadable record in the store");
                        false
                    }
                },
            };
            match (stored, key) {
                (true, RecordKey::Block(cidr)) => stored_blocks.push((cidr, record.stamp)),
                (true, RecordKey::Degrade) => stored_degrade = Some(record.stamp),
                (true, RecordKey::Rollout(route)) => stored_rollouts.push((route, record.stamp)),
                (false, _) => {}
            }
        }
        let rt = Arc::clone(&runtime);
        on_disk("that changes reached the store", move || {
            rt.blacklist.mark_stored(&stored_blocks)?;
            rt.rollouts.mark_stored(&stored_rollouts)?;
            match stored_degrade {
                Some(stamp) => rt.degrade_stored(&stamp),
                None => Ok(()),
            }
        })
        .await;
        if !theirs.is_empty() {
            self.merge(theirs, false).await;
        }
        self.update_gauges();
        Ok(())
    }

    /// Published changes: merge them (ours come back too, and change nothing).
    async fn take_messages(&mut self, payloads: Vec<String>) {
        if payloads.is_empty() {
            return;
        }
        let mut records = Vec::with_capacity(payloads.len());
        for payload in payloads {
            match record::parse_message(&payload) {
                Ok((key, r)) => {
                    if r.stamp.origin != self.link.origin {
                        self.link.metrics.changes_received.inc();
                    }
                    records.push((key, r));
                }
                Err(e) => tracing::warn!(target: "cluster", error = %e, "ignored an unreadable change message"),
            }
        }
        self.merge(records, false).await;
    }

    /// Merge records into the run-time state; `complete` when they are the whole store.
    async fn merge(&mut self, records: Vec<(RecordKey, SharedRecord)>, complete: bool) {
        let runtime = Arc::clone(&self.runtime);
        let mut blocks: Vec<(IpNet, SharedRecord)> = Vec::new();
        let mut rollouts: Vec<(String, SharedRecord)> = Vec::new();
        let mut degrade = None;
        for (key, r) in records {
            match key {
                RecordKey::Block(cidr) => blocks.push((cidr, r)),
                RecordKey::Degrade => degrade = Some(r),
                RecordKey::Rollout(route) => rollouts.push((route, r)),
            }
        }
        let rt = Arc::clone(&runtime);
        let merged = on_disk("the fleet's changes", move || {
            let blocks = if blocks.is_empty() && !complete { 0 } else { rt.blacklist.merge(blocks, complete)? };
            let rollouts_changed = match !rollouts.is_empty() || complete {
                true => !rt.rollouts.merge(rollouts, complete)?.is_empty(),
                false => false,
            };
            let degrade_moved = match &degrade {
                Some(r) => rt.merge_degrade(r)?.then(|| r.stamp.origin.clone()),
                None => None,
            };
            Ok((blocks, degrade_moved, rollouts_changed))
        })
        .await;
        let Some((blocks, degrade_moved, rollouts_changed)) = merged else { return };
        if rollouts_changed {
            // A step decided elsewhere applies here now, not at the controller's next tick.
            crate::release::controller::apply(&self.reloader);
        }
        if blocks > 0 {
            tracing::info!(target: "blacklist", changed = blocks, "run-time blocks changed by the fleet");
        }
        if let Some(by) = degrade_moved {
            let level = runtime.degrade_level(self.reloader.snapshots.load().config.degrade_level);
            self.reloader.metrics.degrade_level.set(i64::from(level));
            tracing::warn!(target: "cluster", level, by = %by, "degrade level changed by the fleet");
        }
    }

    /// Push, read everything, merge, collect spent records.
    async fn reconcile(&mut self, store: &mut Store) {
        let result = self.try_reconcile(store).await;
        self.outcome("read", &result);
        self.update_gauges();
    }

    async fn try_reconcile(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.push_pending(store).await?;
        let now = SystemTime::now();
        let mut records = Vec::new();
        for (field, json) in store.read_all().await? {
            let parsed = match (std::str::from_utf8(&field), std::str::from_utf8(&json)) {
                (Ok(f), Ok(j)) => SharedRecord::parse(f, j).map(|p| (p, f, j)),
                _ => Err("a field or record that is not UTF-8".to_string()),
            };
            match parsed {
                Ok(((_, r), f, j)) if r.is_spent(now) => {
                    let gc = store.delete_if_same(f, j).await;
                    self.outcome("gc", &gc);
                }
                Ok((parsed, _, _)) => records.push(parsed),
                Err(e) => tracing::warn!(target: "cluster", error = %e, "ignored an unreadable record in the store"),
            }
        }
        let has_degrade = records.iter().any(|(k, _)| *k == RecordKey::Degrade);
        self.merge(records, true).await;
        if !has_degrade {
            // The store lacks the level (new, emptied, or restored from an old
            // snapshot): this replica's goes up again with the next push.
            let rt = Arc::clone(&self.runtime);
            on_disk("the degrade level", move || rt.mark_degrade_pending()).await;
        }
        // What the full read showed the store lacks (or holds older) goes back up.
        self.push_pending(store).await?;
        self.link.health.synced(now);
        if self.last_persisted.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= PERSIST_SYNC_EVERY) {
            let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let rt = Arc::clone(&self.runtime);
            on_disk("the cluster sync time", move || {
                rt.state.update(|s| s.cluster = Some(PersistedCluster { last_sync_unix: Some(secs) }))
            })
            .await;
            self.last_persisted = Some(now);
        }
        Ok(())
    }

    /// Exchange the cluster rate limits' counts with the store.
    async fn flush_limits(&mut self, store: &mut Store) {
        for limiter in self.link.limits.live() {
            let Some(budget) = limiter.shared_budget() else { continue };
            let counts = budget.drain();
            if counts.is_empty() || self.link.health.state() == StoreState::Unreachable {
                continue;
            }
            let interval_us = u64::try_from(limiter.interval().as_micros()).unwrap_or(u64::MAX).max(1);
            for chunk in counts.chunks(LIMIT_BATCH) {
                let keys: Vec<String> =
                    chunk.iter().map(|(k, _)| store.keys.limit(&budget.name, xxhash_rust::xxh3::xxh3_64(k))).collect();
                let ns: Vec<u32> = chunk.iter().map(|(_, n)| *n).collect();
                let result = store.gcra(&keys, interval_us, &ns).await;
                self.outcome("rate_limit", &result);
                let Ok(aheads) = result else { break };
                for ((key, _), ahead) in chunk.iter().zip(aheads) {
                    let ahead = Duration::from_micros(u64::try_from(ahead).unwrap_or(0));
                    limiter.adopt(key, ahead);
                }
            }
        }
    }

    fn update_gauges(&self) {
        let runtime = &self.runtime;
        let pending = runtime.blacklist.pending().len()
            + usize::from(runtime.pending_degrade().is_some())
            + runtime.rollouts.pending().len();
        self.link.metrics.pending_changes.set(i64::try_from(pending).unwrap_or(i64::MAX));
        let since = self.link.health.last_sync().unwrap_or(self.link.started);
        let age = SystemTime::now().duration_since(since).unwrap_or_default().as_secs();
        self.link.metrics.sync_age.set(i64::try_from(age).unwrap_or(i64::MAX));
    }
}

/// Keep a subscription to the changes channel, reconnecting every second
/// while the store is away; each (re)subscription asks for a full read.
async fn subscribe(client: redis::Client, channel: String, link: Arc<ClusterLink>, out: mpsc::Sender<Inbound>) {
    loop {
        let connected = tokio::time::timeout(link.spec.timeout, client.get_async_pubsub()).await;
        let mut pubsub = match connected {
            Ok(Ok(p)) => p,
            _ => {
                link.metrics.store_errors.with_label_values(&["subscribe"]).inc();
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if tokio::time::timeout(link.spec.timeout, pubsub.subscribe(&channel)).await.map_or(true, |r| r.is_err()) {
            link.metrics.store_errors.with_label_values(&["subscribe"]).inc();
            tokio::time::sleep(RETRY).await;
            continue;
        }
        if out.send(Inbound::Subscribed).await.is_err() {
            return;
        }
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(payload) = msg.get_payload::<String>() else { continue };
            if out.send(Inbound::Change(payload)).await.is_err() {
                return;
            }
        }
        // The connection dropped: the next full read repairs what was missed.
        link.metrics.store_errors.with_label_values(&["subscribe"]).inc();
        drop(messages);
        if out.send(Inbound::Lost).await.is_err() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
