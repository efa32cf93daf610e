//! Rollout analysis across a fleet. Every replica adds its counters of each
//! interval (requests, errors, the latency histogram, diff counts, for the
//! rolled-out version and the default one) to a hash in the cluster store,
//! keyed by route and interval number (wall clock ÷ interval, the same on
//! every replica). One replica at a time holds a lease and evaluates the
//! fleet's sum once the interval is over; what it decides is written as
//! the route's rollout record, which every replica takes in from pub/sub.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::gates::{DiffWindow, Window};
use crate::cluster::store::Store;
use crate::cluster::ClusterLink;
use crate::telemetry::metrics::VersionTotals;

/// How long after an interval ends the lease holder waits for every
/// replica's counters (they are written within a tick of the boundary).
pub const GRACE: Duration = Duration::from_millis(600);
/// Counters are kept this long in the store.
const KEEP: Duration = Duration::from_secs(600);

/// The counters one check needs, read at one moment on this replica.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub canary: VersionTotals,
    pub base: VersionTotals,
    /// Shadowed requests compared, and those with a real difference.
    pub diff: Option<(u64, u64)>,
}

/// One interval's windows, this replica's or the fleet's.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    pub canary: Window,
    pub base: Window,
    pub diff: Option<DiffWindow>,
}

impl Windows {
    pub fn between(prev: &Reading, now: &Reading) -> Windows {
        Windows {
            canary: Window::between(&prev.canary, &now.canary),
            base: Window::between(&prev.base, &now.base),
            diff: now.diff.zip(prev.diff).map(|((c, d), (pc, pd))| DiffWindow {
                compared: c.saturating_sub(pc),
                different: d.saturating_sub(pd),
            }),
        }
    }

    /// As counters for the store: `c:req`, `c:err`, `c:le:<i>` (cumulative
    /// per bucket), the same with `b:` for the default version, `d:cmp`, `d:diff`.
    fn fields(&self) -> Vec<(String, i64)> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        for (tag, w) in [("c", &self.canary), ("b", &self.base)] {
            out.push((format!("{tag}:req"), n(w.requests)));
            out.push((format!("{tag}:err"), n(w.errors)));
            for (i, (_, count)) in w.buckets.iter().enumerate().filter(|(_, (_, c))| *c > 0) {
                out.push((format!("{tag}:le:{i}"), n(*count)));
            }
        }
        if let Some(d) = self.diff {
            out.push(("d:cmp".into(), n(d.compared)));
            out.push(("d:diff".into(), n(d.different)));
        }
        out
    }

    /// The fleet's sum from the store's counters; `bounds` are this binary's histogram bounds.
    fn from_fields(
        fields: &[(String, i64)],
        canary_bounds: &[(f64, u64)],
        base_bounds: &[(f64, u64)],
        diffed: bool,
    ) -> Windows {
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map_or(0, |(_, v)| u64::try_from(*v).unwrap_or(0));
        let window = |tag: &str, bounds: &[(f64, u64)]| Window {
            requests: get(&format!("{tag}:req")),
            errors: get(&format!("{tag}:err")),
            buckets: bounds.iter().enumerate().map(|(i, (b, _))| (*b, get(&format!("{tag}:le:{i}")))).collect(),
        };
        Windows {
            canary: window("c", canary_bounds),
            base: window("b", base_bounds),
            diff: diffed.then(|| DiffWindow { compared: get("d:cmp"), different: get("d:diff") }),
        }
    }
}

pub struct FleetAnalysis {
    link: Arc<ClusterLink>,
    store: Store,
    /// Per route: the interval being counted and the reading at its start.
    counting: HashMap<String, (u64, Reading)>,
    /// Per route: the last interval evaluated (lease holder).
    evaluated: HashMap<String, u64>,
}

impl FleetAnalysis {
    pub fn new(link: Arc<ClusterLink>) -> Option<FleetAnalysis> {
        let store = Store::new(&link.spec).ok()?;
        Some(FleetAnalysis { link, store, counting: HashMap::new(), evaluated: HashMap::new() })
    }

    /// Take or renew the evaluation lease; `false` when another replica holds it or the store is away.
    pub async fn hold_lease(&mut self, ttl: Duration) -> bool {
        let key = self.store.keys.rollout_lease();
        matches!(self.store.lease(&key, &self.link.origin, ttl).await, Ok(true))
    }

    /// Write this replica's counts of every interval that ended.
    pub async fn count(&mut self, route: &str, interval: Duration, reading: Reading, now_ms: u64) {
        let no = interval_no(now_ms, interval);
        match self.counting.get(route) {
            Some((started, prev)) if *started < no => {
                let fields = Windows::between(prev, &reading).fields();
                let key = self.store.keys.rollout_window(route, *started);
                if let Err(e) = self.store.add_counts(&key, &fields, KEEP).await {
                    tracing::debug!(target: "rollout", route, error = %e, "cannot add this replica's counts");
                }
                self.counting.insert(route.to_string(), (no, reading));
            }
            Some(_) => {}
            None => {
                self.counting.insert(route.to_string(), (no, reading));
            }
        }
    }

    /// The fleet's windows of the last interval that ended, once every
    /// replica has had time to add its counts; `None` when it was evaluated
    /// already or is not due yet.
    pub async fn due(&mut self, route: &str, interval: Duration, now_ms: u64, like: &Reading) -> Option<Windows> {
        let grace = u64::try_from(GRACE.as_millis()).unwrap_or(0);
        let last_done = interval_no(now_ms.saturating_sub(grace), interval).checked_sub(1)?;
        if self.evaluated.get(route).is_some_and(|e| *e >= last_done) {
            return None;
        }
        let key = self.store.keys.rollout_window(route, last_done);
        let fields = self.store.counts(&key).await.ok()?;
        self.evaluated.insert(route.to_string(), last_done);
        Some(Windows::from_fields(&fields, &like.canary.buckets, &like.base.buckets, like.diff.is_some()))
    }
}

fn interval_no(now_ms: u64, interval: Duration) -> u64 {
    now_ms / u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1)
}
