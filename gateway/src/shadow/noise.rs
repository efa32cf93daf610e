//! Noise cancelling: which differing fields are noise (they differ even
//! between two answers of the SAME version) and which are real.
//!
//! For every shadowed request the mirroring records the cross-version diff
//! (stable vs canary, [`NoiseTracker::record_cross`]); for a `noise_check`
//! share it also sends the request twice to the primary's own version and
//! records that same-version diff ([`NoiseTracker::record_same`]). Per route
//! and path we count samples (comparisons made) and differs (comparisons in
//! which that path differed), and classify with these rates:
//!
//! - **Unknown** while the route has fewer than [`MIN_SAME_SAMPLES`] (10)
//!   same-version samples, or the path has never differed: too little to tell.
//! - **Noise** when `same_rate > 0.02` and `same_rate >= 0.5 * cross_rate`: the
//!   field changes between two answers of one version about as often as
//!   between versions, so the version is not what changes it (timestamps,
//!   request IDs, random tokens).
//! - **Real** otherwise: it differs across versions and same-version answers
//!   show it stable (`same_rate <= 0.02` or `< 0.5 * cross_rate`). A path that
//!   differs only across versions is therefore real.
//!
//! Why these numbers: 10 same-version samples are enough to see a field that
//! changes on most requests (the usual noise) several times; 2% leaves room
//! for rare flukes between two same-version calls (a cache expiring in
//! between) without hiding a regression; and the factor 0.5 absorbs sampling
//! error between two rates measured on different sample counts, while a
//! field changed by the canary (cross ~100%) that flickers now and then
//! (same ~10%) stays real.
//!
//! Bounded memory: at most [`MAX_PATHS_PER_ROUTE`] distinct paths per route;
//! differences on further paths are counted as overflow and classify as Unknown.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::answer::FieldDiff;

/// Same-version samples a route needs before any of its paths is classified.
pub const MIN_SAME_SAMPLES: u64 = 10;
/// A same-version differ rate at or below this is "stable".
pub const SAME_RATE_FLOOR: f64 = 0.02;
/// Noise when the same-version rate is at least this share of the cross-version rate.
pub const NOISE_RATIO: f64 = 0.5;
/// Distinct paths tracked per route.
pub const MAX_PATHS_PER_ROUTE: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldClass {
    Noise,
    Real,
    Unknown,
}

/// One path's counts and class, for the summary page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStats {
    pub path: String,
    pub cross_samples: u64,
    pub cross_differs: u64,
    pub same_samples: u64,
    pub same_differs: u64,
    pub class: FieldClass,
}

#[derive(Debug, Default, Clone, Copy)]
struct Differs {
    cross: u64,
    same: u64,
}

#[derive(Debug, Default)]
struct RouteNoise {
    cross_samples: u64,
    same_samples: u64,
    paths: HashMap<String, Differs>,
    /// Path differences not counted because the route hit its path cap.
    overflow: u64,
}

impl RouteNoise {
    fn record(&mut self, diffs: &[FieldDiff], same: bool, max_paths: usize) {
        if same {
            self.same_samples += 1;
        } else {
            self.cross_samples += 1;
        }
        // A path is counted once per comparison even when reported twice (`$.tags[*]`).
        let mut seen = HashSet::with_capacity(diffs.len());
        for path in diffs.iter().map(|d| d.path.as_str()).filter(|p| seen.insert(*p)) {
            if !self.paths.contains_key(path) {
                if self.paths.len() >= max_paths {
                    self.overflow += 1;
                    continue;
                }
                self.paths.insert(path.to_string(), Differs::default());
            }
            if let Some(counts) = self.paths.get_mut(path) {
                if same {
                    counts.same += 1;
                } else {
                    counts.cross += 1;
                }
            }
        }
    }

    fn classify(&self, path: &str) -> FieldClass {
        match self.paths.get(path) {
            Some(d) => classify(self.cross_samples, d.cross, self.same_samples, d.same),
            None => FieldClass::Unknown,
        }
    }
}

/// The rule of the module doc, on raw counts.
pub fn classify(cross_samples: u64, cross_differs: u64, same_samples: u64, same_differs: u64) -> FieldClass {
    if same_samples < MIN_SAME_SAMPLES || (cross_differs == 0 && same_differs == 0) {
        return FieldClass::Unknown;
    }
    let rate = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let same_rate = rate(same_differs, same_samples);
    let cross_rate = rate(cross_differs, cross_samples);
    if same_rate > SAME_RATE_FLOOR && same_rate >= NOISE_RATIO * cross_rate {
        FieldClass::Noise
    } else {
        FieldClass::Real
    }
}

/// Per-route differ counts, shared by every request of the process.
#[derive(Debug)]
pub struct NoiseTracker {
    routes: Mutex<HashMap<String, RouteNoise>>,
    max_paths: usize,
}

impl Default for NoiseTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl NoiseTracker {
    pub fn new() -> Self {
        Self::with_max_paths(MAX_PATHS_PER_ROUTE)
    }

    pub fn with_max_paths(max_paths: usize) -> Self {
        NoiseTracker { routes: Mutex::new(HashMap::new()), max_paths }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, RouteNoise>> {
        // Counters stay meaningful after a panic elsewhere; keep counting.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, route: &str, diffs: &[FieldDiff], same: bool) {
        let mut routes = self.lock();
        let noise = match routes.get_mut(route) {
            Some(n) => n,
            None => routes.entry(route.to_string()).or_default(),
        };
        noise.record(diffs, same, self.max_paths);
    }

    /// After each stable-vs-canary comparison (also when `diffs` is empty).
    pub fn record_cross(&self, route: &str, diffs: &[FieldDiff]) {
        self.record(route, diffs, false);
    }

    /// After each primary-vs-primary comparison of a noise check (also when empty).
    pub fn record_same(&self, route: &str, diffs: &[FieldDiff]) {
        self.record(route, diffs, true);
    }

    pub fn classify(&self, route: &str, path: &str) -> FieldClass {
        self.lock().get(route).map_or(FieldClass::Unknown, |n| n.classify(path))
    }

    /// Whether every differing path of a cross-version diff is Noise, which
    /// makes the request's outcome `noise-only`. False for no diffs (that is
    /// `identical`) and as soon as one path is Real or Unknown.
    pub fn is_noise_only(&self, route: &str, diffs: &[FieldDiff]) -> bool {
        let routes = self.lock();
        let Some(noise) = routes.get(route) else {
            return false;
        };
        !diffs.is_empty() && diffs.iter().all(|d| noise.classify(&d.path) == FieldClass::Noise)
    }

    /// Every tracked path of a route, most often differing across versions first.
    pub fn snapshot(&self, route: &str) -> Vec<PathStats> {
        let routes = self.lock();
        let Some(n) = routes.get(route) else {
            return Vec::new();
        };
        let mut stats: Vec<PathStats> = n
            .paths
            .iter()
            .map(|(path, d)| PathStats {
                path: path.clone(),
                cross_samples: n.cross_samples,
                cross_differs: d.cross,
                same_samples: n.same_samples,
                same_differs: d.same,
                class: classify(n.cross_samples, d.cross, n.same_samples, d.same),
            })
            .collect();
        stats.sort_by(|a, b| b.cross_differs.cmp(&a.cross_differs).then_with(|| a.path.cmp(&b.path)));
        stats
    }

    /// Path differences not counted because the route's path cap was reached.
    pub fn overflow(&self, route: &str) -> u64 {
        self.lock().get(route).map_or(0, |n| n.overflow)
    }

    /// Drops a route's counts, e.g. when the route is removed or its canary changes.
    pub fn forget_route(&self, route: &str) {
        self.lock().remove(route);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn d(path: &str) -> FieldDiff {
        FieldDiff { path: path.into(), stable: json!(1), canary: json!(2) }
    }

    #[test]
    fn a_timestamp_differing_in_both_comparisons_is_noise() {
        let t = NoiseTracker::new();
        for _ in 0..20 {
            t.record_cross("cart", &[d("$.meta.generated_at")]);
            t.record_same("cart", &[d("$.meta.generated_at")]);
        }
        assert_eq!(t.classify("cart", "$.meta.generated_at"), FieldClass::Noise);
        assert!(t.is_noise_only("cart", &[d("$.meta.generated_at")]));
    }

    #[test]
    fn a_price_differing_only_across_versions_is_real() {
        let t = NoiseTracker::new();
        for _ in 0..20 {
            t.record_cross("cart", &[d("$.items[2].price"), d("$.meta.generated_at")]);
            t.record_same("cart", &[d("$.meta.generated_at")]);
        }
        assert_eq!(t.classify("cart", "$.items[2].price"), FieldClass::Real);
        assert!(!t.is_noise_only("cart", &[d("$.items[2].price"), d("$.meta.generated_at")]));
        assert!(t.is_noise_only("cart", &[d("$.meta.generated_at")]));
    }

    #[test]
    fn too_few_same_version_samples_is_unknown() {
        let t = NoiseTracker::new();
        for _ in 0..(MIN_SAME_SAMPLES - 1) {
            t.record_cross("cart", &[d("$.ts"), d("$.price")]);
            t.record_same("cart", &[d("$.ts")]);
        }
        assert_eq!(t.classify("cart", "$.ts"), FieldClass::Unknown);
        assert_eq!(t.classify("cart", "$.price"), FieldClass::Unknown);
        assert!(!t.is_noise_only("cart", &[d("$.ts")]));
        t.record_same("cart", &[d("$.ts")]);
        assert_eq!(t.classify("cart", "$.ts"), FieldClass::Noise, "the tenth sample decides");
    }

    #[test]
    fn rare_same_version_flukes_do_not_hide_a_real_change() {
        // Differs on every cross comparison, once in 100 same-version ones (1% <= 2%).
        let t = NoiseTracker::new();
        for i in 0..100 {
            t.record_cross("cart", &[d("$.total")]);
            let same = if i == 0 { vec![d("$.total")] } else { vec![] };
            t.record_same("cart", &same);
        }
        assert_eq!(t.classify("cart", "$.total"), FieldClass::Real);
        // A field that flips in half the comparisons either way is noise.
        let t = NoiseTracker::new();
        for i in 0..100 {
            let diffs = if i % 2 == 0 { vec![d("$.shard")] } else { vec![] };
            t.record_cross("cart", &diffs);
            t.record_same("cart", &diffs);
        }
        assert_eq!(t.classify("cart", "$.shard"), FieldClass::Noise);
    }

    #[test]
    fn routes_are_separate_and_paths_are_capped() {
        let t = NoiseTracker::with_max_paths(2);
        for _ in 0..10 {
            t.record_cross("a", &[d("$.x"), d("$.y"), d("$.z")]);
            t.record_same("a", &[d("$.x")]);
        }
        assert_eq!(t.classify("a", "$.x"), FieldClass::Noise);
        assert_eq!(t.classify("b", "$.x"), FieldClass::Unknown, "another route knows nothing yet");
        let paths: Vec<String> = t.snapshot("a").into_iter().map(|s| s.path).collect();
        assert_eq!(paths.len(), 2);
        assert_eq!(t.overflow("a"), 10, "one uncounted path per comparison");
        let x = t.snapshot("a").into_iter().find(|s| s.path == "$.x").expect("tracked");
        assert_eq!((x.cross_samples, x.cross_differs, x.same_samples, x.same_differs), (10, 10, 10, 10));
    }

    #[test]
    fn a_path_repeated_in_one_diff_counts_once() {
        let t = NoiseTracker::new();
        t.record_cross("a", &[d("$.tags[*]"), d("$.tags[*]")]);
        let s = t.snapshot("a");
        assert_eq!(s[0].cross_differs, 1);
    }
}
