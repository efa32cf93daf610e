//! Building the static blacklist (config CIDRs + list files) for a snapshot.
//!
//! Runs on the reload thread. List files can hold a million lines; a reload
//! that does not touch them (the common case: a percentage changed) reuses the
//! parsed entries, recognised by path, size and modification time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::{BlacklistSpec, ConfigError};

use super::blacklist::{read_list_file, too_large, BlockEntry, BlockSource, StaticBlacklist};

/// Size and modification time: enough to tell an edited list file.
type FileStamp = (u64, Option<SystemTime>);

/// A parsed list file and the stamp it was parsed at.
type ParsedFile = (FileStamp, Arc<Vec<Arc<BlockEntry>>>);

/// The inputs of the last built set (file stamps, config CIDRs), and the set.
struct LastBuilt {
    stamps: Vec<(PathBuf, FileStamp)>,
    cidrs: Vec<ipnet::IpNet>,
    set: Arc<StaticBlacklist>,
}

#[derive(Default)]
pub struct ListCache {
    files: Mutex<HashMap<PathBuf, ParsedFile>>,
    /// The last set built, with what it was built from, reused when nothing changed.
    built: Mutex<Option<LastBuilt>>,
}

impl ListCache {
    /// The static blacklist for `spec`; every malformed line of every file,
    /// and every file over `spec.max_file_size`, is an error.
    pub fn build(&self, spec: &BlacklistSpec) -> Result<Arc<StaticBlacklist>, Vec<ConfigError>> {
        let mut stamps = Vec::with_capacity(spec.files.len());
        let mut errors = Vec::new();
        let mut file_entries = Vec::with_capacity(spec.files.len());
        for (path, key) in &spec.files {
            let stamp = stamp(path);
            stamps.push((path.clone(), stamp));
            match self.file(path, key, stamp, spec.max_file_size) {
                Ok(entries) => file_entries.push(entries),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = built.as_ref() {
            if last.stamps == stamps && last.cidrs == spec.cidrs {
                return Ok(Arc::clone(&last.set));
            }
        }
        let config_entries = spec.cidrs.iter().map(|&cidr| {
            Arc::new(BlockEntry { cidr, source: BlockSource::Config, reason: None, added_at: None, expires_at: None })
        });
        let file_entries = file_entries.iter().flat_map(|f| f.iter().cloned());
        let set = Arc::new(StaticBlacklist::from_shared(config_entries.chain(file_entries)));
        *built = Some(LastBuilt { stamps, cidrs: spec.cidrs.clone(), set: Arc::clone(&set) });
        Ok(set)
    }

    fn file(
        &self,
        path: &PathBuf,
        key: &str,
        stamp: FileStamp,
        max_size: u64,
    ) -> Result<Arc<Vec<Arc<BlockEntry>>>, Vec<ConfigError>> {
        // Checked before the cache too: a reload may lower the limit under an unchanged file.
        if stamp.0 > max_size {
            return Err(vec![too_large(path, key, stamp.0, max_size)]);
        }
        if let Some((s, entries)) = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
            if *s == stamp {
                return Ok(Arc::clone(entries));
            }
        }
        // Shared entries: a rebuilt set points at the same parsed lines, no copies.
        let entries = Arc::new(read_list_file(path, key, max_size)?.into_iter().map(Arc::new).collect::<Vec<_>>());
        self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(path.clone(), (stamp, Arc::clone(&entries)));
        Ok(entries)
    }
}

fn stamp(path: &PathBuf) -> FileStamp {
    match std::fs::metadata(path) {
        Ok(m) => (m.len(), m.modified().ok()),
        Err(_) => (0, None),
    }
}

#[cfg(test)]
mod tests;
