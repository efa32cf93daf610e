//! The IP blacklist's data: where blocks come from, list files, the merged
//! static list (config + files, rebuilt on reload) and the run-time list
//! (admin API, persisted, changed in place).
//!
//! Both lists answer lookups without locks: the static one is immutable and
//! swapped in whole by the reload thread, the run-time one swaps a fresh set
//! behind an `ArcSwap` on every change.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use super::ipset::IpSet;
use crate::config::values;
use crate::config::ConfigError;
use crate::state::{PersistedBlock, StateFile};

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

/// Parse a block-list file; runs on the reload thread, never per request.
///
/// One address or CIDR per line, then an optional free-text reason; `#`
/// starts a comment. Every malformed line is reported (the first 20, then a
/// count) so that one `gateway check` shows them all; `key` names the config
/// entry that points at the file, e.g. `blacklist.files[0]`.
pub fn parse_list_file(path: &Path, key: &str) -> Result<Vec<BlockEntry>, Vec<ConfigError>> {
    let error = |line: usize, message: String| ConfigError { file: path.to_path_buf(), line, key: key.into(), message };
    let file = File::open(path).map_err(|e| vec![error(0, format!("cannot read block list: {e}"))])?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
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
            Ok(_) => line_no += 1,
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
    pub fn open(state: Arc<StateFile>) -> Result<Self, String> {
        let persisted = state.load()?;
        let now = SystemTime::now();
        let mut entries = Vec::with_capacity(persisted.blacklist.len());
        for p in persisted.blacklist {
            let cidr = values::cidr(&p.cidr).map_err(|e| format!("state file {}: {e}", state.path().display()))?;
            let entry = BlockEntry {
                cidr,
                source: BlockSource::Api,
                reason: p.reason,
                added_at: Some(UNIX_EPOCH + Duration::from_secs(p.added_at_unix)),
                expires_at: p.expires_at_unix.map(|t| UNIX_EPOCH + Duration::from_secs(t)),
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
    pub fn add(&self, cidr: IpNet, reason: Option<String>, ttl: Option<Duration>) -> Result<BlockEntry, String> {
        let now = SystemTime::now();
        let expires_at = match ttl {
            None => None,
            Some(ttl) => Some(now.checked_add(ttl).ok_or_else(|| format!("ttl {ttl:?} is too far in the future"))?),
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
    pub fn remove(&self, cidr: IpNet) -> Result<bool, String> {
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
    fn change(&self, f: impl FnOnce(&mut Vec<BlockEntry>) -> bool) -> Result<bool, String> {
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

    fn persist(&self, entries: &[BlockEntry]) -> Result<(), String> {
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

fn to_persisted(e: &BlockEntry) -> PersistedBlock {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
    PersistedBlock {
        cidr: e.cidr.to_string(),
        reason: e.reason.clone(),
        added_at_unix: e.added_at.map_or(0, |t| secs(t).as_secs()),
        // Rounded up: after a restart a block may last a fraction of a second longer, never shorter.
        expires_at_unix: e.expires_at.map(secs).map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testutil::TempDir;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn list_file_with_comments_reasons_and_v6() {
        let dir = TempDir::new("gw-blacklist");
        let path = dir.path().join("blocked.txt");
        let text = "# abusive ranges, reviewed weekly\n\
                    \n\
                    203.0.113.0/24  card testing 2026-11-11\n\
                    198.51.100.7    # scraper, no reason given\n\
                    \t2001:db8:bad::/48 credential stuffing # ticket 4411\n\
                    192.0.2.77/24\n";
        std::fs::write(&path, text).expect("write");
        let entries = parse_list_file(&path, "blacklist.files[0]").expect("parses");
        let got: Vec<_> = entries.iter().map(|e| (e.cidr, e.reason.as_deref(), e.source.clone())).collect();
        let file = |line| BlockSource::File { path: path.clone(), line };
        assert_eq!(
            got,
            vec![
                (net("203.0.113.0/24"), Some("card testing 2026-11-11"), file(3)),
                (net("198.51.100.7/32"), None, file(4)),
                (net("2001:db8:bad::/48"), Some("credential stuffing"), file(5)),
                // Host bits are dropped, as everywhere else in the config.
                (net("192.0.2.0/24"), None, file(6)),
            ]
        );
        assert_eq!(entries[0].source.label(), "file");
    }

    #[test]
    fn every_bad_line_is_reported_with_file_and_line() {
        let dir = TempDir::new("gw-blacklist");
        let path = dir.path().join("blocked.txt");
        std::fs::write(&path, "192.0.2.1\n300.1.2.3 typo\n# fine\n2001:db8::/129\n10.0.0.0/8\n").expect("write");
        let errors = parse_list_file(&path, "blacklist.files[1]").expect_err("bad lines");
        let shown: Vec<_> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "blocked.txt:2: blacklist.files[1]: \"300.1.2.3\" is not an IP address or CIDR",
                "blocked.txt:4: blacklist.files[1]: \"2001:db8::/129\" is not an IP address or CIDR",
            ]
        );
    }

    #[test]
    fn a_garbage_file_reports_twenty_lines_and_a_count() {
        let dir = TempDir::new("gw-blacklist");
        let path = dir.path().join("garbage.bin");
        std::fs::write(&path, "junk\n".repeat(1000)).expect("write");
        let errors = parse_list_file(&path, "k").expect_err("garbage");
        assert_eq!(errors.len(), 21);
        assert_eq!(errors[19].line, 20);
        assert_eq!(errors[20].message, "… and 980 more malformed lines");
    }

    #[test]
    fn unreadable_file_is_one_error() {
        let dir = TempDir::new("gw-blacklist");
        let errors = parse_list_file(&dir.path().join("missing.txt"), "blacklist.files[0]").expect_err("missing");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("cannot read block list"), "{}", errors[0].message);
    }

    #[test]
    fn static_list_finds_the_most_specific_block() {
        let entry =
            |cidr: &str, source| BlockEntry { cidr: net(cidr), source, reason: None, added_at: None, expires_at: None };
        let list = StaticBlacklist::build(vec![
            entry("10.0.0.0/8", BlockSource::Config),
            entry("10.1.2.3/32", BlockSource::File { path: "a.txt".into(), line: 9 }),
        ]);
        assert_eq!(list.len(), 2);
        assert_eq!(list.lookup(ip("10.1.2.3")).map(|e| e.source.label()), Some("file"));
        assert_eq!(list.lookup(ip("10.9.9.9")).map(|e| e.source.label()), Some("config"));
        assert!(list.lookup(ip("11.0.0.1")).is_none());
    }

    fn runtime(dir: &TempDir) -> RuntimeBlacklist {
        RuntimeBlacklist::open(Arc::new(StateFile::open(dir.path().join("state.json")))).expect("open")
    }

    #[test]
    fn runtime_add_lookup_remove() {
        let dir = TempDir::new("gw-blacklist");
        let list = runtime(&dir);
        assert!(list.lookup(ip("198.51.100.7")).is_none());

        let added = list.add(net("198.51.100.7/24"), Some("scraper".into()), None).expect("add");
        assert_eq!(added.cidr, net("198.51.100.0/24"));
        let hit = list.lookup(ip("::ffff:198.51.100.200")).expect("blocked");
        assert_eq!((hit.source.label(), hit.reason.as_deref()), ("api", Some("scraper")));

        // Re-adding replaces the reason instead of adding a second block.
        list.add(net("198.51.100.0/24"), Some("scraper, escalated".into()), None).expect("re-add");
        assert_eq!(list.list().len(), 1);
        assert_eq!(
            list.lookup(ip("198.51.100.1")).and_then(|e| e.reason.clone()).as_deref(),
            Some("scraper, escalated")
        );

        assert_eq!(list.remove(net("198.51.100.0/24")), Ok(true));
        assert_eq!(list.remove(net("198.51.100.0/24")), Ok(false));
        assert!(list.lookup(ip("198.51.100.1")).is_none());
        assert!(list.list().is_empty());
    }

    #[test]
    fn expired_block_stops_matching_before_the_sweep_and_the_broader_block_still_does() {
        let dir = TempDir::new("gw-blacklist");
        let list = runtime(&dir);
        list.add(net("10.0.0.0/8"), Some("wide".into()), None).expect("add wide");
        list.add(net("10.1.2.3/32"), Some("short".into()), Some(Duration::from_millis(1))).expect("add short");
        std::thread::sleep(Duration::from_millis(20));

        let hit = list.lookup(ip("10.1.2.3")).expect("still blocked by the /8");
        assert_eq!(hit.reason.as_deref(), Some("wide"));
        assert_eq!(list.list().len(), 1);

        assert_eq!(list.sweep_expired(), 1);
        assert_eq!(list.sweep_expired(), 0);
        assert_eq!(list.len(), 1);
        let on_disk = StateFile::open(dir.path().join("state.json")).load().expect("load");
        assert_eq!(on_disk.blacklist.iter().map(|b| b.cidr.as_str()).collect::<Vec<_>>(), ["10.0.0.0/8"]);
    }

    #[test]
    fn blocks_survive_a_restart() {
        let dir = TempDir::new("gw-blacklist");
        {
            let list = runtime(&dir);
            list.add(net("203.0.113.0/24"), Some("card testing".into()), Some(Duration::from_secs(3600))).expect("add");
            list.add(net("2001:db8::/32"), None, None).expect("add v6");
            list.add(net("192.0.2.1/32"), None, None).expect("add");
            list.remove(net("192.0.2.1/32")).expect("remove");
        }
        let list = runtime(&dir);
        let cidrs: Vec<_> = list.list().iter().map(|e| e.cidr.to_string()).collect();
        assert_eq!(cidrs, ["203.0.113.0/24", "2001:db8::/32"]);
        let hit = list.lookup(ip("203.0.113.50")).expect("still blocked");
        assert_eq!(hit.reason.as_deref(), Some("card testing"));
        assert!(hit.expires_at.is_some());
        assert!(list.lookup(ip("2001:db8::1")).is_some());
        assert!(list.lookup(ip("192.0.2.1")).is_none());
    }

    #[test]
    fn expired_blocks_are_dropped_on_open_and_other_state_is_kept() {
        let dir = TempDir::new("gw-blacklist");
        let state = StateFile::open(dir.path().join("state.json"));
        let block = |cidr: &str, expires_at_unix| PersistedBlock {
            cidr: cidr.into(),
            reason: None,
            added_at_unix: 1_700_000_000,
            expires_at_unix,
        };
        state
            .update(|s| {
                s.degrade_level = Some(3);
                s.blacklist = vec![block("192.0.2.0/24", Some(1_700_000_060)), block("198.51.100.0/24", None)];
            })
            .expect("seed");
        let list = runtime(&dir);
        assert!(list.lookup(ip("192.0.2.1")).is_none());
        assert!(list.lookup(ip("198.51.100.1")).is_some());

        list.add(net("203.0.113.0/24"), None, None).expect("add");
        let on_disk = state.load().expect("load");
        assert_eq!(on_disk.degrade_level, Some(3));
        assert_eq!(on_disk.blacklist.len(), 2);
    }

    #[test]
    fn corrupt_state_refuses_to_open() {
        let dir = TempDir::new("gw-blacklist");
        std::fs::write(dir.path().join("state.json"), r#"{"blacklist": [{"cidr": "not-an-ip"}]}"#).expect("write");
        let state = Arc::new(StateFile::open(dir.path().join("state.json")));
        assert!(RuntimeBlacklist::open(state).is_err());
    }
}
