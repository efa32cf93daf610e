//! Run-time state that ops change through the admin API and that must
//! survive restarts: blocks and the degrade level. Opened once at start from
//! the state file named in the config; not part of the config snapshot,
//! because a reload must never undo what ops entered.

use std::sync::atomic::{AtomicI16, Ordering};
use std::sync::Arc;

use crate::control::state::{OpenMode, StateError, StateFile};
use crate::edge::blacklist::RuntimeBlacklist;

pub struct RuntimeState {
    pub state: Arc<StateFile>,
    pub blacklist: RuntimeBlacklist,
    /// The degrade level set at run time; -1 when the config's level applies.
    degrade_override: AtomicI16,
}

impl RuntimeState {
    /// Open the state file at start-up (and in `gateway check`). An
    /// unreadable or corrupt file, a value out of range, or a directory the
    /// file cannot be written in stops the start: starting empty would
    /// silently unblock every blocked address, and a gateway that cannot
    /// persist would fail every block ops enter. `mode` says whether a
    /// missing directory is created (`run`) or only judged (`check`).
    pub fn open(path: &std::path::Path, mode: OpenMode) -> Result<Self, StateError> {
        let state = Arc::new(StateFile::open(path));
        let persisted = state.load()?;
        state.check_writable(mode)?;
        let degrade_override = persisted.degrade_level.map(i16::from).unwrap_or(-1);
        let blacklist = RuntimeBlacklist::from_persisted(Arc::clone(&state), persisted.blacklist)?;
        Ok(Self { state, blacklist, degrade_override: AtomicI16::new(degrade_override) })
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
        self.state.update(|s| s.degrade_level = level)?;
        self.degrade_override.store(level.map(i16::from).unwrap_or(-1), Ordering::Relaxed);
        Ok(())
    }
}
