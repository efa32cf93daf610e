//! QA's view of the shadow diffs: a JSON API and server-rendered pages on the
//! admin listener (same auth as every admin call).
//!
//! `GET /api/diffs/summary?route=&since=` — per route: outcome counts from the
//! store (over the window), `dropped` and `skipped` from the
//! `gateway_shadow_requests_total` counters (since the process started), and
//! per field path: count, rate, noise flag, one example record.
//! `GET /api/diffs?route=&path=&since=&limit=` — record headers, newest first
//! (limit 50 by default, at most 1000).
//! `GET /api/diffs/{id}` — one whole record.
//! `GET /diffs` and `GET /diffs/{id}` — the same as HTML pages (minijinja
//! templates from `gateway/templates/`, embedded in the binary; no JavaScript).
//!
//! `since` is a humantime duration meaning "that long ago" (`1h`, `30m`,
//! `2d 4h`) or an RFC 3339 time (`2026-05-01T10:00:00Z`, `...+02:00`).
//!
//! A path is **noise** when the live [`NoiseTracker`] classifies it so; when the
//! tracker has no verdict yet (a restart, too few same-version samples), the
//! flag recorded with most of the path's stored diffs decides. Noise paths are
//! listed apart and are not counted as regressions.
//!
//! Highlighting on the record page: both bodies are pretty-printed by
//! [`pretty_lines`], which knows the JSON path of every line it writes
//! (rendered exactly like the diff's paths, by [`render_path`]). A line is
//! wrapped in `<mark>` when its path is a differing path or lies inside one
//! (an object that differs as a whole is marked entirely); for an unordered
//! array difference (`$.tags[*]`) the elements equal to that side's value are
//! marked. A body that is not JSON (a text body, or JSON cut at
//! `max_stored_body`) is shown line by line: `body:line N` diffs mark line N,
//! and a JSON path marks the lines holding its last key (`"price":`) as a
//! best effort.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Response, StatusCode};
use minijinja::Environment;
use serde_json::{json, Value};

use crate::reload::Reloader;
use crate::shadow::pattern::{render_path, PathSeg};
use crate::shadow::{DiffRecord, DiffStore, FieldClass, NoiseTracker, RouteSummary, StoredDiff};

use super::{json_reply, Reply};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;
/// Records listed per route on the summary page.
const PAGE_RECENT: usize = 20;

const NO_STORE: &str = "no shadow diff store is open: no route of this gateway has [routes.shadow], \
                        so nothing is mirrored or recorded";

const TEMPLATES: [(&str, &str); 4] = [
    ("base.html", include_str!("../../templates/base.html")),
    ("diffs.html", include_str!("../../templates/diffs.html")),
    ("diff_record.html", include_str!("../../templates/diff_record.html")),
    ("diff_error.html", include_str!("../../templates/diff_error.html")),
];

/// Whether `path` belongs to this module (any method: the others get 405 here).
pub fn handles(path: &str) -> bool {
    let under = |p: &str, base: &str| p == base || p.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'));
    under(path, "/api/diffs") || under(path, "/diffs")
}

/// Answers a request for one of [`handles`]'s paths. The store is read on a
/// blocking thread: a summary over a large window takes a few SQLite queries.
pub async fn serve(reloader: Arc<Reloader>, method: Method, path: String, query: HashMap<String, String>) -> Reply {
    if method != Method::GET {
        return json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": format!("{method} is not allowed on {path}")}),
        );
    }
    let html = !path.starts_with("/api/");
    let answer = tokio::task::spawn_blocking(move || dispatch(&reloader, &path, &query)).await;
    match answer {
        Ok(reply) => reply,
        Err(e) => failure(html, Failure::new(StatusCode::INTERNAL_SERVER_ERROR, format!("diff query failed: {e}"))),
    }
}

/// An error answer: JSON `{"error": ...}` for the API, a small page for the HTML routes.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

fn dispatch(reloader: &Reloader, path: &str, query: &HashMap<String, String>) -> Reply {
    let trimmed = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let html = !trimmed.starts_with("/api/");
    let result = match trimmed {
        "/api/diffs/summary" => api_summary(reloader, query),
        "/api/diffs" => api_list(reloader, query),
        "/diffs" => page_summary(reloader, query),
        p => match p.strip_prefix("/api/diffs/").or_else(|| p.strip_prefix("/diffs/")) {
            Some(id) if html => page_record(reloader, id),
            Some(id) => api_get(reloader, id),
            None => Err(Failure::new(StatusCode::NOT_FOUND, format!("no admin endpoint {path}"))),
        },
    };
    result.unwrap_or_else(|f| failure(html, f))
}

fn failure(html: bool, f: Failure) -> Reply {
    if !html {
        return json_reply(f.status, &json!({"error": f.message}));
    }
    let ctx =
        json!({"status": f.status.as_u16(), "reason": f.status.canonical_reason().unwrap_or(""), "message": f.message});
    match render("diff_error.html", &ctx) {
        Ok(body) => html_reply(f.status, body),
        Err(e) => json_reply(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.message})),
    }
}

// ---- inputs ----------------------------------------------------------------

/// `route` and `since` from the query; empty values (a submitted empty form field) mean unset.
struct Filter {
    route: Option<String>,
    since_text: Option<String>,
    since_ms: Option<i64>,
}

fn param<'q>(query: &'q HashMap<String, String>, key: &str) -> Option<&'q str> {
    query.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn filter(query: &HashMap<String, String>) -> Result<Filter, Failure> {
    let since_text = param(query, "since").map(str::to_string);
    let since_ms = match &since_text {
        Some(s) => Some(parse_since(s, SystemTime::now()).map_err(Failure::bad)?),
        None => None,
    };
    Ok(Filter { route: param(query, "route").map(str::to_string), since_text, since_ms })
}

/// `1h`, `30m`, `2d 4h` (that long before `now`) or an RFC 3339 time, as Unix milliseconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, String> {
    let text = text.trim();
    let at = if let Ok(ago) = humantime::parse_duration(text) {
        now.checked_sub(ago).unwrap_or(UNIX_EPOCH)
    } else {
        parse_rfc3339(text).ok_or_else(|| {
            format!(
                "since={text:?} is neither a duration (1h, 30m) nor an RFC 3339 time (2026-05-01T10:00:00Z or +02:00)"
            )
        })?
    };
    Ok(unix_ms(at))
}

/// RFC 3339 with `Z`, a numeric offset (`+02:00`), or none (taken as UTC).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Some(t);
    }
    // humantime reads `Z` only; apply a `±HH:MM` offset ourselves.
    let (local, offset) = text.split_at(text.len().checked_sub(6)?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = offset[1..].split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    let shift = Duration::from_secs(h * 3600 + m * 60);
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    // 10:00+02:00 is 08:00Z.
    if sign > 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn store(reloader: &Reloader) -> Result<Arc<DiffStore>, Failure> {
    reloader.shadow.store().ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, NO_STORE))
}

fn record_id(text: &str) -> Result<i64, Failure> {
    text.parse::<i64>().map_err(|_| Failure::bad(format!("{text:?} is not a record id (a number)")))
}

// ---- the JSON API ----------------------------------------------------------

/// What the summary needs besides the store, so it can be built in unit tests.
pub struct Live<'a> {
    pub noise: &'a NoiseTracker,
    /// Routes of the running config that have `[routes.shadow]`.
    pub shadowed_routes: Vec<String>,
    /// `gateway_shadow_requests_total{route, outcome}`, asked only for `shadowed_routes`.
    pub counter: &'a dyn Fn(&str, &str) -> u64,
}

fn live(reloader: &Reloader) -> (Vec<String>, impl Fn(&str, &str) -> u64 + '_) {
    let snapshot = reloader.snapshots.load();
    let routes =
        snapshot.router.routes().iter().filter(|r| r.spec.shadow.is_some()).map(|r| r.spec.name.clone()).collect();
    (routes, move |route: &str, outcome: &str| reloader.metrics.shadow_count(route, outcome))
}

/// The noise verdict of a path: the live classification when it has one,
/// else the flag recorded with most of its diffs. Returns (noise, class, source).
fn noise_verdict(noise: &NoiseTracker, route: &str, path: &str, recorded: bool) -> (bool, FieldClass, &'static str) {
    match noise.classify(route, path) {
        FieldClass::Noise => (true, FieldClass::Noise, "live"),
        FieldClass::Real => (false, FieldClass::Real, "live"),
        FieldClass::Unknown => (recorded, FieldClass::Unknown, "recorded"),
    }
}

fn class_str(c: FieldClass) -> &'static str {
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
) -> Result<Vec<Value>, String> {
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

fn api_summary(reloader: &Reloader, query: &HashMap<String, String>) -> Result<Reply, Failure> {
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

fn api_list(reloader: &Reloader, query: &HashMap<String, String>) -> Result<Reply, Failure> {
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

fn load_record(reloader: &Reloader, id: &str) -> Result<DiffRecord, Failure> {
    let id = record_id(id)?;
    let store = store(reloader)?;
    store
        .get(id)
        .map_err(Failure::internal)?
        .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, format!("no diff record {id} (unknown, or past retention)")))
}

/// A record as the API gives it: the stored fields, `at` in RFC 3339, and per
/// diff `noise_now` (the live verdict when known, else the recorded flag).
pub fn record_json(r: &DiffRecord, noise: &NoiseTracker) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["at"] = Value::String(rfc3339_ms(r.at_unix_ms));
    if let Some(diffs) = v["diffs"].as_array_mut() {
        for (d, stored) in diffs.iter_mut().zip(&r.diffs) {
            let (now, class, _) = noise_verdict(noise, &r.route, &stored.path, stored.noise);
            d["noise_now"] = Value::Bool(now);
            d["class"] = Value::String(class_str(class).into());
        }
    }
    v
}

fn api_get(reloader: &Reloader, id: &str) -> Result<Reply, Failure> {
    let record = load_record(reloader, id)?;
    Ok(json_reply(StatusCode::OK, &record_json(&record, &reloader.shadow.noise)))
}

// ---- the pages -------------------------------------------------------------

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // Embedded at build time; `templates_parse` checks every one.
            env.add_template(name, source).expect("embedded template parses");
        }
        env
    })
}

fn render(name: &str, ctx: &Value) -> Result<String, Failure> {
    env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| Failure::internal(format!("cannot render {name}: {e:#}")))
}

fn html_reply(status: StatusCode, body: String) -> Reply {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        // Bodies shown come from backends: never run or load anything from them.
        .header("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
        .header("x-content-type-options", "nosniff")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn pct(rate: f64) -> String {
    let p = rate * 100.0;
    if p > 0.0 && p < 0.1 {
        "<0.1%".into()
    } else {
        format!("{p:.1}%")
    }
}

/// The summary page's context: the API's summary, arranged for the template.
pub fn summary_page_context(
    routes: &[Value],
    recent: &HashMap<String, Vec<Value>>,
    known_routes: &[String],
    route: Option<&str>,
    since: Option<&str>,
) -> Value {
    let sections: Vec<Value> = routes
        .iter()
        .map(|r| {
            let name = r["route"].as_str().unwrap_or("");
            let rows = |noise: bool| -> Vec<Value> {
                let paths = r["paths"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                paths
                    .iter()
                    .filter(|p| p["noise"].as_bool() == Some(noise))
                    .map(|p| {
                        let rate = p["rate"].as_f64().unwrap_or(0.0);
                        json!({
                            "path": p["path"],
                            "count": p["count"],
                            "rate_pct": pct(rate),
                            "bar": (rate.clamp(0.0, 1.0) * 100.0).round(),
                            "class": p["class"],
                            "noise_source": p["noise_source"],
                            "example_id": p["example_id"],
                        })
                    })
                    .collect()
            };
            let counters: Vec<Value> = [
                ("shadowed", "shadowed", ""),
                ("identical", "identical", "ok"),
                ("different", "different", "real"),
                ("noise_only", "noise only", "noise"),
                ("errors", "errors", "warn"),
                ("timeouts", "timeouts", "warn"),
                ("dropped", "dropped", "muted"),
                ("skipped", "skipped", "muted"),
            ]
            .iter()
            .map(|(key, label, tone)| json!({"label": label, "value": r[*key], "tone": tone}))
            .collect();
            json!({
                "route": name,
                "configured": r["configured"],
                "counters": counters,
                "real": rows(false),
                "noise": rows(true),
                "recent": recent.get(name).cloned().unwrap_or_default(),
            })
        })
        .collect();
    json!({
        "routes": sections,
        "known_routes": known_routes,
        "route": route,
        "since": since,
        "now": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    })
}

fn page_summary(reloader: &Reloader, query: &HashMap<String, String>) -> Result<Reply, Failure> {
    let f = filter(query)?;
    let store = store(reloader)?;
    let (shadowed_routes, counter) = live(reloader);
    let live = Live { noise: &reloader.shadow.noise, shadowed_routes, counter: &counter };
    let routes = summary_routes(&store, &live, f.route.as_deref(), f.since_ms).map_err(Failure::internal)?;
    let mut recent = HashMap::new();
    for r in &routes {
        let name = r["route"].as_str().unwrap_or("").to_string();
        let list = store.list(Some(&name), None, f.since_ms, PAGE_RECENT).map_err(Failure::internal)?;
        let rows = list
            .iter()
            .map(|h| {
                json!({
                    "id": h.id, "at": rfc3339_ms(h.at_unix_ms), "method": h.method, "path": h.path,
                    "outcome": h.outcome, "stable_status": h.stable_status, "canary_status": h.canary_status,
                    "diff_count": h.diff_count,
                })
            })
            .collect::<Vec<_>>();
        recent.insert(name, rows);
    }
    // Every route the filter could pick: shadowed now, or with records in the store.
    let mut known: BTreeSet<String> = live.shadowed_routes.iter().cloned().collect();
    for s in store.summary(None, None).map_err(Failure::internal)? {
        known.insert(s.route);
    }
    let known: Vec<String> = known.into_iter().collect();
    let ctx = summary_page_context(&routes, &recent, &known, f.route.as_deref(), f.since_text.as_deref());
    Ok(html_reply(StatusCode::OK, render("diffs.html", &ctx)?))
}

/// The record page's context; public for the unit tests.
pub fn record_page_context(r: &DiffRecord, noise: &NoiseTracker) -> Value {
    let diffs: Vec<Value> = r
        .diffs
        .iter()
        .map(|d| {
            let (now, class, _) = noise_verdict(noise, &r.route, &d.path, d.noise);
            json!({
                "path": d.path,
                "stable": compact(&d.stable),
                "canary": compact(&d.canary),
                "noise": now,
                "class": class_str(class),
            })
        })
        .collect();
    let noise_paths: Vec<&str> =
        diffs.iter().filter(|d| d["noise"] == true).filter_map(|d| d["path"].as_str()).collect();
    let side = |body: &str, pick: fn(&StoredDiff) -> &Value| {
        // Real differences first, so a line inside both is shown as real.
        let mut marks: Vec<(&str, &Value)> = r.diffs.iter().map(|d| (d.path.as_str(), pick(d))).collect();
        marks.sort_by_key(|(p, _)| noise_paths.contains(p));
        let (lines, kind) = highlighted_lines(body, &marks);
        let lines: Vec<Value> = lines
            .into_iter()
            .map(|(text, mark)| {
                let noise = mark.as_deref().is_some_and(|m| noise_paths.contains(&m));
                json!({"text": text, "mark": mark, "noise": noise})
            })
            .collect();
        json!({"lines": lines, "kind": kind, "empty": body.is_empty()})
    };
    let noise_count = diffs.iter().filter(|d| d["noise"] == true).count();
    json!({
        "r": {
            "id": r.id,
            "at": rfc3339_ms(r.at_unix_ms),
            "route": r.route,
            "request_id": r.request_id,
            "method": r.method,
            "path": r.path,
            "primary": r.primary,
            "outcome": r.outcome,
            "stable_status": r.stable_status,
            "canary_status": r.canary_status,
            "stable_latency": format!("{:.1} ms", r.stable_latency_ms),
            "canary_latency": format!("{:.1} ms", r.canary_latency_ms),
            "request_headers": r.request_headers.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            "request_body": r.request_body,
        },
        "diffs": diffs,
        "real_count": diffs.len() - noise_count,
        "noise_count": noise_count,
        "stable": side(&r.stable_body, |d| &d.stable),
        "canary": side(&r.canary_body, |d| &d.canary),
    })
}

fn page_record(reloader: &Reloader, id: &str) -> Result<Reply, Failure> {
    let record = load_record(reloader, id)?;
    let ctx = record_page_context(&record, &reloader.shadow.noise);
    Ok(html_reply(StatusCode::OK, render("diff_record.html", &ctx)?))
}

fn compact(v: &Value) -> String {
    match v {
        Value::Null => "(absent)".into(),
        other => other.to_string(),
    }
}

// ---- highlighting ------------------------------------------------------------

/// One line of a pretty-printed JSON body and the path of the value it belongs to.
#[derive(Debug, PartialEq)]
pub struct Line<'v> {
    pub text: String,
    pub path: String,
    /// The value that starts on this line (none on closing brackets).
    pub value: Option<&'v Value>,
}

/// Pretty-prints `v` (two-space indent, keys in serde_json's order), one
/// [`Line`] per output line, each knowing its JSON path.
pub fn pretty_lines(v: &Value) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    emit(v, &mut path, 0, String::new(), false, &mut out);
    out
}

fn emit<'v>(
    v: &'v Value,
    path: &mut Vec<PathSeg<'v>>,
    depth: usize,
    key: String,
    comma: bool,
    out: &mut Vec<Line<'v>>,
) {
    let indent = "  ".repeat(depth);
    let end = if comma { "," } else { "" };
    let here = render_path(path);
    let (open, close, children): (&str, &str, Vec<(PathSeg<'v>, String, &'v Value)>) = match v {
        Value::Object(map) if !map.is_empty() => (
            "{",
            "}",
            map.iter()
                .map(|(k, child)| {
                    let quoted = serde_json::to_string(k).unwrap_or_else(|_| format!("{k:?}"));
                    (PathSeg::Key(k.as_str()), format!("{quoted}: "), child)
                })
                .collect(),
        ),
        Value::Array(items) if !items.is_empty() => {
            ("[", "]", items.iter().enumerate().map(|(i, child)| (PathSeg::Index(i), String::new(), child)).collect())
        }
        scalar => {
            out.push(Line { text: format!("{indent}{key}{scalar}{end}"), path: here, value: Some(v) });
            return;
        }
    };
    out.push(Line { text: format!("{indent}{key}{open}"), path: here.clone(), value: Some(v) });
    let n = children.len();
    for (i, (seg, child_key, child)) in children.into_iter().enumerate() {
        path.push(seg);
        emit(child, path, depth + 1, child_key, i + 1 < n, out);
        path.pop();
    }
    out.push(Line { text: format!("{indent}{close}{end}"), path: here, value: None });
}

/// `line` is `target` or inside it (`$.a` holds `$.a.b` and `$.a[0]`, not `$.ab`).
fn within(line: &str, target: &str) -> bool {
    line.strip_prefix(target).is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// The last key of a JSON path (`$.items[2].price` -> `price`), for the text fallback.
fn last_key(path: &str) -> Option<String> {
    // Drop trailing index steps (`[2]`, `[*]`): the key is the one before them.
    let mut rest = path;
    while let Some(inner) = rest.strip_suffix(']').and_then(|r| r.rsplit_once('[')) {
        let step = inner.1;
        if step == "*" || (!step.is_empty() && step.bytes().all(|b| b.is_ascii_digit())) {
            rest = inner.0;
        } else {
            break;
        }
    }
    if let Some(quoted) = rest.strip_suffix("\"]") {
        let start = quoted.rfind("[\"")?;
        return Some(quoted[start + 2..].replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    let key = &rest[rest.rfind('.')? + 1..];
    (!key.is_empty()).then(|| key.to_string())
}

/// The lines to show for one side's body, each with the differing path that
/// marks it (if any), and the body's kind (`JSON` or `text`). `diffs` pairs
/// each differing path with this side's value. See the module doc.
pub fn highlighted_lines(body: &str, diffs: &[(&str, &Value)]) -> (Vec<(String, Option<String>)>, &'static str) {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        let lines = pretty_lines(&value);
        let mut marks: Vec<Option<String>> = vec![None; lines.len()];
        for (path, side_value) in diffs.iter().filter(|(p, _)| p.starts_with('$')) {
            let targets: Vec<String> = match path.strip_suffix("[*]") {
                // An unordered array: the elements equal to this side's unmatched value.
                Some(array) => lines
                    .iter()
                    .filter(|l| l.value == Some(*side_value) && is_element_of(&l.path, array))
                    .map(|l| l.path.clone())
                    .collect(),
                None => vec![path.to_string()],
            };
            for (line, mark) in lines.iter().zip(marks.iter_mut()) {
                if mark.is_none() && targets.iter().any(|t| within(&line.path, t)) {
                    *mark = Some(path.to_string());
                }
            }
        }
        return (lines.into_iter().map(|l| l.text).zip(marks).collect(), "JSON");
    }
    let mut lines: Vec<(String, Option<String>)> = body.lines().map(|l| (l.to_string(), None)).collect();
    for (path, _) in diffs {
        if let Some(n) = path.strip_prefix("body:line ").and_then(|n| n.trim().parse::<usize>().ok()) {
            if let Some((_, mark)) = lines.get_mut(n.wrapping_sub(1)) {
                mark.get_or_insert_with(|| path.to_string());
            }
        } else if let Some(key) = path.starts_with('$').then(|| last_key(path)).flatten() {
            let needle = format!("{}:", serde_json::to_string(&key).unwrap_or_default());
            for (_, mark) in lines.iter_mut().filter(|(t, _)| t.contains(&needle)) {
                mark.get_or_insert_with(|| path.to_string());
            }
        }
    }
    (lines, "text")
}

/// `path` is `array[<index>]`.
fn is_element_of(path: &str, array: &str) -> bool {
    path.strip_prefix(array)
        .and_then(|rest| rest.strip_prefix('['))
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).expect("test time")
    }

    #[test]
    fn since_reads_durations_and_rfc3339_times() {
        let now = at("2026-05-01T12:00:00Z");
        assert_eq!(parse_since("1h", now), Ok(unix_ms(at("2026-05-01T11:00:00Z"))));
        assert_eq!(parse_since("30m", now), Ok(unix_ms(at("2026-05-01T11:30:00Z"))));
        assert_eq!(parse_since("2026-05-01T10:00:00Z", now), Ok(unix_ms(at("2026-05-01T10:00:00Z"))));
        assert_eq!(parse_since("2026-05-01T10:00:00+02:00", now), Ok(unix_ms(at("2026-05-01T08:00:00Z"))));
        assert_eq!(parse_since("2026-05-01T10:00:00-01:30", now), Ok(unix_ms(at("2026-05-01T11:30:00Z"))));
        assert!(parse_since("yesterday", now).is_err_and(|e| e.contains("neither a duration")));
        assert!(parse_since("2026-05-01T10:00:00+25:00", now).is_err());
    }

    #[test]
    fn only_the_diff_paths_are_handled() {
        for p in ["/api/diffs", "/api/diffs/summary", "/api/diffs/12", "/diffs", "/diffs/12"] {
            assert!(handles(p), "{p}");
        }
        for p in ["/api/diffsx", "/diffsx", "/api/status", "/"] {
            assert!(!handles(p), "{p}");
        }
    }

    #[test]
    fn pretty_lines_know_their_paths() {
        let v = json!({"items": [{"id": 3, "price": 12}], "meta": {}, "odd key": true});
        let lines = pretty_lines(&v);
        let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(serde_json::to_string_pretty(&v).expect("json"), text.join("\n"), "same text as serde_json");
        let price = lines.iter().find(|l| l.text.contains("price")).expect("price line");
        assert_eq!(price.path, "$.items[0].price");
        let odd = lines.iter().find(|l| l.text.contains("odd key")).expect("odd line");
        assert_eq!(odd.path, "$[\"odd key\"]");
    }

    fn marked(lines: &[(String, Option<String>)]) -> Vec<&str> {
        lines.iter().filter(|(_, m)| m.is_some()).map(|(t, _)| t.trim()).collect()
    }

    #[test]
    fn differing_lines_are_marked_precisely() {
        let body = r#"{"items":[{"id":1,"price":5},{"id":2,"price":7},{"id":3,"price":12}],"ts":9,"price":1}"#;
        let (lines, kind) = highlighted_lines(body, &[("$.items[2].price", &json!(12)), ("$.ts", &json!(9))]);
        assert_eq!(kind, "JSON");
        assert_eq!(marked(&lines), ["\"price\": 12", "\"ts\": 9"], "not the other prices");
        // An object differing as a whole is marked with everything inside it.
        let (lines, _) = highlighted_lines(r#"{"a":{"b":1},"ab":2}"#, &[("$.a", &json!({"b": 1}))]);
        assert_eq!(marked(&lines), ["\"a\": {", "\"b\": 1", "},"]);
        // An unordered array: the unmatched element, by value.
        let (lines, _) = highlighted_lines(r#"{"tags":["x","y","z"]}"#, &[("$.tags[*]", &json!("y"))]);
        assert_eq!(marked(&lines), ["\"y\","]);
    }

    #[test]
    fn text_bodies_mark_lines_and_cut_json_falls_back_to_the_key() {
        let (lines, kind) = highlighted_lines("a\nb\nc", &[("body:line 2", &json!("b"))]);
        assert_eq!((kind, marked(&lines)), ("text", vec!["b"]));
        let cut = "{\n  \"price\": 12,\n  \"name\": \"x\"…[100 more bytes]";
        let (lines, kind) = highlighted_lines(cut, &[("$.items[2].price", &json!(12))]);
        assert_eq!((kind, marked(&lines)), ("text", vec!["\"price\": 12,"]));
        assert_eq!(last_key("$.meta[\"we\\\"ird\"]").as_deref(), Some("we\"ird"));
        assert_eq!(last_key("$.tags[*]").as_deref(), Some("tags"));
        assert_eq!(last_key("$[3]"), None);
    }

    fn record() -> DiffRecord {
        DiffRecord {
            id: 7,
            at_unix_ms: 1_777_777_777_000,
            route: "cart".into(),
            request_id: "req-1".into(),
            method: "GET".into(),
            path: "/cart/items?x=<b>".into(),
            primary: "stable".into(),
            stable_status: 200,
            canary_status: 200,
            stable_latency_ms: 1.25,
            canary_latency_ms: 2.5,
            outcome: "different".into(),
            diffs: vec![
                StoredDiff { path: "$.items[2].price".into(), stable: json!(10), canary: json!(12), noise: false },
                StoredDiff { path: "$.ts".into(), stable: json!(1), canary: json!(2), noise: true },
            ],
            request_headers: vec![("x-user-id".into(), "<script>alert(1)</script>".into())],
            request_body: String::new(),
            stable_body: r#"{"items":[{"price":5},{"price":7},{"price":10}],"ts":1}"#.into(),
            canary_body: r#"{"items":[{"price":5},{"price":7},{"price":12}],"ts":2,"note":"<img src=x>"}"#.into(),
        }
    }

    #[test]
    fn templates_parse() {
        for (name, _) in TEMPLATES {
            env().get_template(name).expect(name);
        }
    }

    #[test]
    fn the_record_page_marks_the_differing_lines_and_escapes_everything() {
        let page = render("diff_record.html", &record_page_context(&record(), &NoiseTracker::new())).expect("render");
        assert!(page.contains("<mark data-path=\"$.items[2].price\""), "{page}");
        assert!(page.contains("&quot;price&quot;: 12</mark>"), "{page}");
        assert!(page.contains("&quot;price&quot;: 10</mark>"), "{page}");
        assert!(!page.contains("<script>alert"), "header values are escaped");
        assert!(!page.contains("<img src=x>"), "bodies are escaped");
        assert!(page.contains("&lt;script&gt;alert(1)"), "shown, escaped");
        assert!(page.contains("1.2 ms") || page.contains("1.3 ms"));
    }

    #[test]
    fn the_summary_separates_noise_from_real_differences() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(DiffStore::open(&dir.path().join("d.sqlite"), Default::default()).expect("open"));
        let writer = store.writer(64);
        for i in 0..4 {
            let mut r = record();
            r.at_unix_ms = unix_ms(SystemTime::now()) - 1000 + i;
            assert!(writer.try_send(r));
        }
        writer.flush().expect("flush");
        let noise = NoiseTracker::new();
        let counter = |route: &str, outcome: &str| if (route, outcome) == ("cart", "dropped") { 3 } else { 1 };
        let live = Live { noise: &noise, shadowed_routes: vec!["cart".into(), "idle".into()], counter: &counter };
        let routes = summary_routes(&store, &live, None, None).expect("summary");
        assert_eq!(routes.len(), 2, "a shadowed route without records is listed too");
        let cart = &routes[0];
        assert_eq!(
            (cart["shadowed"].as_u64(), cart["dropped"].as_u64(), cart["skipped"].as_u64()),
            (Some(4), Some(3), Some(2))
        );
        let paths = cart["paths"].as_array().expect("paths");
        let find = |p: &str| paths.iter().find(|x| x["path"] == p).expect(p).clone();
        assert_eq!(find("$.items[2].price")["noise"], false);
        assert_eq!(find("$.ts")["noise"], true);
        assert_eq!(find("$.ts")["noise_source"], "recorded", "no live verdict yet");
        assert_eq!(find("$.ts")["rate"], 1.0);
        assert_eq!(cart["regression_paths"], 1);
        assert_eq!(routes[1]["route"], "idle");
        let one = summary_routes(&store, &live, Some("idle"), None).expect("summary");
        assert_eq!(one.len(), 1);

        let page = render("diffs.html", &summary_page_context(&routes, &HashMap::new(), &[], None, Some("1h")))
            .expect("render");
        let row = |p: &str| {
            let start = page.find(&format!("data-path=\"{p}\"")).expect(p);
            page[start..start + page[start..].find("</tr>").expect("row end")].to_string()
        };
        assert!(row("$.ts").contains("badge noise"), "{page}");
        assert!(!row("$.items[2].price").contains("badge noise"));
        assert!(row("$.items[2].price").contains("100.0%"));
        assert!(page.contains("value=\"1h\""));
    }
}
