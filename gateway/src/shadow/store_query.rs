//! Reading the store, for the admin API: per-route summaries, record lists
//! and single records. Each call is a few indexed queries on the reader
//! connection; none blocks the writer (WAL).

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::store::{label, outcome, sql_err, DiffRecord, DiffStore, StoreError, StoredDiff};

/// Paths listed per route in a summary, most frequent first.
pub const SUMMARY_PATHS: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSummary {
    pub route: String,
    /// Records in the window, all outcomes.
    pub shadowed: u64,
    pub identical: u64,
    pub different: u64,
    pub noise_only: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub paths: Vec<PathSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathSummary {
    pub path: String,
    /// Records in which this path differed.
    pub count: u64,
    /// `count / shadowed`.
    pub rate: f64,
    /// Most of this path's stored diffs were classified noise when recorded.
    pub noise: bool,
    /// The newest record showing this path.
    pub example_id: i64,
}

/// A record without its bodies and diffs, for lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffRecordHeader {
    pub id: i64,
    pub at_unix_ms: i64,
    pub route: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub primary: String,
    /// See [`DiffRecord::stable_version`].
    pub stable_version: String,
    pub canary_version: String,
    pub outcome: String,
    pub stable_status: u16,
    pub canary_status: u16,
    pub diff_count: u64,
}

impl DiffRecordHeader {
    /// See [`DiffRecord::side_names`].
    pub fn side_names(&self) -> (&str, &str) {
        (label(&self.stable_version, "stable"), label(&self.canary_version, "canary"))
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl DiffStore {
    /// Outcome counts and differing paths per route (one route when `route`
    /// is given), over records at or after `since_unix_ms`; routes by name.
    pub fn summary(&self, route: Option<&str>, since_unix_ms: Option<i64>) -> Result<Vec<RouteSummary>, StoreError> {
        let conn = self.read();
        let since = since_unix_ms.unwrap_or(i64::MIN);
        let mut sql = format!(
            "SELECT route, SUM(weight), SUM((outcome = '{}') * weight), SUM((outcome = '{}') * weight),
                    SUM((outcome = '{}') * weight), SUM((outcome = '{}') * weight), SUM((outcome = '{}') * weight)
             FROM shadow_records WHERE at_ms >= ?1",
            outcome::IDENTICAL,
            outcome::DIFFERENT,
            outcome::NOISE_ONLY,
            outcome::ERROR,
            outcome::TIMEOUT
        );
        let mut args = vec![SqlValue::Integer(since)];
        if let Some(r) = route {
            sql.push_str(" AND route = ?2");
            args.push(SqlValue::Text(r.to_string()));
        }
        sql.push_str(" GROUP BY route ORDER BY route");
        let mut stmt = conn.prepare_cached(&sql).map_err(sql_err("summary"))?;
        let mut routes: Vec<RouteSummary> = stmt
            .query_map(params_from_iter(args), |row| {
                Ok(RouteSummary {
                    route: row.get(0)?,
                    shadowed: count(row.get(1)?),
                    identical: count(row.get(2)?),
                    different: count(row.get(3)?),
                    noise_only: count(row.get(4)?),
                    errors: count(row.get(5)?),
                    timeouts: count(row.get(6)?),
                    paths: Vec::new(),
                })
            })
            .and_then(Iterator::collect)
            .map_err(sql_err("summary"))?;
        let mut paths = conn
            .prepare_cached(
                // A path appears at most once per record (the diff walks each
                // field once), so summing the records' weights counts requests.
                "SELECT d.path, SUM(r.weight), SUM(d.noise) * 2 > COUNT(*), MAX(d.record_id)
                 FROM shadow_records r JOIN shadow_diffs d ON d.record_id = r.id
                 WHERE r.route = ?1 AND r.at_ms >= ?2
                 GROUP BY d.path ORDER BY 2 DESC, d.path LIMIT ?3",
            )
            .map_err(sql_err("summary paths"))?;
        for summary in &mut routes {
            let shadowed = summary.shadowed.max(1) as f64;
            summary.paths = paths
                .query_map(params![summary.route, since, SUMMARY_PATHS as i64], |row| {
                    let n = count(row.get(1)?);
                    Ok(PathSummary {
                        path: row.get(0)?,
                        count: n,
                        rate: n as f64 / shadowed,
                        noise: row.get(2)?,
                        example_id: row.get(3)?,
                    })
                })
                .and_then(Iterator::collect)
                .map_err(sql_err("summary paths"))?;
        }
        Ok(routes)
    }

    /// The newest records first, filtered by route, by a differing field path
    /// (`diff_path`, e.g. `$.items[2].price`) and by time; at most `limit`.
    pub fn list(
        &self,
        route: Option<&str>,
        diff_path: Option<&str>,
        since_unix_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DiffRecordHeader>, StoreError> {
        let conn = self.read();
        let mut sql = String::from(
            "SELECT id, at_ms, route, request_id, method, path, primary_version, outcome, stable_status,
                    canary_status, diff_count, stable_version, canary_version
             FROM shadow_records WHERE at_ms >= ?1",
        );
        let mut args = vec![SqlValue::Integer(since_unix_ms.unwrap_or(i64::MIN))];
        if let Some(r) = route {
            args.push(SqlValue::Text(r.to_string()));
            sql.push_str(&format!(" AND route = ?{}", args.len()));
        }
        if let Some(p) = diff_path {
            args.push(SqlValue::Text(p.to_string()));
            sql.push_str(&format!(" AND id IN (SELECT record_id FROM shadow_diffs WHERE path = ?{})", args.len()));
        }
        args.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
        let mut stmt = conn.prepare_cached(&sql).map_err(sql_err("list"))?;
        let rows = stmt.query_map(params_from_iter(args), |row| {
            Ok(DiffRecordHeader {
                id: row.get(0)?,
                at_unix_ms: row.get(1)?,
                route: row.get(2)?,
                request_id: row.get(3)?,
                method: row.get(4)?,
                path: row.get(5)?,
                primary: row.get(6)?,
                outcome: row.get(7)?,
                stable_status: row.get(8)?,
                canary_status: row.get(9)?,
                diff_count: count(row.get(10)?),
                stable_version: row.get(11)?,
                canary_version: row.get(12)?,
            })
        });
        rows.and_then(Iterator::collect).map_err(sql_err("list"))
    }

    /// One record with its diffs and bodies; `None` when unknown or expired.
    pub fn get(&self, id: i64) -> Result<Option<DiffRecord>, StoreError> {
        let conn = self.read();
        let record = conn
            .prepare_cached(
                "SELECT id, at_ms, route, request_id, method, path, primary_version, stable_status,
                        canary_status, stable_latency_ms, canary_latency_ms, outcome, request_headers,
                        request_body, stable_body, canary_body, weight, stable_version, canary_version
                 FROM shadow_records WHERE id = ?1",
            )
            .and_then(|mut stmt| stmt.query_row([id], record_row).optional())
            .map_err(sql_err("get"))?;
        let Some(mut record) = record else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare_cached("SELECT path, stable, canary, noise FROM shadow_diffs WHERE record_id = ?1 ORDER BY seq")
            .map_err(sql_err("get diffs"))?;
        record.diffs = stmt
            .query_map([id], |row| {
                let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
                    let text: String = row.get(i)?;
                    // Written by `insert` from a `Value`, so it parses; tolerate a hand-edited file.
                    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
                };
                Ok(StoredDiff { path: row.get(0)?, stable: json(1)?, canary: json(2)?, noise: row.get(3)? })
            })
            .and_then(Iterator::collect)
            .map_err(sql_err("get diffs"))?;
        Ok(Some(record))
    }
}

fn record_row(row: &Row<'_>) -> rusqlite::Result<DiffRecord> {
    let headers: String = row.get(12)?;
    Ok(DiffRecord {
        id: row.get(0)?,
        at_unix_ms: row.get(1)?,
        route: row.get(2)?,
        request_id: row.get(3)?,
        method: row.get(4)?,
        path: row.get(5)?,
        primary: row.get(6)?,
        stable_status: row.get(7)?,
        canary_status: row.get(8)?,
        stable_latency_ms: row.get(9)?,
        canary_latency_ms: row.get(10)?,
        outcome: row.get(11)?,
        diffs: Vec::new(),
        request_headers: serde_json::from_str(&headers).unwrap_or_default(),
        request_body: row.get(13)?,
        stable_body: row.get(14)?,
        canary_body: row.get(15)?,
        weight: u64::try_from(row.get::<_, i64>(16)?).unwrap_or(1),
        stable_version: row.get(17)?,
        canary_version: row.get(18)?,
    })
}
