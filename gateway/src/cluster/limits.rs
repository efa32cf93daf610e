//! Cluster rate limits: one budget for the whole fleet, without a store
//! round trip per request.
//!
//! Each replica judges requests with its own GCRA table, as for a replica
//! limit, and counts the ones it admits per key. Every `rate_limit_sync`
//! the sync task sends those counts to the store, where a Lua script moves
//! each key's fleet-wide arrival time (`store::GCRA_BATCH`), and takes back
//! how far ahead of now each key is: the replica's table adopts that, so a
//! key busy on other replicas is refused here too. The fleet admits about
//! `rate` in the long run; between two syncs each replica may admit on its
//! own, so the excess is bounded by about (replicas − 1) × rate × sync
//! interval (benches/README.md measures it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::{ClusterLink, StoreState};
use crate::config::OnStoreError;
use crate::edge::rate_limit::RateLimiter;

/// Keys counted per limit between two syncs; beyond, further keys are
/// judged only locally until the next sync (a flood of distinct addresses
/// must not grow memory without bound).
pub const MAX_KEYS_PER_SYNC: usize = 100_000;

/// Counts are kept in shards chosen by the key's hash, so proxy threads
/// counting different keys rarely meet on one lock.
const SHARDS: usize = 16;

/// The part of a rate limiter that a fleet shares.
pub struct SharedBudget {
    /// Names the limit in the store: scope, key kind and spec.
    pub name: String,
    on_store_error: OnStoreError,
    link: Arc<ClusterLink>,
    counts: [Mutex<HashMap<Box<[u8]>, u32>>; SHARDS],
}

/// How a cluster limit judges a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// The local table (with what the fleet counted so far); `count`: the
    /// admitted request is counted for the next exchange (not while the
    /// store is unreachable: those counts could not be sent).
    Local {
        count: bool,
    },
    Allow,
    Deny,
}

impl SharedBudget {
    pub fn new(name: String, on_store_error: OnStoreError, link: Arc<ClusterLink>) -> SharedBudget {
        SharedBudget { name, on_store_error, link, counts: std::array::from_fn(|_| Mutex::new(HashMap::new())) }
    }

    /// Per request: one atomic load.
    pub fn judge(&self) -> Judge {
        match (self.link.health.state(), self.on_store_error) {
            (StoreState::Unreachable, OnStoreError::Allow) => Judge::Allow,
            (StoreState::Unreachable, OnStoreError::Deny) => Judge::Deny,
            (StoreState::Unreachable, OnStoreError::Local) => Judge::Local { count: false },
            (StoreState::Ok | StoreState::Starting, _) => Judge::Local { count: true },
        }
    }

    /// Count one admitted request for the next sync.
    pub fn count(&self, key: &[u8]) {
        let shard = (xxhash_rust::xxh3::xxh3_64(key) % SHARDS as u64) as usize;
        let mut counts = self.counts[shard].lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(key) {
            *n = n.saturating_add(1);
        } else if counts.len() < MAX_KEYS_PER_SYNC / SHARDS {
            counts.insert(key.into(), 1);
        }
    }

    /// The counts since the last sync.
    pub fn drain(&self) -> Vec<(Box<[u8]>, u32)> {
        let mut out = Vec::new();
        for shard in &self.counts {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner));
            out.extend(taken);
        }
        out
    }
}

/// The cluster limits of the configs in use, for the sync task to flush.
#[derive(Default)]
pub struct SharedLimits {
    limiters: Mutex<Vec<Weak<RateLimiter>>>,
}

impl SharedLimits {
    pub fn register(&self, limiter: &Arc<RateLimiter>) {
        self.limiters.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(limiter));
    }

    /// The limiters still in use; forgets the others.
    pub fn live(&self) -> Vec<Arc<RateLimiter>> {
        let mut list = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }
}
