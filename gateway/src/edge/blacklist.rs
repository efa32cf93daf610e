//! The IP blacklist's data: where blocks come from, list files, and the
//! merged static list (config + files, rebuilt on reload). The run-time list
//! (admin API, persisted, shared in a fleet) is `runtime_blacklist`.
//!
//! Lookups take no lock: the static list is immutable and swapped in whole
//! by the reload thread.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::ipset::IpSet;
pub use super::runtime_blacklist::RuntimeBlacklist;
use crate::config::values;
use crate::config::ConfigError;
use crate::control::state::StateError;

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

#[cfg(test)]
mod tests;
