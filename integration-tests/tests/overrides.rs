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

#[path = "tls/pki.rs"]
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
// Tester overrides: plain values
// ---------------------------------------------------------------------------

const ALLOW_LOOPBACK_HEADER: &str = "header = \"x-gateway-version\"\nallow_from = [\"127.0.0.0/8\"]";
const ALLOW_OFFICE_HEADER: &str = "header = \"x-gateway-version\"\nallow_from = [\"10.0.0.0/8\"]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_override_from_an_allowed_ip_sends_the_request_to_the_named_version() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_LOOPBACK_HEADER));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2")]).await;
    assert_eq!(got, on("v2"), "user {on_v1}, bucketed on v1, asked for v2 from 127.0.0.1");
    let got = served(&client, &url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, "v1")]).await;
    assert_eq!(got, on("v1"), "user {on_v2}, bucketed on v2, asked for v1");
    // The override comes before the whitelist.
    let got = served(&client, &url, &[("x-user-id", "1001"), (OVERRIDE_HEADER, "v1")]).await;
    assert_eq!(got, on("v1"), "whitelisted user 1001 asked for v1");
    // And before the anonymous policy.
    assert_eq!(served(&client, &url, &[(OVERRIDE_HEADER, "v2")]).await, on("v2"), "anonymous, asked for v2");
    // It is per request: without the header the user is back on its bucket.
    assert_eq!(served(&client, &url, &[("x-user-id", &on_v1)]).await, on("v1"));
    assert_eq!(served(&client, &url, &[("x-user-id", "1001")]).await, on("v2"));

    expect_overrides(&gateway, "cart", 4, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_override_from_an_ip_outside_allow_from_is_ignored_and_counted_as_refused() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_OFFICE_HEADER));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2")]).await;
    assert_eq!(got, on("v1"), "127.0.0.1 is not in 10.0.0.0/8: user {on_v1} stays on its bucket's v1");
    let got = served(&client, &url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, "v1")]).await;
    assert_eq!(got, on("v2"), "user {on_v2} stays on its bucket's v2");
    let got = served(&client, &url, &[("x-user-id", "1001"), (OVERRIDE_HEADER, "v1")]).await;
    assert_eq!(got, on("v2"), "whitelisted user 1001 stays on v2");
    // A forged X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
    let got =
        served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2"), ("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(got, on("v1"), "X-Forwarded-For from an untrusted peer must not put the client in allow_from");

    expect_overrides(&gateway, "cart", 0, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_from_is_matched_against_the_client_behind_a_trusted_proxy() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_OFFICE_HEADER));
    let top = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n";
    let gateway = start(&v1, &v2, "", top, &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;

    // The office laptop 10.1.2.3 behind the load balancer (the trusted 127.0.0.1).
    let got =
        served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2"), ("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(got, on("v2"), "the client 10.1.2.3 is in allow_from");
    // A customer behind the same load balancer.
    let got =
        served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2"), ("x-forwarded-for", "192.0.2.9")])
            .await;
    assert_eq!(got, on("v1"), "the client 192.0.2.9 is not in allow_from");
    // A customer who wrote an office address left of its own: the walk stops at its real address.
    let got = served(
        &client,
        &url,
        &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2"), ("x-forwarded-for", "10.1.2.3, 192.0.2.9")],
    )
    .await;
    assert_eq!(got, on("v1"), "the client is 192.0.2.9 whatever it wrote to the left");

    expect_overrides(&gateway, "cart", 1, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_naming_an_unknown_version_is_refused_and_the_request_keeps_its_version() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_LOOPBACK_HEADER));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v9")]).await;
    assert_eq!(got, on("v1"), "v9 does not exist: user {on_v1} keeps v1");
    let got = served(&client, &url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, "v9")]).await;
    assert_eq!(got, on("v2"), "v9 does not exist: user {on_v2} keeps v2");
    // Upstream (pool) names are not version names.
    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "cart-v2")]).await;
    assert_eq!(got, on("v1"), "a pool name is not a version");

    expect_overrides(&gateway, "cart", 0, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_override_works_like_the_header_and_only_from_allowed_ips() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some("cookie = \"gw_version\"\nallow_from = [\"127.0.0.0/8\"]"));
    let checkout =
        route("checkout", "/checkout", 10.0, "", Some("cookie = \"gw_version\"\nallow_from = [\"10.0.0.0/8\"]"));
    let gateway = start(&v1, &v2, "", "", &[cart, checkout]).await;
    let client = http_client();
    let cart_url = gateway.url("/cart/items");
    let checkout_url = gateway.url("/checkout/pay");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;
    let checkout_v1 = user_on(&gateway, "/checkout/pay", "v1").await;

    // Allowed: the cookie among others picks the version.
    let got =
        served(&client, &cart_url, &[("x-user-id", &on_v1), ("cookie", "session=abc; gw_version=v2; theme=dark")])
            .await;
    assert_eq!(got, on("v2"), "user {on_v1} with gw_version=v2 from 127.0.0.1");
    let got = served(&client, &cart_url, &[("x-user-id", &on_v2), ("cookie", "gw_version=v1")]).await;
    assert_eq!(got, on("v1"), "user {on_v2} with gw_version=v1 from 127.0.0.1");
    // A cookie whose name merely ends in gw_version is not the override.
    let got = served(&client, &cart_url, &[("x-user-id", &on_v1), ("cookie", "my_gw_version=v2")]).await;
    assert_eq!(got, on("v1"), "my_gw_version is another cookie");

    // Not allowed: ignored, counted on that route.
    let got = served(&client, &checkout_url, &[("x-user-id", &checkout_v1), ("cookie", "gw_version=v2")]).await;
    assert_eq!(got, on("v1"), "127.0.0.1 is not in checkout's allow_from");

    expect_overrides(&gateway, "cart", 2, 0).await;
    expect_overrides(&gateway, "checkout", 0, 1).await;
}

// ---------------------------------------------------------------------------
// Tester overrides: signed values
// ---------------------------------------------------------------------------

/// Header and cookie, only 10.0.0.0/8 may send plain names, tokens from anyone.
const SIGNED_OFFICE: &str =
    "header = \"x-gateway-version\"\ncookie = \"gw_version\"\nallow_from = [\"10.0.0.0/8\"]\nsecret_file = \"override.key\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_token_from_the_cli_is_honoured_from_an_ip_outside_allow_from() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;

    let before = now_unix();
    let to_v2 = mint(gateway.config_path(), "cart", "v2", "8h").await;
    let (version, expiry, _) = token_parts(&to_v2);
    assert_eq!(version, "v2", "{to_v2}");
    let eight_hours = 8 * 3600;
    assert!(
        (before + eight_hours..=now_unix() + eight_hours + 1).contains(&expiry),
        "--ttl 8h: expiry {expiry} should be 8 h after {before}"
    );
    let to_v1 = mint(gateway.config_path(), "cart", "v1", "8h").await;

    // By header and by cookie, from 127.0.0.1, which may not send plain names.
    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &to_v2)]).await;
    assert_eq!(got, on("v2"), "user {on_v1} with a signed v2 token in the header");
    let cookie = format!("a=1; gw_version={to_v2}");
    let got = served(&client, &url, &[("x-user-id", &on_v1), ("cookie", &cookie)]).await;
    assert_eq!(got, on("v2"), "user {on_v1} with a signed v2 token in the cookie");
    let got = served(&client, &url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, &to_v1)]).await;
    assert_eq!(got, on("v1"), "user {on_v2} with a signed v1 token");
    // The plain name from the same client is refused.
    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2")]).await;
    assert_eq!(got, on("v1"), "a plain v2 from outside allow_from");

    expect_overrides(&gateway, "cart", 3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_token_or_a_token_for_another_route_is_refused() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE));
    let checkout = route("checkout", "/checkout", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart, checkout]).await;
    let client = http_client();
    let cart_url = gateway.url("/cart/items");
    let checkout_url = gateway.url("/checkout/pay");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;
    let checkout_v1 = user_on(&gateway, "/checkout/pay", "v1").await;

    let token = mint(gateway.config_path(), "cart", "v2", "8h").await;
    let (_, expiry, mac) = token_parts(&token);
    let mac_at = token.len() - mac.len();

    // One hex char of the HMAC flipped (first and last).
    for at in [mac_at, token.len() - 1] {
        let bad = flip_hex(&token, at);
        let got = served(&client, &cart_url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &bad)]).await;
        assert_eq!(got, on("v1"), "a token with a flipped HMAC char ({bad}) must be refused");
    }
    // The version swapped under the same signature.
    let swapped = format!("v1{}", &token["v2".len()..]);
    let got = served(&client, &cart_url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, &swapped)]).await;
    assert_eq!(got, on("v2"), "v2's signature on a v1 token ({swapped}) must be refused");
    // The expiry pushed out under the same signature.
    let extended = format!("v2.{}.{mac}", expiry + 86_400 * 365);
    let got = served(&client, &cart_url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &extended)]).await;
    assert_eq!(got, on("v1"), "a token with a later expiry than signed ({extended}) must be refused");
    expect_overrides(&gateway, "cart", 0, 4).await;

    // The cart token on checkout (same secret, same version names): refused.
    let got = served(&client, &checkout_url, &[("x-user-id", &checkout_v1), (OVERRIDE_HEADER, &token)]).await;
    assert_eq!(got, on("v1"), "a token minted for route cart must not work on route checkout");
    // Checkout's own token works there, so the refusal above is the route binding.
    let own = mint(gateway.config_path(), "checkout", "v2", "8h").await;
    let got = served(&client, &checkout_url, &[("x-user-id", &checkout_v1), (OVERRIDE_HEADER, &own)]).await;
    assert_eq!(got, on("v2"), "checkout's own token");
    expect_overrides(&gateway, "checkout", 1, 1).await;
    expect_overrides(&gateway, "cart", 0, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;

    let before = now_unix();
    let token = mint(gateway.config_path(), "cart", "v2", "1s").await;
    let (_, expiry, _) = token_parts(&token);
    assert!((before..=now_unix() + 2).contains(&expiry), "--ttl 1s: expiry {expiry}, minted at {before}");
    // Let it expire: past its expiry second, whichever way the boundary is read.
    let deadline = Instant::now() + Duration::from_secs(10);
    while now_unix() <= expiry {
        assert!(Instant::now() < deadline, "the clock did not pass {expiry}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &token)]).await;
    assert_eq!(got, on("v1"), "token {token} expired at {expiry}, now {}", now_unix());
    let got = served(&client, &url, &[("x-user-id", &on_v1), ("cookie", &format!("gw_version={token}"))]).await;
    assert_eq!(got, on("v1"), "the same expired token in the cookie");
    expect_overrides(&gateway, "cart", 0, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_token_exits_1_for_an_unknown_version_a_route_without_a_secret_or_an_unknown_route() {
    let dir = dir_with_keys();
    let routes = [
        route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE)),
        route("plain", "/plain", 10.0, "", Some(ALLOW_OFFICE_HEADER)),
        route("bare", "/bare", 10.0, "", None),
    ];
    let text = config(dead_addr(), dead_addr(), "", "", &routes)
        .replace("{listen}", &free_addr().to_string())
        .replace("{admin}", &free_addr().to_string());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write the config");
    let config = path.to_str().expect("temp paths are UTF-8");

    // The same config mints for a known version of a route with a secret.
    token_parts(&mint(&path, "cart", "v2", "8h").await);

    for (route, version, why) in [
        ("cart", "v9", "cart has no version v9"),
        ("plain", "v2", "route plain has no secret_file"),
        ("bare", "v2", "route bare has no override at all"),
        ("nope", "v2", "there is no route nope"),
    ] {
        let out =
            cli(&["override-token", "--config", config, "--route", route, "--version", version, "--ttl", "8h"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{why}: expected exit 1\nstdout: {stdout}\nstderr: {stderr}");
        assert!(!stderr.trim().is_empty(), "{why}: a message on stderr");
        assert!(!stderr.contains("panicked"), "{why}: {stderr}");
        assert!(stdout.trim().is_empty(), "{why}: nothing a script could take for a token on stdout: {stdout}");
    }
}

// ---------------------------------------------------------------------------
// What the backend sees
// ---------------------------------------------------------------------------

/// The one request both backends received with query `case=<case>`.
fn received_case(v1: &Backend, v2: &Backend, case: &str) -> integration_tests::ReceivedRequest {
    let query = format!("case={case}");
    let all: Vec<_> =
        v1.received().into_iter().chain(v2.received()).filter(|r| r.query.as_deref() == Some(&query)).collect();
    assert_eq!(all.len(), 1, "exactly one upstream request for {query}: {all:?}");
    all.into_iter().next().expect("one request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_override_header_never_reaches_the_backend() {
    let (v1, v2) = backends().await;
    let cart = route(
        "cart",
        "/cart",
        10.0,
        "",
        Some("header = \"x-gateway-version\"\nallow_from = [\"127.0.0.0/8\"]\nsecret_file = \"override.key\""),
    );
    let checkout = route("checkout", "/checkout", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart, checkout]).await;
    let client = http_client();
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let token = mint(gateway.config_path(), "cart", "v2", "8h").await;

    let cases: [(&str, &str, &str, &str); 4] = [
        ("applied", "/cart/items", "v2", "v2"),
        ("unknown", "/cart/items", "v9", "v1"),
        ("refused", "/checkout/pay", "v2", ""),
        ("signed", "/cart/items", &token, "v2"),
    ];
    for (case, path, value, expect) in cases {
        let url = gateway.url(&format!("{path}?case={case}"));
        let (version, _) = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, value)]).await;
        if !expect.is_empty() {
            assert_eq!(version, expect, "case {case}");
        }
        let request = received_case(&v1, &v2, case);
        assert_eq!(request.header("x-user-id").as_deref(), Some(on_v1.as_str()), "case {case}: headers are recorded");
        assert_eq!(request.header(OVERRIDE_HEADER), None, "case {case}: the override header reached the backend");
    }
}

/// The override cookie is judged by the gateway and removed like the
/// header: a signed value a tester holds never reaches a backend, and the
/// request's other cookies do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_override_cookie_never_reaches_the_backend_and_other_cookies_do() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some("cookie = \"gw_version\"\nallow_from = [\"127.0.0.0/8\"]"));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    for (case, cookie, expect) in
        [("applied", "session=abc; gw_version=v2", "v2"), ("unknown", "gw_version=v9; session=abc", "v1")]
    {
        let url = gateway.url(&format!("/cart/items?case={case}"));
        let (version, _) = served(&client, &url, &[("x-user-id", &on_v1), ("cookie", cookie)]).await;
        assert_eq!(version, expect, "case {case}");
        let request = received_case(&v1, &v2, case);
        assert_eq!(
            request.header("cookie").as_deref(),
            Some("session=abc"),
            "case {case}: only the override cookie went"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lane_header_of_the_same_name_the_backend_sees_the_version_chosen_not_the_one_asked() {
    let (v1, v2) = backends().await;
    let cart = route(
        "cart",
        "/cart",
        10.0,
        "",
        Some("header = \"x-gateway-version\"\nallow_from = [\"127.0.0.0/8\"]\nsecret_file = \"override.key\""),
    );
    let checkout = route("checkout", "/checkout", 10.0, "", Some(ALLOW_OFFICE_HEADER));
    let gateway = start(&v1, &v2, "version_request_header = \"x-gateway-version\"", "", &[cart, checkout]).await;
    let client = http_client();
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;
    let checkout_v1 = user_on(&gateway, "/checkout/pay", "v1").await;
    let token = mint(gateway.config_path(), "cart", "v2", "8h").await;

    // (case, path, user, override value or "" for none, the version that must answer and be named upstream)
    let cases: [(&str, &str, &str, &str, &str); 5] = [
        ("applied", "/cart/items", &on_v1, "v2", "v2"),
        ("signed", "/cart/items", &on_v1, &token, "v2"),
        ("unknown", "/cart/items", &on_v1, "v9", "v1"),
        ("refused", "/checkout/pay", &checkout_v1, "v2", "v1"),
        ("none", "/cart/items", &on_v2, "", "v2"),
    ];
    for (case, path, user, value, expect) in cases {
        let url = gateway.url(&format!("{path}?case={case}"));
        let mut headers = vec![("x-user-id", user)];
        if !value.is_empty() {
            headers.push((OVERRIDE_HEADER, value));
        }
        assert_eq!(served(&client, &url, &headers).await, on(expect), "case {case}");
        let request = received_case(&v1, &v2, case);
        let values: Vec<_> = request.headers.get_all(OVERRIDE_HEADER).iter().collect();
        assert_eq!(values.len(), 1, "case {case}: one x-gateway-version upstream, got {values:?}");
        assert_eq!(request.header(OVERRIDE_HEADER).as_deref(), Some(expect), "case {case}");
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_an_applied_override_and_counts_nothing() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_LOOPBACK_HEADER));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;

    let from_office =
        explain(&gateway, &format!("path=/cart/items&user={on_v1}&ip=127.0.0.1&header=x-gateway-version%3Av2")).await;
    assert_eq!(from_office["version"], "v2", "{from_office}");
    assert_eq!(from_office["reason"], "override", "{from_office}");

    let from_outside =
        explain(&gateway, &format!("path=/cart/items&user={on_v1}&ip=192.0.2.7&header=x-gateway-version%3Av2")).await;
    assert_eq!(from_outside["version"], "v1", "{from_outside}");
    assert_ne!(from_outside["reason"], "override", "{from_outside}");

    let text = gateway.settled_metrics().await;
    assert_eq!(override_counts(&text, "cart"), (0, 0), "explain is a dry run and counts no override");
}

// ---------------------------------------------------------------------------
// Sticky anonymous users
// ---------------------------------------------------------------------------

/// A `Set-Cookie` value: name, value, and the attributes as written.
#[derive(Debug, Clone)]
struct SetCookie {
    name: String,
    value: String,
    attributes: Vec<String>,
}

impl SetCookie {
    fn parse(line: &str) -> SetCookie {
        let mut parts = line.split(';').map(str::trim);
        let (name, value) = parts.next().and_then(|p| p.split_once('=')).unwrap_or(("", ""));
        SetCookie {
            name: name.to_string(),
            value: value.to_string(),
            attributes: parts.filter(|p| !p.is_empty()).map(str::to_string).collect(),
        }
    }

    /// The attributes, lower-cased names, sorted: order is not part of the contract.
    fn attribute_set(&self) -> Vec<String> {
        let mut set: Vec<String> = self
            .attributes
            .iter()
            .map(|a| match a.split_once('=') {
                Some((k, v)) => format!("{}={v}", k.to_ascii_lowercase()),
                None => a.to_ascii_lowercase(),
            })
            .collect();
        set.sort();
        set
    }
}

/// The `Set-Cookie` headers of a response that set cookie `name`.
fn set_cookies(headers: &HeaderMap, name: &str) -> Vec<SetCookie> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(SetCookie::parse)
        .filter(|c| c.name == name)
        .collect()
}

/// `<16 hex>.<32 hex>`.
fn is_anon_value(value: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    value.split_once('.').is_some_and(|(id, mac)| hex(id, 16) && hex(mac, 32))
}

fn sorted(attributes: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = attributes.iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

/// One anonymous request: (version, backend, the `gw_anon` cookies set).
async fn anonymous_get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (String, String, Vec<SetCookie>) {
    let (status, response_headers, body) = get_json(client, url, headers).await;
    assert_eq!(status, 200, "GET {url} with {headers:?}: {body}");
    (
        header(&response_headers, VERSION_HEADER),
        body["backend"].as_str().unwrap_or("").to_string(),
        set_cookies(&response_headers, "gw_anon"),
    )
}

/// A cookie route: v2 holds `percent`.
fn cookie_route(percent: f64) -> String {
    route("cart", "/cart", percent, "anonymous = \"cookie\"", None)
}

/// `n` fresh visitors: each one's cookie value and the version of its first answer.
async fn fresh_visitors(gateway: &Gateway, n: usize) -> Vec<(String, String)> {
    let client = http_client();
    let url = gateway.url("/cart/x");
    let visitors: Vec<(String, String)> = stream::iter(0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (version, backend, cookies) = anonymous_get(&client, &url, &[]).await;
                assert_eq!((version.clone(), backend), on(&version), "the version header names the backend");
                assert_eq!(cookies.len(), 1, "a fresh visitor gets one gw_anon cookie: {cookies:?}");
                (cookies[0].value.clone(), version)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    visitors
}

/// The version each cookie holder gets now; asserts no new cookie is issued.
async fn versions_with_cookies(gateway: &Gateway, visitors: &[(String, String)]) -> Vec<String> {
    let client = http_client();
    let url = gateway.url("/cart/x");
    stream::iter(visitors.iter().cloned())
        .map(|(value, _)| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let cookie = format!("gw_anon={value}");
                let (version, backend, cookies) = anonymous_get(&client, &url, &[("cookie", &cookie)]).await;
                assert_eq!((version.clone(), backend), on(&version), "the version header names the backend");
                assert!(cookies.is_empty(), "a valid cookie {value} got a new one: {cookies:?}");
                version
            }
        })
        .buffered(8)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_visitor_gets_a_signed_cookie_and_keeps_its_version_with_it() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");

    let (first_version, backend, cookies) = anonymous_get(&client, &url, &[]).await;
    assert_eq!((first_version.clone(), backend), on(&first_version));
    assert_eq!(cookies.len(), 1, "one gw_anon Set-Cookie: {cookies:?}");
    let cookie = &cookies[0];
    assert!(is_anon_value(&cookie.value), "gw_anon=<16 hex>.<32 hex>, got {:?}", cookie.value);
    assert_eq!(
        cookie.attribute_set(),
        sorted(&["path=/", "max-age=7776000", "httponly", "samesite=Lax"]),
        "attributes of {cookie:?} (no Secure on plain HTTP)"
    );

    // Coming back with it: the same version every time, no new cookie.
    let with_cookie = format!("gw_anon={}", cookie.value);
    for i in 0..10 {
        let (version, backend, again) = anonymous_get(&client, &url, &[("cookie", &with_cookie)]).await;
        assert_eq!((version, backend), on(&first_version), "request {i} with the cookie");
        assert!(again.is_empty(), "request {i}: a valid cookie was replaced: {again:?}");
    }
    // Among other cookies too.
    let among = format!("theme=dark; {with_cookie}; lang=de");
    let (version, _, again) = anonymous_get(&client, &url, &[("cookie", &among)]).await;
    assert_eq!(version, first_version);
    assert!(again.is_empty(), "{again:?}");

    // A signed-in user is not anonymous: no cookie for them.
    let (_, _, for_user) = anonymous_get(&client, &url, &[("x-user-id", "u1")]).await;
    assert!(for_user.is_empty(), "a request with a user ID got an anonymous cookie: {for_user:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_anonymous_visitors_are_split_by_the_percent_and_each_stays_put() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let n = 200;
    let visitors = fresh_visitors(&gateway, n).await;
    let ids: HashSet<&str> = visitors.iter().map(|(value, _)| value.split('.').next().unwrap_or("")).collect();
    assert_eq!(ids.len(), n, "every visitor gets its own random ID");
    let on_v2 = visitors.iter().filter(|(_, v)| v == "v2").count();
    // 50% of 200: 100 ± 7 (one standard deviation); 60..=140 is beyond 5.
    assert!((60..=140).contains(&on_v2), "{on_v2} of {n} fresh visitors on v2 at 50%");
    assert_eq!(visitors.iter().filter(|(_, v)| v == "v1").count(), n - on_v2, "only v1 and v2 answer");

    let again = versions_with_cookies(&gateway, &visitors).await;
    let moved: Vec<_> = visitors.iter().zip(&again).filter(|((_, first), now)| first != *now).collect();
    assert!(moved.is_empty(), "{} visitors changed version on their second request: {moved:?}", moved.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anonymous_id_is_bucketed_like_a_user_id_with_the_same_salt() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");
    let visitors = fresh_visitors(&gateway, 40).await;
    for (value, version) in &visitors {
        let id = value.split('.').next().unwrap_or("");
        let (as_user, _) = served(&client, &url, &[("x-user-id", id)]).await;
        assert_eq!(&as_user, version, "cookie {value}: its ID {id} sent as x-user-id gets another version");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_anonymous_cookie_is_treated_as_absent() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");
    let (_, _, cookies) = anonymous_get(&client, &url, &[]).await;
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let good = cookies[0].value.clone();
    assert!(is_anon_value(&good), "{good}");
    let mac_at = good.find('.').expect("id.mac") + 1;

    let forged = [
        ("a char of the ID changed", flip_hex(&good, 0)),
        ("the last char of the ID changed", flip_hex(&good, mac_at - 2)),
        ("a char of the signature changed", flip_hex(&good, mac_at)),
        ("no signature", good[..mac_at - 1].to_string()),
        ("junk", "hello".to_string()),
    ];
    for (what, value) in forged {
        assert_ne!(value, good);
        let cookie = format!("gw_anon={value}");
        let (_, _, issued) = anonymous_get(&client, &url, &[("cookie", &cookie)]).await;
        assert_eq!(issued.len(), 1, "{what} ({value}): expected a new cookie, got {issued:?}");
        let fresh = &issued[0].value;
        assert!(is_anon_value(fresh), "{what}: {fresh}");
        assert_ne!(fresh, &value, "{what}: the forged value was signed back");
        assert_ne!(fresh, &good, "{what}");
        // The new cookie is honoured from then on.
        let (_, _, again) = anonymous_get(&client, &url, &[("cookie", &format!("gw_anon={fresh}"))]).await;
        assert!(again.is_empty(), "{what}: the newly issued cookie was not accepted: {again:?}");
    }
    // The untouched cookie is still fine.
    let (_, _, again) = anonymous_get(&client, &url, &[("cookie", &format!("gw_anon={good}"))]).await;
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_from_one_replica_is_honoured_by_another_with_the_same_key_only() {
    let (v1, v2) = backends().await;
    let text = config(v1.addr(), v2.addr(), "", &anonymous_cookie(""), &[cookie_route(50.0)]);
    let a = Gateway::start_in(dir_with_keys(), "gateway.toml", &text).await;
    let b = Gateway::start_in(dir_with_keys(), "gateway.toml", &text).await;
    let other_dir = dir_with_keys();
    std::fs::write(other_dir.path().join("anon.key"), "another-key-entirely-0123456789\n").expect("write anon.key");
    let other = Gateway::start_in(other_dir, "gateway.toml", &text).await;
    let client = http_client();

    for (value, version) in fresh_visitors(&a, 20).await {
        let cookie = format!("gw_anon={value}");
        let (on_b, _, issued) = anonymous_get(&client, &b.url("/cart/x"), &[("cookie", &cookie)]).await;
        assert_eq!(on_b, version, "replica b disagrees with a on cookie {value}");
        assert!(issued.is_empty(), "replica b replaced a's valid cookie {value}: {issued:?}");
        let (_, _, issued) = anonymous_get(&client, &other.url("/cart/x"), &[("cookie", &cookie)]).await;
        assert_eq!(issued.len(), 1, "a gateway with another key must not accept {value}: {issued:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_anonymous_cookie_serves_every_cookie_route_and_other_routes_set_none() {
    let (v1, v2) = backends().await;
    let routes = [
        cookie_route(50.0),
        route("checkout", "/checkout", 50.0, "anonymous = \"cookie\"", None),
        route("search", "/search", 50.0, "", None),
    ];
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &routes).await;
    let client = http_client();

    let (_, _, issued) = anonymous_get(&client, &gateway.url("/cart/x"), &[]).await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    let cookie = format!("gw_anon={}", issued[0].value);
    let (first, _, again) = anonymous_get(&client, &gateway.url("/checkout/pay"), &[("cookie", &cookie)]).await;
    assert!(again.is_empty(), "checkout replaced the cart's cookie: {again:?}");
    for _ in 0..5 {
        let (version, _, again) = anonymous_get(&client, &gateway.url("/checkout/pay"), &[("cookie", &cookie)]).await;
        assert_eq!(version, first, "sticky on checkout too");
        assert!(again.is_empty(), "{again:?}");
    }

    // anonymous = "default" (the default): no cookie, the default version.
    for _ in 0..5 {
        let (version, _, issued) = anonymous_get(&client, &gateway.url("/search/q"), &[]).await;
        assert_eq!(version, "v1", "an anonymous request on a default-policy route");
        assert!(issued.is_empty(), "a route without anonymous = \"cookie\" set one: {issued:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_the_percent_moves_cookie_holders_only_from_the_default_version() {
    let (v1, v2) = backends().await;
    let top = anonymous_cookie("");
    let gateway = start(&v1, &v2, "", &top, &[cookie_route(50.0)]).await;
    let n = 200;
    let visitors = fresh_visitors(&gateway, n).await;
    let at_50 = versions_with_cookies(&gateway, &visitors).await;

    // "I changed 50 to 80 and saved."
    let generation = gateway.generation().await;
    gateway.write_config(&config(v1.addr(), v2.addr(), "", &top, &[cookie_route(80.0)]));
    gateway.wait_for_generation(generation + 1).await;
    let at_80 = versions_with_cookies(&gateway, &visitors).await;

    let back: Vec<_> =
        visitors.iter().zip(at_50.iter().zip(&at_80)).filter(|(_, (a, b))| *a == "v2" && *b != "v2").collect();
    assert!(back.is_empty(), "{} cookie holders left v2 when its percent rose: {back:?}", back.len());
    let (v2_at_50, v2_at_80) =
        (at_50.iter().filter(|v| *v == "v2").count(), at_80.iter().filter(|v| *v == "v2").count());
    assert!(v2_at_80 > v2_at_50, "no one moved to v2: {v2_at_50} -> {v2_at_80}");
    // 80% of 200: 160 ± 5.7; 130..=190 is beyond 5 standard deviations.
    assert!((130..=190).contains(&v2_at_80), "{v2_at_80} of {n} cookie holders on v2 at 80%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_cookie_attributes_follow_the_config() {
    let (v1, v2) = backends().await;
    let top = anonymous_cookie("name = \"visitor\"\nmax_age = \"1d\"\nhttp_only = false\nsame_site = \"Strict\"");
    let gateway = start(&v1, &v2, "", &top, &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");
    let (status, headers, body) = get_json(&client, &url, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(set_cookies(&headers, "gw_anon").is_empty(), "the cookie is renamed");
    let cookies = set_cookies(&headers, "visitor");
    assert_eq!(cookies.len(), 1, "{headers:?}");
    assert!(is_anon_value(&cookies[0].value), "{:?}", cookies[0]);
    assert_eq!(cookies[0].attribute_set(), sorted(&["path=/", "max-age=86400", "samesite=Strict"]), "{:?}", cookies[0]);

    // It works under its own name.
    let version = header(&headers, VERSION_HEADER);
    let cookie = format!("visitor={}", cookies[0].value);
    for _ in 0..3 {
        let (status, again, _) = get_json(&client, &url, &[("cookie", &cookie)]).await;
        assert_eq!(status, 200);
        assert_eq!(header(&again, VERSION_HEADER), version);
        assert!(set_cookies(&again, "visitor").is_empty(), "{again:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_anonymous_cookie_as_the_reason() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");
    for (value, version) in fresh_visitors(&gateway, 4).await {
        let (again, _) = served(&client, &url, &[("cookie", &format!("gw_anon={value}"))]).await;
        assert_eq!(again, version);
        let report = explain(&gateway, &format!("path=/cart/x&ip=127.0.0.1&header=cookie%3Agw_anon%3D{value}")).await;
        assert_eq!(report["version"], version.as_str(), "{report}");
        assert_eq!(report["reason"], "anonymous-cookie", "{report}");
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_check_wants_the_anonymous_secret_and_sound_override_tables() {
    let (a, b) = (dead_addr(), dead_addr());
    let good = config(
        a,
        b,
        "",
        &anonymous_cookie(""),
        &[
            route("cart", "/cart", 10.0, "anonymous = \"cookie\"", Some(SIGNED_OFFICE)),
            route("plain", "/plain", 10.0, "", Some(ALLOW_OFFICE_HEADER)),
        ],
    );
    let (code, out) = check(&good, &[]).await;
    assert_eq!(code, Some(0), "the good config passes:\n{out}");

    let no_anon_secret = config(a, b, "", "", &[route("cart", "/cart", 10.0, "anonymous = \"cookie\"", None)]);
    let (code, out) = check(&no_anon_secret, &[]).await;
    assert_eq!(code, Some(1), "anonymous = \"cookie\" without [anonymous_cookie]:\n{out}");
    assert!(out.contains("anonymous"), "the error names the setting:\n{out}");

    let short_key = config(
        a,
        b,
        "",
        "",
        &[route("cart", "/cart", 10.0, "", Some("header = \"x-gateway-version\"\nsecret_file = \"short.key\""))],
    );
    let (code, out) = check(&short_key, &[("short.key", "0123456789\n")]).await;
    assert_eq!(code, Some(1), "an override key under 16 bytes:\n{out}");
    assert!(out.contains("secret_file"), "the error names secret_file:\n{out}");

    let nowhere = config(a, b, "", "", &[route("cart", "/cart", 10.0, "", Some("allow_from = [\"10.0.0.0/8\"]"))]);
    let (code, out) = check(&nowhere, &[]).await;
    assert_eq!(code, Some(1), "an override with neither header nor cookie:\n{out}");
    assert!(out.contains("override"), "the error names the override table:\n{out}");
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_anonymous_cookie_is_marked_secure() {
    let (v1, v2) = backends().await;
    let ca = pki::Pki::new();
    let dir = dir_with_keys();
    pki::install(&dir.path().join("certs"), "shop", &ca.leaf(&["shop.test"]));
    let tls = free_addr();
    let top = format!(
        "[server.tls]\nlisten = [\"{tls}\"]\ncerts = [{{ cert = \"certs/shop.pem\", key = \"certs/shop.key\" }}]\n\
         http2 = true\n\n{}",
        anonymous_cookie("")
    );
    let text = config(v1.addr(), v2.addr(), "", &top, &[cookie_route(50.0)]);
    let gateway = Gateway::start_in(dir, "gateway.toml", &text).await;
    let url = format!("https://shop.test:{}/cart/x", tls.port());
    let expected = sorted(&["path=/", "max-age=7776000", "httponly", "samesite=Lax", "secure"]);

    for (protocol, client) in [
        ("HTTP/2", pki::tls_client(&ca, &["shop.test"], tls).build().expect("h2 client")),
        ("HTTP/1.1", pki::tls_client(&ca, &["shop.test"], tls).http1_only().build().expect("h1 client")),
    ] {
        let response = client.get(&url).send().await.unwrap_or_else(|e| panic!("{protocol} over TLS: {e}"));
        assert_eq!(response.status(), 200, "{protocol}");
        let cookies = set_cookies(response.headers(), "gw_anon");
        assert_eq!(cookies.len(), 1, "{protocol}: {:?}", response.headers());
        assert!(is_anon_value(&cookies[0].value), "{protocol}: {:?}", cookies[0]);
        assert_eq!(cookies[0].attribute_set(), expected, "{protocol}: {:?}", cookies[0]);
    }

    // The plain listener of the same gateway: no Secure.
    let (_, _, plain) = anonymous_get(&http_client(), &gateway.url("/cart/x"), &[]).await;
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(plain[0].attribute_set(), sorted(&["path=/", "max-age=7776000", "httponly", "samesite=Lax"]));
}
