//! The release guard end to end: a real gateway, real backends for the
//! default version (v1) and the version rolled out (v2), steady traffic from
//! many users, and short holds. What a release engineer judges it by: a
//! healthy version walks every step to 100%; a misbehaving one is back at 0%
//! by itself, and testers can still reach it.

mod abort;
mod fleet;
mod lifecycle;
mod page;
mod walk;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{http_client, temp_dir, Backend, Gateway};
use serde_json::Value;
use tempfile::TempDir;

/// The route: v1 the default, v2 rolled out from 0% (its tester whitelisted).
/// `rollout`: the `[routes.rollout]` body; `extra`: more route lines.
fn config(v1: &Backend, v2: &Backend, state: &std::path::Path, rollout: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
version_header = "x-gateway-version"

[admin]
listen = "{{admin}}"

[state]
path = "{state}"

[upstreams.cart-v1]
backends = ["{v1}"]

[upstreams.cart-v2]
backends = ["{v2}"]

[[routes]]
name = "cart"
path_prefix = "/cart"
default = "v1"
versions = [
  {{ name = "v1", upstream = "cart-v1" }},
  {{ name = "v2", upstream = "cart-v2", percent = 0, whitelist_users = ["tester"] }},
]
user_id = ["header:x-user-id"]
{extra}

[routes.rollout]
version = "v2"
{rollout}
"#,
        state = state.display(),
        v1 = v1.addr(),
        v2 = v2.addr(),
    )
}

/// Steps 10 → 50 → 100, each held 2 s, checked every second on at least 10 requests.
const QUICK: &str = r#"steps = [10, 50, 100]
hold = "2s"
interval = "1s"
min_requests = 10
failure_limit = 2
gates = { max_error_rate = 5.0, max_error_rate_delta = 5.0, max_p99_ratio = 3.0 }"#;

/// A gateway with its state file in a directory the test keeps (for restarts).
struct Setup {
    v1: Backend,
    v2: Backend,
    state_dir: TempDir,
    gateway: Gateway,
}

impl Setup {
    async fn start(rollout: &str, extra: &str) -> Setup {
        let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
        let state_dir = temp_dir();
        let gateway = Gateway::start(&config(&v1, &v2, &state_dir.path().join("state.json"), rollout, extra)).await;
        Setup { v1, v2, state_dir, gateway }
    }

    fn config(&self, rollout: &str, extra: &str) -> String {
        config(&self.v1, &self.v2, &self.state_dir.path().join("state.json"), rollout, extra)
    }
}

/// Users asking all the time, each request from a new user ID.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// `clients` loops, each pausing `pause` between requests; bounded at 60 s.
    fn start(gateway: &Gateway, clients: usize, pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let (url, stop) = (gateway.url("/cart/items"), stop.clone());
                tokio::spawn(async move {
                    let client = http_client();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        i += 1;
                        let user = format!("u{c}-{i}");
                        let _ = client.get(&url).header("x-user-id", user).send().await;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Traffic { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn admin(gateway: &Gateway, method: reqwest::Method, path: &str) -> (u16, Value) {
    let resp = gateway.admin_request(method, path).send().await.expect("admin call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn rollout(gateway: &Gateway) -> Value {
    admin(gateway, reqwest::Method::GET, "/api/rollouts/cart").await.1
}

async fn command(gateway: &Gateway, action: &str) -> Value {
    let (status, body) = admin(gateway, reqwest::Method::POST, &format!("/api/rollouts/cart/{action}")).await;
    assert_eq!(status, 200, "{action}: {body}");
    body
}

/// Waits until the rollout satisfies `done`; panics with the rollout and the log after `limit`.
async fn until(gateway: &Gateway, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let r = rollout(gateway).await;
        if done(&r) {
            return r;
        }
        if start.elapsed() > limit {
            panic!("after {limit:?}, not {what}: {r:#}\n{}", gateway.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which version `user` gets now.
async fn version_for(gateway: &Gateway, user: &str) -> String {
    let r = http_client().get(gateway.url("/cart/items")).header("x-user-id", user).send().await.expect("request");
    r.headers().get("x-gateway-version").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// How many of `n` fresh users get v2.
async fn share_of_v2(gateway: &Gateway, n: usize) -> usize {
    let mut v2 = 0;
    for i in 0..n {
        if version_for(gateway, &format!("probe-{i}")).await == "v2" {
            v2 += 1;
        }
    }
    v2
}

fn kinds(r: &Value) -> Vec<String> {
    // Newest first in the API; oldest first here.
    let mut k: Vec<String> =
        r["events"].as_array().into_iter().flatten().filter_map(|e| e["kind"].as_str().map(String::from)).collect();
    k.reverse();
    k
}
