//! `gateway rollout status [ROUTE] | start | pause | resume | promote | abort ROUTE`:
//! the release guard through a running gateway's admin API.

use std::process::ExitCode;

use serde_json::Value;

use super::ops::{report, AdminClient};

/// `action` is `status` or one of the commands; `route` is required for commands.
pub fn run(client: &AdminClient, action: &str, route: Option<&str>, as_json: bool) -> ExitCode {
    let result = match (action, route) {
        ("status", None) => client.call("GET", "/api/rollouts", None),
        ("status", Some(r)) => client.call("GET", &format!("/api/rollouts/{r}"), None),
        (_, None) => Err(format!("`gateway rollout {action}` needs the route, e.g. `gateway rollout {action} cart`")),
        (action, Some(r)) => client.call("POST", &format!("/api/rollouts/{r}/{action}"), None),
    };
    report(result, |body| {
        if as_json {
            return serde_json::to_string_pretty(body).unwrap_or_default();
        }
        match body.get("rollouts").and_then(Value::as_array) {
            Some(all) if all.is_empty() => "no route has a [routes.rollout]".to_string(),
            Some(all) => all.iter().map(summary).collect::<Vec<_>>().join("\n"),
            None => summary(body),
        }
    })
}

/// `cart: v2 running, step 2 of 5 at 5% (312 s left), 0 of 2 failed checks; last check pass`.
fn summary(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    let step = match r["step"].as_u64() {
        Some(n) => format!(
            ", step {n} of {}{}",
            r["steps"].as_array().map_or(0, Vec::len),
            r["time_left_s"].as_u64().map(|t| format!(" ({t} s left)")).unwrap_or_default()
        ),
        None => String::new(),
    };
    let last = r["checks"]
        .as_array()
        .and_then(|c| c.first())
        .map(|c| {
            let reasons =
                c["reasons"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "));
            match reasons.filter(|r| !r.is_empty()) {
                Some(why) => format!("; last check {} ({why})", c["verdict"].as_str().unwrap_or("?")),
                None => format!("; last check {}", c["verdict"].as_str().unwrap_or("?")),
            }
        })
        .unwrap_or_default();
    let event = r["events"]
        .as_array()
        .and_then(|e| e.first())
        .map(|e| {
            format!("\n  last event: {} ({})", e["kind"].as_str().unwrap_or(""), e["reason"].as_str().unwrap_or(""))
        })
        .unwrap_or_default();
    format!(
        "{}: {} {} at {}{step}, {} of {} failed checks{last}{event}",
        s("route"),
        s("version"),
        s("phase"),
        s("percent_text"),
        r["failures"],
        r["failure_limit"],
    )
}
