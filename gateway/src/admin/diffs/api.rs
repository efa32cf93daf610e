//! The JSON API: `/api/diffs/summary`, `/api/diffs` and `/api/diffs/{id}`,
//! and the noise verdicts the pages share.

use std::collections::HashMap;

use http::StatusCode;
use serde_json::{json, Value};

use crate::control::reload::Reloader;
use crate::shadow::{DiffRecord, DiffStore, FieldClass, NoiseTracker, RouteSummary};

use super::since::rfc3339_ms;
use super::{filter, json_reply, load_record, param, store, Failure, Reply, DEFAULT_LIMIT, MAX_LIMIT};

/// What the summary needs besides the store, so it can be built in unit tests.
pub struct Live<'a> {
    pub noise: &'a NoiseTracker,
    /// Routes of the running config that have `[routes.shadow]`.
    pub shadowed_routes: Vec<String>,
    /// `gateway_shadow_requests_total{route, outcome}`, asked only for `shadowed_routes`.
    pub counter: &'a dyn Fn(&str, &str) -> u64,
}

pub(super) fn live(reloader: &Reloader) -> (Vec<String>, impl Fn(&str, &str) -> u64 + '_) {
    let snapshot = reloader.snapshots.load();
    let routes = snapshot.routes.iter().filter(|r| r.spec.shadow.is_some()).map(|r| r.spec.name.clone()).collect();
    (routes, move |route: &str, outcome: &str| reloader.metrics.shadow_count(route, outcome))
}

/// The noise verdict of a path: the live classification when it has one,
/// else the flag recorded with most of its diffs. Returns (noise, class, source).
pub(super) fn noise_verdict(
    noise: &NoiseTracker,
    route: &str,
    path: &str,
    recorded: bool,
) -> (bool, FieldClass, &'static str) {
    match noise.classify(route, path) {
        FieldClass::Noise => (true, FieldClass::Noise, "live"),
        FieldClass::Real => (false, FieldClass::Real, "live"),
        FieldClass::Unknown => (recorded, FieldClass::Unknown, "recorded"),
    }
}

pub(super) fn class_str(c: FieldClass) -> &'static str {
    match c {
        FieldClass::Noise => "noise",
        FieldClass::Real => "real",
        FieldClass::Unknown => "unknown",
    }
}

/// Per-route summaries as JSON values, routes by name; a shadowed route with
/// nothing recorded yet is listed with zeros.
pub fn summary_routes(
    store: &DiffStore,
    live: &Live<'_>,
    route: Option<&str>,
    since_ms: Option<i64>,
) -> Result<Vec<Value>, crate::shadow::StoreError> {
    let mut summaries = store.summary(route, since_ms)?;
    for name in &live.shadowed_routes {
        let wanted = route.is_none_or(|r| r == name);
        if wanted && !summaries.iter().any(|s| &s.route == name) {
            summaries.push(RouteSummary {
                route: name.clone(),
                shadowed: 0,
                identical: 0,
                different: 0,
                noise_only: 0,
                errors: 0,
                timeouts: 0,
                paths: Vec::new(),
            });
        }
    }
    summaries.sort_by(|a, b| a.route.cmp(&b.route));
    Ok(summaries.iter().map(|s| route_json(s, live)).collect())
}

fn route_json(s: &RouteSummary, live: &Live<'_>) -> Value {
    let configured = live.shadowed_routes.iter().any(|r| r == &s.route);
    let count = |outcome: &str| if configured { (live.counter)(&s.route, outcome) } else { 0 };
    let skipped_body = count("skipped_body_too_large");
    let paths: Vec<Value> = s
        .paths
        .iter()
        .map(|p| {
            let (noise, class, source) = noise_verdict(live.noise, &s.route, &p.path, p.noise);
            json!({
                "path": p.path,
                "count": p.count,
                "rate": p.rate,
                "noise": noise,
                "class": class_str(class),
                "noise_source": source,
                "example_id": p.example_id,
            })
        })
        .collect();
    let regressions = paths.iter().filter(|p| p["noise"] == false).count();
    json!({
        "route": s.route,
        "configured": configured,
        "shadowed": s.shadowed,
        "identical": s.identical,
        "different": s.different,
        "noise_only": s.noise_only,
        "errors": s.errors,
        "timeouts": s.timeouts,
        "dropped": count("dropped"),
        "skipped": count("skipped") + skipped_body,
        "skipped_body_too_large": skipped_body,
        "regression_paths": regressions,
        "paths": paths,
    })
}

pub(super) fn api_summary(reloader: &Reloader, query: &HashMap<String, String>) -> Result<Reply, Failure> {
    let f = filter(query)?;
    let store = store(reloader)?;
    let (shadowed_routes, counter) = live(reloader);
    let live = Live { noise: &reloader.shadow.noise, shadowed_routes, counter: &counter };
    let routes = summary_routes(&store, &live, f.route.as_deref(), f.since_ms).map_err(Failure::internal)?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "since": f.since_ms.map(rfc3339_ms),
            "since_unix_ms": f.since_ms,
            "counters_note": "dropped and skipped count since the gateway started; the other numbers cover the window",
            "routes": routes,
        }),
    ))
}

fn limit(query: &HashMap<String, String>) -> Result<usize, Failure> {
    match param(query, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<usize>()
            .map(|n| n.clamp(1, MAX_LIMIT))
            .map_err(|_| Failure::bad(format!("limit={l:?} is not a number (1..={MAX_LIMIT})"))),
    }
}

pub(super) fn api_list(reloader: &Reloader, query: &HashMap<String, String>) -> Result<Reply, Failure> {
    let f = filter(query)?;
    let limit = limit(query)?;
    let store = store(reloader)?;
    let headers = store.list(f.route.as_deref(), param(query, "path"), f.since_ms, limit).map_err(Failure::internal)?;
    let records: Vec<Value> = headers
        .iter()
        .map(|h| {
            let mut v = serde_json::to_value(h).unwrap_or(Value::Null);
            v["at"] = Value::String(rfc3339_ms(h.at_unix_ms));
            v
        })
        .collect();
    Ok(json_reply(StatusCode::OK, &json!({"limit": limit, "count": records.len(), "records": records})))
}

/// A record as the API gives it: the stored fields, `at` in RFC 3339,
/// `compared` (the version the client's answer was compared with), and per
/// diff `noise_now` (the live verdict when known, else the recorded flag).
pub fn record_json(r: &DiffRecord, noise: &NoiseTracker) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["at"] = Value::String(rfc3339_ms(r.at_unix_ms));
    v["compared"] = Value::String(r.compared().to_string());
    if let Some(diffs) = v["diffs"].as_array_mut() {
        for (d, stored) in diffs.iter_mut().zip(&r.diffs) {
            let (now, class, _) = noise_verdict(noise, &r.route, &stored.path, stored.noise);
            d["noise_now"] = Value::Bool(now);
            d["class"] = Value::String(class_str(class).into());
        }
    }
    v
}

pub(super) fn api_get(reloader: &Reloader, id: &str) -> Result<Reply, Failure> {
    let record = load_record(reloader, id)?;
    Ok(json_reply(StatusCode::OK, &record_json(&record, &reloader.shadow.noise)))
}
