//! The HTML pages, `/diffs` and `/diffs/{id}`: minijinja templates from
//! `gateway/templates/`, embedded in the binary; no JavaScript.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::SystemTime;

use http::{Response, StatusCode};
use minijinja::Environment;
use serde_json::{json, Value};

use crate::control::reload::Reloader;
use crate::shadow::{DiffRecord, NoiseTracker, StoredDiff};

use super::api::{class_str, live, noise_verdict, summary_routes, Live};
use super::highlight::highlighted_lines;
use super::since::rfc3339_ms;
use super::{filter, load_record, store, Failure, Reply};

/// Records listed per route on the summary page.
const PAGE_RECENT: usize = 20;

const TEMPLATES: [(&str, &str); 5] = [
    ("base.html", include_str!("../../../templates/base.html")),
    ("releases.html", include_str!("../../../templates/releases.html")),
    ("diffs.html", include_str!("../../../templates/diffs.html")),
    ("diff_record.html", include_str!("../../../templates/diff_record.html")),
    ("diff_error.html", include_str!("../../../templates/diff_error.html")),
];

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

pub(in crate::admin) fn render(name: &str, ctx: &Value) -> Result<String, Failure> {
    env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render {name}: {e:#}")))
}

pub(in crate::admin) fn html_reply(status: StatusCode, body: String) -> Reply {
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
        "now": crate::admin::times::rfc3339_seconds(SystemTime::now()),
    })
}

pub(super) fn page_summary(reloader: &Reloader, query: &HashMap<String, String>) -> Result<Reply, Failure> {
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
                let (stable_label, canary_label) = h.side_names();
                json!({
                    "id": h.id, "at": rfc3339_ms(h.at_unix_ms), "method": h.method, "path": h.path,
                    "outcome": h.outcome, "stable_status": h.stable_status, "canary_status": h.canary_status,
                    "stable_label": stable_label, "canary_label": canary_label, "diff_count": h.diff_count,
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
    let (stable_label, canary_label) = r.side_names();
    json!({
        "r": {
            "id": r.id,
            "at": rfc3339_ms(r.at_unix_ms),
            "route": r.route,
            "request_id": r.request_id,
            "method": r.method,
            "path": r.path,
            "primary": r.primary,
            "compared": r.compared(),
            "stable_label": stable_label,
            "canary_label": canary_label,
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

pub(super) fn page_record(reloader: &Reloader, id: &str) -> Result<Reply, Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for (name, _) in TEMPLATES {
            env().get_template(name).expect(name);
        }
    }
}
