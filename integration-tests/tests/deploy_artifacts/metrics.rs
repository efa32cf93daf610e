//! The dashboard's queries are valid PromQL, and the alerts and the dashboard
//! use only metrics a live gateway exports (promtool checks the scrape).

use std::collections::BTreeSet;

use crate::common::cart_config_with;
use crate::{output_text, promtool, read_repo_file, run_promtool};
use integration_tests::{free_addr, http_client, temp_dir, Backend, Gateway, RedisServer};
use serde_json::Value;

/// Every PromQL expression of the dashboard, with Grafana's variables filled
/// in, parses: checked by wrapping them in recording rules for promtool.
#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = promtool("dashboard_queries_are_valid_promql") else { return };
    let dashboard: Value =
        serde_json::from_str(&read_repo_file("deploy/grafana/gateway-dashboard.json")).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "expected the dashboard's queries, found only {exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let promql = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$route", ".+");
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(&promql).expect("a string serialises");
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: {quoted}\n"));
    }
    let dir = temp_dir();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, &rules).expect("write the rules file");
    let path = path.to_str().expect("temp path is UTF-8");
    let out = run_promtool(&promtool, &["check", "rules", path], None);
    assert!(out.status.success(), "a dashboard query is not valid PromQL:\n{}\n{rules}", output_text(&out));
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Starts a gateway on the sample's shape (half the users on the canary),
/// with a TLS listener (so the certificate expiry series exist), sends
/// traffic that touches every always-present series (both versions, 2xx,
/// 4xx, 5xx, an upstream 5xx, an unrouted path, a reload), then returns the
/// text of `GET /metrics`.
async fn metrics_after_traffic() -> String {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    // Shadowing on, with the diff store in the gateway's temp dir, so the shadow series exist too.
    // A rollout checked every second, so the release guard's series exist too.
    let route_extra = "[routes.shadow]\npercent = 100.0\n\n[routes.rollout]\nsteps = [50, 100]\nhold = \"1h\"\n\
                       interval = \"1s\"\nmin_requests = 1\ngates = { max_error_rate = 50.0 }";
    let mut config = cart_config_with(&[&v1], &[&v2], 50.0, route_extra).replacen(
        "[upstreams.cart-v1]",
        "[shadow]\nstore = \"{dir}/diffs.sqlite\"\n\n[upstreams.cart-v1]",
        1,
    );
    assert!(config.contains("[shadow]"), "the shadow store was not added to the config:\n{config}");
    // A fleet member, so the cluster series exist too.
    let redis = RedisServer::start();
    config = config.replacen(
        "[upstreams.cart-v1]",
        &format!("[cluster]\nredis = \"{}\"\n\n[upstreams.cart-v1]", redis.url()),
        1,
    );
    let dir = temp_dir();
    let certified = rcgen::generate_simple_self_signed(vec!["shop.localhost".to_string()]).expect("a test certificate");
    std::fs::write(dir.path().join("shop.pem"), certified.cert.pem()).expect("write the certificate");
    std::fs::write(dir.path().join("shop.key"), certified.signing_key.serialize_pem()).expect("write the key");
    config.push_str(&format!(
        "\n[server.tls]\nlisten = [\"{}\"]\ncerts = [{{ cert = \"shop.pem\", key = \"shop.key\", default = true }}]\n",
        free_addr()
    ));
    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;
    let client = http_client();
    for user in 0..40 {
        let user = user.to_string();
        let resp = client.get(gateway.url("/cart/items")).header("x-user-id", &user).send().await.expect("request");
        assert_eq!(resp.status(), 200, "user {user}");
    }
    for path in ["/cart/x?status=500", "/cart/x?status=404", "/nowhere"] {
        client.get(gateway.url(path)).header("x-user-id", "7").send().await.expect("request");
    }
    let (code, body) = gateway.reload().await;
    assert_eq!(code, 200, "POST /api/reload: {body}");
    let started = gateway.admin_request(reqwest::Method::POST, "/api/rollouts/cart/start").send().await.expect("start");
    assert_eq!(started.status(), 200, "POST /api/rollouts/cart/start");
    gateway
        .eventually("a rollout check is counted", std::time::Duration::from_secs(20), || async {
            for user in 0..20 {
                let _ = client.get(gateway.url("/cart/items")).header("x-user-id", user.to_string()).send().await;
            }
            let m = gateway.admin_request(reqwest::Method::GET, "/metrics").send().await;
            let text = match m {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            text.contains("gateway_rollout_gate_value")
        })
        .await;
    // Shadows finish off the request path; wait until they are counted.
    gateway
        .eventually("shadow outcomes are counted", std::time::Duration::from_secs(10), || async {
            let text = gateway
                .admin_request(reqwest::Method::GET, "/metrics")
                .send()
                .await
                .expect("m")
                .text()
                .await
                .expect("t");
            text.contains("gateway_shadow_duration_seconds_count")
        })
        .await;
    let resp = gateway.admin_request(reqwest::Method::GET, "/metrics").send().await.expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("metrics body");
    assert!(text.contains("gateway_requests_total"), "no request counter in /metrics:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_check_metrics() {
    let Some(promtool) = promtool("live_metrics_pass_promtool_check_metrics") else { return };
    let text = metrics_after_traffic().await;
    let out = run_promtool(&promtool, &["check", "metrics"], Some(text.as_bytes()));
    // promtool exits non-zero on parse errors and on lint problems alike, and
    // prints every problem; none is tolerated.
    assert!(
        out.status.success(),
        "promtool check metrics found problems:\n{}\n--- metrics ---\n{text}",
        output_text(&out)
    );
}

/// Metric families named in the alerts and the dashboard: `gateway_[a-z_]+`
/// and `process_[a-z_]+` (the process collector's memory, CPU and file
/// descriptor metrics) tokens, not part of a longer identifier such as a
/// recording rule name, with the histogram suffixes `_bucket`, `_sum` and
/// `_count` removed.
fn referenced_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = referenced_names_with_prefix(text, "gateway_");
    names.extend(referenced_names_with_prefix(text, "process_"));
    names
}

fn referenced_names_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(prefix) {
        let start = from + found;
        let mut end = start + prefix.len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        from = end;
        let preceded = start > 0 && is_ident(bytes[start - 1]);
        let followed = end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b':');
        if preceded || followed {
            continue;
        }
        let token = &text[start..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| token.strip_suffix(s)).unwrap_or(token);
        names.insert(base.to_string());
    }
    names
}

/// Families in a Prometheus text exposition: the `# TYPE` lines, plus the
/// base names of the samples.
fn exported_metric_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            names.insert(base.to_string());
        }
    }
    names
}

#[test]
fn metric_name_extraction_handles_suffixes_and_identifiers() {
    let names = referenced_metric_names(
        "rate(gateway_request_duration_seconds_bucket{x=\"y\"}[5m]) gateway_requests_total \
         route:gateway_requests:rate5m gray-gateway gateway_config_generation \
         rate(process_cpu_seconds_total[5m]) preprocess_x process_open_fds{job=~\"gateway.*\"}",
    );
    let expected: BTreeSet<String> = [
        "gateway_request_duration_seconds",
        "gateway_requests_total",
        "gateway_config_generation",
        "process_cpu_seconds_total",
        "process_open_fds",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_only_exported_metrics() {
    let alerts = read_repo_file("deploy/prometheus/alerts.yml");
    let dashboard = read_repo_file("deploy/grafana/gateway-dashboard.json");
    let mut referenced = referenced_metric_names(&alerts);
    assert!(referenced.len() >= 6, "alerts.yml names too few gateway metrics: {referenced:?}");
    referenced.extend(referenced_metric_names(&dashboard));
    // What the issue asks the monitoring to cover, by name: certificate
    // expiry, the failing-reload gauge, and the process's memory, CPU and fds.
    for wanted in [
        "gateway_tls_certificate_expiry_timestamp_seconds",
        "gateway_config_last_reload_successful",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(referenced.contains(wanted), "neither alerts.yml nor the dashboard uses {wanted}");
    }

    let exposition = metrics_after_traffic().await;
    let exported = exported_metric_names(&exposition);
    let missing: Vec<&String> = referenced.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "metrics used by deploy/prometheus/alerts.yml or deploy/grafana/gateway-dashboard.json \
         but absent from a live gateway's /metrics: {missing:?}\nexported: {exported:?}"
    );
}
