//! Structural diff of two JSON bodies, run for every shadowed request whose
//! answers are both JSON.
//!
//! - Objects: keys unordered; a key absent on one side compares as `null`
//!   (a [`FieldDiff`] could not show `{"a": null}` and `{}` apart anyway).
//! - Arrays: by position, an extra element reported at its index with `null`
//!   on the other side; or, when the array's path matches `array_sets`, as
//!   multisets: each element is matched to an equal element anywhere on the
//!   other side, and the unmatched ones are reported pairwise at `<array>[*]`
//!   (positions mean nothing in a set).
//! - Numbers: equal within `numeric_tolerance` (see [`DiffOptions`]); without
//!   it, integers exactly and other numbers as `f64`.
//! - Differing types report the whole values at that path (`$` for the root).
//! - A node whose path matches `ignore_fields` is skipped with its subtree.
//!
//! At most [`MAX_JSON_DIFFS`] entries are kept, then one `body:more` entry
//! gives the total, so a wholly different body cannot flood the store.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{json, Number, Value};

use super::answer::{DiffOptions, FieldDiff};
use super::pattern::{render_path, PathSeg};

/// Entries kept per body; enough to show what changed, small enough to store.
pub const MAX_JSON_DIFFS: usize = 100;

/// Beyond this many candidate pairs among a set array's unmatched elements,
/// they are reported without searching for equal ones (quadratic search).
const MAX_SET_PAIRS: usize = 1 << 16;

static NULL: Value = Value::Null;

/// Appends the differences between two parsed JSON bodies to `out`.
pub fn json_diff(stable: &Value, canary: &Value, opts: &DiffOptions, out: &mut Vec<FieldDiff>) {
    let mut walk = Walk { opts, out: Some(out), found: 0 };
    let mut path = Vec::with_capacity(16);
    if !walk.ignored(&path) {
        walk.node(&mut path, stable, canary);
    }
    let found = walk.found;
    if let (Some(out), true) = (walk.out, found > MAX_JSON_DIFFS) {
        let counts = json!({ "differing": found, "shown": MAX_JSON_DIFFS });
        out.push(FieldDiff { path: "body:more".into(), stable: counts.clone(), canary: counts });
    }
}

struct Walk<'o> {
    opts: &'o DiffOptions,
    /// `None` when only asking "equal or not?": the walk stops at the first difference.
    out: Option<&'o mut Vec<FieldDiff>>,
    found: usize,
}

impl Walk<'_> {
    fn ignored(&self, path: &[PathSeg<'_>]) -> bool {
        self.opts.ignore_fields.iter().any(|p| p.matches(path))
    }

    /// Records a difference; false tells the caller to stop (equality probe).
    fn report(&mut self, path: impl FnOnce() -> String, a: &Value, b: &Value) -> bool {
        let Some(out) = self.out.as_deref_mut() else {
            return false;
        };
        self.found += 1;
        if self.found <= MAX_JSON_DIFFS {
            out.push(FieldDiff { path: path(), stable: a.clone(), canary: b.clone() });
        }
        true
    }

    /// Compares `a` and `b` at `path`; false when an equality probe found a difference.
    fn node<'v>(&mut self, path: &mut Vec<PathSeg<'v>>, a: &'v Value, b: &'v Value) -> bool {
        match (a, b) {
            (Value::Object(ma), Value::Object(mb)) => {
                let left = ma.iter().map(|(k, va)| (k, va, mb.get(k).unwrap_or(&NULL)));
                let right_only = mb.iter().filter(|(k, _)| !ma.contains_key(*k)).map(|(k, vb)| (k, &NULL, vb));
                for (k, va, vb) in left.chain(right_only) {
                    path.push(PathSeg::Key(k));
                    let go = self.ignored(path) || self.node(path, va, vb);
                    path.pop();
                    if !go {
                        return false;
                    }
                }
                true
            }
            (Value::Array(xa), Value::Array(xb)) if self.opts.array_sets.iter().any(|p| p.matches(path)) => {
                self.set(path, xa, xb)
            }
            (Value::Array(xa), Value::Array(xb)) => {
                for i in 0..xa.len().max(xb.len()) {
                    path.push(PathSeg::Index(i));
                    let go =
                        self.ignored(path) || self.node(path, xa.get(i).unwrap_or(&NULL), xb.get(i).unwrap_or(&NULL));
                    path.pop();
                    if !go {
                        return false;
                    }
                }
                true
            }
            (Value::Number(x), Value::Number(y)) if numbers_equal(x, y, self.opts.numeric_tolerance) => true,
            (Value::Number(_), Value::Number(_)) => self.report(|| render_path(path), a, b),
            _ if a == b => true,
            _ => self.report(|| render_path(path), a, b),
        }
    }

    /// Whether element `i` of the stable array equals `b` under the options.
    fn element_equal<'v>(&self, path: &mut Vec<PathSeg<'v>>, i: usize, a: &'v Value, b: &'v Value) -> bool {
        path.push(PathSeg::Index(i));
        let mut probe = Walk { opts: self.opts, out: None, found: 0 };
        let equal = probe.ignored(path) || probe.node(path, a, b);
        path.pop();
        equal
    }

    /// Multiset comparison. Exactly equal elements are paired first through a
    /// hash (linear, the common case); only the rest are searched pairwise,
    /// where tolerance and ignored fields apply.
    fn set<'v>(&mut self, path: &mut Vec<PathSeg<'v>>, xa: &'v [Value], xb: &'v [Value]) -> bool {
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::with_capacity(xb.len());
        // Reversed, so popping a bucket yields the lowest index first.
        for (j, vb) in xb.iter().enumerate().rev() {
            buckets.entry(hash_of(vb)).or_default().push(j);
        }
        let mut taken = vec![false; xb.len()];
        let mut rest_a = Vec::new();
        for (i, va) in xa.iter().enumerate() {
            let bucket = buckets.get_mut(&hash_of(va));
            match bucket.as_ref().and_then(|c| c.last().copied()) {
                Some(j) if self.element_equal(path, i, va, &xb[j]) => {
                    bucket.and_then(|c| c.pop());
                    taken[j] = true;
                }
                _ => rest_a.push(i),
            }
        }
        let mut rest_b: Vec<usize> = (0..xb.len()).filter(|j| !taken[*j]).collect();
        if rest_a.len().saturating_mul(rest_b.len()) <= MAX_SET_PAIRS {
            rest_a.retain(|&i| {
                let hit = rest_b.iter().position(|&j| self.element_equal(path, i, &xa[i], &xb[j]));
                hit.map(|n| rest_b.remove(n)).is_none()
            });
        }
        let mut rendered = None;
        for k in 0..rest_a.len().max(rest_b.len()) {
            let a = rest_a.get(k).map_or(&NULL, |&i| &xa[i]);
            let b = rest_b.get(k).map_or(&NULL, |&j| &xb[j]);
            let at = || rendered.get_or_insert_with(|| format!("{}[*]", render_path(path))).clone();
            if !self.report(at, a, b) {
                return false;
            }
        }
        true
    }
}

fn numbers_equal(x: &Number, y: &Number, tolerance: Option<f64>) -> bool {
    let int = |n: &Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    let (fx, fy) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
    match (tolerance, int(x), int(y)) {
        (None, Some(ix), Some(iy)) => ix == iy,
        (None, _, _) => fx == fy,
        (Some(tol), _, _) => (fx - fy).abs() <= tol * fx.abs().max(fy.abs()).max(1.0),
    }
}

/// A hash equal for exactly equal values, whatever the key order of objects
/// and however a number is written (`1` and `1.0`).
fn hash_of(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    feed(v, &mut h);
    h.finish()
}

fn feed(v: &Value, h: &mut DefaultHasher) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => (1u8, *b).hash(h),
        Value::Number(n) => {
            // `+ 0.0` folds -0.0 into 0.0, which compares equal to it.
            let f = n.as_f64().unwrap_or(f64::NAN) + 0.0;
            (2u8, f.to_bits()).hash(h);
        }
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(xs) => {
            (4u8, xs.len()).hash(h);
            xs.iter().for_each(|x| feed(x, h));
        }
        Value::Object(m) => {
            // Order-independent: a sum of per-entry hashes.
            let sum = m.iter().fold(0u64, |acc, (k, x)| {
                let mut eh = DefaultHasher::new();
                k.hash(&mut eh);
                feed(x, &mut eh);
                acc.wrapping_add(eh.finish())
            });
            (5u8, m.len(), sum).hash(h);
        }
    }
}
