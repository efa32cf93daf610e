//! Routing v2, as a tester and a release engineer use it through the running
//! gateway: tester overrides (a plain version name from an allowed office
//! network, a signed token from anywhere, by header or cookie) and sticky
//! anonymous users (a signed cookie that keeps a visitor on one version).
//!
//! Every test starts the real binary with routes written in the v2 `versions`
//! form: `v1` (the default) on pool `cart-v1`, `v2` on pool `cart-v2`. The
//! response header `x-version` names the version that answered and the body
//! (the test backend's echo) names the backend, so both the gateway's claim
//! and the fact are checked. Every test request comes from 127.0.0.1.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use integration_tests::{dead_addr, free_addr, get_json, http_client, run_cli, temp_dir, Backend, Gateway};
use reqwest::header::HeaderMap;
use serde_json::Value;

#[path = "../tls/pki.rs"]
#[allow(dead_code)]
mod pki;

/// The key both override secrets are read from (33 bytes with the newline,
/// as `openssl rand -hex 16 > override.key` writes it).
const OVERRIDE_KEY: &str = "7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e\n";
const ANON_KEY: &str = "d41c8a7e2f6b9053c1e7a4d8b2f60e93\n";

/// The response header naming the version that answered.
const VERSION_HEADER: &str = "x-version";
/// The tester override header used on most routes here.
const OVERRIDE_HEADER: &str = "x-gateway-version";

// ---------------------------------------------------------------------------
// Config texts
// ---------------------------------------------------------------------------

/// A whole config: `server_extra` lines go inside `[server]`, `top` (whole
/// sections such as `[anonymous_cookie]` or `[server.tls]`) after `[admin]`,
/// then the two pools and the routes.
fn config(v1: SocketAddr, v2: SocketAddr, server_extra: &str, top: &str, routes: &[String]) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
shutdown_grace = "5s"
version_header = "{VERSION_HEADER}"
{server_extra}

[admin]
listen = "{{admin}}"

{top}

[upstreams.cart-v1]
backends = ["{v1}"]

[upstreams.cart-v2]
backends = ["{v2}"]
{routes}
"#,
        routes = routes.concat(),
    )
}

/// One route in the v2 form: `v1` (default) and `v2` holding `v2_percent`,
/// with user 1001 whitelisted on `v2`. `keys` are more route keys;
/// `override_keys`, when given, become the route's `[routes.override]` table.
fn route(name: &str, prefix: &str, v2_percent: f64, keys: &str, override_keys: Option<&str>) -> String {
    let mut text = format!(
        r#"
[[routes]]
name = "{name}"
path_prefix = "{prefix}"
default = "v1"
versions = [
  {{ name = "v1", upstream = "cart-v1" }},
  {{ name = "v2", upstream = "cart-v2", percent = {v2_percent:.2}, whitelist_users = ["1001"] }},
]
{keys}
"#
    );
    if let Some(override_keys) = override_keys {
        text.push_str(&format!("\n[routes.override]\n{override_keys}\n"));
    }
    text
}

/// `[anonymous_cookie]` with the secret and any further keys.
fn anonymous_cookie(extra: &str) -> String {
    format!("[anonymous_cookie]\nsecret_file = \"anon.key\"\n{extra}\n")
}

/// A temp dir holding `override.key` and `anon.key`, for `Gateway::start_in`.
fn dir_with_keys() -> tempfile::TempDir {
    let dir = temp_dir();
    std::fs::write(dir.path().join("override.key"), OVERRIDE_KEY).expect("write override.key");
    std::fs::write(dir.path().join("anon.key"), ANON_KEY).expect("write anon.key");
    dir
}

async fn backends() -> (Backend, Backend) {
    (Backend::start("cart-v1").await, Backend::start("cart-v2").await)
}

async fn start(v1: &Backend, v2: &Backend, server_extra: &str, top: &str, routes: &[String]) -> Gateway {
    let text = config(v1.addr(), v2.addr(), server_extra, top, routes);
    Gateway::start_in(dir_with_keys(), "gateway.toml", &text).await
}

/// Override tables used across the files.
const ALLOW_LOOPBACK_HEADER: &str = "header = \"x-gateway-version\"\nallow_from = [\"127.0.0.0/8\"]";
const ALLOW_OFFICE_HEADER: &str = "header = \"x-gateway-version\"\nallow_from = [\"10.0.0.0/8\"]";
/// Header and cookie, only 10.0.0.0/8 may send plain names, tokens from anyone.
const SIGNED_OFFICE: &str =
    "header = \"x-gateway-version\"\ncookie = \"gw_version\"\nallow_from = [\"10.0.0.0/8\"]\nsecret_file = \"override.key\"";

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// GET `url`; asserts a 200 and returns (the version header, the backend
/// that answered).
async fn served(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (String, String) {
    let (status, response_headers, body) = get_json(client, url, headers).await;
    assert_eq!(status, 200, "GET {url} with {headers:?}: {body}");
    (header(&response_headers, VERSION_HEADER), body["backend"].as_str().unwrap_or("").to_string())
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// What `served` returns for each version.
fn on(version: &str) -> (String, String) {
    let backend = match version {
        "v1" => "cart-v1",
        "v2" => "cart-v2",
        other => panic!("no backend for version {other}"),
    };
    (version.to_string(), backend.to_string())
}

/// The first of u0, u1, ... that `path` serves from `version` without any
/// override: a user the bucket puts there.
async fn user_on(gateway: &Gateway, path: &str, version: &str) -> String {
    let client = http_client();
    let url = gateway.url(path);
    for i in 0..3000 {
        let user = format!("u{i}");
        if served(&client, &url, &[("x-user-id", &user)]).await == on(version) {
            return user;
        }
    }
    panic!("no user among u0..u2999 is served by {version} on {path}");
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// The sum of the samples of `name` whose labels include all of `want`
/// (label order in the exposition does not matter; a missing series is 0).
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    let total: f64 = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = parse_labels(labels);
            let matches = want.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v));
            if matches {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum();
    total as u64
}

/// `a="x",b="y\"z"` as a map.
fn parse_labels(text: &str) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// (applied, refused) from `gateway_version_overrides_total` for `route`.
fn override_counts(metrics: &str, route: &str) -> (u64, u64) {
    let count = |outcome| metric(metrics, "gateway_version_overrides_total", &[("route", route), ("outcome", outcome)]);
    (count("applied"), count("refused"))
}

/// Waits (5 s at most) until `gateway_version_overrides_total` for `route`
/// reads exactly `applied` and `refused`; counters are written just after a
/// client has its answer. Panics with what it read last.
async fn expect_overrides(gateway: &Gateway, route: &str, applied: u64, refused: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = gateway.settled_metrics().await;
        let got = override_counts(&text, route);
        if got == (applied, refused) {
            return;
        }
        if Instant::now() >= deadline {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("gateway_version_overrides_total")).collect();
            panic!(
                "route {route}: expected overrides applied={applied} refused={refused}, got applied={} refused={}; \
                 series: {lines:#?}",
                got.0, got.1
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------

async fn cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("run the CLI")
}

/// `gateway override-token --config C --route R --version V --ttl T`: asserts
/// exit 0 and one line on stdout, returns it.
async fn mint(config: &Path, route: &str, version: &str, ttl: &str) -> String {
    let config = config.to_str().expect("temp paths are UTF-8");
    let out = cli(&["override-token", "--config", config, "--route", route, "--version", version, "--ttl", ttl]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "override-token {route} {version} {ttl}: {:?}\n{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "override-token prints one value, got {stdout:?}");
    lines[0].trim().to_string()
}

/// A signed value split as the contract writes it: `<version>.<expiry>.<64 hex>`.
fn token_parts(token: &str) -> (String, u64, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a token is <version>.<expiry unix>.<hmac hex>: {token:?}");
    let expiry = parts[1].parse::<u64>().unwrap_or_else(|_| panic!("expiry is unix seconds: {token:?}"));
    let mac = parts[2];
    assert!(mac.len() == 64 && mac.bytes().all(|b| b.is_ascii_hexdigit()), "64 hex chars of HMAC: {token:?}");
    (parts[0].to_string(), expiry, mac.to_string())
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// `text` with the hex digit at byte `at` replaced by another hex digit.
fn flip_hex(text: &str, at: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).expect("hex stays ASCII")
}

// ---------------------------------------------------------------------------
// Explain
// ---------------------------------------------------------------------------

async fn explain(gateway: &Gateway, query: &str) -> Value {
    let response = gateway
        .admin_request(reqwest::Method::GET, &format!("/api/explain?{query}"))
        .send()
        .await
        .expect("GET /api/explain");
    let status = response.status();
    let body = response.text().await.expect("explain body");
    assert_eq!(status, 200, "/api/explain?{query}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("explain answers JSON: {body}"))
}

// ---------------------------------------------------------------------------
// Config checks
// ---------------------------------------------------------------------------

/// `gateway check -c` on `text` in a dir with both keys (plus `extra_files`):
/// exit code and all output.
async fn check(text: &str, extra_files: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = dir_with_keys();
    for (name, contents) in extra_files {
        std::fs::write(dir.path().join(name), contents).expect("write a file for check");
    }
    let text = text.replace("{listen}", &free_addr().to_string()).replace("{admin}", &free_addr().to_string());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write the config");
    let out = cli(&["check", "-c", path.to_str().expect("temp paths are UTF-8")]).await;
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("panicked"), "check panicked:\n{all}");
    (out.status.code(), all)
}

mod anonymous;
mod checks;
mod rotation;
mod tester;
