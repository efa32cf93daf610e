//! Run-time state that ops change through the admin API and that must
//! survive restarts: blocks and the degrade level. Opened once at start from
//! the state file named in the config; not part of the config snapshot,
//! because a reload must never undo what ops entered. In a fleet the same
//! state is shared through the cluster store (`cluster::sync`), merged by
//! the rule "latest change wins".

use std::sync::atomic::{AtomicI16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::cluster::record::{Body, SharedRecord, Stamp};
use crate::control::state::{OpenMode, PersistedChange, StateError, StateFile};
use crate::edge::blacklist::RuntimeBlacklist;
pub use crate::edge::runtime_blacklist::Sharing;
use crate::release::book::RolloutBook;

pub struct RuntimeState {
    pub state: Arc<StateFile>,
    pub blacklist: RuntimeBlacklist,
    /// The degrade level set at run time; -1 when the config's level applies. Read per request.
    degrade_override: AtomicI16,
    /// The degrade level's latest change; changes are made under this lock.
    degrade_change: Mutex<DegradeChange>,
    pub sharing: Sharing,
    /// The release guard's rollouts (persisted in the same file).
    pub rollouts: Arc<RolloutBook>,
}

#[derive(Debug, Clone, Default)]
struct DegradeChange {
    /// `None` until the level was first set at run time.
    stamp: Option<Stamp>,
    level: Option<u8>,
    pending: bool,
}

impl RuntimeState {
    /// Open the state file at start-up (and in `gateway check`). An
    /// unreadable or corrupt file, a value out of range, or a directory the
    /// file cannot be written in stops the start: starting empty would
    /// silently unblock every blocked address, and a gateway that cannot
    /// persist would fail every block ops enter. `mode` says whether a
    /// missing directory is created (`run`) or only judged (`check`).
    pub fn open(path: &std::path::Path, mode: OpenMode) -> Result<Self, StateError> {
        Self::open_shared(path, mode, Sharing::single())
    }

    /// [`RuntimeState::open`] for a replica of a fleet (or not, per `sharing`).
    pub fn open_shared(path: &std::path::Path, mode: OpenMode, sharing: Sharing) -> Result<Self, StateError> {
        let state = Arc::new(StateFile::open(path));
        let persisted = state.load()?;
        state.check_writable(mode)?;
        let degrade_override = persisted.degrade_level.map(i16::from).unwrap_or(-1);
        let degrade_change = match (&persisted.degrade_change, persisted.degrade_level) {
            (Some(c), level) => DegradeChange {
                stamp: Some(Stamp { at_ms: c.at_ms, origin: c.origin.clone() }),
                level,
                pending: sharing.fleet && c.pending,
            },
            // Set before this replica joined a fleet: offered to the store with the
            // oldest stamp, so any level the fleet set since wins over it.
            (None, Some(level)) if sharing.fleet => DegradeChange {
                stamp: Some(Stamp { at_ms: 0, origin: String::new() }),
                level: Some(level),
                pending: true,
            },
            (None, level) => DegradeChange { stamp: None, level, pending: false },
        };
        let blacklist = RuntimeBlacklist::from_persisted(Arc::clone(&state), &persisted, sharing.clone())?;
        let rollouts = Arc::new(RolloutBook::open(Arc::clone(&state), persisted.rollouts.clone(), sharing.clone()));
        Ok(Self {
            rollouts,
            state,
            blacklist,
            degrade_override: AtomicI16::new(degrade_override),
            degrade_change: Mutex::new(degrade_change),
            sharing,
        })
    }

    /// The run-time degrade level, if one was set.
    pub fn degrade_override(&self) -> Option<u8> {
        u8::try_from(self.degrade_override.load(Ordering::Relaxed)).ok()
    }

    /// The level in force: the run-time one, else the config's.
    pub fn degrade_level(&self, config_level: u8) -> u8 {
        self.degrade_override().unwrap_or(config_level)
    }

    /// Set (or, with `None`, clear) the run-time level; persisted before it applies.
    pub fn set_degrade(&self, level: Option<u8>) -> Result<(), StateError> {
        let mut change = self.lock_degrade();
        let next = DegradeChange {
            stamp: Some(Stamp::next(&self.sharing.origin, change.stamp.as_ref())),
            level,
            pending: self.sharing.fleet,
        };
        self.apply_degrade(&mut change, next)
    }

    /// The level's change, when the store does not have it yet.
    pub fn pending_degrade(&self) -> Option<SharedRecord> {
        let change = self.lock_degrade();
        match (&change.stamp, change.pending) {
            (Some(stamp), true) => {
                Some(SharedRecord { stamp: stamp.clone(), body: Body::Degrade { level: change.level } })
            }
            _ => None,
        }
    }

    /// Mark the level's change pushed again (the store lost its data); `false` when there is none.
    pub fn mark_degrade_pending(&self) -> Result<bool, StateError> {
        let mut change = self.lock_degrade();
        if change.stamp.is_none() || change.pending {
            return Ok(false);
        }
        let next = DegradeChange { pending: true, ..change.clone() };
        self.apply_degrade(&mut change, next).map(|_| true)
    }

    /// The store holds `stamp` for the level.
    pub fn degrade_stored(&self, stamp: &Stamp) -> Result<(), StateError> {
        let mut change = self.lock_degrade();
        if change.pending && change.stamp.as_ref() == Some(stamp) {
            let next = DegradeChange { pending: false, ..change.clone() };
            self.apply_degrade(&mut change, next)?;
        }
        Ok(())
    }

    /// Take in the level's record from the store; `Ok(true)` when the level in force changed.
    pub fn merge_degrade(&self, remote: &SharedRecord) -> Result<bool, StateError> {
        let Body::Degrade { level } = remote.body else { return Ok(false) };
        let mut change = self.lock_degrade();
        match change.stamp.as_ref().map(|s| remote.stamp.cmp(s)) {
            None | Some(std::cmp::Ordering::Greater) => {
                let moved = change.level != level;
                let next = DegradeChange { stamp: Some(remote.stamp.clone()), level, pending: false };
                self.apply_degrade(&mut change, next)?;
                Ok(moved)
            }
            Some(std::cmp::Ordering::Equal) => {
                if change.pending {
                    let next = DegradeChange { pending: false, ..change.clone() };
                    self.apply_degrade(&mut change, next)?;
                }
                Ok(false)
            }
            Some(std::cmp::Ordering::Less) => {
                // The store is behind this replica: push ours again.
                if !change.pending {
                    let next = DegradeChange { pending: true, ..change.clone() };
                    self.apply_degrade(&mut change, next)?;
                }
                Ok(false)
            }
        }
    }

    /// Persist `next`, then make it the level in force.
    fn apply_degrade(&self, current: &mut DegradeChange, next: DegradeChange) -> Result<(), StateError> {
        let persisted = next.stamp.as_ref().filter(|_| self.sharing.fleet).map(|s| PersistedChange {
            at_ms: s.at_ms,
            origin: s.origin.clone(),
            pending: next.pending,
        });
        self.state.update(|s| {
            s.degrade_level = next.level;
            s.degrade_change = persisted;
        })?;
        self.degrade_override.store(next.level.map(i16::from).unwrap_or(-1), Ordering::Relaxed);
        *current = next;
        Ok(())
    }

    fn lock_degrade(&self) -> std::sync::MutexGuard<'_, DegradeChange> {
        self.degrade_change.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::state::testutil::TempDir;

    fn open(dir: &TempDir, origin: &str) -> RuntimeState {
        let sharing = Sharing { origin: origin.into(), fleet: true };
        RuntimeState::open_shared(&dir.path().join("state.json"), OpenMode::Create, sharing).expect("open")
    }

    fn remote(at_ms: u64, origin: &str, level: Option<u8>) -> SharedRecord {
        SharedRecord { stamp: Stamp { at_ms, origin: origin.into() }, body: Body::Degrade { level } }
    }

    #[test]
    fn the_latest_degrade_change_wins_and_a_local_one_waits_for_the_store() {
        let dir = TempDir::new("gw-degrade");
        let state = open(&dir, "a");
        assert!(state.merge_degrade(&remote(1_000, "b", Some(2))).expect("merge"));
        assert_eq!(state.degrade_level(0), 2);
        assert!(state.pending_degrade().is_none(), "taken from the store: nothing to push");

        // An older record (a stale replica) changes nothing and marks ours to be pushed again.
        assert!(!state.merge_degrade(&remote(500, "c", Some(5))).expect("merge"));
        assert_eq!(state.degrade_level(0), 2);
        let pending = state.pending_degrade().expect("ours is pending again");
        assert_eq!(pending.stamp.at_ms, 1_000);

        // A local clear is newer than everything seen, pending, and survives a restart as such.
        state.set_degrade(None).expect("clear");
        assert_eq!(state.degrade_level(3), 3, "back to the config's level");
        let stamp = state.pending_degrade().expect("pending").stamp;
        assert!(stamp.at_ms > 1_000 && stamp.origin == "a");
        drop(state);
        let state = open(&dir, "a");
        assert_eq!(state.pending_degrade().map(|r| r.stamp), Some(stamp.clone()));
        state.degrade_stored(&stamp).expect("stored");
        assert!(state.pending_degrade().is_none());
    }
}
