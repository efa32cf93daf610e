//! Routing v2 through the real binary (issue 12): routes
//! with N named versions, widening one version without touching the others,
//! the stable/canary shorthand, per-version metrics, match rules, `gateway
//! check`, the lane header, and explain as a dry run of the proxy's pipeline.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use integration_tests::{http_client, run_cli, temp_dir, wait_until, Backend, Gateway};
use reqwest::Method;
use serde_json::Value;

#[path = "../tls/pki.rs"]
#[allow(dead_code)]
mod pki;

use pki::{start_tls_gateway, Pki};

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

mod check;
mod explain;
mod rules;
mod versions;
