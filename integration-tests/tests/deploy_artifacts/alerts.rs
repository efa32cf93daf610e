//! The alert rules: promtool accepts them, every alert fires in one unit-test
//! case and stays silent in another, and their texts name real `/api/status` fields.

use std::collections::BTreeSet;

use crate::common::cart_config_with;
use crate::{output_text, promtool, read_repo_file, run_promtool};
use integration_tests::{Backend, Gateway, RedisServer};
use serde_json::Value;

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let Some(promtool) = promtool("alert_rules_pass_promtool_check_rules") else { return };
    let out = run_promtool(&promtool, &["check", "rules", "deploy/prometheus/alerts.yml"], None);
    assert!(out.status.success(), "promtool check rules deploy/prometheus/alerts.yml failed:\n{}", output_text(&out));
}

/// Each alert of a rules file: its name and the text of its annotations
/// (folded YAML lines joined with spaces).
fn alerts(rules: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut annotations_indent: Option<usize> = None;
    for line in rules.lines() {
        let trimmed = line.trim();
        let indent = line.len() - line.trim_start().len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            out.push((name.trim().to_string(), String::new()));
            annotations_indent = None;
        } else if trimmed.starts_with("- ") && indent <= annotations_indent.unwrap_or(usize::MAX) {
            annotations_indent = None;
        } else if trimmed == "annotations:" {
            annotations_indent = Some(indent);
        } else if let (Some(top), Some((_, text))) = (annotations_indent, out.last_mut()) {
            if indent <= top {
                annotations_indent = None;
            } else {
                text.push_str(trimmed);
                text.push(' ');
            }
        }
    }
    out
}

#[test]
fn alert_extraction_reads_names_and_annotations() {
    let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        annotations:\n          \
                 summary: \"down\"\n          description: >-\n            see GET /api/status\n            `generation`.\n      \
                 - alert: B\n        expr: up == 1\n        labels:\n          severity: page\n";
    let found = alerts(rules);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, "A");
    assert_eq!(found[0].1.trim(), "summary: \"down\" description: >- see GET /api/status `generation`.");
    assert_eq!(found[1], ("B".to_string(), String::new()));
}

/// `promtool test rules deploy/prometheus/alerts_test.yml` passes, and it
/// covers every alert of alerts.yml both ways: a case where the alert fires
/// (`exp_alerts:` with entries) and one where it stays silent (`exp_alerts: []`).
#[test]
fn every_alert_fires_and_stays_silent_in_promtool_unit_tests() {
    let names: BTreeSet<String> =
        alerts(&read_repo_file("deploy/prometheus/alerts.yml")).into_iter().map(|(name, _)| name).collect();
    assert!(names.len() >= 9, "alerts.yml has too few alerts: {names:?}");
    let tests = read_repo_file("deploy/prometheus/alerts_test.yml");
    assert!(tests.lines().any(|l| l.trim() == "- alerts.yml"), "alerts_test.yml should load alerts.yml in rule_files");
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    let mut current = String::new();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = name.trim().to_string();
        } else if *line == "exp_alerts: []" {
            silent.insert(current.clone());
        } else if *line == "exp_alerts:" && lines.get(i + 1).is_some_and(|next| next.starts_with("- exp_labels:")) {
            firing.insert(current.clone());
        }
    }
    let never_fires: Vec<&String> = names.difference(&firing).collect();
    let never_silent: Vec<&String> = names.difference(&silent).collect();
    assert!(never_fires.is_empty(), "alerts without a firing case in alerts_test.yml: {never_fires:?}");
    assert!(never_silent.is_empty(), "alerts without a silent case in alerts_test.yml: {never_silent:?}");
    let unknown: Vec<&String> = firing.union(&silent).filter(|n| !names.contains(*n)).collect();
    assert!(unknown.is_empty(), "alerts_test.yml tests alerts that alerts.yml lacks: {unknown:?}");

    let Some(promtool) = promtool("every_alert_fires_and_stays_silent_in_promtool_unit_tests") else { return };
    let out = run_promtool(&promtool, &["test", "rules", "deploy/prometheus/alerts_test.yml"], None);
    assert!(
        out.status.success(),
        "promtool test rules deploy/prometheus/alerts_test.yml failed:\n{}",
        output_text(&out)
    );
}

/// The `code` spans of a text that look like `/api/status` field paths
/// (`last_reload_error`, `blacklist.dry_run`, `upstreams[].backends[].healthy`).
fn status_paths(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|code| {
            !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || matches!(c, '_' | '.' | '[' | ']'))
        })
        .collect()
}

/// The value at a status path; `[]` steps into the first element of a
/// non-empty array. `None` when any step is missing.
fn status_lookup<'a>(status: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(status, |value, step| {
        let (key, array) = match step.strip_suffix("[]") {
            Some(key) => (key, true),
            None => (step, false),
        };
        let field = value.as_object()?.get(key)?;
        if array {
            field.as_array()?.first()
        } else {
            Some(field)
        }
    })
}

#[test]
fn status_path_helpers_read_code_spans_and_nested_arrays() {
    let text = "see GET /api/status `last_reload_error`, `upstreams[].backends[].healthy`; run `gateway check -c`";
    assert_eq!(status_paths(text), ["last_reload_error", "upstreams[].backends[].healthy"]);
    let status = serde_json::json!({"last_reload_error": null, "upstreams": [{"backends": [{"healthy": true}]}]});
    assert_eq!(status_lookup(&status, "last_reload_error"), Some(&Value::Null));
    assert_eq!(status_lookup(&status, "upstreams[].backends[].healthy"), Some(&Value::Bool(true)));
    assert_eq!(status_lookup(&status, "upstreams[].healthy"), None);
    assert_eq!(status_lookup(&status, "last_error"), None);
}

/// An on-call engineer reads the alert and opens `GET /api/status`: every
/// field the alert names there must exist in what a live gateway answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_texts_name_fields_that_api_status_really_has() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let redis = RedisServer::start();
    // A fleet member with a rollout: the cluster and rollout fields are part of what on-call reads.
    let config = cart_config_with(&[&v1], &[&v2], 10.0, "[routes.rollout]\nsteps = [10, 50]\nhold = \"1m\"").replacen(
        "[upstreams.cart-v1]",
        &format!("[cluster]\nredis = \"{}\"\n\n[upstreams.cart-v1]", redis.url()),
        1,
    );
    let gateway = Gateway::start(&config).await;
    let status = gateway.status().await;
    let rules = read_repo_file("deploy/prometheus/alerts.yml");
    let found = alerts(&rules);
    assert!(found.len() >= 9, "alerts.yml has too few alerts: {found:?}");
    for (alert, text) in &found {
        assert!(text.contains("/api/status"), "{alert}: its text should point at GET /api/status:\n{text}");
        let paths = status_paths(text);
        assert!(!paths.is_empty(), "{alert}: its text names no `/api/status` field:\n{text}");
        let missing: Vec<&&str> = paths.iter().filter(|p| status_lookup(&status, p).is_none()).collect();
        assert!(
            missing.is_empty(),
            "{alert} names fields that GET /api/status does not have: {missing:?}\n{text}\nstatus: {status:#}"
        );
    }
}
