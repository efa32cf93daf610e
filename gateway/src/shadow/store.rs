//! The SQLite store of shadow comparisons, for the admin API and the QA pages.
//!
//! One file, WAL mode with `synchronous=NORMAL` (a crash may lose the last
//! commits, never corrupt the file). Records are written by a background
//! thread fed through a bounded queue ([`DiffStore::writer`]); reads go
//! through their own read-only connection, which WAL lets run alongside the
//! writer.
//!
//! Bodies are stored as lossy UTF-8 text cut at [`MAX_STORED_BODY`] bytes:
//! QA reads JSON and text in the page as is; a binary body is summarised by
//! its length and SHA-256 in the diff anyway, so its bytes are not worth a
//! base64 copy. Header values named in the redaction list (default
//! [`DEFAULT_REDACTED_HEADERS`]) are replaced by `[redacted]` before they
//! reach the file, in request headers and in `header.<name>` diffs alike.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rusqlite::{params, Connection, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Record outcomes, as stored in `DiffRecord::outcome`.
pub mod outcome {
    pub const IDENTICAL: &str = "identical";
    pub const DIFFERENT: &str = "different";
    pub const NOISE_ONLY: &str = "noise-only";
    pub const ERROR: &str = "error";
    pub const TIMEOUT: &str = "timeout";
}

/// Longest stored body (request, stable and canary each).
pub const MAX_STORED_BODY: usize = 64 * 1024;

/// Header names whose values are never stored.
pub const DEFAULT_REDACTED_HEADERS: [&str; 3] = ["authorization", "cookie", "set-cookie"];

pub const REDACTED: &str = "[redacted]";

/// One differing field as stored, with the noise class it had when recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDiff {
    pub path: String,
    pub stable: Value,
    pub canary: Value,
    pub noise: bool,
}

/// One shadowed request and what its comparison found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiffRecord {
    /// 0 until stored.
    pub id: i64,
    pub at_unix_ms: i64,
    pub route: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    /// The name of the version that answered the client: one of the two
    /// sides below (`v2`; `stable` or `canary` in the shorthand).
    pub primary: String,
    /// The names of the versions whose answers are on each side: `stable_*`
    /// holds the shadow's `against` version, `canary_*` the version compared
    /// with it. Empty in records stored before the names were kept.
    pub stable_version: String,
    pub canary_version: String,
    pub stable_status: u16,
    pub canary_status: u16,
    pub stable_latency_ms: f64,
    pub canary_latency_ms: f64,
    /// One of [`outcome`].
    pub outcome: String,
    /// How many comparisons this record stands for: itself plus the records
    /// of its route and outcome that came after it and were counted but not
    /// stored, past `shadow.store_per_second`. Summaries add weights, not
    /// rows. 0 reads as 1.
    pub weight: u64,
    pub diffs: Vec<StoredDiff>,
    pub request_headers: Vec<(String, String)>,
    /// Lossy UTF-8, see [`body_text`].
    pub request_body: String,
    pub stable_body: String,
    pub canary_body: String,
}

impl DiffRecord {
    /// The names to label the `stable_*` and `canary_*` sides with: the
    /// stored version names, or, for a record stored before they were kept,
    /// the words the shorthand gave the two sides.
    pub fn side_names(&self) -> (&str, &str) {
        (label(&self.stable_version, "stable"), label(&self.canary_version, "canary"))
    }

    /// The version the client's answer was compared with: the side that did
    /// not answer the client (empty when the record names no sides).
    pub fn compared(&self) -> &str {
        match self.primary == self.stable_version {
            true => &self.canary_version,
            false => &self.stable_version,
        }
    }
}

/// A stored side name, or `word` when the record has none.
pub(super) fn label<'a>(stored: &'a str, word: &'static str) -> &'a str {
    if stored.is_empty() {
        word
    } else {
        stored
    }
}

/// How much history to keep; applied by the writer at most once per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    /// The newest (most recently stored) records kept.
    pub max_records: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_age: Duration::from_secs(7 * 24 * 3600), max_records: 100_000 }
    }
}

/// A body for [`DiffRecord`]: lossy UTF-8 of at most `max` bytes, cut on a
/// character boundary, with `…[N more bytes]` when cut.
pub fn body_text(body: &[u8], max: usize) -> String {
    let mut cut = body.len().min(max);
    // Step back out of a multi-byte character rather than leave half of it.
    while cut > 0 && cut < body.len() && body[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if cut < body.len() {
        let _ = write!(text, "…[{} more bytes]", body.len() - cut);
    }
    text
}

/// Replaces the values of the headers named in `names` (lower-case) by `[redacted]`.
pub fn redact(headers: &mut [(String, String)], names: &HashSet<String>) {
    for (name, value) in headers.iter_mut() {
        if names.contains(&name.to_ascii_lowercase()) {
            *value = REDACTED.to_string();
        }
    }
}

/// Everything the store does before writing a record: redaction and size caps.
fn sanitise(record: &mut DiffRecord, names: &HashSet<String>) {
    redact(&mut record.request_headers, names);
    for d in &mut record.diffs {
        let redacted = d.path.strip_prefix("header.").is_some_and(|h| names.contains(h));
        if redacted {
            for v in [&mut d.stable, &mut d.canary] {
                if !v.is_null() {
                    *v = Value::String(REDACTED.into());
                }
            }
        }
    }
    for body in [&mut record.request_body, &mut record.stable_body, &mut record.canary_body] {
        if body.len() > MAX_STORED_BODY {
            *body = body_text(body.as_bytes(), MAX_STORED_BODY);
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shadow_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    route TEXT NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    primary_version TEXT NOT NULL,
    stable_version TEXT NOT NULL DEFAULT '',
    canary_version TEXT NOT NULL DEFAULT '',
    stable_status INTEGER NOT NULL,
    canary_status INTEGER NOT NULL,
    stable_latency_ms REAL NOT NULL,
    canary_latency_ms REAL NOT NULL,
    outcome TEXT NOT NULL,
    weight INTEGER NOT NULL DEFAULT 1,
    diff_count INTEGER NOT NULL,
    request_headers TEXT NOT NULL,
    -- Bodies last: queries that stop before them never read their overflow pages.
    request_body TEXT NOT NULL,
    stable_body TEXT NOT NULL,
    canary_body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_records_route_at ON shadow_records (route, at_ms, outcome);
CREATE INDEX IF NOT EXISTS shadow_records_at ON shadow_records (at_ms);
CREATE TABLE IF NOT EXISTS shadow_diffs (
    record_id INTEGER NOT NULL REFERENCES shadow_records (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    path TEXT NOT NULL,
    stable TEXT NOT NULL,
    canary TEXT NOT NULL,
    noise INTEGER NOT NULL,
    PRIMARY KEY (record_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS shadow_diffs_path ON shadow_diffs (path, record_id);
";

/// Columns added since the first schema, in order, with the statement that
/// adds each to an older file. `PRAGMA user_version` is the number of the
/// schema (1 + the migrations applied); each column is still looked up by
/// name, so a file a crash left half-migrated is finished on the next open.
const MIGRATIONS: [(&str, &str); 3] = [
    // Every old record stood for itself.
    ("weight", "ALTER TABLE shadow_records ADD COLUMN weight INTEGER NOT NULL DEFAULT 1"),
    // Older records name no sides; readers fall back to the shorthand's words.
    ("stable_version", "ALTER TABLE shadow_records ADD COLUMN stable_version TEXT NOT NULL DEFAULT ''"),
    ("canary_version", "ALTER TABLE shadow_records ADD COLUMN canary_version TEXT NOT NULL DEFAULT ''"),
];

/// The `PRAGMA user_version` of a store with every migration applied.
pub const SCHEMA_VERSION: usize = 1 + MIGRATIONS.len();

/// Why the diff store could not do what it was asked: typed for callers,
/// with the text `gateway check`, the admin API and the log show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("shadow store {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("shadow store {}: WAL mode refused (got {mode})", path.display())]
    NoWal { path: PathBuf, mode: String },
    #[error("shadow store: {what}: {message}")]
    Sql { what: &'static str, message: String },
    /// The writer thread is gone, or stopped before it answered.
    #[error("shadow store writer {0}")]
    Writer(&'static str),
    /// The shadow lane's thread or runtime did not start.
    #[error("{0}")]
    Lane(String),
}

pub(super) fn sql_err(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Sql { what, message: e.to_string() }
}

fn file_err(path: &Path) -> impl FnOnce(&dyn std::fmt::Display) -> StoreError + '_ {
    move |e| StoreError::File { path: path.to_path_buf(), message: e.to_string() }
}

/// Opens a connection with the store's settings; `write` also creates the schema.
pub(super) fn connect(path: &Path, write: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| file_err(path)(&e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sql_err("busy_timeout"))?;
    if write {
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(sql_err("journal_mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path: path.to_path_buf(), mode });
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;").map_err(sql_err("pragmas"))?;
        conn.execute_batch(SCHEMA).map_err(sql_err("schema"))?;
        migrate(&conn)?;
    } else {
        conn.execute_batch("PRAGMA query_only = ON;").map_err(sql_err("pragmas"))?;
    }
    Ok(conn)
}

/// Adds the columns an older file lacks (see [`MIGRATIONS`]) and records the
/// schema version, in one write transaction: two processes opening the same
/// older file at once cannot both add a column, and a file a newer build
/// marked keeps its version.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_err("migration"))?;
    let migrated = add_missing_columns(conn);
    let end = if migrated.is_ok() { "COMMIT" } else { "ROLLBACK" };
    conn.execute_batch(end).map_err(sql_err("migration"))?;
    migrated
}

fn add_missing_columns(conn: &Connection) -> Result<(), StoreError> {
    for (column, statement) in MIGRATIONS {
        let present: bool = conn
            .query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('shadow_records') WHERE name = ?1", [column], |r| {
                r.get(0)
            })
            .map_err(sql_err("schema"))?;
        if !present {
            conn.execute_batch(statement).map_err(sql_err("migration"))?;
        }
    }
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql_err("schema"))?;
    if usize::try_from(version).unwrap_or(0) < SCHEMA_VERSION {
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};")).map_err(sql_err("schema"))?;
    }
    Ok(())
}

/// The store: opened once at startup, shared by the writer and the admin API.
pub struct DiffStore {
    pub(super) path: PathBuf,
    pub(super) retention: Retention,
    pub(super) reader: Mutex<Connection>,
    /// Handed to the first writer, so `open` reports a file that cannot be written.
    pub(super) first_writer: Mutex<Option<Connection>>,
    pub(super) redacted: ArcSwap<HashSet<String>>,
}

impl DiffStore {
    /// Opens or creates the file and its schema, applies retention once.
    pub fn open(path: &Path, retention: Retention) -> Result<DiffStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir)(&e))?;
        }
        let writer = connect(path, true)?;
        apply_retention(&writer, retention, now_unix_ms())?;
        let reader = connect(path, false)?;
        Ok(DiffStore {
            path: path.to_path_buf(),
            retention,
            reader: Mutex::new(reader),
            first_writer: Mutex::new(Some(writer)),
            redacted: ArcSwap::from_pointee(DEFAULT_REDACTED_HEADERS.iter().map(|h| h.to_string()).collect()),
        })
    }

    /// `gateway check`: whether [`DiffStore::open`] will succeed, changing
    /// nothing. An existing file must be a SQLite database this user can
    /// write; a missing one, a directory where it can be created. Either way
    /// the directory must take new files (SQLite's `-wal` and `-shm`).
    pub fn check(path: &Path) -> Result<(), StoreError> {
        let failed = |e: &dyn std::fmt::Display| file_err(path)(e);
        if path.exists() {
            let conn = connect(path, false)?;
            conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).map_err(|e| failed(&e))?;
            std::fs::OpenOptions::new().write(true).open(path).map_err(|e| failed(&e))?;
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::control::state::probe_writable(dir, crate::control::state::OpenMode::Inspect).map_err(|e| failed(&e))
    }

    /// Replaces the redaction list (lower-cased here); applies to records written from now on.
    pub fn set_redacted_headers(&self, names: impl IntoIterator<Item = impl AsRef<str>>) {
        let names = names.into_iter().map(|n| n.as_ref().to_ascii_lowercase()).collect();
        self.redacted.store(Arc::new(names));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn read(&self) -> MutexGuard<'_, Connection> {
        // A panic while reading leaves the connection usable.
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores one batch in one transaction; run by the writer thread only.
    pub(super) fn insert_batch(&self, conn: &mut Connection, records: &mut [DiffRecord]) -> Result<(), StoreError> {
        let names = self.redacted.load();
        let tx = conn.transaction().map_err(sql_err("begin"))?;
        for record in records.iter_mut() {
            sanitise(record, &names);
            record.id = insert(&tx, record).map_err(sql_err("insert"))?;
        }
        tx.commit().map_err(sql_err("commit"))
    }
}

fn insert(tx: &Transaction<'_>, r: &DiffRecord) -> rusqlite::Result<i64> {
    let headers = serde_json::to_string(&r.request_headers).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(
        "INSERT INTO shadow_records (at_ms, route, request_id, method, path, primary_version, stable_status,
             canary_status, stable_latency_ms, canary_latency_ms, outcome, diff_count, request_headers,
             request_body, stable_body, canary_body, weight, stable_version, canary_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?
    .execute(params![
        r.at_unix_ms,
        r.route,
        r.request_id,
        r.method,
        r.path,
        r.primary,
        r.stable_status,
        r.canary_status,
        r.stable_latency_ms,
        r.canary_latency_ms,
        r.outcome,
        r.diffs.len() as i64,
        headers,
        r.request_body,
        r.stable_body,
        r.canary_body,
        i64::try_from(r.weight.max(1)).unwrap_or(i64::MAX),
        r.stable_version,
        r.canary_version,
    ])?;
    let id = tx.last_insert_rowid();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO shadow_diffs (record_id, seq, path, stable, canary, noise) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (seq, d) in r.diffs.iter().enumerate() {
        stmt.execute(params![id, seq as i64, d.path, d.stable.to_string(), d.canary.to_string(), d.noise])?;
    }
    Ok(id)
}

/// Deletes records older than `max_age` and all but the newest `max_records`
/// (their diffs go with them, `ON DELETE CASCADE`).
pub(super) fn apply_retention(conn: &Connection, retention: Retention, now_ms: i64) -> Result<(), StoreError> {
    let max_age_ms = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
    conn.execute("DELETE FROM shadow_records WHERE at_ms < ?1", [now_ms.saturating_sub(max_age_ms)])
        .map_err(sql_err("retention by age"))?;
    // Ids only grow (AUTOINCREMENT), so the newest N are the ids above max(id) - N:
    // an index lookup instead of counting the table every second.
    let keep = i64::try_from(retention.max_records).unwrap_or(i64::MAX);
    conn.execute("DELETE FROM shadow_records WHERE id <= (SELECT MAX(id) FROM shadow_records) - ?1", [keep])
        .map_err(sql_err("retention by count"))?;
    Ok(())
}

pub(super) fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
