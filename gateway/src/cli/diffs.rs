//! `gateway diffs`: the shadow diff summary (or one record) of a running
//! gateway, read from its admin API (`/api/diffs/summary`, `/api/diffs/{id}`)
//! and printed for a terminal.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

use crate::cli::ops::{self, AdminClient};

/// What `gateway diffs` was asked for.
pub struct DiffsArgs {
    pub route: Option<String>,
    pub since: Option<String>,
    pub show: Option<i64>,
    pub json: bool,
}

pub fn run(client: &AdminClient, args: &DiffsArgs) -> ExitCode {
    let path = match args.show {
        Some(id) => format!("/api/diffs/{id}"),
        None => {
            let mut params = Vec::new();
            if let Some(r) = &args.route {
                params.push(format!("route={}", encode(r)));
            }
            if let Some(s) = &args.since {
                params.push(format!("since={}", encode(s)));
            }
            let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
            format!("/api/diffs/summary{query}")
        }
    };
    ops::report(client.call("GET", &path, None), |body| {
        let text = if args.json {
            serde_json::to_string_pretty(body).unwrap_or_default()
        } else if args.show.is_some() {
            format_record(body)
        } else {
            format_summary(body, args.since.as_deref())
        };
        text.trim_end().to_string()
    })
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The summary as a table per route: real differences first, then noise (marked NOISE).
pub fn format_summary(body: &Value, since: Option<&str>) -> String {
    let mut out = String::new();
    let routes = body["routes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if routes.is_empty() {
        out.push_str("no shadowed route and nothing recorded\n");
        return out;
    }
    let window = match (since, body["since"].as_str()) {
        (Some(text), Some(at)) => format!("since {text} ({at})"),
        _ => "everything kept".to_string(),
    };
    for r in routes {
        let _ = writeln!(out, "route {}  ({window})", s(&r["route"]));
        let _ = writeln!(
            out,
            "  shadowed {}  identical {}  different {}  noise-only {}  errors {}  timeouts {}  dropped {}  skipped {}",
            n(&r["shadowed"]),
            n(&r["identical"]),
            n(&r["different"]),
            n(&r["noise_only"]),
            n(&r["errors"]),
            n(&r["timeouts"]),
            n(&r["dropped"]),
            n(&r["skipped"]),
        );
        let paths = r["paths"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if paths.is_empty() {
            out.push_str("  no differing field\n\n");
            continue;
        }
        let width = paths.iter().map(|p| s(&p["path"]).chars().count()).max().unwrap_or(4).clamp(4, 60);
        let _ = writeln!(out, "  {:<width$}  {:>7}  {:>7}  {:>8}", "PATH", "COUNT", "RATE", "EXAMPLE");
        let mut ordered: Vec<&Value> = paths.iter().filter(|p| p["noise"] != true).collect();
        ordered.extend(paths.iter().filter(|p| p["noise"] == true));
        for p in ordered {
            let marker = match (p["noise"].as_bool(), p["class"].as_str()) {
                (Some(true), _) => "  NOISE",
                (_, Some("unknown")) => "  (unclassified)",
                _ => "",
            };
            let _ = writeln!(
                out,
                "  {:<width$}  {:>7}  {:>6.1}%  {:>8}{marker}",
                s(&p["path"]),
                n(&p["count"]),
                p["rate"].as_f64().unwrap_or(0.0) * 100.0,
                format!("#{}", p["example_id"]),
            );
        }
        let real = r["regression_paths"].as_u64().unwrap_or(0);
        let noise = paths.len() as u64 - real.min(paths.len() as u64);
        let _ = writeln!(out, "  {real} differing field(s); {noise} noise field(s), not counted as regressions\n");
    }
    out
}

/// One record: request, both statuses and latencies, each differing path
/// with both values, each side named by its version (records from before
/// versions were stored say stable and canary).
pub fn format_record(r: &Value) -> String {
    let mut out = String::new();
    let side = |key: &str, old: &'static str| r[key].as_str().filter(|v| !v.is_empty()).unwrap_or(old).to_string();
    let (first, second) = (side("stable_version", "stable"), side("canary_version", "canary"));
    let _ = writeln!(out, "record #{}  route {}  {}", r["id"], s(&r["route"]), s(&r["at"]));
    let _ = writeln!(out, "  {} {}  request id {}", s(&r["method"]), s(&r["path"]), s(&r["request_id"]));
    let _ = writeln!(out, "  outcome {}  (the client got {})", s(&r["outcome"]), s(&r["primary"]));
    let ms = |v: &Value| v.as_f64().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "  {first} {} in {:.1} ms   {second} {} in {:.1} ms",
        r["stable_status"],
        ms(&r["stable_latency_ms"]),
        r["canary_status"],
        ms(&r["canary_latency_ms"]),
    );
    let diffs = r["diffs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if diffs.is_empty() {
        out.push_str("  no differing field\n");
        return out;
    }
    let _ = writeln!(out, "  differing fields:");
    for d in diffs {
        let noise = d["noise_now"].as_bool().or_else(|| d["noise"].as_bool()).unwrap_or(false);
        let _ = writeln!(out, "    {}{}", s(&d["path"]), if noise { "  NOISE" } else { "" });
        let _ = writeln!(out, "      {first}: {}", value(&d["stable"]));
        let _ = writeln!(out, "      {second}: {}", value(&d["canary"]));
    }
    out
}

fn value(v: &Value) -> String {
    match v {
        Value::Null => "(absent)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_summary_lists_real_paths_first_and_marks_noise() {
        let body = json!({"since": "2026-05-01T11:00:00.000Z", "routes": [{
            "route": "cart", "shadowed": 40, "identical": 0, "different": 40, "noise_only": 0, "errors": 0,
            "timeouts": 0, "dropped": 1, "skipped": 2, "regression_paths": 1,
            "paths": [
                {"path": "$.ts", "count": 40, "rate": 1.0, "noise": true, "class": "noise", "example_id": 40},
                {"path": "$.items[2].price", "count": 40, "rate": 1.0, "noise": false, "class": "real", "example_id": 39},
            ],
        }]});
        let text = format_summary(&body, Some("1h"));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("route cart  (since 1h"), "{text}");
        assert!(lines[1].contains("shadowed 40") && lines[1].contains("dropped 1"), "{text}");
        let price = lines.iter().position(|l| l.contains("$.items[2].price")).expect("price");
        let ts = lines.iter().position(|l| l.contains("$.ts")).expect("ts");
        assert!(price < ts, "real differences first:\n{text}");
        assert!(lines[ts].trim_end().ends_with("NOISE"), "{text}");
        assert!(!lines[price].contains("NOISE") && lines[price].contains("100.0%"), "{text}");
    }

    #[test]
    fn a_record_shows_both_values_per_path() {
        let r = json!({"id": 7, "route": "cart", "at": "2026-05-01T11:00:00.000Z", "method": "GET", "path": "/cart/items",
            "request_id": "abc", "outcome": "different", "primary": "stable", "stable_status": 200, "canary_status": 200,
            "stable_latency_ms": 1.0, "canary_latency_ms": 2.0,
            "diffs": [{"path": "$.items[2].price", "stable": 10, "canary": 12, "noise": false, "noise_now": false},
                      {"path": "header.x-new", "stable": null, "canary": "1", "noise": false}]});
        let text = format_record(&r);
        assert!(text.contains("$.items[2].price\n      stable: 10\n      canary: 12"), "{text}");
        assert!(text.contains("stable: (absent)\n      canary: \"1\""), "{text}");
        assert!(text.contains("request id abc"));
    }

    #[test]
    fn a_record_names_its_sides_by_version_when_it_knows_them() {
        let r = json!({"id": 8, "route": "cart", "at": "2026-05-01T11:00:00.000Z", "method": "GET", "path": "/cart",
            "request_id": "abc", "outcome": "different", "primary": "v3", "stable_version": "v1",
            "canary_version": "v3", "stable_status": 200, "canary_status": 503,
            "stable_latency_ms": 1.0, "canary_latency_ms": 2.0,
            "diffs": [{"path": "status", "stable": 200, "canary": 503, "noise": false}]});
        let text = format_record(&r);
        assert!(text.contains("  v1 200 in 1.0 ms   v3 503 in 2.0 ms"), "{text}");
        assert!(text.contains("status\n      v1: 200\n      v3: 503"), "{text}");
        assert!(!text.contains("stable") && !text.contains("canary"), "{text}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("2026-05-01T10:00:00+02:00"), "2026-05-01T10%3A00%3A00%2B02%3A00");
        assert_eq!(encode("1h 30m"), "1h%2030m");
    }
}
