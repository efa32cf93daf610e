//! The release guard's admin endpoints and page.
//!
//! `GET /api/rollouts` — every route with a `[routes.rollout]`
//! `GET /api/rollouts/{route}`
//! `POST /api/rollouts/{route}/{start|pause|resume|promote|abort}` → 200 with the rollout, 409 when the state refuses
//! `GET /releases` — the page: versions and shares, state and step, the last checks against the gates, the history

use http::StatusCode;
use serde_json::{json, Value};

use super::diffs::page::{html_reply, render};
use super::times::rfc3339_seconds;
use super::{json_reply, Reply};
use crate::cluster::record::unix_ms;
use crate::control::reload::Reloader;
use crate::control::route_runtime::RouteRuntime;
use crate::release::controller::{apply, file_share, full_share, revision};
use crate::release::gates::Verdict;
use crate::release::plan::{Action, Phase, Rollout};

fn time(ms: u64) -> Value {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Value::String(rfc3339_seconds(t))
}

fn percent(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

/// A threshold as written (`5`, `1.3`), or `–` for a gate not checked.
fn gate_text(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{}", (v * 1000.0).round() / 1000.0))
}

/// `10%`, `12.5%`: for the page and the CLI.
pub fn percent_text(p: f64) -> String {
    format!("{}%", (p * 100.0).round() / 100.0)
}

/// One route's rollout as the API, the CLI and the page show it.
pub fn rollout_json(reloader: &Reloader, route: &RouteRuntime) -> Option<Value> {
    let spec = route.spec.rollout.as_ref()?;
    let snapshot = reloader.snapshots.load();
    let name = &route.spec.name;
    let file_bp = file_share(&snapshot, name, spec.version);
    let r = reloader.runtime.rollouts.get(name).unwrap_or_else(|| Rollout::new(String::new()));
    let in_force = r.share_bp.unwrap_or(file_bp);
    let checks: Vec<Value> = r
        .checks
        .iter()
        .rev()
        .map(|c| {
            let (verdict, reasons) = match &c.verdict {
                Verdict::Pass => ("pass", Vec::new()),
                Verdict::Fail(why) => ("fail", why.clone()),
                Verdict::Inconclusive(why) => ("inconclusive", vec![why.clone()]),
            };
            json!({"at": time(c.at_ms), "step": c.step + 1, "verdict": verdict, "reasons": reasons, "values": c.values})
        })
        .collect();
    let events: Vec<Value> = r
        .events
        .iter()
        .rev()
        .map(|e| {
            json!({"at": time(e.at_ms), "kind": e.kind, "percent": (e.percent >= 0.0).then_some(e.percent),
                   "percent_text": (e.percent >= 0.0).then(|| percent_text(e.percent)),
                   "reason": e.reason, "gates": e.gates})
        })
        .collect();
    let versions: Vec<Value> = route
        .spec
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let share = if i == route.spec.default_version {
                100.0 - route.spec.canary_percent()
            } else {
                percent(v.basis_points)
            };
            json!({"name": v.name, "upstream": v.upstream, "percent": share, "percent_text": percent_text(share),
                   "default": i == route.spec.default_version,
                   "rolled_out": i == spec.version})
        })
        .collect();
    let step = matches!(r.phase, Phase::Running | Phase::Paused).then_some(r.step + 1);
    let g = spec.gates;
    Some(json!({
        "route": name,
        "version": route.spec.versions.get(spec.version).map(|v| v.name.as_str()),
        "phase": r.phase.as_str(),
        "step": step,
        "steps": spec.steps.iter().map(|bp| percent(*bp)).collect::<Vec<_>>(),
        "percent": percent(in_force),
        "percent_text": percent_text(percent(in_force)),
        "file_percent": percent(file_bp),
        "file_percent_text": percent_text(percent(file_bp)),
        "steps_text": spec.steps.iter().map(|bp| percent_text(percent(*bp))).collect::<Vec<_>>().join(" → "),
        "hold_s": spec.hold.as_secs(),
        "time_left_s": step.map(|_| r.time_left_ms(spec) / 1000),
        "interval_s": spec.interval.as_secs(),
        "min_requests": spec.min_requests,
        "failures": r.failures,
        "failure_limit": spec.failure_limit,
        "gates": {"max_error_rate_delta": g.max_error_rate_delta, "max_error_rate": g.max_error_rate,
                  "max_p99_ratio": g.max_p99_ratio, "max_diff_rate": g.max_diff_rate},
        "gates_text": {
            "max_error_rate_delta": gate_text(g.max_error_rate_delta),
            "max_error_rate": gate_text(g.max_error_rate),
            "max_p99_ratio": gate_text(g.max_p99_ratio),
            "max_diff_rate": gate_text(g.max_diff_rate),
        },
        "versions": versions,
        "checks": checks,
        "events": events,
        "revision": r.revision,
    }))
}

pub fn list(reloader: &Reloader) -> Reply {
    let snapshot = reloader.snapshots.load();
    let all: Vec<Value> = snapshot.routes.iter().filter_map(|r| rollout_json(reloader, r)).collect();
    json_reply(StatusCode::OK, &json!({"rollouts": all}))
}

/// `GET /api/rollouts/{route}` and `POST /api/rollouts/{route}/{action}`.
pub async fn route(reloader: &Reloader, rest: &str, post: bool) -> Reply {
    let (name, action) = match (rest.split_once('/'), post) {
        (Some((name, action)), true) => (name, Some(action)),
        (None, false) => (rest, None),
        _ => {
            let usage = "GET /api/rollouts/{route} or POST /api/rollouts/{route}/{start|pause|resume|promote|abort}";
            return json_reply(StatusCode::NOT_FOUND, &json!({"error": usage}));
        }
    };
    let snapshot = reloader.snapshots.load_full();
    let Some(route) = snapshot.route_named(name).filter(|r| r.spec.rollout.is_some()) else {
        return json_reply(StatusCode::NOT_FOUND, &json!({"error": format!("route {name:?} has no [routes.rollout]")}));
    };
    let Some(action) = action else {
        return json_reply(StatusCode::OK, &rollout_json(reloader, route).unwrap_or(Value::Null));
    };
    let Some(action) = Action::parse(action) else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("{action:?} is not start, pause, resume, promote or abort")}),
        );
    };
    let Some(spec) = &route.spec.rollout else { return json_reply(StatusCode::NOT_FOUND, &Value::Null) };
    let rev = revision(&snapshot, route, spec.version);
    let full = full_share(route, spec.version);
    let before = reloader.runtime.rollouts.get(name).and_then(|r| r.share_bp);
    let now_ms = unix_ms(std::time::SystemTime::now());
    let result = reloader.runtime.rollouts.update(name, &rev, |r| {
        if r.revision.is_empty() {
            r.revision = rev.clone();
        }
        r.command(spec, action, full, now_ms, "the admin API")
    });
    match result {
        Err(e) => json_reply(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.to_string()})),
        Ok((_, Err(refused))) => json_reply(StatusCode::CONFLICT, &json!({"error": refused.to_string()})),
        Ok((after, Ok(()))) => {
            if after.share_bp != before {
                apply(reloader);
            }
            // In a fleet the command is shared at once (the evaluating replica and every other one follow it).
            let reach = match &reloader.cluster {
                Some(link) => link.push().await,
                None => crate::cluster::Reach::ThisGateway,
            };
            let snapshot = reloader.snapshots.load();
            let mut body = snapshot.route_named(name).and_then(|r| rollout_json(reloader, r)).unwrap_or(Value::Null);
            body["applied"] = Value::from(reach.label());
            if let Some(w) = reach.warning() {
                body["warning"] = Value::from(w);
            }
            json_reply(StatusCode::OK, &body)
        }
    }
}

/// `GET /releases`: every rolled-out route, server-rendered, no JavaScript.
pub fn page(reloader: &Reloader) -> Reply {
    let snapshot = reloader.snapshots.load();
    let rollouts: Vec<Value> = snapshot.routes.iter().filter_map(|r| rollout_json(reloader, r)).collect();
    let others: Vec<Value> = snapshot
        .routes
        .iter()
        .filter(|r| r.spec.rollout.is_none() && r.spec.versions.len() > 1)
        .map(|r| {
            json!({"route": r.spec.name, "versions": r.spec.versions.iter().enumerate().map(|(i, v)| json!({
                "name": v.name,
                "percent_text": percent_text(if i == r.spec.default_version { 100.0 - r.spec.canary_percent() } else { percent(v.basis_points) }),
            })).collect::<Vec<_>>()})
        })
        .collect();
    let ctx =
        json!({"rollouts": rollouts, "others": others, "generated": rfc3339_seconds(std::time::SystemTime::now())});
    match render("releases.html", &ctx) {
        Ok(html) => html_reply(StatusCode::OK, html),
        Err(f) => json_reply(f.status, &json!({"error": f.message})),
    }
}
