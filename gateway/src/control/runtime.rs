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

pub struct RuntimeState {
    pub state: Arc<StateFile>,
    pub blacklist: RuntimeBlacklist,
    /// The degrade level set at run time; -1 when the config's level applies. Read per request.
    degrade_override: AtomicI16,
    /// The degrade level's latest change; changes are made under this lock.
    degrade_change: Mutex<DegradeChange>,
    pub sharing: Sharing,
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
        let degrade_change = DegradeChange {
            stamp: persisted.degrade_change.as_ref().map(|c| Stamp { at_ms: c.at_ms, origin: c.origin.clone() }),
            level: persisted.degrade_level,
            pending: sharing.fleet && persisted.degrade_change.as_ref().is_some_and(|c| c.pending),
        };
        let blacklist = RuntimeBlacklist::from_persisted(Arc::clone(&state), &persisted, sharing.clone())?;
        Ok(Self {
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
