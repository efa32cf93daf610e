//! The release guard's loop: once a second it looks at every route with a
//! `[routes.rollout]`; each `interval` it reads the version's and the
//! default version's counters, judges the difference by the gates, and
//! moves the rollout (hold, step, promote, abort). A change of the share in
//! force recompiles the snapshot (same config, new share), which takes
//! effect for the next request; nothing restarts, no connection drops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pingora_core::server::ShutdownWatch;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::fleet::{FleetAnalysis, Reading, Windows};
use super::gates::{self, Verdict};
use super::plan::{CheckInput, Phase, Rollout};
use crate::cluster::record::unix_ms;
use crate::control::reload::Reloader;
use crate::control::route_runtime::RouteRuntime;
use crate::control::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

/// The rollout series, registered once per process.
pub struct RolloutMetrics {
    pub step: IntGaugeVec,
    pub percent: GaugeVec,
    pub state: IntGaugeVec,
    pub gate: GaugeVec,
    pub checks: IntCounterVec,
}

impl RolloutMetrics {
    pub fn register(registry: &Registry) -> Option<RolloutMetrics> {
        let step = IntGaugeVec::new(
            Opts::new("gateway_rollout_step", "The rollout's current step, 1-based (0 while pending)"),
            &["route"],
        )
        .ok()?;
        let percent = GaugeVec::new(
            Opts::new("gateway_rollout_percent", "The rolled-out version's share in force, percent"),
            &["route", "version"],
        )
        .ok()?;
        let state = IntGaugeVec::new(
            Opts::new(
                "gateway_rollout_state",
                "1 for the rollout's state: pending, running, paused, promoted, aborted",
            ),
            &["route", "state"],
        )
        .ok()?;
        let gate = GaugeVec::new(
            Opts::new(
                "gateway_rollout_gate_value",
                "The last check's values: error_rate, error_rate_delta, p99_ratio, diff_rate",
            ),
            &["route", "gate"],
        )
        .ok()?;
        let checks = IntCounterVec::new(
            Opts::new("gateway_rollout_checks_total", "Rollout checks by verdict: pass, fail, inconclusive"),
            &["route", "verdict"],
        )
        .ok()?;
        for c in [
            Box::new(step.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(percent.clone()),
            Box::new(state.clone()),
            Box::new(gate.clone()),
            Box::new(checks.clone()),
        ] {
            registry.register(c).ok()?;
        }
        Some(RolloutMetrics { step, percent, state, gate, checks })
    }

    fn count_check(&self, route: &str, values: &gates::GateValues, verdict: &Verdict) {
        let label = match verdict {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Inconclusive(_) => "inconclusive",
        };
        self.checks.with_label_values(&[route, label]).inc();
        for (gate, v) in [
            ("error_rate", values.error_rate),
            ("error_rate_delta", values.error_rate_delta),
            ("p99_ratio", values.p99_ratio),
            ("diff_rate", values.diff_rate),
        ] {
            if let Some(v) = v {
                self.gate.with_label_values(&[route, gate]).set(v);
            }
        }
    }

    fn show(&self, route: &str, version: &str, rollout: &Rollout, file_bp: u32) {
        let step = if matches!(rollout.phase, Phase::Pending) { 0 } else { rollout.step as i64 + 1 };
        self.step.with_label_values(&[route]).set(step);
        let bp = rollout.share_bp.unwrap_or(file_bp);
        self.percent.with_label_values(&[route, version]).set(f64::from(bp) / 100.0);
        for phase in Phase::ALL {
            self.state.with_label_values(&[route, phase.as_str()]).set(i64::from(phase == rollout.phase));
        }
    }
}

fn reading(route: &RouteRuntime, version: usize, metrics: &Metrics) -> Reading {
    let totals = |i: usize| route.metrics.versions.get(i).map(|v| v.totals()).unwrap_or_default();
    let diff = route.spec.shadow.as_ref().map(|_| {
        let name = &route.spec.name;
        let different = metrics.shadow_count(name, "different");
        let compared = different + metrics.shadow_count(name, "identical") + metrics.shadow_count(name, "noise-only");
        (compared, different)
    });
    Reading { canary: totals(version), base: totals(route.spec.default_version), diff }
}

/// The rolled-out version's build as configured now: a change is a new revision.
pub fn revision(snapshot: &Snapshot, route: &RouteRuntime, version: usize) -> String {
    super::book::revision(&snapshot.config, &route.spec, version)
}

/// The rolled-out version's share as the config file says (basis points):
/// the starting point, in force while the rollout is pending.
pub fn file_share(snapshot: &Snapshot, route: &str, version: usize) -> u32 {
    snapshot
        .config
        .routes
        .iter()
        .find(|r| r.name == route)
        .and_then(|r| r.versions.get(version))
        .map_or(0, |v| v.basis_points)
}

/// The share the version gets when promoted: all that the other non-default versions leave.
pub fn full_share(route: &RouteRuntime, version: usize) -> u32 {
    let others: u32 = route
        .spec
        .versions
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != version && *i != route.spec.default_version)
        .map(|(_, v)| v.basis_points)
        .sum();
    10_000u32.saturating_sub(others)
}

pub async fn run(reloader: Arc<Reloader>, mut shutdown: ShutdownWatch) {
    let metrics = RolloutMetrics::register(&reloader.metrics.registry);
    let book = Arc::clone(&reloader.runtime.rollouts);
    // In a fleet: counters in the store, one evaluating replica; else this gateway alone.
    let mut fleet = reloader.cluster.as_ref().and_then(|link| FleetAnalysis::new(Arc::clone(link)));
    let mut readings: HashMap<String, (Instant, Reading)> = HashMap::new();
    // The shares the running snapshot was built with (the book's at start).
    // The share and revision each route's snapshot was built with (the book's at start).
    let mut applied: HashMap<String, Option<(Option<u32>, String)>> = {
        let snapshot = reloader.snapshots.load();
        snapshot
            .routes
            .iter()
            .filter(|r| r.spec.rollout.is_some())
            .map(|r| (r.spec.name.clone(), book.get(&r.spec.name).map(|b| (b.share_bp, b.revision))))
            .collect()
    };
    let period = if fleet.is_some() { Duration::from_millis(250) } else { Duration::from_secs(1) };
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let snapshot = reloader.snapshots.load_full();
        let rolled: Vec<&Arc<RouteRuntime>> = snapshot.routes.iter().filter(|r| r.spec.rollout.is_some()).collect();
        if rolled.is_empty() {
            continue;
        }
        // One replica of a fleet decides; the lease outlives a few ticks.
        let decides = match &mut fleet {
            Some(f) => f.hold_lease(Duration::from_secs(3)).await,
            None => true,
        };
        let mut decided = false;
        for route in rolled {
            let Some(spec) = &route.spec.rollout else { continue };
            let name = route.spec.name.clone();
            let now_ms = unix_ms(SystemTime::now());
            let rev = revision(&snapshot, route, spec.version);
            let now_reading = reading(route, spec.version, &snapshot.metrics);
            let full = full_share(route, spec.version);
            if decides && book.get(&name).map(|r| r.revision).as_deref() != Some(rev.as_str()) {
                decided |= book.update(&name, &rev, |r| r.new_revision(spec, rev.clone(), now_ms)).is_ok();
                // The counts so far belong to the old build.
                readings.remove(&name);
                continue;
            }
            let (windows, elapsed, interval_no) = match &mut fleet {
                Some(f) => {
                    f.count(&name, spec.interval, now_reading.clone(), now_ms).await;
                    if !decides {
                        continue;
                    }
                    let Some(no) = f.due(spec.interval, now_ms, book.get(&name).and_then(|r| r.evaluated)) else {
                        continue;
                    };
                    // The latest record first: an operator's command, or the previous holder's decision.
                    if let Some(theirs) = f.fetch(&name).await {
                        let _ = book.merge(vec![(name.clone(), theirs)], false);
                    }
                    if book.get(&name).and_then(|r| r.evaluated).is_some_and(|e| e >= no) {
                        continue;
                    }
                    let Some(w) = f.windows(&name, no, &now_reading).await else { continue };
                    (w, spec.interval, Some(no))
                }
                None => {
                    let now = Instant::now();
                    match readings.get(&name) {
                        Some((at, prev)) if now.duration_since(*at) >= spec.interval => {
                            let w = Windows::between(prev, &now_reading);
                            let elapsed = now.duration_since(*at);
                            readings.insert(name.clone(), (now, now_reading));
                            (w, elapsed, None)
                        }
                        Some(_) => continue,
                        None => {
                            readings.insert(name.clone(), (now, now_reading));
                            continue;
                        }
                    }
                }
            };
            let (values, verdict) = gates::check(spec, &windows.canary, &windows.base, windows.diff);
            if let (Some(m), Some(Phase::Running | Phase::Paused)) = (&metrics, book.get(&name).map(|r| r.phase)) {
                m.count_check(&name, &values, &verdict);
            }
            let base = book.stamp(&name);
            let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            let input = CheckInput { values, verdict, elapsed_ms, now_ms, full, interval_no };
            if book.update(&name, &rev, |r| r.on_check(spec, input)).is_err() {
                continue;
            }
            // In a fleet the decision is written only over the record it started from.
            if let (Some(f), Some(record)) = (&mut fleet, book.record(&name)) {
                match f.commit(&name, base.as_ref(), &record).await {
                    Ok(()) => {
                        let _ = book.mark_stored(&[(name.clone(), record.stamp)]);
                    }
                    Err(Some(theirs)) => {
                        tracing::info!(target: "rollout", route = %name, "another change reached the store first; this check is dropped");
                        let _ = book.replace(&name, theirs);
                    }
                    Err(None) => {}
                }
            }
        }
        if decided {
            // Shared at once, so every replica applies the step within a second.
            if let Some(link) = &reloader.cluster {
                link.push().await;
            }
        }
        // Apply every share that changed: decided here, by an operator, or taken in from the fleet.
        let mut wanted = applied.clone();
        for route in snapshot.routes.iter().filter(|r| r.spec.rollout.is_some()) {
            let name = &route.spec.name;
            let current = book.get(name);
            let share = current.as_ref().map(|r| (r.share_bp, r.revision.clone()));
            wanted.insert(name.clone(), share);
            if let (Some(m), Some(spec)) = (&metrics, &route.spec.rollout) {
                let version = route.spec.versions.get(spec.version).map_or("", |v| v.name.as_str());
                let file_bp = file_share(&snapshot, name, spec.version);
                m.show(name, version, &current.unwrap_or_else(|| Rollout::new(String::new())), file_bp);
            }
        }
        // Only what was put in force counts as applied: a failed rebuild is tried again next tick.
        if wanted != applied && apply(&reloader) {
            applied = wanted;
        }
    }
}

/// Put the shares in force into a new snapshot of the same config; `false` when it could not be built.
pub fn apply(reloader: &Reloader) -> bool {
    match reloader.recompile() {
        Ok(()) => true,
        Err(errors) => {
            for e in errors {
                tracing::error!(target: "rollout", "cannot apply the rollout's share: {e}");
            }
            false
        }
    }
}
