//! One check of a rollout: the rolled-out version against the default
//! version over one interval, judged by the route's gates.

use serde::{Deserialize, Serialize};

use crate::config::{Gates, RolloutSpec};
use crate::telemetry::metrics::VersionTotals;

/// One version's traffic over one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    /// Latency histogram of the interval: (upper bound in seconds, cumulative count).
    pub buckets: Vec<(f64, u64)>,
    /// Latencies observed, those above the last bucket included.
    pub observed: u64,
}

impl Window {
    /// What happened between two readings of the same counters.
    pub fn between(before: &VersionTotals, after: &VersionTotals) -> Window {
        let buckets = after
            .buckets
            .iter()
            .map(|(bound, n)| {
                let was = before.buckets.iter().find(|(b, _)| b == bound).map_or(0, |(_, c)| *c);
                (*bound, n.saturating_sub(was))
            })
            .collect();
        Window {
            requests: after.requests.saturating_sub(before.requests),
            errors: after.errors.saturating_sub(before.errors),
            buckets,
            observed: after.observed.saturating_sub(before.observed),
        }
    }

    /// Errors in percent of requests; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 * 100.0 / self.requests as f64)
    }

    /// The 99th percentile in seconds, interpolated linearly inside its bucket
    /// (the histogram's buckets are 30% apart; a ratio gate needs finer).
    /// Beyond the last bucket (about 13 s) it is that bucket's bound: a
    /// lower bound, still far above a healthy baseline.
    pub fn p99(&self) -> Option<f64> {
        let in_buckets = self.buckets.last().map_or(0, |(_, n)| *n);
        let total = self.observed.max(in_buckets);
        if total == 0 {
            return None;
        }
        let rank = total as f64 * 0.99;
        let mut lower = (0.0, 0u64);
        for (bound, count) in &self.buckets {
            if *count as f64 >= rank && bound.is_finite() {
                let (low_bound, low_count) = lower;
                let inside = count.saturating_sub(low_count) as f64;
                let frac = if inside > 0.0 { (rank - low_count as f64) / inside } else { 1.0 };
                return Some(low_bound + (bound - low_bound) * frac.clamp(0.0, 1.0));
            }
            if bound.is_finite() {
                lower = (*bound, *count);
            }
        }
        Some(lower.0)
    }
}

/// Shadowed requests of the route over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiffWindow {
    pub compared: u64,
    /// With a real (non-noise) differing field.
    pub different: u64,
}

/// What a check measured: the values the gates compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GateValues {
    pub requests: u64,
    pub error_rate: Option<f64>,
    pub error_rate_delta: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub diff_rate: Option<f64>,
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "reasons")]
pub enum Verdict {
    Pass,
    /// The gates that failed, e.g. `error_rate 7.5 > 2`.
    Fail(Vec<String>),
    /// Too little traffic to judge: the step waits.
    Inconclusive(String),
}

/// Judge one interval. The default version's error rate and p99 are the
/// baseline; without traffic of its own the relative gates are skipped.
pub fn check(spec: &RolloutSpec, canary: &Window, base: &Window, diff: Option<DiffWindow>) -> (GateValues, Verdict) {
    let error_rate = canary.error_rate();
    let values = GateValues {
        requests: canary.requests,
        error_rate,
        error_rate_delta: error_rate.zip(base.error_rate()).map(|(c, b)| c - b),
        p99_ratio: canary.p99().zip(base.p99()).filter(|(_, b)| *b > 0.0).map(|(c, b)| c / b),
        diff_rate: diff.filter(|d| d.compared > 0).map(|d| d.different as f64 * 100.0 / d.compared as f64),
    };
    if canary.requests < spec.min_requests {
        let why = format!("{} requests, fewer than min_requests {}", canary.requests, spec.min_requests);
        return (values, Verdict::Inconclusive(why));
    }
    let Gates { max_error_rate_delta, max_error_rate, max_p99_ratio, max_diff_rate } = spec.gates;
    let mut failed = Vec::new();
    let mut over = |name: &str, value: Option<f64>, max: Option<f64>| {
        if let (Some(v), Some(m)) = (value, max) {
            if v > m {
                failed.push(format!("{name} {} > {m}", round(v)));
            }
        }
    };
    over("error_rate", values.error_rate, max_error_rate);
    over("error_rate_delta", values.error_rate_delta, max_error_rate_delta);
    over("p99_ratio", values.p99_ratio, max_p99_ratio);
    over("diff_rate", values.diff_rate, max_diff_rate);
    let verdict = if failed.is_empty() { Verdict::Pass } else { Verdict::Fail(failed) };
    (values, verdict)
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            version: 1,
            steps: vec![100, 500],
            hold: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            min_requests: 100,
            failure_limit: 2,
            gates: Gates {
                max_error_rate_delta: Some(0.5),
                max_error_rate: Some(2.0),
                max_p99_ratio: Some(1.3),
                max_diff_rate: Some(1.0),
            },
        }
    }

    /// `n` requests all in the bucket ending at `at` seconds (buckets 0.01, 0.02, ..., 0.1, +Inf).
    fn window(n: u64, errors: u64, at: f64) -> Window {
        let mut buckets = Vec::new();
        for i in 1..=10 {
            let bound = f64::from(i) / 100.0;
            buckets.push((bound, if bound >= at - 1e-9 { n } else { 0 }));
        }
        Window { requests: n, errors, buckets, observed: n }
    }

    #[test]
    fn a_healthy_version_passes_and_each_gate_fails_on_its_own() {
        let base = window(1000, 5, 0.02);
        assert_eq!(check(&spec(), &window(200, 1, 0.02), &base, None).1, Verdict::Pass);
        let (v, verdict) = check(&spec(), &window(200, 10, 0.02), &base, None);
        assert_eq!(v.error_rate, Some(5.0));
        assert!(
            matches!(verdict, Verdict::Fail(ref r) if r.iter().any(|g| g.starts_with("error_rate 5 > 2"))),
            "{verdict:?}"
        );
        let (v, verdict) = check(&spec(), &window(200, 0, 0.05), &base, None);
        assert!(v.p99_ratio.is_some_and(|r| r > 2.0), "{v:?}");
        assert!(matches!(verdict, Verdict::Fail(ref r) if r[0].starts_with("p99_ratio")), "{verdict:?}");
        let diff = DiffWindow { compared: 100, different: 3 };
        let (v, verdict) = check(&spec(), &window(200, 0, 0.02), &base, Some(diff));
        assert_eq!(v.diff_rate, Some(3.0));
        assert!(matches!(verdict, Verdict::Fail(ref r) if r[0] == "diff_rate 3 > 1"), "{verdict:?}");
    }

    #[test]
    fn too_little_traffic_is_inconclusive() {
        let (_, verdict) = check(&spec(), &window(99, 99, 0.1), &window(1000, 0, 0.01), None);
        assert!(matches!(verdict, Verdict::Inconclusive(_)), "{verdict:?}");
    }

    #[test]
    fn p99_is_interpolated_inside_its_bucket() {
        let w = Window { requests: 100, errors: 0, buckets: vec![(0.01, 0), (0.02, 100)], observed: 100 };
        let p = w.p99().expect("p99");
        assert!((p - 0.0199).abs() < 1e-9, "{p}");
        let before = VersionTotals { requests: 10, errors: 1, buckets: vec![(0.01, 5)], observed: 10 };
        let after = VersionTotals { requests: 30, errors: 2, buckets: vec![(0.01, 20)], observed: 30 };
        let d = Window::between(&before, &after);
        assert_eq!((d.requests, d.errors, d.buckets[0].1, d.observed), (20, 1, 15, 20));
        // Slower than the last bucket: p99 is at least that bound, not the fast requests' p99.
        let slow = Window { requests: 100, errors: 0, buckets: vec![(0.01, 90), (0.02, 90)], observed: 100 };
        assert_eq!(slow.p99(), Some(0.02));
    }
}
