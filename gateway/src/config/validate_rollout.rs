//! `[routes.rollout]`: the release guard's plan. Same rules as
//! `validate.rs`: every error, each with its line and key.

use std::time::Duration;

use super::error::Diagnostics;
use super::file::{RolloutFile, Sp};
use super::model::{Gates, RolloutSpec, VersionSpec};
use super::validate_server::duration_or;
use super::values;

const DEFAULT_HOLD: Duration = Duration::from_secs(600);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_MIN_REQUESTS: u64 = 200;
const DEFAULT_FAILURE_LIMIT: u32 = 2;

pub(super) fn rollout(
    d: &mut Diagnostics,
    route_key: &str,
    f: &Sp<RolloutFile>,
    versions: &[VersionSpec],
    default_version: usize,
) -> Option<RolloutSpec> {
    let key = format!("{route_key}.rollout");
    let span = f.span();
    let f = f.get_ref();
    let errors_before = d.errors.len();
    let non_default: Vec<usize> = (0..versions.len()).filter(|i| *i != default_version).collect();
    let version = match &f.version {
        Some(name) => match versions.iter().position(|v| &v.name == name) {
            Some(i) if i == default_version => {
                d.error(
                    Some(span.clone()),
                    format!("{key}.version"),
                    format!("{name:?} is the default version: roll out another version"),
                );
                None
            }
            Some(i) => Some(i),
            None => {
                let known: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
                d.error(Some(span.clone()), format!("{key}.version"), format!("{name:?} is not one of {known:?}"));
                None
            }
        },
        None => match non_default.as_slice() {
            [only] => Some(*only),
            _ => {
                d.error(
                    Some(span.clone()),
                    format!("{key}.version"),
                    "the route has several versions: name the one rolled out",
                );
                None
            }
        },
    };
    let mut steps = Vec::with_capacity(f.steps.len());
    for (i, p) in f.steps.iter().enumerate() {
        match values::percent_basis_points(*p) {
            Ok(0) => d.error(Some(span.clone()), format!("{key}.steps[{i}]"), "a step of 0% sends no traffic to check"),
            Ok(bp) if steps.last().is_some_and(|last| *last >= bp) => d.error(
                Some(span.clone()),
                format!("{key}.steps[{i}]"),
                format!("{p} must be above the step before it"),
            ),
            Ok(bp) => steps.push(bp),
            Err(e) => d.error(Some(span.clone()), format!("{key}.steps[{i}]"), e),
        }
    }
    if f.steps.is_empty() {
        d.error(Some(span.clone()), format!("{key}.steps"), "needs at least one step, e.g. [1, 5, 25, 50, 100]");
    }
    if let (Some(v), Some(last)) = (version, steps.last()) {
        // The other non-default versions keep their share: the steps must fit beside it.
        let others: u32 = non_default.iter().filter(|i| **i != v).map(|i| versions[*i].basis_points).sum();
        if last + others > 10_000 {
            d.error(
                Some(span.clone()),
                format!("{key}.steps"),
                format!(
                    "the last step ({}%) and the route's other versions ({}%) add up to more than 100%",
                    f64::from(*last) / 100.0,
                    f64::from(others) / 100.0
                ),
            );
        }
    }
    let hold = duration_or(d, &format!("{key}.hold"), &f.hold.clone().map(|h| Sp::new(span.clone(), h)), DEFAULT_HOLD);
    let interval = duration_or(
        d,
        &format!("{key}.interval"),
        &f.interval.clone().map(|h| Sp::new(span.clone(), h)),
        DEFAULT_INTERVAL,
    );
    if interval < Duration::from_secs(1) {
        d.error(Some(span.clone()), format!("{key}.interval"), "must be at least 1s");
    }
    if hold < interval {
        d.error(Some(span.clone()), format!("{key}.hold"), "must be at least one interval: each step needs a check");
    }
    let min_requests = match f.min_requests {
        None => DEFAULT_MIN_REQUESTS,
        Some(n) if n >= 1 => n as u64,
        Some(n) => {
            d.error(Some(span.clone()), format!("{key}.min_requests"), format!("{n} must be at least 1"));
            DEFAULT_MIN_REQUESTS
        }
    };
    let failure_limit = match f.failure_limit {
        None => DEFAULT_FAILURE_LIMIT,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(n) => {
            d.error(Some(span.clone()), format!("{key}.failure_limit"), format!("{n} is outside 1..=100"));
            DEFAULT_FAILURE_LIMIT
        }
    };
    let mut gate = |name: &str, v: Option<f64>, max: f64| -> Option<f64> {
        let v = v?;
        if !v.is_finite() || v < 0.0 || v > max {
            d.error(Some(span.clone()), format!("{key}.gates.{name}"), format!("{v} is outside 0..={max}"));
            return None;
        }
        Some(v)
    };
    let gates = Gates {
        max_error_rate_delta: gate("max_error_rate_delta", f.gates.max_error_rate_delta, 100.0),
        max_error_rate: gate("max_error_rate", f.gates.max_error_rate, 100.0),
        max_p99_ratio: gate("max_p99_ratio", f.gates.max_p99_ratio, 1000.0),
        max_diff_rate: gate("max_diff_rate", f.gates.max_diff_rate, 100.0),
    };
    match f.on_abort.as_deref() {
        None | Some("zero") => {}
        Some(other) => {
            d.error(Some(span.clone()), format!("{key}.on_abort"), format!("{other:?}: only \"zero\" is supported"))
        }
    }
    if d.errors.len() != errors_before {
        return None;
    }
    Some(RolloutSpec { version: version?, steps, hold, interval, min_requests, failure_limit, gates })
}
