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
use crate::cluster::record::{RecordKey, SharedRecord, Stamp};
use crate::cluster::store::Store;
use crate::cluster::ClusterLink;
use crate::telemetry::metrics::VersionTotals;

/// How long after an interval ends the lease holder waits for every
/// replica's counters (they are written within a tick of the boundary).
pub const GRACE: Duration = Duration::from_millis(1200);
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
            out.push((format!("{tag}:n"), n(w.observed)));
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
            observed: get(&format!("{tag}:n")),
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
    /// Per route: the interval length, the interval being counted and the reading at its start.
    counting: HashMap<String, (Duration, u64, Reading)>,
}

impl FleetAnalysis {
    pub fn new(link: Arc<ClusterLink>) -> Option<FleetAnalysis> {
        let store = Store::new(&link.spec).ok()?;
        Some(FleetAnalysis { link, store, counting: HashMap::new() })
    }

    /// Take or renew the evaluation lease; `false` when another replica holds it or the store is away.
    pub async fn hold_lease(&mut self, ttl: Duration) -> bool {
        let key = self.store.keys.rollout_lease();
        matches!(self.store.lease(&key, &self.link.origin, ttl).await, Ok(true))
    }

    /// Write this replica's counts of every interval that ended. A failed
    /// write keeps the reading: the counts go with the next attempt.
    pub async fn count(&mut self, route: &str, interval: Duration, reading: Reading, now_ms: u64) {
        let no = interval_no(now_ms, interval);
        match self.counting.get(route) {
            // A changed interval length numbers intervals anew.
            Some((length, started, prev)) if *length == interval && *started < no => {
                let fields = Windows::between(prev, &reading).fields();
                let key = self.store.keys.rollout_window(route, *started);
                match self.store.add_counts(&key, &fields, KEEP).await {
                    Ok(()) => {
                        self.counting.insert(route.to_string(), (interval, no, reading));
                    }
                    Err(e) => {
                        tracing::debug!(target: "rollout", route, error = %e, "cannot add this replica's counts yet")
                    }
                }
            }
            Some((length, _, _)) if *length == interval => {}
            _ => {
                self.counting.insert(route.to_string(), (interval, no, reading));
            }
        }
    }

    /// The last interval that ended long enough ago for every replica to
    /// have added its counts, unless `evaluated` (from the shared rollout) covers it.
    pub fn due(&self, interval: Duration, now_ms: u64, evaluated: Option<u64>) -> Option<u64> {
        let grace = u64::try_from(GRACE.as_millis()).unwrap_or(0);
        let last_done = interval_no(now_ms.saturating_sub(grace), interval).checked_sub(1)?;
        match evaluated {
            Some(e) if e >= last_done => None,
            _ => Some(last_done),
        }
    }

    /// The fleet's windows of interval `no`; `like` gives this binary's histogram bounds.
    pub async fn windows(&mut self, route: &str, no: u64, like: &Reading) -> Option<Windows> {
        let key = self.store.keys.rollout_window(route, no);
        let fields = self.store.counts(&key).await.ok()?;
        Some(Windows::from_fields(&fields, &like.canary.buckets, &like.base.buckets, like.diff.is_some()))
    }

    /// The route's rollout record as the store holds it now.
    pub async fn fetch(&mut self, route: &str) -> Option<SharedRecord> {
        let field = RecordKey::Rollout(route.to_string()).field();
        let json = self.store.record(&field).await.ok()??;
        SharedRecord::parse(&field, &json).ok().map(|(_, r)| r)
    }

    /// Write a decision only if the store still holds the record it started
    /// from; `Err(theirs)` when another change got there first.
    pub async fn commit(
        &mut self,
        route: &str,
        base: Option<&Stamp>,
        decided: &SharedRecord,
    ) -> Result<(), Option<SharedRecord>> {
        let field = RecordKey::Rollout(route.to_string()).field();
        let base = base.map(|s| (s.at_ms, s.origin.as_str()));
        match self.store.put_if_base(&field, base, &decided.to_json()).await {
            Ok(None) => Ok(()),
            Ok(Some(json)) => match SharedRecord::parse(&field, &json) {
                Ok((_, theirs)) if theirs.stamp == decided.stamp => Ok(()),
                Ok((_, theirs)) => Err(Some(theirs)),
                Err(_) => Err(None),
            },
            Err(_) => Err(None),
        }
    }
}

fn interval_no(now_ms: u64, interval: Duration) -> u64 {
    now_ms / u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1)
}
