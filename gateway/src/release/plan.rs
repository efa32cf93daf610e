//! A rollout's state and its transitions, as pure functions: the controller
//! feeds them checks and clock time, the API feeds them commands, and the
//! book persists what comes out.
//!
//! `pending → running(step) ⇄ paused → promoted | aborted`. The version's
//! share in force is the rollout's: the file's `percent` while pending,
//! the step's while running or paused, all that the other versions leave
//! when promoted, 0 when aborted (whitelists and overrides still apply).

use serde::{Deserialize, Serialize};

use super::gates::{GateValues, Verdict};
use crate::config::RolloutSpec;

/// Events kept per route (the page shows them; older ones drop off).
pub const MAX_EVENTS: usize = 100;
/// Checks kept per route for the page and the API.
pub const MAX_CHECKS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Running,
    Paused,
    Promoted,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 5] = [Phase::Pending, Phase::Running, Phase::Paused, Phase::Promoted, Phase::Aborted];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::Aborted => "aborted",
        }
    }
}

/// Something that happened to a rollout, for the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    /// started, step, paused, resumed, promoted, aborted, revision, check_failed.
    pub kind: String,
    /// The share in force after the event, in percent.
    pub percent: f64,
    pub reason: String,
    #[serde(default)]
    pub gates: Option<GateValues>,
}

/// One evaluated interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub at_ms: u64,
    pub step: usize,
    pub values: GateValues,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// A route's rollout, as persisted (state file, or the cluster store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub phase: Phase,
    /// Index into the spec's steps (while running or paused).
    pub step: usize,
    /// Time spent in the current step so far (running only), in ms: a
    /// restart resumes with the same time left.
    pub held_ms: u64,
    /// Consecutive failed checks.
    pub failures: u32,
    /// What the version's upstream was when the analysis started: a change is a new revision.
    pub revision: String,
    /// The share in force, basis points; `None` while pending (the file's).
    pub share_bp: Option<u32>,
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default)]
    pub checks: Vec<Check>,
    /// In a fleet: the last interval (wall clock ÷ interval) that was
    /// evaluated, so a new lease holder never judges one twice.
    #[serde(default)]
    pub evaluated: Option<u64>,
}

/// One check's outcome, as the controller hands it over.
#[derive(Debug, Clone)]
pub struct CheckInput {
    pub values: GateValues,
    pub verdict: Verdict,
    /// How long the interval lasted.
    pub elapsed_ms: u64,
    pub now_ms: u64,
    /// The share the version gets when promoted.
    pub full: u32,
    /// In a fleet: the interval's number.
    pub interval_no: Option<u64>,
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the rollout is {phase}: cannot {action}")]
pub struct Refused {
    pub phase: &'static str,
    pub action: &'static str,
}

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "promote" => Action::Promote,
            "abort" => Action::Abort,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }
}

impl Rollout {
    pub fn new(revision: String) -> Rollout {
        Rollout {
            phase: Phase::Pending,
            step: 0,
            held_ms: 0,
            failures: 0,
            revision,
            share_bp: None,
            events: Vec::new(),
            checks: Vec::new(),
            evaluated: None,
        }
    }

    fn event(&mut self, now_ms: u64, kind: &str, reason: String, gates: Option<GateValues>) {
        let percent = self.share_bp.map_or(-1.0, |bp| f64::from(bp) / 100.0);
        self.events.push(Event { at_ms: now_ms, kind: kind.to_string(), percent, reason, gates });
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
        tracing::warn!(target: "rollout", kind, percent, reason = %self.events.last().map_or("", |e| e.reason.as_str()), "rollout event");
    }

    fn enter_step(&mut self, spec: &RolloutSpec, step: usize) {
        self.phase = Phase::Running;
        self.step = step;
        self.held_ms = 0;
        self.failures = 0;
        self.share_bp = spec.steps.get(step).copied();
    }

    /// An operator's command; `full` is the share the version gets when promoted.
    pub fn command(
        &mut self,
        spec: &RolloutSpec,
        action: Action,
        full: u32,
        now_ms: u64,
        by: &str,
    ) -> Result<(), Refused> {
        let refused = |r: &Rollout| Refused { phase: r.phase.as_str(), action: action.as_str() };
        match (action, self.phase) {
            (Action::Start, Phase::Pending | Phase::Aborted | Phase::Promoted) => {
                self.enter_step(spec, 0);
                self.checks.clear();
                self.event(now_ms, "started", format!("started by {by}"), None);
            }
            (Action::Pause, Phase::Running) => {
                self.phase = Phase::Paused;
                self.event(now_ms, "paused", format!("paused by {by}"), None);
            }
            (Action::Resume, Phase::Paused) => {
                self.phase = Phase::Running;
                self.event(now_ms, "resumed", format!("resumed by {by}"), None);
            }
            (Action::Promote, Phase::Pending | Phase::Running | Phase::Paused | Phase::Aborted) => {
                self.phase = Phase::Promoted;
                self.share_bp = Some(full);
                self.event(now_ms, "promoted", format!("promoted by {by}"), None);
            }
            (Action::Abort, Phase::Pending | Phase::Running | Phase::Paused) => {
                self.phase = Phase::Aborted;
                self.share_bp = Some(0);
                self.event(now_ms, "aborted", format!("aborted by {by}"), None);
            }
            _ => return Err(refused(self)),
        }
        Ok(())
    }

    /// The version's upstream changed: a new build, analysed from the first
    /// step (a paused rollout stays paused there, for its operator).
    pub fn new_revision(&mut self, spec: &RolloutSpec, revision: String, now_ms: u64) {
        self.revision = revision;
        if self.phase != Phase::Pending {
            let paused = self.phase == Phase::Paused;
            self.enter_step(spec, 0);
            if paused {
                self.phase = Phase::Paused;
            }
            self.checks.clear();
            let reason = "the version's upstream changed: analysis restarts from the first step".to_string();
            self.event(now_ms, "revision", reason, None);
        }
    }

    /// Take one check's verdict. Running or paused: failures count (and
    /// abort at the limit). Running: a passing interval adds to the step's
    /// hold (so a quiet or failing stretch does not count towards it); once
    /// `hold` is reached the next step (or promotion after the last) follows.
    pub fn on_check(&mut self, spec: &RolloutSpec, check: CheckInput) {
        let CheckInput { values, verdict, elapsed_ms, now_ms, full, interval_no } = check;
        if interval_no.is_some() {
            self.evaluated = interval_no;
        }
        if !matches!(self.phase, Phase::Running | Phase::Paused) {
            return;
        }
        self.checks.push(Check { at_ms: now_ms, step: self.step, values, verdict: verdict.clone() });
        if self.checks.len() > MAX_CHECKS {
            self.checks.remove(0);
        }
        match verdict {
            Verdict::Fail(reasons) => {
                self.failures = self.failures.saturating_add(1);
                let why = reasons.join(", ");
                if self.failures >= spec.failure_limit {
                    self.phase = Phase::Aborted;
                    self.share_bp = Some(0);
                    let reason = format!("{} failed checks in a row: {why}", self.failures);
                    self.event(now_ms, "aborted", reason, Some(values));
                } else {
                    let reason = format!("check failed ({} of {}): {why}", self.failures, spec.failure_limit);
                    self.event(now_ms, "check_failed", reason, Some(values));
                }
            }
            Verdict::Inconclusive(_) => {}
            Verdict::Pass => {
                self.failures = 0;
                if self.phase != Phase::Running {
                    return;
                }
                self.held_ms = self.held_ms.saturating_add(elapsed_ms);
                if self.held_ms >= u64::try_from(spec.hold.as_millis()).unwrap_or(u64::MAX) {
                    if self.step + 1 < spec.steps.len() {
                        self.enter_step(spec, self.step + 1);
                        let reason = format!("step {} of {} after a healthy hold", self.step + 1, spec.steps.len());
                        self.event(now_ms, "step", reason, Some(values));
                    } else {
                        self.phase = Phase::Promoted;
                        self.share_bp = Some(full);
                        self.event(now_ms, "promoted", "the last step held healthy".into(), Some(values));
                    }
                }
            }
        }
    }

    /// Time left in the current step, ms.
    pub fn time_left_ms(&self, spec: &RolloutSpec) -> u64 {
        u64::try_from(spec.hold.as_millis()).unwrap_or(u64::MAX).saturating_sub(self.held_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Gates;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            version: 1,
            steps: vec![100, 2500, 10000],
            hold: Duration::from_secs(20),
            interval: Duration::from_secs(10),
            min_requests: 1,
            failure_limit: 2,
            gates: Gates::default(),
        }
    }

    fn input(verdict: Verdict, elapsed_ms: u64, now_ms: u64) -> CheckInput {
        CheckInput { values: GateValues::default(), verdict, elapsed_ms, now_ms, full: 10_000, interval_no: None }
    }

    fn fail() -> Verdict {
        Verdict::Fail(vec!["error_rate 9 > 2".into()])
    }

    #[test]
    fn a_healthy_rollout_walks_every_step_then_is_promoted() {
        let (s, mut r) = (spec(), Rollout::new("rev1".into()));
        assert_eq!(r.share_bp, None, "pending: the file's percent");
        r.command(&s, Action::Start, 10_000, 0, "api").expect("start");
        assert_eq!((r.phase, r.share_bp), (Phase::Running, Some(100)));
        let mut shares = vec![];
        for i in 1..=6 {
            r.on_check(&s, input(Verdict::Pass, 10_000, i * 10_000));
            shares.push(r.share_bp);
        }
        assert_eq!(shares, [Some(100), Some(2500), Some(2500), Some(10000), Some(10000), Some(10000)]);
        assert_eq!(r.phase, Phase::Promoted);
        assert!(r.events.iter().any(|e| e.kind == "promoted"));
    }

    #[test]
    fn promotion_after_a_last_step_below_100_gives_the_version_everything_and_quiet_intervals_do_not_hold() {
        let s = RolloutSpec { steps: vec![2500, 5000], ..spec() };
        let mut r = Rollout::new("rev1".into());
        r.command(&s, Action::Start, 9_000, 0, "api").expect("start");
        // Inconclusive and failing intervals do not count towards the hold.
        r.on_check(&s, input(Verdict::Inconclusive("quiet".into()), 60_000, 1));
        r.on_check(&s, CheckInput { full: 9_000, ..input(Verdict::Pass, 10_000, 2) });
        assert_eq!((r.step, r.held_ms), (0, 10_000));
        for i in 3..6 {
            r.on_check(&s, CheckInput { full: 9_000, ..input(Verdict::Pass, 10_000, i) });
        }
        assert_eq!((r.phase, r.share_bp), (Phase::Promoted, Some(9_000)), "all the other versions leave: {r:?}");
    }

    #[test]
    fn consecutive_failures_abort_and_a_pass_between_resets_the_count() {
        let (s, mut r) = (spec(), Rollout::new("rev1".into()));
        r.command(&s, Action::Start, 10_000, 0, "api").expect("start");
        r.on_check(&s, input(fail(), 10_000, 1));
        r.on_check(&s, input(Verdict::Pass, 10_000, 2));
        r.on_check(&s, input(fail(), 10_000, 3));
        assert_eq!(r.phase, Phase::Running);
        r.on_check(&s, input(fail(), 10_000, 4));
        assert_eq!((r.phase, r.share_bp), (Phase::Aborted, Some(0)));
        // Inconclusive checks wait: neither step nor abort.
        let mut r = Rollout::new("rev1".into());
        r.command(&s, Action::Start, 10_000, 0, "api").expect("start");
        for i in 0..5 {
            r.on_check(&s, input(Verdict::Inconclusive("few".into()), 10_000, i));
        }
        assert_eq!((r.phase, r.step), (Phase::Running, 0));
    }

    #[test]
    fn paused_holds_the_step_but_still_aborts_on_failures() {
        let (s, mut r) = (spec(), Rollout::new("rev1".into()));
        r.command(&s, Action::Start, 10_000, 0, "api").expect("start");
        r.command(&s, Action::Pause, 10_000, 1, "api").expect("pause");
        for i in 0..4 {
            r.on_check(&s, input(Verdict::Pass, 10_000, i));
        }
        assert_eq!((r.phase, r.step, r.held_ms), (Phase::Paused, 0, 0));
        assert_eq!(r.command(&s, Action::Pause, 10_000, 2, "api"), Err(Refused { phase: "paused", action: "pause" }));
        r.on_check(&s, input(fail(), 10_000, 5));
        r.on_check(&s, input(fail(), 10_000, 6));
        assert_eq!(r.phase, Phase::Aborted);
    }

    #[test]
    fn a_new_revision_restarts_from_the_first_step() {
        let (s, mut r) = (spec(), Rollout::new("rev1".into()));
        r.command(&s, Action::Start, 10_000, 0, "api").expect("start");
        r.on_check(&s, input(Verdict::Pass, 20_000, 1));
        assert_eq!(r.step, 1);
        r.new_revision(&s, "rev2".into(), 2);
        assert_eq!((r.phase, r.step, r.share_bp, r.revision.as_str()), (Phase::Running, 0, Some(100), "rev2"));
        r.command(&s, Action::Promote, 9_000, 3, "api").expect("promote");
        assert_eq!(r.share_bp, Some(9_000), "promoted: what the other versions leave");
    }
}
