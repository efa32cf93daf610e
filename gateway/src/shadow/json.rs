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
//!   it, integers exactly and other numbers as `f64` (`1 == 1.0`).
//! - Differing types report the whole values at that path (`$` for the root).
//! - A node whose path matches `ignore_fields` is skipped with its subtree.
//!
//! At most [`MAX_JSON_DIFFS`] entries are kept, then one `body:more` entry
//! gives the total, so a wholly different body cannot flood the store.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

use serde_json::json;

use super::answer::{DiffOptions, FieldDiff};
use super::json_tree::{Node, Num, NULL};
use super::pattern::{render_path, PathSeg};

/// Entries kept per body; enough to show what changed, small enough to store.
pub const MAX_JSON_DIFFS: usize = 100;

/// Beyond this many candidate pairs among a set array's unmatched elements,
/// they are reported without searching for equal ones (quadratic search).
const MAX_SET_PAIRS: usize = 1 << 16;

/// Unmatched set elements up to this many are searched pairwise directly;
/// hashing first only pays off for longer arrays.
const SET_HASH_FROM: usize = 8;

/// Appends the differences between two parsed JSON bodies to `out`.
pub fn json_diff(stable: &Node<'_>, canary: &Node<'_>, opts: &DiffOptions, out: &mut Vec<FieldDiff>) {
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
    fn report(&mut self, path: impl FnOnce() -> String, a: &Node<'_>, b: &Node<'_>) -> bool {
        let Some(out) = self.out.as_deref_mut() else {
            return false;
        };
        self.found += 1;
        if self.found <= MAX_JSON_DIFFS {
            out.push(FieldDiff { path: path(), stable: a.to_value(), canary: b.to_value() });
        }
        true
    }

    /// Compares `a` and `b` at `path` (`path` is restored on return); false
    /// when an equality probe found a difference.
    fn child<'v>(&mut self, path: &mut Vec<PathSeg<'v>>, seg: PathSeg<'v>, a: &'v Node<'v>, b: &'v Node<'v>) -> bool {
        path.push(seg);
        let go = self.ignored(path) || self.node(path, a, b);
        path.pop();
        go
    }

    fn node<'v>(&mut self, path: &mut Vec<PathSeg<'v>>, a: &'v Node<'v>, b: &'v Node<'v>) -> bool {
        match (a, b) {
            (Node::Obj(ma), Node::Obj(mb)) => {
                // Both sides are sorted by key: one merge pass, no lookups.
                let (mut i, mut j) = (0, 0);
                while i < ma.len() || j < mb.len() {
                    let order = match (ma.get(i), mb.get(j)) {
                        (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
                        (Some(_), None) => std::cmp::Ordering::Less,
                        _ => std::cmp::Ordering::Greater,
                    };
                    let (key, va, vb) = match order {
                        std::cmp::Ordering::Less => (&ma[i].0, &ma[i].1, &NULL),
                        std::cmp::Ordering::Greater => (&mb[j].0, &NULL, &mb[j].1),
                        std::cmp::Ordering::Equal => (&ma[i].0, &ma[i].1, &mb[j].1),
                    };
                    i += usize::from(order.is_le());
                    j += usize::from(order.is_ge());
                    if !self.child(path, PathSeg::Key(key), va, vb) {
                        return false;
                    }
                }
                true
            }
            (Node::Arr(xa), Node::Arr(xb)) if self.opts.array_sets.iter().any(|p| p.matches(path)) => {
                self.set(path, xa, xb)
            }
            (Node::Arr(xa), Node::Arr(xb)) => {
                for i in 0..xa.len().max(xb.len()) {
                    if !self.child(path, PathSeg::Index(i), xa.get(i).unwrap_or(&NULL), xb.get(i).unwrap_or(&NULL)) {
                        return false;
                    }
                }
                true
            }
            (Node::Num(x), Node::Num(y)) if numbers_equal(*x, *y, self.opts.numeric_tolerance) => true,
            (Node::Num(_), Node::Num(_)) => self.report(|| render_path(path), a, b),
            _ if a == b => true,
            _ => self.report(|| render_path(path), a, b),
        }
    }

    /// Whether element `i` of the stable array equals `b` under the options
    /// (element paths carry the stable index, for `ignore_fields`).
    fn element_equal<'v>(&self, path: &mut Vec<PathSeg<'v>>, i: usize, a: &'v Node<'v>, b: &'v Node<'v>) -> bool {
        Walk { opts: self.opts, out: None, found: 0 }.child(path, PathSeg::Index(i), a, b)
    }

    /// Multiset comparison: elements equal at the same position are paired
    /// first (the common, unchanged case), then exactly equal ones through a
    /// hash, and only the rest pairwise, where tolerance and ignored fields apply.
    fn set<'v>(&mut self, path: &mut Vec<PathSeg<'v>>, xa: &'v [Node<'v>], xb: &'v [Node<'v>]) -> bool {
        let mut taken = vec![false; xb.len()];
        let mut rest_a = Vec::new();
        for (i, va) in xa.iter().enumerate() {
            match xb.get(i) {
                Some(vb) if self.element_equal(path, i, va, vb) => taken[i] = true,
                _ => rest_a.push(i),
            }
        }
        if rest_a.len() > SET_HASH_FROM {
            let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
            // Reversed, so popping a bucket yields the lowest index first.
            for j in (0..xb.len()).rev().filter(|j| !taken[*j]) {
                buckets.entry(hash_of(&xb[j])).or_default().push(j);
            }
            rest_a.retain(|&i| {
                let bucket = buckets.get_mut(&hash_of(&xa[i]));
                match bucket.as_ref().and_then(|c| c.last().copied()) {
                    Some(j) if self.element_equal(path, i, &xa[i], &xb[j]) => {
                        bucket.and_then(|c| c.pop());
                        taken[j] = true;
                        false
                    }
                    _ => true,
                }
            });
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

fn numbers_equal(x: Num, y: Num, tolerance: Option<f64>) -> bool {
    let (fx, fy) = (x.as_f64(), y.as_f64());
    match (tolerance, x.as_int(), y.as_int()) {
        (None, Some(ix), Some(iy)) => ix == iy,
        (None, _, _) => fx == fy,
        (Some(tol), _, _) => (fx - fy).abs() <= tol * fx.abs().max(fy.abs()).max(1.0),
    }
}

fn hash_of(v: &Node<'_>) -> u64 {
    let mut h = DefaultHasher::new();
    v.feed(&mut h);
    h.finish()
}
