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

/// The whole state file. Fields default so that files written by older versions load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    #[serde(default)]
    pub blacklist: Vec<PersistedBlock>,
    #[serde(default)]
    pub degrade_level: Option<u8>,
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

    /// Read the state; runs at start-up and inside `update`. A missing or
    /// empty file is the default state; an unreadable or corrupt one is an
    /// error naming the path.
    pub fn load(&self) -> Result<PersistedState, String> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(PersistedState::default()),
            Err(e) => return Err(format!("cannot read state file {}: {e}", self.path.display())),
        };
        if text.trim().is_empty() {
            return Ok(PersistedState::default());
        }
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "state file {} is not valid JSON ({e}); it holds what ops entered at run time, \
                 so fix it or move it aside rather than have it ignored",
                self.path.display()
            )
        })
    }

    /// Load, apply `f`, and write the result atomically; runs on every
    /// run-time change. The file is left as it was when any step fails.
    pub fn update(&self, f: impl FnOnce(&mut PersistedState)) -> Result<(), String> {
        // The guard protects no data, only the file: a panic elsewhere leaves nothing inconsistent.
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = self.load()?;
        f(&mut state);
        let mut json = serde_json::to_vec_pretty(&state).map_err(|e| format!("cannot encode state: {e}"))?;
        json.push(b'\n');
        write_atomic(&self.path, &json).map_err(|e| format!("cannot write state file {}: {e}", self.path.display()))
    }
}

/// Replace `path` with `bytes` so that a crash leaves the old or the new content.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
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
mod tests {
    use super::testutil::TempDir;
    use super::*;
    use std::sync::Arc;

    fn block(cidr: &str) -> PersistedBlock {
        PersistedBlock {
            cidr: cidr.into(),
            reason: Some("abuse".into()),
            added_at_unix: 1_700_000_000,
            expires_at_unix: None,
        }
    }

    #[test]
    fn missing_file_is_default_and_update_creates_parent_dirs() {
        let dir = TempDir::new("gw-state");
        let state = StateFile::open(dir.path().join("var/lib/gateway/state.json"));
        assert_eq!(state.load(), Ok(PersistedState::default()));
        state.update(|s| s.degrade_level = Some(2)).expect("update");
        assert_eq!(state.load().expect("load").degrade_level, Some(2));
    }

    #[test]
    fn round_trip_survives_reopen_and_leaves_no_temp_file() {
        let dir = TempDir::new("gw-state");
        let path = dir.path().join("state.json");
        let state = StateFile::open(&path);
        state.update(|s| s.blacklist.push(block("192.0.2.0/24"))).expect("first update");
        state.update(|s| s.blacklist.push(block("2001:db8::/32"))).expect("second update");

        let reopened = StateFile::open(&path).load().expect("load");
        assert_eq!(reopened.blacklist, vec![block("192.0.2.0/24"), block("2001:db8::/32")]);
        let names: Vec<_> =
            fs::read_dir(dir.path()).expect("read dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn older_files_without_new_fields_load() {
        let dir = TempDir::new("gw-state");
        let path = dir.path().join("state.json");
        fs::write(&path, r#"{"blacklist": [{"cidr": "192.0.2.1/32", "added_at_unix": 5}]}"#).expect("write");
        let s = StateFile::open(&path).load().expect("load");
        assert_eq!(s.degrade_level, None);
        assert_eq!(s.blacklist[0].cidr, "192.0.2.1/32");
        assert_eq!(s.blacklist[0].reason, None);
    }

    #[test]
    fn corrupt_file_is_an_error_and_is_not_overwritten() {
        let dir = TempDir::new("gw-state");
        let path = dir.path().join("state.json");
        fs::write(&path, "{\"blacklist\": [").expect("write");
        let state = StateFile::open(&path);
        let err = state.load().expect_err("corrupt file must not load");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(state.update(|s| s.degrade_level = Some(1)).is_err());
        assert_eq!(fs::read_to_string(&path).expect("read"), "{\"blacklist\": [");
    }

    #[test]
    fn concurrent_updates_all_land() {
        let dir = TempDir::new("gw-state");
        let state = Arc::new(StateFile::open(dir.path().join("state.json")));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    for i in 0..20 {
                        state.update(|s| s.blacklist.push(block(&format!("10.{t}.{i}.0/24")))).expect("update");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let mut cidrs: Vec<_> = state.load().expect("load").blacklist.into_iter().map(|b| b.cidr).collect();
        cidrs.sort();
        cidrs.dedup();
        assert_eq!(cidrs.len(), 40);
    }
}
