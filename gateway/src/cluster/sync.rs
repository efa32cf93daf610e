//! The sync task: the only code that talks to the store for shared state.
//!
//! It runs on the control plane's runtime and serialises everything that
//! touches the store and the merged state: pushes of local changes,
//! messages from the subscriber, full reads (at start, after every
//! reconnect, and every `reconcile`), garbage collection of spent records,
//! and the cluster rate-limit exchange. While the store is unreachable it
//! retries every second; the replica keeps serving from memory.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use ipnet::IpNet;
use pingora_core::server::ShutdownWatch;
use tokio::sync::mpsc;

use super::record::{self, RecordKey, SharedRecord};
use super::store::{Store, StoreError};
use super::{ClusterLink, Command, StoreState};
use crate::control::reload::Reloader;
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

/// How often a replica whose store is unreachable tries again.
const RETRY: Duration = Duration::from_secs(1);
/// The last-sync time is written to the state file at most this often.
const PERSIST_SYNC_EVERY: Duration = Duration::from_secs(60);
/// Keys per rate-limit script call.
const LIMIT_BATCH: usize = 1000;

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
    let (inbound_tx, mut inbound) = mpsc::channel(1024);
    let subscriber = tokio::spawn(subscribe(store.client(), store.keys.channel.clone(), Arc::clone(&link), inbound_tx));
    let mut sync = Sync { reloader, link: Arc::clone(&link), last_persisted: None };
    let initial = sync.reloader.runtime.blacklist.len();
    let mut reconcile = tokio::time::interval(link.spec.reconcile);
    let mut limits = tokio::time::interval(link.spec.rate_limit_sync);
    let mut second = tokio::time::interval(RETRY);
    for t in [&mut reconcile, &mut limits, &mut second] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // The first reconcile tick fires at once: the start-up read.
    let mut started = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(cmd) = commands.recv() => match cmd {
                Command::Push(reply) => {
                    let ok = sync.push_pending(&mut store).await.is_ok();
                    let _ = reply.send(ok);
                }
            },
            Some(msg) = inbound.recv() => match msg {
                Inbound::Change(payload) => sync.take_message(&payload),
                Inbound::Subscribed => sync.reconcile(&mut store).await,
                Inbound::Lost => sync.ping(&mut store).await,
            },
            _ = reconcile.tick() => {
                sync.reconcile(&mut store).await;
                if !started {
                    started = true;
                    if link.health.state() != StoreState::Ok {
                        tracing::warn!(
                            target: "cluster",
                            blocks = initial,
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
    }
    subscriber.abort();
}

struct Sync {
    reloader: Arc<Reloader>,
    link: Arc<ClusterLink>,
    last_persisted: Option<SystemTime>,
}

impl Sync {
    /// Note a call's outcome: status, metrics, and a log line on each change of state.
    fn outcome<T>(&self, op: &str, result: &Result<T, StoreError>) {
        let health = &self.link.health;
        match result {
            Ok(_) => {
                if health.set(StoreState::Ok) {
                    tracing::info!(target: "cluster", store = %self.link.spec.redis_display(), "cluster store reachable");
                }
                self.link.metrics.store_up.set(1);
            }
            Err(e) => {
                self.link.metrics.store_errors.with_label_values(&[op]).inc();
                if health.set(StoreState::Unreachable) {
                    tracing::warn!(
                        target: "cluster", store = %self.link.spec.redis_display(), error = %e,
                        "cluster store unreachable: serving what this replica last saw; changes made here are pushed when it returns"
                    );
                }
                self.link.metrics.store_up.set(0);
            }
        }
    }

    async fn ping(&mut self, store: &mut Store) {
        let result = store.ping().await;
        self.outcome("ping", &result);
    }

    /// Push every local change the store does not have. Stops at the first failure.
    async fn push_pending(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let runtime = Arc::clone(&self.reloader.runtime);
        let mut records: Vec<(RecordKey, SharedRecord)> =
            runtime.blacklist.pending().into_iter().map(|(cidr, r)| (RecordKey::Block(cidr), r)).collect();
        if let Some(d) = runtime.pending_degrade() {
            records.push((RecordKey::Degrade, d));
        }
        for (key, record) in records {
            let field = key.field();
            let result = store.put(&field, record.stamp.at_ms, &record.stamp.origin, &record.to_json()).await;
            self.outcome("push", &result);
            match result? {
                None => self.stored(&key, &record),
                // The store had this change already, or a newer one: take it in.
                Some(theirs) => match SharedRecord::parse(&field, &theirs) {
                    Ok((_, theirs)) if theirs.stamp == record.stamp => self.stored(&key, &record),
                    Ok((key, theirs)) => self.merge(vec![(key, theirs)], false),
                    Err(e) => tracing::warn!(target: "cluster", error = %e, "unreadable record in the store"),
                },
            }
        }
        self.update_gauges();
        Ok(())
    }

    fn stored(&self, key: &RecordKey, record: &SharedRecord) {
        let runtime = &self.reloader.runtime;
        let result = match key {
            RecordKey::Block(cidr) => runtime.blacklist.mark_stored(*cidr, &record.stamp),
            RecordKey::Degrade => runtime.degrade_stored(&record.stamp),
        };
        if let Err(e) = result {
            tracing::warn!(target: "cluster", error = %e, "cannot persist that a change reached the store");
        }
    }

    /// A published change: merge it (ours come back too, and change nothing).
    fn take_message(&mut self, payload: &str) {
        match record::parse_message(payload) {
            Ok((key, r)) => {
                if r.stamp.origin != self.link.origin {
                    self.link.metrics.changes_received.inc();
                }
                self.merge(vec![(key, r)], false);
            }
            Err(e) => tracing::warn!(target: "cluster", error = %e, "ignored an unreadable change message"),
        }
    }

    /// Merge records into the run-time state; `complete` when they are the whole store.
    fn merge(&mut self, records: Vec<(RecordKey, SharedRecord)>, complete: bool) {
        let runtime = Arc::clone(&self.reloader.runtime);
        let mut blocks: Vec<(IpNet, SharedRecord)> = Vec::new();
        for (key, r) in records {
            match key {
                RecordKey::Block(cidr) => blocks.push((cidr, r)),
                RecordKey::Degrade => match runtime.merge_degrade(&r) {
                    Ok(true) => {
                        let snapshot = self.reloader.snapshots.load();
                        let level = runtime.degrade_level(snapshot.config.degrade_level);
                        self.reloader.metrics.degrade_level.set(i64::from(level));
                        tracing::warn!(target: "cluster", level, by = %r.stamp.origin, "degrade level changed by the fleet");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(target: "cluster", error = %e, "cannot persist the fleet's degrade level"),
                },
            }
        }
        if blocks.is_empty() && !complete {
            return;
        }
        match runtime.blacklist.merge(blocks, complete) {
            Ok(0) => {}
            Ok(n) => tracing::info!(target: "blacklist", changed = n, "run-time blocks changed by the fleet"),
            Err(e) => tracing::warn!(target: "cluster", error = %e, "cannot persist the fleet's blocks"),
        }
    }

    /// Push, check the store's epoch, read everything, merge, collect spent records.
    async fn reconcile(&mut self, store: &mut Store) {
        let result = self.try_reconcile(store).await;
        self.outcome("read", &result);
        self.update_gauges();
    }

    async fn try_reconcile(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.push_pending(store).await?;
        let runtime = Arc::clone(&self.reloader.runtime);
        let known = runtime.state.load().ok().and_then(|s| s.cluster).unwrap_or_default();
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let epoch = store.epoch(&fresh).await?;
        if known.epoch.as_deref() != Some(epoch.as_str()) {
            // A new store, an emptied one, or a first contact: push everything this replica knows.
            let blocks = runtime.blacklist.mark_all_pending().unwrap_or(0);
            let degrade = runtime.mark_degrade_pending().unwrap_or(false);
            if known.epoch.is_some() && (blocks > 0 || degrade) {
                tracing::warn!(target: "cluster", blocks, "the cluster store lost its state (new epoch): pushing this replica's copy");
            }
            self.push_pending(store).await?;
        }
        let now = SystemTime::now();
        let mut records = Vec::new();
        for (field, json) in store.read_all().await? {
            match SharedRecord::parse(&field, &json) {
                Ok((_, r)) if r.is_spent(now) => {
                    let gc = store.delete_if_same(&field, &json).await;
                    self.outcome("gc", &gc);
                }
                Ok(parsed) => records.push(parsed),
                Err(e) => tracing::warn!(target: "cluster", error = %e, "ignored an unreadable record in the store"),
            }
        }
        let degrade = records.iter().find(|(k, _)| *k == RecordKey::Degrade).is_some();
        self.merge(records, true);
        if !degrade {
            // The store has no level yet: ours (if set here) goes up with the next push.
            let _ = runtime.mark_degrade_pending();
        }
        self.push_pending(store).await?;
        self.link.health.synced(now);
        if known.epoch.as_deref() != Some(epoch.as_str())
            || self.last_persisted.is_none_or(|t| now.duration_since(t).unwrap_or_default() >= PERSIST_SYNC_EVERY)
        {
            let cluster = PersistedCluster {
                epoch: Some(epoch),
                last_sync_unix: Some(now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())),
            };
            if let Err(e) = runtime.state.update(|s| s.cluster = Some(cluster)) {
                tracing::warn!(target: "cluster", error = %e, "cannot persist the cluster sync time");
            }
            self.last_persisted = Some(now);
        }
        Ok(())
    }

    /// Exchange the cluster rate limits' counts with the store.
    async fn flush_limits(&mut self, store: &mut Store) {
        for limiter in self.link.limits.live() {
            let Some(budget) = limiter.shared_budget() else { continue };
            let counts: Vec<(Box<[u8]>, u32)> = budget.drain().into_iter().collect();
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
        let runtime = &self.reloader.runtime;
        let pending = runtime.blacklist.pending().len() + usize::from(runtime.pending_degrade().is_some());
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
