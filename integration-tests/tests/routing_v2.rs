//! Routing v2 through the real binary (docs-contract-routing-v2.md): routes
//! with N named versions, widening one version without touching the others,
//! the stable/canary shorthand, per-version metrics, match rules, `gateway
//! check`, the lane header, and explain as a dry run of the proxy's pipeline.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use integration_tests::{http_client, run_cli, temp_dir, wait_until, Backend, Gateway};
use reqwest::Method;
use serde_json::Value;

/// The response header the test configs name in `server.version_header`.
const VERSION_HEADER: &str = "x-version";

/// Three upstreams, one per version of the `cart` route.
struct Trio {
    v1: Backend,
    v2: Backend,
    v3: Backend,
}

impl Trio {
    async fn start() -> Trio {
        Trio {
            v1: Backend::start("cart-v1").await,
            v2: Backend::start("cart-v2").await,
            v3: Backend::start("cart-v3").await,
        }
    }

    fn backend(&self, version: &str) -> &Backend {
        match version {
            "v1" => &self.v1,
            "v2" => &self.v2,
            "v3" => &self.v3,
            other => panic!("no backend for version {other:?}"),
        }
    }
}

/// The upstream (and backend name) each version of the `cart` route uses.
fn upstream_of(version: &str) -> &'static str {
    match version {
        "v1" => "cart-v1",
        "v2" => "cart-v2",
        "v3" => "cart-v3",
        _ => "(no such version)",
    }
}

/// A config whose `cart` route has three versions: `v1` (the default), `v2`
/// and `v3` with the given percents; `tester-2` is whitelisted on v2 and
/// `tester-3` on v3. Extra text can go into `[server]`, before the upstreams
/// (`top`), at the end of the cart route (`route`) and after it (`more`).
#[derive(Clone, Default)]
struct Cart {
    v2: f64,
    v3: f64,
    server: String,
    top: String,
    route: String,
    more: String,
}

impl Cart {
    fn new(v2: f64, v3: f64) -> Cart {
        Cart { v2, v3, ..Cart::default() }
    }

    fn server(mut self, text: &str) -> Cart {
        self.server = text.to_string();
        self
    }

    fn top(mut self, text: &str) -> Cart {
        self.top = text.to_string();
        self
    }

    fn route(mut self, text: &str) -> Cart {
        self.route = text.to_string();
        self
    }

    fn more(mut self, text: &str) -> Cart {
        self.more = text.to_string();
        self
    }

    fn text(&self, trio: &Trio) -> String {
        format!(
            r#"
[server]
listen = ["{{listen}}"]
threads = 2
shutdown_grace = "5s"
version_header = "{VERSION_HEADER}"
{server}

[admin]
listen = "{{admin}}"

{top}

[upstreams.cart-v1]
backends = ["{a1}"]

[upstreams.cart-v2]
backends = ["{a2}"]

[upstreams.cart-v3]
backends = ["{a3}"]

[[routes]]
name = "cart"
path_prefix = "/cart"
default = "v1"
versions = [
  {{ name = "v1", upstream = "cart-v1" }},
  {{ name = "v2", upstream = "cart-v2", percent = {v2:.2}, whitelist_users = ["tester-2"] }},
  {{ name = "v3", upstream = "cart-v3", percent = {v3:.2}, whitelist_users = ["tester-3"] }},
]
{route}

{more}
"#,
            server = self.server,
            top = self.top,
            a1 = trio.v1.addr(),
            a2 = trio.v2.addr(),
            a3 = trio.v3.addr(),
            v2 = self.v2,
            v3 = self.v3,
            route = self.route,
            more = self.more,
        )
    }
}

/// What one request got: the status, the version the gateway says answered,
/// and the backend that actually did (from its echo; empty for local answers).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    status: u16,
    version: String,
    backend: String,
}

async fn send(client: &reqwest::Client, method: Method, url: &str, headers: &[(&str, &str)]) -> Served {
    let mut request = client.request(method.clone(), url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap_or_else(|err| panic!("{method} {url} failed: {err}"));
    let status = response.status().as_u16();
    let version = response.headers().get(VERSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = response.text().await.unwrap_or_default();
    let backend = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|json| json["backend"].as_str().map(str::to_string))
        .unwrap_or_default();
    Served { status, version, backend }
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Served {
    send(client, Method::GET, url, headers).await
}

/// One GET of `path` per user (`x-user-id`, the default user ID source),
/// 16 at a time; what each user got.
async fn serve_users(gateway: &Gateway, path: &str, users: &[String]) -> HashMap<String, Served> {
    let client = http_client();
    let url = Arc::new(gateway.url(path));
    stream::iter(users.iter().cloned())
        .map(|user| {
            let (client, url) = (client.clone(), Arc::clone(&url));
            async move {
                let served = get(&client, &url, &[("x-user-id", &user)]).await;
                (user, served)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// How many users each version served.
fn count_by_version(served: &HashMap<String, Served>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for s in served.values() {
        *counts.entry(s.version.clone()).or_insert(0) += 1;
    }
    counts
}

/// Every answer is a 200 from the backend of the version the header names.
fn assert_header_matches_backend(served: &HashMap<String, Served>) {
    let wrong: Vec<_> =
        served.iter().filter(|(_, s)| s.status != 200 || s.backend != upstream_of(&s.version)).take(5).collect();
    assert!(wrong.is_empty(), "answers whose version header does not name the backend that answered: {wrong:?}");
}

/// The sum of the samples of metric `name` whose labels include all of
/// `labels`; `None` when no such series exists.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let found = parse_labels(label_text);
        if labels.iter().all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v)) {
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("unparsable sample: {line}"));
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// `k="v",k2="v2"` as pairs (Prometheus text format escapes).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim().trim_start_matches(',').trim().to_string();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// `GET /api/explain?<query>`: the HTTP status and the JSON answer.
async fn explain(gateway: &Gateway, query: &str) -> (u16, Value) {
    let response = gateway
        .admin_request(Method::GET, &format!("/api/explain?{query}"))
        .send()
        .await
        .unwrap_or_else(|err| panic!("explain {query}: no answer: {err}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("explain {query}: not JSON ({err}), {status}: {text}"));
    (status, json)
}

/// Explain says the request would be proxied (no local answer, no status).
fn assert_proxied(answer: &Value, what: &str) {
    assert_eq!(answer["verdict"], "proxy", "{what}: {answer}");
    assert!(answer.get("status").is_none_or(Value::is_null), "{what}: a proxied request has no status: {answer}");
}

/// Explain says the gateway answers itself with `status` for reason `label`.
fn assert_responds(answer: &Value, status: u16, label: &str, what: &str) {
    assert_eq!(answer["verdict"], "respond", "{what}: {answer}");
    assert_eq!(answer["status"], status, "{what}: {answer}");
    assert_eq!(answer["answer"], label, "{what}: {answer}");
}

// ---------------------------------------------------------------------------
// N versions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_versions_share_users_by_their_percents_and_each_user_keeps_one_version() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let users = users(300);

    let first = serve_users(&gateway, "/cart/items", &users).await;
    assert_header_matches_backend(&first);
    let counts = count_by_version(&first);
    let (v1, v2, v3) = (counts.get("v1").copied(), counts.get("v2").copied(), counts.get("v3").copied());
    // 50/30/20 of 300 users, about four standard deviations either way
    // (the hash is deterministic, so this never flickers).
    assert!(v1.is_some_and(|n| (115..=185).contains(&n)), "v1 (default, ~50%) got {v1:?} of 300: {counts:?}");
    assert!(v2.is_some_and(|n| (60..=120).contains(&n)), "v2 (30%) got {v2:?} of 300: {counts:?}");
    assert!(v3.is_some_and(|n| (33..=87).contains(&n)), "v3 (20%) got {v3:?} of 300: {counts:?}");
    assert_eq!(counts.len(), 3, "only v1, v2 and v3 answer: {counts:?}");
    // The backends saw exactly the split the header reported.
    for version in ["v1", "v2", "v3"] {
        assert_eq!(trio.backend(version).requests(), counts[version], "requests that reached {version}'s backend");
    }

    // The same users again: every one lands where it landed before.
    let again = serve_users(&gateway, "/cart/items", &users).await;
    assert_header_matches_backend(&again);
    let moved: Vec<_> =
        users.iter().filter(|u| first[*u].version != again[*u].version).map(|u| (u, &first[u], &again[u])).collect();
    assert!(moved.is_empty(), "{} users changed version on repeat, e.g. {:?}", moved.len(), moved.first());

    // A tester whitelisted on v3 always gets v3.
    let client = http_client();
    for _ in 0..5 {
        let served = get(&client, &gateway.url("/cart/items"), &[("x-user-id", "tester-3")]).await;
        assert_eq!(served, Served { status: 200, version: "v3".into(), backend: "cart-v3".into() });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_v2_by_hot_reload_moves_users_only_from_the_default_to_v2_and_no_v3_user_moves() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(10.0, 10.0).text(&trio)).await;
    let users = users(300);
    let before = serve_users(&gateway, "/cart", &users).await;
    assert_header_matches_backend(&before);

    // "I changed v2 from 10 to 40 and saved."
    let generation = gateway.generation().await;
    gateway.write_config(&Cart::new(40.0, 10.0).text(&trio));
    gateway.wait_for_generation(generation + 1).await;

    let after = serve_users(&gateway, "/cart", &users).await;
    assert_header_matches_backend(&after);
    let mut moved = 0;
    let mut wrong = Vec::new();
    for user in &users {
        let (b, a) = (&before[user].version, &after[user].version);
        if b != a {
            moved += 1;
            if !(b == "v1" && a == "v2") {
                wrong.push(format!("{user}: {b} -> {a}"));
            }
        }
    }
    assert!(wrong.is_empty(), "users moved other than v1 -> v2: {wrong:?}");
    let v3_before: HashSet<&String> = users.iter().filter(|u| before[*u].version == "v3").collect();
    let v3_after: HashSet<&String> = users.iter().filter(|u| after[*u].version == "v3").collect();
    assert!(!v3_before.is_empty(), "some of 300 users are on v3 at 10%");
    assert_eq!(v3_before, v3_after, "the v3 cohort changed although only v2's percent did");
    // The widening did happen: about 30% of the users (90 of 300) moved.
    assert!((45..=135).contains(&moved), "{moved} of 300 users moved for a 10% -> 40% change");
    let v2_after = users.iter().filter(|u| after[*u].version == "v2").count();
    assert!((85..=160).contains(&v2_after), "v2 has {v2_after} of 300 users at 40%");
    let metrics = gateway.settled_metrics().await;
    let percent = metric(&metrics, "gateway_route_version_percent", &[("route", "cart"), ("version", "v2")]);
    assert_eq!(percent, Some(40.0), "gateway_route_version_percent for v2 after the reload");
}

// ---------------------------------------------------------------------------
// The two-version shorthand
// ---------------------------------------------------------------------------

fn shorthand_config(stable: &Backend, canary: &Backend, percent: f64) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
shutdown_grace = "5s"
version_header = "{VERSION_HEADER}"

[admin]
listen = "{{admin}}"

[upstreams.cart-v1]
backends = ["{stable}"]

[upstreams.cart-v2]
backends = ["{canary}"]

[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "cart-v1"
canary = "cart-v2"
canary_percent = {percent:.2}
whitelist_users = ["1001"]
"#,
        stable = stable.addr(),
        canary = canary.addr(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stable_canary_shorthand_still_splits_users_and_labels_metrics_stable_and_canary() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&shorthand_config(&v1, &v2, 25.0)).await;
    let client = http_client();

    let served = serve_users(&gateway, "/cart/items", &users(200)).await;
    let bad: Vec<_> = served
        .values()
        .filter(|s| {
            s.status != 200
                || !matches!((s.version.as_str(), s.backend.as_str()), ("stable", "cart-v1") | ("canary", "cart-v2"))
        })
        .take(5)
        .collect();
    assert!(bad.is_empty(), "answers not labelled stable/cart-v1 or canary/cart-v2: {bad:?}");
    let counts = count_by_version(&served);
    let canary = counts.get("canary").copied().unwrap_or(0);
    assert!((26..=74).contains(&canary), "canary got {canary} of 200 users at 25%: {counts:?}");

    // The route-level whitelist still means canary; no user ID means stable.
    for _ in 0..3 {
        let tester = get(&client, &gateway.url("/cart/items"), &[("x-user-id", "1001")]).await;
        assert_eq!(tester, Served { status: 200, version: "canary".into(), backend: "cart-v2".into() });
    }
    for _ in 0..2 {
        let anonymous = get(&client, &gateway.url("/cart/items"), &[]).await;
        assert_eq!(anonymous, Served { status: 200, version: "stable".into(), backend: "cart-v1".into() });
    }

    let metrics = gateway.settled_metrics().await;
    let requests = |version: &str| {
        metric(&metrics, "gateway_requests_total", &[("route", "cart"), ("version", version), ("class", "2xx")])
    };
    let stable_count = counts.get("stable").copied().unwrap_or(0) + 2;
    assert_eq!(requests("stable"), Some(stable_count as f64), "stable requests in\n{metrics}");
    assert_eq!(requests("canary"), Some((canary + 3) as f64), "canary requests in\n{metrics}");
    assert_eq!(metric(&metrics, "gateway_route_canary_percent", &[("route", "cart")]), Some(25.0));
    assert_eq!(
        metric(&metrics, "gateway_route_version_percent", &[("route", "cart"), ("version", "canary")]),
        Some(25.0),
        "the shorthand's canary is a version named canary\n{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_version_metrics_and_the_access_log_carry_version_names_and_configured_percents() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let client = http_client();
    for _ in 0..4 {
        let served = get(&client, &gateway.url("/cart/x"), &[("x-user-id", "tester-3")]).await;
        assert_eq!((served.status, served.version.as_str()), (200, "v3"));
    }
    // No user ID and no `anonymous` setting: the default version.
    for _ in 0..3 {
        let served = get(&client, &gateway.url("/cart/x"), &[]).await;
        assert_eq!((served.status, served.version.as_str(), served.backend.as_str()), (200, "v1", "cart-v1"));
    }

    let metrics = gateway.settled_metrics().await;
    let requests = |version: &str| {
        metric(&metrics, "gateway_requests_total", &[("route", "cart"), ("version", version), ("class", "2xx")])
    };
    assert_eq!(requests("v3"), Some(4.0), "requests served by v3 in\n{metrics}");
    assert_eq!(requests("v1"), Some(3.0), "requests served by v1 in\n{metrics}");
    assert_eq!(
        metric(&metrics, "gateway_request_duration_seconds_count", &[("route", "cart"), ("version", "v3")]),
        Some(4.0),
        "latency histogram of v3 in\n{metrics}"
    );
    let percent =
        |version: &str| metric(&metrics, "gateway_route_version_percent", &[("route", "cart"), ("version", version)]);
    assert_eq!(percent("v2"), Some(30.0), "{metrics}");
    assert_eq!(percent("v3"), Some(20.0), "{metrics}");
    // The old gauge stays: the sum of the non-default versions' percents.
    assert_eq!(metric(&metrics, "gateway_route_canary_percent", &[("route", "cart")]), Some(50.0), "{metrics}");

    // The access log names the version too.
    let logged = |gateway: &Gateway| {
        gateway.log().lines().any(|l| {
            (l.contains("route=\"cart\"") || l.contains("route=cart"))
                && (l.contains("version=\"v3\"") || l.contains("version=v3"))
        })
    };
    let found = wait_until(|| async { logged(&gateway) }, std::time::Duration::from_secs(5)).await;
    assert!(found, "no access log line with route cart and version v3:\n{}", gateway.log_tail(20));
}

// ---------------------------------------------------------------------------
// Match rules
// ---------------------------------------------------------------------------

/// A request (method, path, headers) and what it must get (status, backend).
type RuleCase = (Method, &'static str, Vec<(&'static str, &'static str)>, u16, &'static str);

const RULE_BACKENDS: [&str; 6] = ["plain", "ios", "web", "post", "de", "beta"];

fn rules_config(backends: &HashMap<&str, Backend>) -> String {
    let upstreams: String = RULE_BACKENDS
        .iter()
        .map(|name| format!("[upstreams.{name}]\nbackends = [\"{}\"]\n\n", backends[name].addr()))
        .collect();
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
shutdown_grace = "5s"
version_header = "{VERSION_HEADER}"

[admin]
listen = "{{admin}}"

{upstreams}

# The plain route comes first in the file: the one with a rule must win anyway.
[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "plain"

[[routes]]
name = "cart-ios"
path_prefix = "/cart"
headers = {{ "X-App" = "ios" }}
stable = "ios"

# A longer prefix whose rule does not hold falls through to the /cart routes.
[[routes]]
name = "cart-items-web"
path_prefix = "/cart/items"
headers = {{ "x-client" = "~^web-[0-9]+$" }}
stable = "web"

[[routes]]
name = "orders"
path_prefix = "/orders"
stable = "plain"

[[routes]]
name = "orders-post"
path_prefix = "/orders"
methods = ["POST"]
stable = "post"

[[routes]]
name = "shop"
path_prefix = "/shop"
stable = "plain"

[[routes]]
name = "shop-de"
path_prefix = "/shop"
query = {{ "lang" = "de" }}
stable = "de"

[[routes]]
name = "app-beta"
path_prefix = "/app"
cookies = {{ "beta" = "*" }}
stable = "beta"

[[routes]]
name = "app"
path_prefix = "/app"
stable = "plain"

# Nothing else serves /ios-only.
[[routes]]
name = "ios-only"
path_prefix = "/ios-only"
headers = {{ "x-app" = "ios" }}
stable = "ios"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_rules_on_headers_methods_query_and_cookies_pick_the_route_and_fall_through_when_unmet() {
    let mut backends = HashMap::new();
    for name in RULE_BACKENDS {
        backends.insert(name, Backend::start(name).await);
    }
    let gateway = Gateway::start(&rules_config(&backends)).await;
    let client = http_client();

    // (method, path, headers, expected status, expected backend)
    let cases: Vec<RuleCase> = vec![
        // Header rule; the name is case-insensitive, the value exact text.
        (Method::GET, "/cart/x", vec![("x-app", "ios")], 200, "ios"),
        (Method::GET, "/cart/x", vec![("x-app", "android")], 200, "plain"),
        (Method::GET, "/cart/x", vec![("x-app", "iOS")], 200, "plain"),
        (Method::GET, "/cart/x", vec![], 200, "plain"),
        // Regex on a longer prefix; unmet, the request falls through to /cart.
        (Method::GET, "/cart/items/1", vec![("x-client", "web-42")], 200, "web"),
        (Method::GET, "/cart/items/1", vec![("x-client", "web-42"), ("x-app", "ios")], 200, "web"),
        (Method::GET, "/cart/items/1", vec![("x-client", "web-abc"), ("x-app", "ios")], 200, "ios"),
        (Method::GET, "/cart/items/1", vec![("x-client", "xweb-42")], 200, "plain"),
        (Method::GET, "/cart/items/1", vec![("x-client", "web-42x")], 200, "plain"),
        (Method::GET, "/cart/items/1", vec![], 200, "plain"),
        // Methods.
        (Method::POST, "/orders", vec![], 200, "post"),
        (Method::GET, "/orders", vec![], 200, "plain"),
        (Method::PUT, "/orders/7", vec![], 200, "plain"),
        // Query: exact value, exact key.
        (Method::GET, "/shop?lang=de", vec![], 200, "de"),
        (Method::GET, "/shop/list?page=2&lang=de", vec![], 200, "de"),
        (Method::GET, "/shop?lang=en", vec![], 200, "plain"),
        (Method::GET, "/shop?LANG=de", vec![], 200, "plain"),
        (Method::GET, "/shop", vec![], 200, "plain"),
        // Cookie present with any value; the name is exact.
        (Method::GET, "/app", vec![("cookie", "beta=1")], 200, "beta"),
        (Method::GET, "/app/home", vec![("cookie", "theme=dark; beta=yes")], 200, "beta"),
        (Method::GET, "/app", vec![("cookie", "Beta=1")], 200, "plain"),
        (Method::GET, "/app", vec![("cookie", "theme=dark")], 200, "plain"),
        (Method::GET, "/app", vec![], 200, "plain"),
        // Rules unmet and no other candidate: 404.
        (Method::GET, "/ios-only/x", vec![("x-app", "ios")], 200, "ios"),
        (Method::GET, "/ios-only/x", vec![], 404, ""),
        (Method::GET, "/ios-only/x", vec![("x-app", "android")], 404, ""),
    ];
    let forwarded = cases.iter().filter(|case| case.3 == 200).count();
    let mut wrong = Vec::new();
    for (method, path, headers, status, backend) in cases {
        let served = send(&client, method.clone(), &gateway.url(path), &headers).await;
        if (served.status, served.backend.as_str()) != (status, backend) {
            wrong.push(format!(
                "{method} {path} {headers:?}: expected {status} from {backend:?}, got {} from {:?}",
                served.status, served.backend
            ));
        }
    }
    assert!(wrong.is_empty(), "{} requests routed wrongly:\n{}", wrong.len(), wrong.join("\n"));
    // The 404s reached no backend.
    let reached: usize = backends.values().map(Backend::requests).sum();
    assert_eq!(reached, forwarded, "requests that reached a backend");
}

// ---------------------------------------------------------------------------
// gateway check
// ---------------------------------------------------------------------------

const CHECK_HEAD: &str = r#"[server]
listen = ["127.0.0.1:18080"]

[admin]
listen = "127.0.0.1:19900"

[upstreams.a]
backends = ["127.0.0.1:9001"]

[upstreams.b]
backends = ["127.0.0.1:9002"]

[upstreams.c]
backends = ["127.0.0.1:9003"]
"#;

/// `gateway check -c <dir>/gateway.toml` on `text`: the exit code and
/// everything printed (stderr, then stdout).
fn check(text: &str) -> (Option<i32>, String) {
    let dir = temp_dir();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write the config");
    let out = run_cli(&["check", "-c", path.to_str().expect("temp paths are UTF-8")]);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(!printed.contains("panicked"), "check panicked:\n{printed}");
    (out.status.code(), printed)
}

/// `(line, key, whole line)` of every `error: ...gateway.toml:LINE: KEY: message` line.
fn located_errors(printed: &str) -> Vec<(usize, String, String)> {
    printed
        .lines()
        .filter(|l| l.trim_start().starts_with("error:"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("gateway.toml:")?;
            let (line, rest) = rest.split_once(": ")?;
            let line = line.parse().ok()?;
            let key = rest.split_once(": ").map_or(rest, |(k, _)| k);
            Some((line, key.to_string(), l.to_string()))
        })
        .collect()
}

/// 1-based line numbers of the first `versions = [` ... `]` block.
fn versions_block(text: &str) -> std::ops::RangeInclusive<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim_start().starts_with("versions = [")).expect("a versions block");
    let end = start + lines[start..].iter().position(|l| l.trim() == "]").expect("the block's end");
    (start + 1)..=(end + 1)
}

fn two_routes(first_rule: &str, second_rule: &str) -> String {
    format!(
        r#"{CHECK_HEAD}
[[routes]]
name = "cart-ios"
hosts = ["shop.example"]
path_prefix = "/cart"
headers = {{ "x-app" = "{first_rule}" }}
stable = "a"

[[routes]]
name = "cart-iphone"
hosts = ["shop.example"]
path_prefix = "/cart"
headers = {{ "x-app" = "{second_rule}" }}
stable = "b"
"#
    )
}

#[test]
fn check_refuses_two_routes_with_the_same_hosts_prefix_and_rules_and_names_both() {
    let (code, printed) = check(&two_routes("ios", "ios"));
    assert!(code.is_some_and(|c| c != 0), "check accepted two identical routes (exit {code:?}):\n{printed}");
    let names_both = located_errors(&printed).iter().any(|(_, _, line)| {
        (line.contains("cart-ios") || line.contains("routes[0]"))
            && (line.contains("cart-iphone") || line.contains("routes[1]"))
    });
    assert!(names_both, "no `file:line: key` error naming both cart-ios and cart-iphone:\n{printed}");

    // The same two routes with different rules are two reachable routes.
    let (code, printed) = check(&two_routes("ios", "android"));
    assert_eq!(code, Some(0), "routes that differ only in their rules are valid:\n{printed}");
}

fn versions_route(versions: &[&str]) -> String {
    let entries: String = versions.iter().map(|v| format!("  {v},\n")).collect();
    format!("{CHECK_HEAD}\n[[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\nversions = [\n{entries}]\n")
}

#[test]
fn check_refuses_a_percent_or_a_whitelist_on_the_default_version_naming_file_line_and_key() {
    for (default_entry, what) in [
        (r#"{ name = "v1", upstream = "a", percent = 10.0 }"#, "percent"),
        (r#"{ name = "v1", upstream = "a", whitelist_users = ["1001"] }"#, "whitelist"),
    ] {
        let text = versions_route(&[default_entry, r#"{ name = "v2", upstream = "b", percent = 5.0 }"#]);
        let (code, printed) = check(&text);
        assert!(code.is_some_and(|c| c != 0), "check accepted a {what} on the default version:\n{printed}");
        let block = versions_block(&text);
        let errors = located_errors(&printed);
        let named = errors.iter().any(|(line, key, whole)| {
            block.contains(line) && key.starts_with("routes[0].versions[0]") && whole.contains(what)
        });
        assert!(
            named,
            "no error `gateway.toml:<line in {block:?}>: routes[0].versions[0]...` about the {what}:\n{printed}"
        );
    }
    // Without them the same route is fine (the first version is the default).
    let text = versions_route(&[
        r#"{ name = "v1", upstream = "a" }"#,
        r#"{ name = "v2", upstream = "b", percent = 5.0, whitelist_users = ["1001"] }"#,
    ]);
    let (code, printed) = check(&text);
    assert_eq!(code, Some(0), "{printed}");
}

#[test]
fn check_refuses_version_percents_that_add_up_to_more_than_100_naming_file_line_and_key() {
    let over = versions_route(&[
        r#"{ name = "v1", upstream = "a" }"#,
        r#"{ name = "v2", upstream = "b", percent = 60.0 }"#,
        r#"{ name = "v3", upstream = "c", percent = 50.0 }"#,
    ]);
    let (code, printed) = check(&over);
    assert!(code.is_some_and(|c| c != 0), "check accepted 60% + 50%:\n{printed}");
    let block = versions_block(&over);
    let named = located_errors(&printed)
        .iter()
        .any(|(line, key, _)| block.contains(line) && key.starts_with("routes[0].versions"));
    assert!(named, "no error `gateway.toml:<line in {block:?}>: routes[0].versions...`:\n{printed}");

    // Exactly 100 is allowed: the two lanes meet.
    let full = over.replace("percent = 50.0", "percent = 40.0");
    let (code, printed) = check(&full);
    assert_eq!(code, Some(0), "60% + 40% is valid:\n{printed}");
}

// ---------------------------------------------------------------------------
// Lane header
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_header_carries_the_chosen_version_upstream_and_a_client_cannot_forge_it() {
    let trio = Trio::start().await;
    let config = Cart::new(30.0, 20.0).server("version_request_header = \"x-gateway-version\"").text(&trio);
    let gateway = Gateway::start(&config).await;
    let client = http_client();
    let lane_at = |backend: &Backend, path: &str| {
        let seen: Vec<_> = backend.received().into_iter().filter(|r| r.path == path).collect();
        assert_eq!(seen.len(), 1, "{path} reached {} {} times", backend.name(), seen.len());
        seen[0].header("x-gateway-version")
    };

    // A v2 request carries v2 upstream.
    let served = get(&client, &gateway.url("/cart/lane-a"), &[("x-user-id", "tester-2")]).await;
    assert_eq!((served.status, served.version.as_str(), served.backend.as_str()), (200, "v2", "cart-v2"));
    assert_eq!(lane_at(&trio.v2, "/cart/lane-a").as_deref(), Some("v2"));

    // A request routed to v1 that claims v3 reaches v1's backend saying v1, once.
    let forged = [("x-gateway-version", "v3")];
    let served = get(&client, &gateway.url("/cart/lane-b"), &forged).await;
    assert_eq!((served.status, served.version.as_str(), served.backend.as_str()), (200, "v1", "cart-v1"));
    assert_eq!(lane_at(&trio.v1, "/cart/lane-b").as_deref(), Some("v1"));

    // Same on the v2 lane: the gateway's value replaces the client's.
    let served =
        get(&client, &gateway.url("/cart/lane-c"), &[("x-user-id", "tester-2"), ("x-gateway-version", "v3")]).await;
    assert_eq!((served.status, served.version.as_str()), (200, "v2"));
    assert_eq!(lane_at(&trio.v2, "/cart/lane-c").as_deref(), Some("v2"));
    assert_eq!(trio.v3.requests(), 0, "nothing was routed to v3");
}

// ---------------------------------------------------------------------------
// Explain
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_version_the_proxy_really_serves_each_user() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let mut users = users(60);
    users.extend(["tester-2".to_string(), "tester-3".to_string()]);
    let served = serve_users(&gateway, "/cart", &users).await;
    assert_header_matches_backend(&served);
    let generation = gateway.generation().await;

    let mut disagree = Vec::new();
    for user in &users {
        let (status, answer) = explain(&gateway, &format!("path=/cart&user={user}")).await;
        assert_eq!(status, 200, "{answer}");
        assert_proxied(&answer, user);
        let version = &served[user].version;
        let agrees = answer["version"] == version.as_str()
            && answer["route"] == "cart"
            && answer["pool"] == upstream_of(version)
            && answer["user_id"] == user.as_str()
            && answer["generation"] == generation;
        if !agrees {
            disagree.push(format!("{user}: proxy used {version}, explain says {answer}"));
        }
    }
    assert!(disagree.is_empty(), "{} users explained differently:\n{}", disagree.len(), disagree.join("\n"));
    let versions: HashSet<&str> = served.values().map(|s| s.version.as_str()).collect();
    assert_eq!(versions.len(), 3, "the sample covers every version: {versions:?}");

    // No user ID: the default version, both ways.
    let anonymous = get(&http_client(), &gateway.url("/cart"), &[]).await;
    let (_, answer) = explain(&gateway, "path=/cart").await;
    assert_proxied(&answer, "anonymous");
    assert_eq!((anonymous.version.as_str(), answer["version"].as_str()), ("v1", Some("v1")), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_of_a_blacklisted_ip_says_respond_403_and_counts_nothing() {
    let trio = Trio::start().await;
    // The loopback test client is a trusted proxy, so a real request can come
    // from the blocked range too, and both answers can be compared.
    let top = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[blacklist]\ncidrs = [\"203.0.113.0/24\"]\n";
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).top(top).text(&trio)).await;

    let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1&ip=203.0.113.9").await;
    assert_responds(&answer, 403, "blocked", "blocked ip");
    let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1&ip=198.51.100.1").await;
    assert_proxied(&answer, "an address outside the block");

    let blocked = |metrics: &str| {
        metric(metrics, "gateway_blocked_requests_total", &[("source", "config"), ("dry_run", "false")]).unwrap_or(0.0)
    };
    assert_eq!(blocked(&gateway.settled_metrics().await), 0.0, "explain counted a block");

    // The real pipeline agrees.
    let real = get(&http_client(), &gateway.url("/cart/x"), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(real.status, 403);
    assert_eq!(trio.v1.requests() + trio.v2.requests() + trio.v3.requests(), 0);
    assert_eq!(blocked(&gateway.settled_metrics().await), 1.0, "the real block is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_of_a_degraded_route_reports_its_fallback_pages_status() {
    let trio = Trio::start().await;
    let dir = temp_dir();
    std::fs::write(dir.path().join("busy.html"), "<p>recommendations are resting</p>").expect("page");
    // 529: a status no built-in answer uses, so it can only come from the page.
    let recommendations = "[[routes]]\nname = \"recommendations\"\npath_prefix = \"/recommendations\"\nstable = \"cart-v2\"\ndegrade_at = 2\n\n[routes.fallback]\npage = \"busy.html\"\nstatus = 529\n";
    let config = Cart::new(30.0, 20.0).top("[degrade]\nlevel = 2\n").more(recommendations).text(&trio);
    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;

    let (_, answer) = explain(&gateway, "path=/recommendations/top&user=user-1").await;
    assert_responds(&answer, 529, "degraded", "degraded route");
    let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1").await;
    assert_proxied(&answer, "a route without degrade_at");
    let fallbacks = |metrics: &str| {
        metric(metrics, "gateway_fallback_responses_total", &[("route", "recommendations"), ("cause", "degraded")])
            .unwrap_or(0.0)
    };
    assert_eq!(fallbacks(&gateway.settled_metrics().await), 0.0, "explain counted a fallback");

    let real = get(&http_client(), &gateway.url("/recommendations/top"), &[("x-user-id", "user-1")]).await;
    assert_eq!(real.status, 529, "the proxy serves the page with the status explain announced");
    assert_eq!(trio.v2.requests(), 0, "a degraded route does not contact its upstream");
    assert_eq!(fallbacks(&gateway.settled_metrics().await), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_takes_no_rate_limit_tokens_and_reports_the_limit_once_it_is_reached() {
    let trio = Trio::start().await;
    let limit = "[routes.rate_limit]\nper_ip = { rate = \"1/m\", burst = 1 }\n";
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).route(limit).text(&trio)).await;
    let client = http_client();

    for i in 0..3 {
        let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1&ip=127.0.0.1").await;
        assert_proxied(&answer, &format!("explain #{}", i + 1));
    }
    // The one token is still there for a real request...
    let first = get(&client, &gateway.url("/cart/x"), &[("x-user-id", "user-1")]).await;
    assert_eq!(first.status, 200, "explain used up the rate limit: {first:?}");
    // ...and the limit is live: the next one is refused, and explain says so.
    let second = get(&client, &gateway.url("/cart/x"), &[("x-user-id", "user-1")]).await;
    assert_eq!(second.status, 429, "{second:?}");
    let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1&ip=127.0.0.1").await;
    assert_responds(&answer, 429, "rate-limited-ip", "after the token is spent");

    let metrics = gateway.settled_metrics().await;
    let limited = metric(&metrics, "gateway_rate_limited_total", &[("route", "cart"), ("key", "ip")]);
    assert_eq!(limited, Some(1.0), "only the real 429 is counted\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_without_a_matching_route_says_respond_404() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let (_, answer) = explain(&gateway, "path=/nowhere/x&user=user-1").await;
    assert_responds(&answer, 404, "no-route", "no route");
    let real = get(&http_client(), &gateway.url("/nowhere/x"), &[("x-user-id", "user-1")]).await;
    assert_eq!(real.status, 404);
}

/// The first of `v1`, `v2`, `v3` printed as a word of its own.
fn first_version_named(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .find(|word| matches!(*word, "v1" | "v2" | "v3"))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explain_command_prints_the_version_the_proxy_serves() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let served = serve_users(&gateway, "/cart/x", &users(60)).await;
    assert_header_matches_backend(&served);
    // One user per version: from the bucket for v1 and v2, the whitelist for v3.
    let pick = |version: &str| {
        let mut on: Vec<&String> = served.iter().filter(|(_, s)| s.version == version).map(|(u, _)| u).collect();
        on.sort();
        on.first().map(|u| u.to_string()).unwrap_or_else(|| panic!("none of 60 users is on {version}"))
    };
    let config = gateway.config_path().to_str().expect("temp paths are UTF-8").to_string();
    for (user, version) in [(pick("v1"), "v1"), (pick("v2"), "v2"), ("tester-3".to_string(), "v3")] {
        let out = run_cli(&["explain", "--config", &config, "--path", "/cart/x", "--user", &user]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "explain for {user}: {:?}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(first_version_named(&stdout).as_deref(), Some(version), "explain for {user} printed:\n{stdout}");
    }
}
