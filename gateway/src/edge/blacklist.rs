//! The IP blacklist's data: where blocks come from, list files, the merged
//! static list (config + files, rebuilt on reload) and the run-time list
//! (admin API, persisted, changed in place).
//!
//! Both lists answer lookups without locks: the static one is immutable and
//! swapped in whole by the reload thread, the run-time one swaps a fresh set
//! behind an `ArcSwap` on every change.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use super::ipset::IpSet;
use crate::config::values;
use crate::config::ConfigError;
use crate::control::state::{PersistedBlock, StateError, StateFile, MAX_UNIX_TIME};

/// A humantime year (365.25 days), so that `ttl = "10y"` is exactly the limit.
const YEAR: Duration = Duration::from_secs(31_557_600);

/// The longest TTL of a run-time block. Longer is a typo (`10000y` for
/// `10000s`) more often than a plan; a block meant to last is given no TTL.
pub const MAX_BLOCK_TTL: Duration = Duration::from_secs(10 * YEAR.as_secs());

/// Why a run-time block was not added.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The caller's mistake (400): over [`MAX_BLOCK_TTL`].
    #[error("ttl {} is longer than the limit of 10 years; leave the ttl out for a block without end", humantime::format_duration(*.0))]
    TtlTooLong(Duration),
    /// The state file could not be written (500); nothing changed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Where a block was entered; shown in logs, metrics and `/api/blacklist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockSource {
    Config,
    File { path: PathBuf, line: usize },
    Api,
}

impl BlockSource {
    pub fn label(&self) -> &'static str {
        match self {
            BlockSource::Config => "config",
            BlockSource::File { .. } => "file",
            BlockSource::Api => "api",
        }
    }
}

/// One blocked address or range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    pub cidr: IpNet,
    pub source: BlockSource,
    pub reason: Option<String>,
    pub added_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
}

impl BlockEntry {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Errors listed in full before the rest are summed up in one line.
const MAX_LISTED_ERRORS: usize = 20;

/// [`read_list_file`] without a size cap (benches and tools).
pub fn parse_list_file(path: &Path, key: &str) -> Result<Vec<BlockEntry>, Vec<ConfigError>> {
    read_list_file(path, key, u64::MAX)
}

/// The error for a list file over `blacklist.max_file_size`.
pub fn too_large(path: &Path, key: &str, size: u64, max_size: u64) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: 0,
        key: key.into(),
        message: format!(
            "{} is {}, over blacklist.max_file_size ({}); split the list or raise the limit",
            path.display(),
            human_size(size),
            human_size(max_size)
        ),
    }
}

/// `268435456 bytes (256 MiB)`, `1000 bytes`.
fn human_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    match bytes {
        b if b >= MIB => format!("{b} bytes ({:.1} MiB)", b as f64 / MIB as f64).replace(".0 MiB", " MiB"),
        b => format!("{b} bytes"),
    }
}

/// Parse a block-list file of at most `max_size` bytes; runs on the reload
/// thread, never per request.
///
/// One address or CIDR per line, then an optional free-text reason; `#`
/// starts a comment. Every malformed line is reported (the first 20, then a
/// count) so that one `gateway check` shows them all; `key` names the config
/// entry that points at the file, e.g. `blacklist.files[0]`. A larger file
/// is one error, checked before reading and while reading (it may grow).
pub fn read_list_file(path: &Path, key: &str, max_size: u64) -> Result<Vec<BlockEntry>, Vec<ConfigError>> {
    let error = |line: usize, message: String| ConfigError { file: path.to_path_buf(), line, key: key.into(), message };
    let file = File::open(path).map_err(|e| vec![error(0, format!("cannot read block list: {e}"))])?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > max_size {
        return Err(vec![too_large(path, key, size, max_size)]);
    }
    // One byte over the cap is enough to know the file grew past it.
    let mut reader = BufReader::with_capacity(1 << 16, file.take(max_size.saturating_add(1)));
    let mut read = 0u64;
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut unlisted = 0usize;
    // One buffer for every line: a million-line list must not cost a million allocations.
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                line_no += 1;
                read = read.saturating_add(n as u64);
                if read > max_size {
                    return Err(vec![too_large(path, key, read, max_size)]);
                }
            }
            Err(e) => return Err(vec![error(line_no + 1, format!("cannot read block list: {e}"))]),
        }
        match parse_line(&buf) {
            Ok(None) => {}
            Ok(Some((cidr, reason))) => entries.push(BlockEntry {
                cidr,
                source: BlockSource::File { path: path.to_path_buf(), line: line_no },
                reason: reason.map(str::to_string),
                added_at: None,
                expires_at: None,
            }),
            Err(message) if errors.len() < MAX_LISTED_ERRORS => errors.push(error(line_no, message)),
            Err(_) => unlisted += 1,
        }
    }
    if unlisted > 0 {
        errors.push(error(0, format!("… and {unlisted} more malformed lines")));
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// `ADDR[/LEN] [reason…] [# comment]`; `Ok(None)` for blank and comment lines.
fn parse_line(raw: &[u8]) -> Result<Option<(IpNet, Option<&str>)>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "line is not valid UTF-8".to_string())?;
    let text = text.split_once('#').map_or(text, |(before, _)| before).trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (addr, reason) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let cidr = values::cidr(addr)?;
    let reason = reason.trim();
    Ok(Some((cidr, (!reason.is_empty()).then_some(reason))))
}

/// The blocks from config and list files, merged; rebuilt whole on reload.
#[derive(Debug, Default)]
pub struct StaticBlacklist {
    set: IpSet<Arc<BlockEntry>>,
    entries: usize,
}

impl StaticBlacklist {
    /// Build on the reload thread; a later entry for the same CIDR replaces an earlier one.
    pub fn build(entries: Vec<BlockEntry>) -> Self {
        Self::from_shared(entries.into_iter().map(Arc::new))
    }

    /// Like `build`, for entries already shared (e.g. a parsed file cached
    /// between reloads): a rebuild then copies pointers, not a million entries.
    pub fn from_shared(entries: impl IntoIterator<Item = Arc<BlockEntry>>) -> Self {
        let set = IpSet::build(entries.into_iter().map(|e| (e.cidr, e)));
        StaticBlacklist { entries: set.len(), set }
    }

    /// The most specific block covering `ip`; runs per request.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Arc<BlockEntry>> {
        self.set.lookup(ip)
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// Blocks added through the admin API: small, persisted, changed in place.
pub struct RuntimeBlacklist {
    state: Arc<StateFile>,
    /// The entries in the order they were added; the source of truth for the set and the file.
    entries: Mutex<Vec<BlockEntry>>,
    set: ArcSwap<IpSet<Arc<BlockEntry>>>,
}

impl RuntimeBlacklist {
    /// Load the persisted blocks at start-up, dropping those already expired.
    /// A corrupt state file or entry is an error: starting empty would unblock them all.
    pub fn open(state: Arc<StateFile>) -> Result<Self, StateError> {
        let persisted = state.load()?;
        Self::from_persisted(state, persisted.blacklist)
    }

    /// [`RuntimeBlacklist::open`] with the file already read (start-up reads it once).
    pub fn from_persisted(state: Arc<StateFile>, blocks: Vec<PersistedBlock>) -> Result<Self, StateError> {
        let now = SystemTime::now();
        let mut entries = Vec::with_capacity(blocks.len());
        for (i, p) in blocks.into_iter().enumerate() {
            let cidr = values::cidr(&p.cidr).map_err(|message| StateError::Field {
                path: state.path().to_path_buf(),
                field: format!("blacklist[{i}].cidr"),
                message,
            })?;
            let entry = BlockEntry {
                cidr,
                source: BlockSource::Api,
                reason: p.reason,
                added_at: Some(from_unix(p.added_at_unix)),
                expires_at: p.expires_at_unix.map(from_unix),
            };
            if !entry.is_expired(now) {
                entries.push(entry);
            }
        }
        // A hand-edited file may list a CIDR twice: keep the last, as `add` would have.
        let mut seen = HashSet::new();
        entries.reverse();
        entries.retain(|e| seen.insert(e.cidr));
        entries.reverse();
        let set = ArcSwap::from_pointee(build_set(&entries));
        Ok(RuntimeBlacklist { state, entries: Mutex::new(entries), set })
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
        let entry =
            BlockEntry { cidr: cidr.trunc(), source: BlockSource::Api, reason, added_at: Some(now), expires_at };
        self.change(|entries| {
            match entries.iter_mut().find(|e| e.cidr == entry.cidr) {
                Some(existing) => *existing = entry.clone(),
                None => entries.push(entry.clone()),
            }
            true
        })?;
        Ok(entry)
    }

    /// Unblock exactly `cidr` (not the addresses inside it); `Ok(false)` when it was not blocked.
    pub fn remove(&self, cidr: IpNet) -> Result<bool, StateError> {
        let cidr = cidr.trunc();
        self.change(|entries| {
            let before = entries.len();
            entries.retain(|e| e.cidr != cidr);
            entries.len() != before
        })
    }

    /// The live blocks, oldest first; those whose TTL passed are left out.
    pub fn list(&self) -> Vec<BlockEntry> {
        let now = SystemTime::now();
        self.lock().iter().filter(|e| !e.is_expired(now)).cloned().collect()
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

    /// Drop expired blocks; the lead's background task calls this every second.
    /// Returns how many were dropped. A failed write is logged: lookups already
    /// ignore the dropped blocks, and `open` drops them again after a restart.
    pub fn sweep_expired(&self) -> usize {
        let now = SystemTime::now();
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|e| !e.is_expired(now));
        let removed = before - entries.len();
        if removed > 0 {
            if let Err(e) = self.persist(&entries) {
                tracing::warn!(error = %e, removed, "cannot persist the blacklist after dropping expired blocks");
            }
            self.set.store(Arc::new(build_set(&entries)));
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Apply `f` to a copy of the entries; if it reports a change, persist the
    /// copy and only then make it live, so memory never runs ahead of the file.
    fn change(&self, f: impl FnOnce(&mut Vec<BlockEntry>) -> bool) -> Result<bool, StateError> {
        let mut entries = self.lock();
        let mut next = entries.clone();
        if !f(&mut next) {
            return Ok(false);
        }
        self.persist(&next)?;
        self.set.store(Arc::new(build_set(&next)));
        *entries = next;
        Ok(true)
    }

    fn persist(&self, entries: &[BlockEntry]) -> Result<(), StateError> {
        let blocks: Vec<PersistedBlock> = entries.iter().map(to_persisted).collect();
        self.state.update(|s| s.blacklist = blocks)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<BlockEntry>> {
        // Every change is built on a copy and stored whole, so a panic cannot leave a half-applied list.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn build_set(entries: &[BlockEntry]) -> IpSet<Arc<BlockEntry>> {
    IpSet::build(entries.iter().map(|e| (e.cidr, Arc::new(e.clone()))))
}

/// A time read from the state file (at most [`MAX_UNIX_TIME`] once loaded); never panics.
fn from_unix(secs: u64) -> SystemTime {
    let secs = Duration::from_secs(secs.min(MAX_UNIX_TIME));
    UNIX_EPOCH.checked_add(secs).unwrap_or(UNIX_EPOCH)
}

/// Whole seconds since the epoch, rounded up; 0 before it.
fn unix_secs(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Capped at [`MAX_UNIX_TIME`]: the gateway never writes a file it would refuse to load.
fn to_persisted(e: &BlockEntry) -> PersistedBlock {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().min(MAX_UNIX_TIME);
    PersistedBlock {
        cidr: e.cidr.to_string(),
        reason: e.reason.clone(),
        added_at_unix: e.added_at.map_or(0, secs),
        // Rounded up: after a restart a block may last a fraction of a second longer, never shorter.
        expires_at_unix: e.expires_at.map(|t| unix_secs(t).min(MAX_UNIX_TIME)),
    }
}

#[cfg(test)]
mod tests;
