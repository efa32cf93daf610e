//! What ops entered at run time (admin-API blocks, degrade level), kept in
//! one JSON file so that it survives restarts.
//!
//! Every change rewrites the whole file atomically (temp file, fsync, rename,
//! fsync of the directory): after a crash the file holds either the old or
//! the new state, never half of one. A file that exists but cannot be read
//! or parsed is an error, never an empty state: silently starting from
//! nothing would unblock every address ops blocked.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::config::values;

use crate::config::MAX_DEGRADE_LEVEL;

/// 9999-12-31T23:59:59Z, the last second RFC 3339 (and `/api/blacklist`) can
/// write: a time past it in the file is a typo or corruption, not a plan.
pub const MAX_UNIX_TIME: u64 = 253_402_300_799;

/// What opening may do about what is missing (the state directory, the diff
/// store): `gateway run` creates it, `gateway check` only looks, so that a
/// check run as another user (root, say) leaves nothing behind that the
/// gateway's own user could not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    Create,
    Inspect,
}

/// The whole state file. Fields default so that files written by older
/// versions load; the fleet's fields (stamps, unblocks, the last sync)
/// sit beside the original ones, so an older gateway still reads the blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    #[serde(default)]
    pub blacklist: Vec<PersistedBlock>,
    #[serde(default)]
    pub degrade_level: Option<u8>,
    /// When and where the degrade level was last set (fleet mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrade_change: Option<PersistedChange>,
    /// Unblocks a fleet still remembers (tombstones), so a stale copy cannot bring a block back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unblocked: Vec<PersistedUnblock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<PersistedCluster>,
    /// Each route's release-guard rollout: a restart resumes at the same step and time left.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rollouts: std::collections::BTreeMap<String, crate::release::book::Entry>,
}

/// One run-time block, as written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedBlock {
    pub cidr: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub added_at_unix: u64,
    #[serde(default)]
    pub expires_at_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<PersistedChange>,
}

/// The stamp of a change and whether the shared store has it yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedChange {
    pub at_ms: u64,
    pub origin: String,
    /// Made while the store was unreachable: pushed when it returns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedUnblock {
    pub cidr: String,
    pub change: PersistedChange,
}

/// What this replica last knew of the shared store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedCluster {
    /// The last full read of the store, in seconds since the epoch.
    #[serde(default)]
    pub last_sync_unix: Option<u64>,
}

/// Why the state file cannot be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "state file {} is not valid JSON ({source}); it holds what ops entered at run time, \
         so fix it or move it aside rather than have it ignored",
        path.display()
    )]
    Parse { path: PathBuf, source: serde_json::Error },
    /// A value that parses but is out of range: `field` is its path in the file, e.g. `blacklist[2].expires_at_unix`.
    #[error("state file {}: {field}: {message}; fix the value or remove the entry", path.display())]
    Field { path: PathBuf, field: String, message: String },
    /// Empty, or JSON that is not an object: never what the gateway writes
    /// (it replaces the file whole), so something else damaged it.
    #[error(
        "state file {} is {what}: the gateway never writes that (it replaces the file whole); \
         restore it, or remove it to start with no run-time blocks and no degrade level",
        path.display()
    )]
    NotAnObject { path: PathBuf, what: &'static str },
    #[error("cannot encode state: {0}")]
    Encode(serde_json::Error),
    #[error("cannot write state file {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// The directory cannot take the file: every run-time block would fail to persist.
    #[error("state file {}: its directory is not writable: {source}", path.display())]
    NotWritable { path: PathBuf, source: std::io::Error },
}

/// The file as read: numbers kept as JSON numbers so that an out-of-range
/// value is reported with its field, not as a serde type error.
#[derive(Deserialize)]
struct RawState {
    #[serde(default)]
    blacklist: Vec<RawBlock>,
    #[serde(default)]
    degrade_level: Option<Number>,
    // Written only by the gateway: a wrong type is a parse error naming the file.
    #[serde(default)]
    degrade_change: Option<PersistedChange>,
    #[serde(default)]
    unblocked: Vec<PersistedUnblock>,
    #[serde(default)]
    cluster: Option<PersistedCluster>,
    #[serde(default)]
    rollouts: std::collections::BTreeMap<String, crate::release::book::Entry>,
}

#[derive(Deserialize)]
struct RawBlock {
    cidr: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    added_at_unix: Option<Number>,
    #[serde(default)]
    expires_at_unix: Option<Number>,
    #[serde(default)]
    change: Option<PersistedChange>,
}

impl RawState {
    /// Check every value against the range the gateway can use; the first
    /// bad one is the error (the file is small and hand edits are rare).
    fn validate(self) -> Result<PersistedState, (String, String)> {
        let degrade_level = match &self.degrade_level {
            None => None,
            Some(n) => Some(
                n.as_u64()
                    .and_then(|l| u8::try_from(l).ok())
                    .filter(|l| *l <= MAX_DEGRADE_LEVEL)
                    .ok_or_else(|| ("degrade_level".to_string(), format!("{n} is outside 0..={MAX_DEGRADE_LEVEL}")))?,
            ),
        };
        let mut blacklist = Vec::with_capacity(self.blacklist.len());
        for (i, b) in self.blacklist.into_iter().enumerate() {
            let field = |name: &str| format!("blacklist[{i}].{name}");
            let time = |name: &str, n: &Number| {
                n.as_u64()
                    .filter(|t| *t <= MAX_UNIX_TIME)
                    .ok_or_else(|| (field(name), format!("{n} is outside 0..={MAX_UNIX_TIME} (9999-12-31T23:59:59Z)")))
            };
            values::cidr(&b.cidr).map_err(|e| (field("cidr"), e))?;
            let added_at_unix = b.added_at_unix.as_ref().map(|n| time("added_at_unix", n)).transpose()?;
            let expires_at_unix = b.expires_at_unix.as_ref().map(|n| time("expires_at_unix", n)).transpose()?;
            blacklist.push(PersistedBlock {
                cidr: b.cidr,
                reason: b.reason,
                added_at_unix: added_at_unix.unwrap_or(0),
                expires_at_unix,
                change: b.change,
            });
        }
        for (i, u) in self.unblocked.iter().enumerate() {
            values::cidr(&u.cidr).map_err(|e| (format!("unblocked[{i}].cidr"), e))?;
        }
        Ok(PersistedState {
            blacklist,
            degrade_level,
            degrade_change: self.degrade_change,
            unblocked: self.unblocked,
            cluster: self.cluster,
            rollouts: self.rollouts,
        })
    }
}

/// The state file at one path; every writer in the process goes through one of these.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// Serialises read-modify-write cycles so concurrent updates do not lose each other's changes.
    lock: Mutex<()>,
}

impl StateFile {
    /// Name the file; nothing is read or created until `load` or `update`.
    pub fn open(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into(), lock: Mutex::new(()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the state; runs at start-up (and in `gateway check`) and inside
    /// `update`. A missing or empty file is the default state; an unreadable
    /// or corrupt one, or one with a value out of range, is an error naming
    /// the path (and the field).
    pub fn load(&self) -> Result<PersistedState, StateError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(PersistedState::default()),
            Err(source) => return Err(StateError::Read { path: self.path.clone(), source }),
        };
        // An empty file would otherwise read as "no blocks": silently unblocking everyone.
        if text.trim().is_empty() {
            return Err(StateError::NotAnObject { path: self.path.clone(), what: "empty" });
        }
        // serde reads a struct from an array too (`[]` would be "no blocks").
        if !text.trim_start().starts_with('{') {
            return Err(StateError::NotAnObject { path: self.path.clone(), what: "not a JSON object" });
        }
        let raw: RawState =
            serde_json::from_str(&text).map_err(|source| StateError::Parse { path: self.path.clone(), source })?;
        raw.validate().map_err(|(field, message)| StateError::Field { path: self.path.clone(), field, message })
    }

    /// Make sure updates will be able to write the file. Runs at start-up
    /// and in `gateway check`, so a gateway that could not persist a block
    /// refuses to start instead of failing the first block.
    pub fn check_writable(&self, mode: OpenMode) -> Result<(), StateError> {
        probe_writable(parent_dir(&self.path), mode)
            .map_err(|source| StateError::NotWritable { path: self.path.clone(), source })
    }

    /// Load, apply `f`, and write the result atomically; runs on every
    /// run-time change. The file is left as it was when any step fails.
    pub fn update(&self, f: impl FnOnce(&mut PersistedState)) -> Result<(), StateError> {
        // The guard protects no data, only the file: a panic elsewhere leaves nothing inconsistent.
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = self.load()?;
        f(&mut state);
        let mut json = serde_json::to_vec_pretty(&state).map_err(StateError::Encode)?;
        json.push(b'\n');
        write_atomic(&self.path, &json).map_err(|source| StateError::Write { path: self.path.clone(), source })
    }
}

/// Whether files can be created in `dir`: a probe file is created and
/// removed. With `Create`, `dir` is created first (as the first write would);
/// with `Inspect`, a missing `dir` is judged by its nearest existing
/// ancestor, where `create_dir_all` would start, and nothing is left behind.
pub fn probe_writable(dir: &Path, mode: OpenMode) -> std::io::Result<()> {
    let mut at = dir;
    match mode {
        OpenMode::Create => fs::create_dir_all(dir)?,
        OpenMode::Inspect => {
            // `exists` is false under a regular file too; the probe then fails there.
            while !at.exists() {
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => {
                        at = Path::new(".");
                        break;
                    }
                }
            }
        }
    }
    // A name of its own: a running gateway's `.tmp` file must not be touched.
    let probe = at.join(format!(".gateway-probe-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    File::create(&probe)?;
    fs::remove_file(&probe)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replace `path` with `bytes` so that a crash leaves the old or the new content.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        // The data must be on disk before the rename makes it the state.
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: a stale temp file is harmless, the next update overwrites it.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself is durable only once the directory entry is synced.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests;
