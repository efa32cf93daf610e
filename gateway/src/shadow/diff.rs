//! The comparison of a stable and a canary answer, run off the request path
//! for every shadowed request: status, then headers, then the body by kind.
//!
//! Body kinds, decided in this order:
//! 1. either body longer than `max_compare_body`, or either capture truncated:
//!    SHA-256 only, one `body` entry `{len, sha256[, truncated]}` when they differ;
//! 2. both parse as JSON (tried when a `content-type` says `json` or the body
//!    starts with `{` or `[`): structural diff, see [`super::json`];
//! 3. both valid UTF-8 without NUL bytes: line diff, see [`text_diff`];
//! 4. anything else: binary, one `body` entry `{len, sha256}` when they differ.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::answer::{Answer, DiffOptions, FieldDiff, HOP_BY_HOP_HEADERS};
use super::json::json_diff;
use super::json_tree;

/// At most this many `body:line <n>` entries; `body:lines` then gives the counts.
pub const MAX_LINE_DIFFS: usize = 20;

/// Compares two answers field by field; empty when they are equal under `opts`.
pub fn diff(stable: &Answer, canary: &Answer, opts: &DiffOptions) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    if stable.status != canary.status {
        out.push(FieldDiff { path: "status".into(), stable: json!(stable.status), canary: json!(canary.status) });
    }
    header_diff(stable, canary, opts, &mut out);
    body_diff(stable, canary, opts, &mut out);
    out
}

/// Headers by lower-case name, repeated values joined with ", " in order.
fn header_map<'a>(answer: &'a Answer, opts: &DiffOptions) -> BTreeMap<String, Vec<&'a str>> {
    let mut map: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, value) in &answer.headers {
        let name = name.to_ascii_lowercase();
        if !opts.ignore_headers.contains(&name) && !HOP_BY_HOP_HEADERS.contains(&name.as_str()) {
            map.entry(name).or_default().push(value);
        }
    }
    map
}

fn header_diff(stable: &Answer, canary: &Answer, opts: &DiffOptions, out: &mut Vec<FieldDiff>) {
    let left = header_map(stable, opts);
    let mut right = header_map(canary, opts);
    let joined = |v: &[&str]| Value::String(v.join(", "));
    for (name, lv) in &left {
        match right.remove(name) {
            Some(rv) if rv == *lv => {}
            rv => out.push(FieldDiff {
                path: format!("header.{name}"),
                stable: joined(lv),
                canary: rv.map_or(Value::Null, |rv| joined(&rv)),
            }),
        }
    }
    for (name, rv) in right {
        out.push(FieldDiff { path: format!("header.{name}"), stable: Value::Null, canary: joined(&rv) });
    }
}

fn body_diff(stable: &Answer, canary: &Answer, opts: &DiffOptions, out: &mut Vec<FieldDiff>) {
    let (a, b) = (&stable.body[..], &canary.body[..]);
    let too_big = a.len() > opts.max_compare_body || b.len() > opts.max_compare_body;
    if too_big || stable.body_truncated || canary.body_truncated {
        let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
        // A truncated capture is only a prefix; nothing is known past it, so
        // equal prefixes count as equal.
        if ha != hb {
            out.push(FieldDiff {
                path: "body".into(),
                stable: hash_value(a.len(), &ha, stable.body_truncated),
                canary: hash_value(b.len(), &hb, canary.body_truncated),
            });
        }
        return;
    }
    if a == b {
        return;
    }
    if looks_json(stable) || looks_json(canary) {
        if let (Some(ja), Some(jb)) = (json_tree::parse(a), json_tree::parse(b)) {
            json_diff(&ja, &jb, opts, out);
            return;
        }
    }
    match (text(a), text(b)) {
        (Some(ta), Some(tb)) => text_diff(ta, tb, out),
        _ => out.push(FieldDiff {
            path: "body".into(),
            stable: hash_value(a.len(), &Sha256::digest(a), false),
            canary: hash_value(b.len(), &Sha256::digest(b), false),
        }),
    }
}

fn looks_json(answer: &Answer) -> bool {
    let declared = answer.header("content-type").is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    declared || matches!(answer.body.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
}

fn text(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body).ok().filter(|s| !s.contains('\0'))
}

fn hash_value(len: usize, hash: &[u8], truncated: bool) -> Value {
    let mut hex = String::with_capacity(64);
    for b in hash {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    if truncated {
        json!({ "len": len, "sha256": hex, "truncated": true })
    } else {
        json!({ "len": len, "sha256": hex })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Line diff of two texts that differ. Common leading and trailing lines are
/// skipped, then the middle is compared line by line, so one inserted or
/// removed line gives one entry instead of shifting every line after it.
/// `<n>` is the 1-based line number on the stable side (the canary's differs
/// only after lines were inserted or removed); a line missing on one side is
/// `null`. At most [`MAX_LINE_DIFFS`] entries, then always one `body:lines`
/// entry: `{lines, differing}` per side (`differing` counts every differing
/// position, shown or not).
pub fn text_diff(a: &str, b: &str, out: &mut Vec<FieldDiff>) {
    let la: Vec<&str> = a.lines().collect();
    let lb: Vec<&str> = b.lines().collect();
    let prefix = la.iter().zip(&lb).take_while(|(x, y)| x == y).count();
    let suffix = la[prefix..].iter().rev().zip(lb[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (mid_a, mid_b) = (&la[prefix..la.len() - suffix], &lb[prefix..lb.len() - suffix]);
    let line = |l: Option<&&str>| l.map_or(Value::Null, |s| Value::String(s.to_string()));
    let mut differing = 0usize;
    for k in 0..mid_a.len().max(mid_b.len()) {
        let (x, y) = (mid_a.get(k), mid_b.get(k));
        if x == y {
            continue;
        }
        differing += 1;
        if differing <= MAX_LINE_DIFFS {
            out.push(FieldDiff { path: format!("body:line {}", prefix + k + 1), stable: line(x), canary: line(y) });
        }
    }
    // Texts that differ only in line endings or a final newline still get an entry.
    out.push(FieldDiff {
        path: "body:lines".into(),
        stable: json!({ "lines": la.len(), "differing": differing }),
        canary: json!({ "lines": lb.len(), "differing": differing }),
    });
}
