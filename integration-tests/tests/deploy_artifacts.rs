//! The deployment artifacts under deploy/ agree with the gateway they deploy:
//! the Prometheus rules parse, the alerts and the dashboard only use metrics
//! the gateway exports, the Kubernetes config is accepted by `gateway check`,
//! and the systemd unit and Dockerfile keep their signal and user contracts.
//!
//! `promtool` comes from Debian's `prometheus` package (`deploy/dev.sh setup`
//! installs it). Without it the promtool tests are skipped locally, but fail
//! when the `CI` environment variable is set.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cart_config_with;
use integration_tests::{http_client, run_cli, temp_dir, Backend, Gateway};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("integration-tests lives in the workspace root").to_path_buf()
}

fn read_repo_file(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// `promtool` from PATH. `None` (with a message) when it is missing on a
/// developer machine; a panic when it is missing in CI.
fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("promtool")).find(|p| p.is_file()));
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: promtool is not installed, and CI is set; install Debian's `prometheus` package (deploy/dev.sh setup)");
        }
        eprintln!(
            "SKIPPED {test}: promtool is not installed (apt-get install prometheus, or deploy/dev.sh setup); \
             with CI set this is a failure"
        );
    }
    found
}

fn run_promtool(promtool: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("promtool stdin is piped");
        pipe.write_all(input).expect("write to promtool's stdin");
        // Dropping the pipe closes it: promtool reads until EOF.
    }
    child.wait_with_output().expect("wait for promtool")
}

fn output_text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let Some(promtool) = promtool("alert_rules_pass_promtool_check_rules") else { return };
    let out = run_promtool(&promtool, &["check", "rules", "deploy/prometheus/alerts.yml"], None);
    assert!(out.status.success(), "promtool check rules deploy/prometheus/alerts.yml failed:\n{}", output_text(&out));
}

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
/// sends traffic that touches every always-present series (both versions,
/// 2xx, 4xx, 5xx, an upstream 5xx, an unrouted path, a reload), then returns
/// the text of `GET /metrics`.
async fn metrics_after_traffic() -> String {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    // Shadowing on, with the diff store in the gateway's temp dir, so the shadow series exist too.
    let config = cart_config_with(&[&v1], &[&v2], 50.0, "[routes.shadow]\npercent = 100.0").replacen(
        "[upstreams.cart-v1]",
        "[shadow]\nstore = \"{dir}/diffs.sqlite\"\n\n[upstreams.cart-v1]",
        1,
    );
    let gateway = Gateway::start(&config).await;
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
/// tokens (not part of a longer identifier such as a recording rule name),
/// with the histogram suffixes `_bucket`, `_sum` and `_count` removed.
fn referenced_metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("gateway_") {
        let start = from + found;
        let mut end = start + "gateway_".len();
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
         route:gateway_requests:rate5m gray-gateway gateway_config_generation",
    );
    let expected: BTreeSet<String> =
        ["gateway_request_duration_seconds", "gateway_requests_total", "gateway_config_generation"]
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

    let exposition = metrics_after_traffic().await;
    let exported = exported_metric_names(&exposition);
    let missing: Vec<&String> = referenced.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "metrics used by deploy/prometheus/alerts.yml or deploy/grafana/gateway-dashboard.json \
         but absent from a live gateway's /metrics: {missing:?}\nexported: {exported:?}"
    );
}

/// The `gateway.toml: |` block scalar of the ConfigMap, de-indented.
fn configmap_gateway_toml(yaml: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let key_line = lines
        .iter()
        .position(|l| l.trim_start().starts_with("gateway.toml: |"))
        .expect("configmap.yaml has a `gateway.toml: |` block");
    let key_indent = lines[key_line].len() - lines[key_line].trim_start().len();
    let mut block = Vec::new();
    for line in &lines[key_line + 1..] {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= key_indent {
            break;
        }
        block.push(*line);
    }
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .expect("the gateway.toml block is not empty");
    let mut toml: String = block
        .iter()
        .map(|l| if l.trim().is_empty() { "\n".to_string() } else { format!("{}\n", &l[indent..]) })
        .collect();
    while toml.ends_with("\n\n") {
        toml.pop();
    }
    toml
}

#[test]
fn configmap_config_passes_gateway_check() {
    let toml = configmap_gateway_toml(&read_repo_file("deploy/k8s/configmap.yaml"));
    assert!(
        toml.contains("listen = [\"0.0.0.0:8080\"]"),
        "the ConfigMap's proxy should listen on 0.0.0.0:8080:\n{toml}"
    );
    assert!(toml.contains("listen = \"0.0.0.0:9900\""), "the ConfigMap's admin should listen on 0.0.0.0:9900:\n{toml}");

    let dir = temp_dir();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "test-token-not-a-secret\n").expect("write the token file");
    let mut replaced = 0;
    let toml: String = toml
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("token_file") {
                replaced += 1;
                format!("token_file = {:?}\n", token.to_str().expect("temp path is UTF-8"))
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_eq!(replaced, 1, "the ConfigMap's config should set admin.token_file exactly once:\n{toml}");

    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &toml).expect("write the extracted config");
    let out = run_cli(&["check", "-c", path.to_str().expect("temp path is UTF-8")]);
    assert!(
        out.status.success(),
        "gateway check rejects deploy/k8s/configmap.yaml's config:\n{}\n{toml}",
        output_text(&out)
    );
}

/// Non-comment lines of a file (`#` comments, as in YAML, systemd units and
/// Dockerfiles).
fn code_lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

/// Seconds in a `"30s"` / `30s` / `30` value.
fn seconds(value: &str) -> u64 {
    let v = value.trim().trim_matches('"');
    v.strip_suffix('s').unwrap_or(v).parse().unwrap_or_else(|_| panic!("not a duration in seconds: {value:?}"))
}

#[test]
fn kubernetes_manifests_keep_the_drain_and_reload_contracts() {
    let toml = configmap_gateway_toml(&read_repo_file("deploy/k8s/configmap.yaml"));
    let grace = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_grace = "))
        .map(|v| seconds(v.split('#').next().unwrap_or(v)))
        .expect("the ConfigMap's config sets server.shutdown_grace");
    let deployment = read_repo_file("deploy/k8s/deployment.yaml");
    let lines = code_lines(&deployment);
    let termination = lines
        .iter()
        .find_map(|l| l.strip_prefix("terminationGracePeriodSeconds:"))
        .map(seconds)
        .expect("deployment.yaml sets terminationGracePeriodSeconds");
    let pre_stop = lines
        .iter()
        .find_map(|l| l.strip_prefix("command: [\"sleep\", \"").and_then(|r| r.strip_suffix("\"]")))
        .map(seconds)
        .expect("deployment.yaml has a preStop `sleep`");
    assert!(
        pre_stop + grace < termination,
        "preStop sleep {pre_stop}s + shutdown_grace {grace}s must stay below terminationGracePeriodSeconds {termination}s"
    );
    // subPath mounts never see ConfigMap updates, so hot reload would silently stop working.
    assert!(
        !lines.iter().any(|l| l.contains("subPath")),
        "deployment.yaml must mount the config as a directory, not with subPath"
    );
    for probe in ["path: /readyz", "path: /healthz", "maxUnavailable: 0", "readOnlyRootFilesystem: true"] {
        assert!(lines.iter().any(|l| l.starts_with(probe)), "deployment.yaml lacks `{probe}`");
    }
}

#[test]
fn systemd_unit_and_dockerfile_keep_signal_and_user_contracts() {
    let unit = read_repo_file("deploy/systemd/gateway.service");
    let settings: Vec<(&str, &str)> = code_lines(&unit).into_iter().filter_map(|l| l.split_once('=')).collect();
    let values = |key: &str| -> Vec<&str> { settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect() };
    let reload = values("ExecReload");
    assert!(
        reload.len() == 1 && reload[0].contains("-HUP") && reload[0].contains("$MAINPID"),
        "ExecReload must send SIGHUP to $MAINPID: {reload:?}"
    );
    assert_eq!(values("KillSignal"), ["SIGTERM"], "SIGTERM drains; another KillSignal would not");
    let start = values("ExecStart");
    assert!(start.len() == 1 && start[0].ends_with(" run -c /etc/gateway/gateway.toml"), "ExecStart: {start:?}");
    let pre = values("ExecStartPre");
    assert!(pre.iter().any(|c| c.contains(" check -c /etc/gateway/gateway.toml")), "ExecStartPre: {pre:?}");
    let stop = values("TimeoutStopSec");
    assert!(stop.len() == 1 && seconds(stop[0]) > 30, "TimeoutStopSec must exceed shutdown_grace (30s): {stop:?}");

    let dockerfile = read_repo_file("deploy/Dockerfile");
    let lines = code_lines(&dockerfile);
    let runtime_start = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("the Dockerfile has a FROM");
    assert!(runtime_start > 0, "the Dockerfile should be multi-stage (builder, then runtime)");
    let runtime = &lines[runtime_start..];
    let user =
        runtime.iter().filter_map(|l| l.strip_prefix("USER ")).next_back().expect("the runtime stage sets USER").trim();
    let user_name = user.split(':').next().unwrap_or(user);
    assert!(!matches!(user_name, "root" | "0" | ""), "the runtime stage must run as a non-root user, not {user:?}");
    assert!(runtime.contains(&"STOPSIGNAL SIGTERM"), "the runtime stage should say STOPSIGNAL SIGTERM");
    let exposed: Vec<&str> =
        runtime.iter().filter_map(|l| l.strip_prefix("EXPOSE ")).flat_map(str::split_whitespace).collect();
    for port in ["8080", "9900"] {
        assert!(exposed.contains(&port), "the runtime stage should EXPOSE {port}: {exposed:?}");
    }
}
