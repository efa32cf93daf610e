//! What the comparison takes in (two captured answers and the route's
//! options) and what it gives out (one [`FieldDiff`] per differing field).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::pattern::FieldPattern;

/// One upstream's answer to a request, as captured by the mirroring.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    /// In the order received; names in any case, repeated names allowed.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub latency: Duration,
    /// The capture stopped at its size limit: `body` is only a prefix.
    pub body_truncated: bool,
}

impl Answer {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// How one route compares answers; built from `[routes.shadow]` when the
/// config is loaded, read for every shadowed request.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Lower-case header names not compared (`ignore_headers`), besides
    /// [`HOP_BY_HOP_HEADERS`], which never are.
    pub ignore_headers: HashSet<String>,
    /// JSON fields skipped with their subtrees (`ignore_fields`).
    pub ignore_fields: Vec<FieldPattern>,
    /// Numbers `a`, `b` are equal when `|a - b| <= tol * max(1, |a|, |b|)`:
    /// relative for magnitudes above 1, absolute below (`numeric_tolerance`).
    /// `None`: integers compare exactly, other numbers as `f64` (`1 == 1.0`).
    pub numeric_tolerance: Option<f64>,
    /// JSON arrays compared as multisets, order ignored (`array_sets`).
    pub array_sets: Vec<FieldPattern>,
    /// Bodies longer than this are compared by SHA-256 only (`max_compare_body`).
    pub max_compare_body: usize,
}

/// Headers ignored unless the route lists its own: `date` changes every second.
pub const DEFAULT_IGNORE_HEADERS: [&str; 1] = ["date"];

/// Never compared, whatever the options: they describe the connection
/// (framing may legitimately differ between versions), not the answer.
pub const HOP_BY_HOP_HEADERS: [&str; 6] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"];

/// 1 MiB: parsing and walking two such JSON bodies takes several
/// milliseconds off the request path; beyond that, a hash is enough.
pub const DEFAULT_MAX_COMPARE_BODY: usize = 1 << 20;

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            ignore_headers: DEFAULT_IGNORE_HEADERS.iter().map(|h| h.to_string()).collect(),
            ignore_fields: Vec::new(),
            numeric_tolerance: None,
            array_sets: Vec::new(),
            max_compare_body: DEFAULT_MAX_COMPARE_BODY,
        }
    }
}

impl DiffOptions {
    /// Builds options from the config's strings; the error names the bad pattern.
    pub fn from_config(
        ignore_headers: &[String],
        ignore_fields: &[String],
        numeric_tolerance: Option<f64>,
        array_sets: &[String],
        max_compare_body: usize,
    ) -> Result<DiffOptions, String> {
        if let Some(t) = numeric_tolerance {
            if !(t.is_finite() && t >= 0.0) {
                return Err(format!("numeric_tolerance must be a finite number >= 0, got {t}"));
            }
        }
        let parse = |list: &[String]| list.iter().map(|p| FieldPattern::parse(p)).collect::<Result<Vec<_>, _>>();
        Ok(DiffOptions {
            ignore_headers: ignore_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            ignore_fields: parse(ignore_fields)?,
            numeric_tolerance,
            array_sets: parse(array_sets)?,
            max_compare_body,
        })
    }
}

/// One differing field. Always oriented stable (left) vs canary (right),
/// whichever version served the client.
///
/// `path` is `status`, `header.<lower-case name>`, a JSON path (`$.items[2].price`,
/// `$.tags[*]` for an unmatched element of a set array, `$` when the root types
/// differ), `body:line <n>` / `body:lines` for text, or `body` for binary and
/// hashed bodies. A value absent on one side is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub path: String,
    pub stable: serde_json::Value,
    pub canary: serde_json::Value,
}
