//! A fleet: three gateway processes sharing run-time state through a real
//! `redis-server` on loopback. What ops judge it by: a block made on one
//! replica is refused by all within a second, survives restarts and Redis
//! outages, and a client never sees a failure because Redis failed.

mod limits;
mod outage;
mod shared_state;
mod tls;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use integration_tests::{get_json, http_client, temp_dir, Backend, Gateway, RedisServer};
use serde_json::{json, Value};
use tempfile::TempDir;

/// One replica's config: the shared store, a state file of its own (kept
/// across restarts by the test), a route with a fallback page for degrade,
/// and loopback trusted so tests can play clients from any address.
fn replica_config(backend: &Backend, redis: &str, prefix: &str, state: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2

[admin]
listen = "{{admin}}"

[state]
path = "{state}"

[client_ip]
trusted_proxies = ["127.0.0.0/8"]

[cluster]
redis = "{redis}"
key_prefix = "{prefix}"
timeout = "200ms"
# Long enough that only pub/sub can carry a change within the tests' second.
reconcile = "30s"

[upstreams.shop]
backends = ["{backend}"]

[[routes]]
name = "shop"
path_prefix = "/"
default = "v1"
versions = [{{ name = "v1", upstream = "shop" }}]
degrade_at = 2
{extra}

[routes.fallback]
page = "{{dir}}/busy.html"
status = 503
"#,
        state = state.display(),
        backend = backend.addr(),
    )
}

/// Three replicas on one store; each keeps its state file in a directory
/// the fleet owns, so a replica can be restarted on the same state.
struct Fleet {
    redis: RedisServer,
    backend: Backend,
    prefix: String,
    states: Vec<TempDir>,
    replicas: Vec<Option<Gateway>>,
    extra: String,
}

impl Fleet {
    async fn start(n: usize) -> Fleet {
        Self::start_with(n, "").await
    }

    /// `extra`: lines inside the route (e.g. a rate limit).
    async fn start_with(n: usize, extra: &str) -> Fleet {
        let mut fleet = Fleet {
            redis: RedisServer::start(),
            backend: Backend::start("shop").await,
            prefix: format!("gw:test-{}:", std::process::id()),
            states: (0..n).map(|_| temp_dir()).collect(),
            replicas: Vec::new(),
            extra: extra.to_string(),
        };
        for i in 0..n {
            let replica = fleet.start_replica(i).await;
            fleet.replicas.push(Some(replica));
        }
        fleet
    }

    fn state_path(&self, i: usize) -> PathBuf {
        self.states[i].path().join("state.json")
    }

    async fn start_replica(&self, i: usize) -> Gateway {
        let dir = temp_dir();
        std::fs::write(dir.path().join("busy.html"), "<h1>busy</h1>\n").expect("fallback page");
        let config = replica_config(&self.backend, &self.redis.url(), &self.prefix, &self.state_path(i), &self.extra);
        Gateway::start_in(dir, "gateway.toml", &config).await
    }

    /// Kill replica `i` (SIGKILL, as a crash) and start it again on the same state file.
    async fn restart(&mut self, i: usize) {
        self.replicas[i] = None;
        self.replicas[i] = Some(self.start_replica(i).await);
    }

    fn replica(&self, i: usize) -> &Gateway {
        self.replicas[i].as_ref().expect("replica running")
    }

    fn all(&self) -> Vec<&Gateway> {
        self.replicas.iter().flatten().collect()
    }
}

/// The status a client at `ip` gets from `gateway`.
async fn status_for(gateway: &Gateway, ip: &str) -> u16 {
    get_json(&http_client(), &gateway.url("/p"), &[("x-forwarded-for", ip)]).await.0
}

/// Call an admin endpoint; (status, JSON body).
async fn admin(gateway: &Gateway, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = gateway.admin_request(method, path);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("admin call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn block(gateway: &Gateway, cidr: &str, ttl: Option<&str>) -> Value {
    let (status, body) =
        admin(gateway, reqwest::Method::POST, "/api/blacklist", Some(json!({"cidr": cidr, "ttl": ttl}))).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Waits until every replica in `replicas` answers `ip` with `want`; the time it took.
async fn until_all(replicas: &[&Gateway], ip: &str, want: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for g in replicas {
            all &= status_for(g, ip).await == want;
        }
        if all {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let mut seen = Vec::new();
            for g in replicas {
                seen.push(status_for(g, ip).await);
            }
            panic!(
                "after {limit:?} the replicas answer {ip} with {seen:?}, not all {want}\n--- first replica's log ---\n{}",
                replicas[0].log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(gateway: &Gateway) -> String {
    gateway.admin_request(reqwest::Method::GET, "/metrics").send().await.expect("metrics").text().await.expect("text")
}

/// The value of a metric line that starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}
