//! Blocks added at run time (admin API, CLI): small, persisted in the state
//! file, changed in place, and in a fleet shared through the cluster store.
//!
//! Each CIDR has one record: its block, or (in a fleet) the unblock that
//! ended it, with the stamp of the change. Local changes are stamped and
//! marked pending until the store has them; records from the store are
//! merged by the rule "latest change per CIDR wins" (`cluster::record`).
//! Lookups never lock: every change swaps a fresh set behind an `ArcSwap`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use super::blacklist::{BlockEntry, BlockError, BlockSource, MAX_BLOCK_TTL};
use super::ipset::IpSet;
use crate::cluster::record::{unix_ms, Body, SharedRecord, Stamp};
use crate::config::values;
use crate::control::state::{
    PersistedBlock, PersistedChange, PersistedState, PersistedUnblock, StateError, StateFile, MAX_UNIX_TIME,
};

/// Who this list's changes come from and whether a fleet shares them.
#[derive(Debug, Clone)]
pub struct Sharing {
    /// Names this replica in the stamps of its changes.
    pub origin: String,
    /// In a fleet: unblocks are remembered and changes stay pending until the store has them.
    pub fleet: bool,
}

impl Sharing {
    pub fn single() -> Sharing {
        Sharing { origin: "local".into(), fleet: false }
    }
}

/// One CIDR's latest change.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockRecord {
    pub cidr: IpNet,
    pub stamp: Stamp,
    /// `None`: unblocked (a tombstone; kept only in a fleet).
    pub block: Option<BlockEntry>,
    /// Not yet in the shared store.
    pub pending: bool,
}

impl BlockRecord {
    pub fn to_shared(&self) -> SharedRecord {
        let body = match &self.block {
            Some(b) => Body::Block {
                reason: b.reason.clone(),
                added_at: b.added_at.map_or(0, secs_down),
                expires_at: b.expires_at.map(|t| unix_secs(t).min(MAX_UNIX_TIME)),
            },
            None => Body::Unblocked,
        };
        SharedRecord { stamp: self.stamp.clone(), body }
    }

    fn from_shared(cidr: IpNet, r: SharedRecord) -> Option<BlockRecord> {
        let block = match r.body {
            Body::Block { reason, added_at, expires_at } => Some(BlockEntry {
                cidr,
                source: BlockSource::Api,
                reason,
                added_at: Some(from_unix(added_at)),
                expires_at: expires_at.map(from_unix),
            }),
            Body::Unblocked => None,
            Body::Degrade { .. } | Body::Rollout { .. } => return None,
        };
        Some(BlockRecord { cidr, stamp: r.stamp, block, pending: false })
    }

    fn is_spent(&self, now: SystemTime) -> bool {
        self.to_shared().is_spent(now)
    }

    fn is_expired(&self, now: SystemTime) -> bool {
        self.block.as_ref().is_some_and(|b| b.is_expired(now))
    }
}

pub struct RuntimeBlacklist {
    state: Arc<StateFile>,
    /// In the order CIDRs were first blocked; the source of truth for the set and the file.
    records: Mutex<Vec<BlockRecord>>,
    set: ArcSwap<IpSet<Arc<BlockEntry>>>,
    sharing: Sharing,
    /// The last sweep (ms since the epoch): blocks that expired since are counted once.
    swept_ms: AtomicU64,
}

impl RuntimeBlacklist {
    /// Load the persisted blocks at start-up (single gateway), dropping those already expired.
    /// A corrupt state file or entry is an error: starting empty would unblock them all.
    pub fn open(state: Arc<StateFile>) -> Result<Self, StateError> {
        let persisted = state.load()?;
        Self::from_persisted(state, &persisted, Sharing::single())
    }

    /// [`RuntimeBlacklist::open`] with the file already read (start-up reads it once).
    pub fn from_persisted(
        state: Arc<StateFile>,
        persisted: &PersistedState,
        sharing: Sharing,
    ) -> Result<Self, StateError> {
        let now = SystemTime::now();
        let field_error =
            |field: String, message| StateError::Field { path: state.path().to_path_buf(), field, message };
        let mut records = Vec::with_capacity(persisted.blacklist.len());
        for (i, p) in persisted.blacklist.iter().enumerate() {
            let cidr = values::cidr(&p.cidr).map_err(|m| field_error(format!("blacklist[{i}].cidr"), m))?;
            let entry = BlockEntry {
                cidr,
                source: BlockSource::Api,
                reason: p.reason.clone(),
                added_at: Some(from_unix(p.added_at_unix)),
                expires_at: p.expires_at_unix.map(from_unix),
            };
            // Files from before stamps: the block's own time orders it.
            let (stamp, pending) = stamp_of(p.change.as_ref(), p.added_at_unix.saturating_mul(1000));
            let record = BlockRecord { cidr, stamp, block: Some(entry), pending: pending && sharing.fleet };
            // In a fleet an expired block still orders later writes (see `record`) until spent.
            let keep = if sharing.fleet { !record.is_spent(now) } else { !record.is_expired(now) };
            if keep {
                records.push(record);
            }
        }
        if sharing.fleet {
            for (i, u) in persisted.unblocked.iter().enumerate() {
                let cidr = values::cidr(&u.cidr).map_err(|m| field_error(format!("unblocked[{i}].cidr"), m))?;
                let (stamp, pending) = stamp_of(Some(&u.change), 0);
                records.push(BlockRecord { cidr, stamp, block: None, pending });
            }
        }
        // A hand-edited file may list a CIDR twice: keep the latest change (on a
        // tie the later line, as `add` would have), in file order.
        let mut best: HashMap<IpNet, usize> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            let entry = best.entry(r.cidr).or_insert(i);
            if records[*entry].stamp <= r.stamp {
                *entry = i;
            }
        }
        let mut i = 0;
        records.retain(|r| {
            i += 1;
            best.get(&r.cidr) == Some(&(i - 1))
        });
        let set = ArcSwap::from_pointee(build_set(&records));
        let swept_ms = AtomicU64::new(unix_ms(now));
        Ok(RuntimeBlacklist { state, records: Mutex::new(records), set, sharing, swept_ms })
    }

    /// Block `cidr` (normalised to its network), replacing an existing block of
    /// the same CIDR; runs on an admin request. Persisted before it takes effect.
    /// A TTL over [`MAX_BLOCK_TTL`] is refused before anything changes.
    pub fn add(&self, cidr: IpNet, reason: Option<String>, ttl: Option<Duration>) -> Result<BlockEntry, BlockError> {
        let now = SystemTime::now();
        let expires_at = match ttl {
            None => None,
            // Also refused when the clock is so far ahead that the expiry would pass
            // what the state file can hold: the block would not load after a restart.
            Some(ttl) => Some(
                now.checked_add(ttl)
                    .filter(|t| ttl <= MAX_BLOCK_TTL && unix_secs(*t) <= MAX_UNIX_TIME)
                    .ok_or(BlockError::TtlTooLong(ttl))?,
            ),
        };
        let cidr = cidr.trunc();
        let entry = BlockEntry { cidr, source: BlockSource::Api, reason, added_at: Some(now), expires_at };
        self.change(|records| {
            let previous = records.iter().position(|r| r.cidr == cidr);
            let stamp = Stamp::next(&self.sharing.origin, previous.map(|i| &records[i].stamp));
            let record = BlockRecord { cidr, stamp, block: Some(entry.clone()), pending: self.sharing.fleet };
            match previous {
                Some(i) => records[i] = record,
                None => records.push(record),
            }
            true
        })?;
        Ok(entry)
    }

    /// Unblock exactly `cidr` (not the addresses inside it); `Ok(false)` when it was not blocked.
    pub fn remove(&self, cidr: IpNet) -> Result<bool, StateError> {
        let cidr = cidr.trunc();
        let now = SystemTime::now();
        self.change(|records| {
            let Some(i) =
                records.iter().position(|r| r.cidr == cidr && r.block.as_ref().is_some_and(|b| !b.is_expired(now)))
            else {
                return false;
            };
            if self.sharing.fleet {
                // Remembered, so that an older copy of the block elsewhere cannot win.
                let stamp = Stamp::next(&self.sharing.origin, Some(&records[i].stamp));
                records[i] = BlockRecord { cidr, stamp, block: None, pending: true };
            } else {
                records.remove(i);
            }
            true
        })
    }

    /// The live blocks, oldest first; those whose TTL passed are left out.
    pub fn list(&self) -> Vec<BlockEntry> {
        let now = SystemTime::now();
        self.lock().iter().filter_map(|r| r.block.as_ref()).filter(|e| !e.is_expired(now)).cloned().collect()
    }

    /// The most specific live block covering `ip`; runs per request, lock-free.
    ///
    /// A block whose TTL passed no longer counts even before the sweeper removes
    /// it; a broader block around it still does.
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<BlockEntry>> {
        let set = self.set.load();
        let mut now = None;
        let found =
            set.matches(ip).find(|e| e.expires_at.is_none() || !e.is_expired(*now.get_or_insert_with(SystemTime::now)));
        found.cloned()
    }

    /// Drop what is no longer needed; the lead's background task calls this
    /// every second. A single gateway drops expired blocks; a fleet keeps
    /// them (and unblocks) until spent, as they still order later writes.
    /// Returns how many blocks expired since the last sweep. A failed write
    /// is logged: lookups already ignore expired blocks, and `open` drops
    /// them again after a restart.
    pub fn sweep_expired(&self) -> usize {
        let now = SystemTime::now();
        let since = from_ms(self.swept_ms.swap(unix_ms(now), Ordering::Relaxed));
        let mut records = self.lock();
        let expired =
            records.iter().filter_map(|r| r.block.as_ref()?.expires_at).filter(|t| *t > since && *t <= now).count();
        let before = records.len();
        records.retain(|r| match self.sharing.fleet {
            true => r.pending || !r.is_spent(now),
            false => !r.is_expired(now),
        });
        if records.len() != before {
            if let Err(e) = self.persist(&records) {
                tracing::warn!(error = %e, expired, "cannot persist the blacklist after dropping expired blocks");
            }
            self.set.store(Arc::new(build_set(&records)));
        }
        expired
    }

    /// Live blocks (not unblocks, not expired ones).
    pub fn len(&self) -> usize {
        self.list().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the store does not have yet, as the store would hold them.
    pub fn pending(&self) -> Vec<(IpNet, SharedRecord)> {
        self.lock().iter().filter(|r| r.pending).map(|r| (r.cidr, r.to_shared())).collect()
    }

    /// The store now holds these changes (ours): they are no longer pending.
    /// One write of the state file for the whole batch.
    pub fn mark_stored(&self, stored: &[(IpNet, Stamp)]) -> Result<(), StateError> {
        self.change(|records| {
            let mut dirty = false;
            for r in records.iter_mut().filter(|r| r.pending) {
                if stored.iter().any(|(cidr, stamp)| *cidr == r.cidr && *stamp == r.stamp) {
                    r.pending = false;
                    dirty = true;
                }
            }
            dirty
        })
        .map(|_| ())
    }

    /// Take in records read from the store. A record wins over the local one
    /// when its stamp is greater; a local change the store holds an older
    /// copy of is marked pending (to be pushed). With `complete` (a full
    /// read of the store), a local record the store lacks is pushed again
    /// too: a store restored from an old snapshot, failed over to a lagging
    /// replica, or emptied, gets the fleet's copy back. Only spent records
    /// are let go. Returns how many live blocks changed.
    pub fn merge(&self, incoming: Vec<(IpNet, SharedRecord)>, complete: bool) -> Result<usize, StateError> {
        let now = SystemTime::now();
        let mut changed_blocks = 0;
        self.change(|records| {
            let mut dirty = false;
            let mut present = HashSet::with_capacity(incoming.len());
            for (cidr, shared) in incoming {
                present.insert(cidr);
                let Some(remote) = BlockRecord::from_shared(cidr, shared) else { continue };
                if remote.is_spent(now) || (remote.block.is_none() && !self.sharing.fleet) {
                    continue;
                }
                let live = |r: &BlockRecord| r.block.is_some() && !r.is_expired(now);
                match records.iter().position(|r| r.cidr == cidr) {
                    None => {
                        changed_blocks += usize::from(live(&remote));
                        records.push(remote);
                        dirty = true;
                    }
                    Some(i) if remote.stamp > records[i].stamp => {
                        changed_blocks += usize::from(live(&remote) || live(&records[i]));
                        records[i] = remote;
                        dirty = true;
                    }
                    Some(i) if remote.stamp == records[i].stamp => {
                        dirty |= std::mem::replace(&mut records[i].pending, false);
                    }
                    Some(i) => {
                        // The store is behind this replica: push ours again.
                        dirty |= !std::mem::replace(&mut records[i].pending, true);
                    }
                }
            }
            if complete {
                let before = records.len();
                records.retain(|r| r.pending || present.contains(&r.cidr) || !r.is_spent(now));
                dirty |= records.len() != before;
                for r in records.iter_mut().filter(|r| !r.pending && !present.contains(&r.cidr)) {
                    r.pending = true;
                    dirty = true;
                }
            }
            dirty
        })?;
        Ok(changed_blocks)
    }

    /// Apply `f` to a copy of the records; if it reports a change, persist the
    /// copy and only then make it live, so memory never runs ahead of the file.
    fn change(&self, f: impl FnOnce(&mut Vec<BlockRecord>) -> bool) -> Result<bool, StateError> {
        let mut records = self.lock();
        let mut next = records.clone();
        if !f(&mut next) {
            return Ok(false);
        }
        self.persist(&next)?;
        self.set.store(Arc::new(build_set(&next)));
        *records = next;
        Ok(true)
    }

    fn persist(&self, records: &[BlockRecord]) -> Result<(), StateError> {
        let mut blocks = Vec::with_capacity(records.len());
        let mut unblocked = Vec::new();
        for r in records {
            let change = PersistedChange { at_ms: r.stamp.at_ms, origin: r.stamp.origin.clone(), pending: r.pending };
            match &r.block {
                Some(b) => {
                    blocks.push(PersistedBlock { change: self.sharing.fleet.then_some(change), ..to_persisted(b) })
                }
                None => unblocked.push(PersistedUnblock { cidr: r.cidr.to_string(), change }),
            }
        }
        self.state.update(|s| {
            s.blacklist = blocks;
            s.unblocked = unblocked;
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<BlockRecord>> {
        // Every change is built on a copy and stored whole, so a panic cannot leave a half-applied list.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stamp of a persisted change, or one from `fallback_ms` for files from before stamps.
fn stamp_of(change: Option<&PersistedChange>, fallback_ms: u64) -> (Stamp, bool) {
    match change {
        Some(c) => (Stamp { at_ms: c.at_ms, origin: c.origin.clone() }, c.pending),
        None => (Stamp { at_ms: fallback_ms, origin: String::new() }, false),
    }
}

fn build_set(records: &[BlockRecord]) -> IpSet<Arc<BlockEntry>> {
    IpSet::build(records.iter().filter_map(|r| r.block.as_ref()).map(|e| (e.cidr, Arc::new(e.clone()))))
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms)).unwrap_or(UNIX_EPOCH)
}

/// A time read from the state file or the store (at most [`MAX_UNIX_TIME`]); never panics.
pub(crate) fn from_unix(secs: u64) -> SystemTime {
    let secs = Duration::from_secs(secs.min(MAX_UNIX_TIME));
    UNIX_EPOCH.checked_add(secs).unwrap_or(UNIX_EPOCH)
}

/// Whole seconds since the epoch, rounded up; 0 before it.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

fn secs_down(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().min(MAX_UNIX_TIME)
}

/// Capped at [`MAX_UNIX_TIME`]: the gateway never writes a file it would refuse to load.
pub(crate) fn to_persisted(e: &BlockEntry) -> PersistedBlock {
    PersistedBlock {
        cidr: e.cidr.to_string(),
        reason: e.reason.clone(),
        added_at_unix: e.added_at.map_or(0, secs_down),
        // Rounded up: after a restart a block may last a fraction of a second longer, never shorter.
        expires_at_unix: e.expires_at.map(|t| unix_secs(t).min(MAX_UNIX_TIME)),
        change: None,
    }
}

#[cfg(test)]
mod tests;
