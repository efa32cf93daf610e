//! Table tests of the pipeline's verdicts, from config text, without a
//! network: what the proxy does and what explain reports are the same run.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};

use crate::control::runtime::RuntimeState;
use crate::control::snapshot::Snapshot;
use crate::control::state::OpenMode;
use crate::routing::signed;

use super::*;

const CONFIG: &str = r#"
[server]
version_request_header = "x-gateway-version"
[server.tls]
listen = ["127.0.0.1:18443"]
certs = []

[upstreams.v1]
backends = ["127.0.0.1:9001"]
[upstreams.v2]
backends = ["127.0.0.1:9002"]
[upstreams.v3]
backends = ["127.0.0.1:9003"]

[blacklist]
cidrs = ["203.0.113.0/24"]

[degrade]
level = 2

[[routes]]
name = "cart"
path_prefix = "/cart"
default = "v1"
versions = [
  { name = "v1", upstream = "v1" },
  { name = "v2", upstream = "v2", percent = 10.0, whitelist_users = ["1001"] },
  { name = "v3", upstream = "v3", percent = 2.5 },
]
[routes.override]
header = "x-force"
allow_from = ["10.0.0.0/8"]
secret_file = "override.key"
[routes.rate_limit]
per_user = { rate = "1/m", burst = 1 }

[[routes]]
name = "cart-ios"
path_prefix = "/cart"
headers = { "x-app" = "ios" }
stable = "v1"

[[routes]]
name = "account"
path_prefix = "/account"
stable = "v1"
https_redirect = true

[[routes]]
name = "reviews"
path_prefix = "/reviews"
stable = "v1"
degrade_at = 2
[routes.fallback]
page = "busy.html"
status = 503
"#;

struct World {
    _dir: tempfile::TempDir,
    snapshot: Snapshot,
    runtime: RuntimeState,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("override.key"), "override-key-0123456789").expect("key");
    std::fs::write(dir.path().join("busy.html"), "busy").expect("page");
    let cert = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).expect("cert");
    std::fs::write(dir.path().join("shop.pem"), cert.cert.pem()).expect("cert file");
    std::fs::write(dir.path().join("shop.key"), cert.signing_key.serialize_pem()).expect("key file");
    let text = CONFIG.replace("certs = []", "certs = [{ cert = \"shop.pem\", key = \"shop.key\" }]");
    let snapshot = match Snapshot::from_toml(&dir.path().join("gateway.toml"), &text) {
        Ok(s) => s,
        Err(e) => panic!("{e:#?}"),
    };
    let runtime = RuntimeState::open(&dir.path().join("state.json"), OpenMode::Inspect).expect("empty state");
    World { _dir: dir, snapshot, runtime }
}

struct Req {
    method: Method,
    path: &'static str,
    ip: &'static str,
    headers: Vec<(&'static str, String)>,
    tls: bool,
}

fn get(path: &'static str) -> Req {
    Req { method: Method::GET, path, ip: "198.51.100.7", headers: Vec::new(), tls: false }
}

impl Req {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn from(mut self, ip: &'static str) -> Self {
        self.ip = ip;
        self
    }
}

/// What a verdict comes to, in one comparable line.
fn outcome(w: &World, req: &Req, mode: Mode) -> String {
    let mut headers = HeaderMap::new();
    for (k, v) in &req.headers {
        headers.append(*k, HeaderValue::from_str(v).expect("header value"));
    }
    let facts = RequestFacts {
        method: &req.method,
        host: Some("shop.test"),
        path: req.path,
        query: None,
        path_and_query: req.path,
        headers: &headers,
        client_ip: req.ip.parse::<IpAddr>().expect("ip"),
        tls: req.tls,
        now: 1_800_000_000,
    };
    match run(&w.snapshot, &w.runtime, &facts, mode) {
        Verdict::Continue(r) => {
            format!("proxy {} {} {}", r.route.spec.name, r.version_name(), r.decision.reason.label())
        }
        Verdict::Respond(a) => format!("respond {} {}", a.page.status, a.reason.label()),
    }
}

#[test]
fn every_phase_gives_its_verdict() {
    let w = world();
    let token = signed::override_token(b"override-key-0123456789", "cart", "v3", 1_800_000_100);
    let expired = signed::override_token(b"override-key-0123456789", "cart", "v3", 1_700_000_000);
    let cases: Vec<(&str, Req, &str)> = vec![
        ("blocked before routing", get("/cart").from("203.0.113.9"), "respond 403 blocked"),
        ("no route", get("/search"), "respond 404 no-route"),
        ("whitelisted user", get("/cart").header("x-user-id", "1001"), "proxy cart v2 whitelist-user"),
        ("a rule picks the route", get("/cart").header("x-app", "ios"), "proxy cart-ios stable anonymous"),
        ("anonymous: the default", get("/cart"), "proxy cart v1 anonymous"),
        (
            "override from an allowed ip",
            get("/cart").header("x-force", "v3").from("10.1.2.3"),
            "proxy cart v3 override",
        ),
        ("override from elsewhere is refused", get("/cart").header("x-force", "v3"), "proxy cart v1 anonymous"),
        ("a signed override from anywhere", get("/cart").header("x-force", token), "proxy cart v3 override"),
        ("an expired one is refused", get("/cart").header("x-force", expired), "proxy cart v1 anonymous"),
        (
            "an unknown version is refused",
            get("/cart").header("x-force", "v9").from("10.1.2.3"),
            "proxy cart v1 anonymous",
        ),
        ("plain http on an https route", get("/account/orders"), "respond 308 redirect"),
        ("over tls it proxies", Req { tls: true, ..get("/account/orders") }, "proxy account stable anonymous"),
        ("degraded route", get("/reviews/1"), "respond 503 degraded"),
    ];
    for (what, req, want) in cases {
        assert_eq!(outcome(&w, &req, Mode::Serve), want, "{what}");
    }
}

#[test]
fn a_dry_run_sees_the_limit_without_spending_it() {
    let w = world();
    let user = || get("/cart").header("x-user-id", "42");
    for _ in 0..3 {
        assert!(outcome(&w, &user(), Mode::DryRun).starts_with("proxy cart"), "explain never spends the token");
    }
    assert!(outcome(&w, &user(), Mode::Serve).starts_with("proxy cart"), "the one token is still there");
    assert_eq!(outcome(&w, &user(), Mode::DryRun), "respond 429 rate-limited-user", "explain sees it spent");
    assert_eq!(outcome(&w, &user(), Mode::Serve), "respond 429 rate-limited-user");
}

#[test]
fn a_dry_run_counts_nothing() {
    let w = world();
    let blocked = get("/cart").from("203.0.113.9");
    outcome(&w, &blocked, Mode::DryRun);
    outcome(&w, &get("/cart").header("x-force", "v3"), Mode::DryRun);
    let text = String::from_utf8(w.snapshot.metrics.render()).expect("utf-8");
    assert!(!text.contains("gateway_blocked_requests_total{dry_run=\"false\",source=\"config\"} 1"), "{text}");
    assert!(text.contains("gateway_version_overrides_total{outcome=\"refused\",route=\"cart\"} 0"), "{text}");
    outcome(&w, &blocked, Mode::Serve);
    outcome(&w, &get("/cart").header("x-force", "v3"), Mode::Serve);
    let text = String::from_utf8(w.snapshot.metrics.render()).expect("utf-8");
    assert!(text.contains("gateway_blocked_requests_total{dry_run=\"false\",source=\"config\"} 1"), "{text}");
    assert!(text.contains("gateway_version_overrides_total{outcome=\"refused\",route=\"cart\"} 1"), "{text}");
}

/// The redirect page is rendered when the config is loaded: a request's
/// answer shares its body and adds only `Location`.
#[test]
fn a_redirect_adds_only_its_location_to_the_page_rendered_at_load() {
    let w = world();
    let account = w.snapshot.routes.iter().find(|r| r.spec.name == "account").expect("the account route");
    let rendered = &account.pages.redirect.as_ref().expect("account redirects").moved;
    let headers = HeaderMap::new();
    let facts = |host| RequestFacts {
        method: &Method::GET,
        host,
        path: "/account/orders",
        query: Some("page=2"),
        path_and_query: "/account/orders?page=2",
        headers: &headers,
        client_ip: "198.51.100.7".parse::<IpAddr>().expect("ip"),
        tls: false,
        now: 1_800_000_000,
    };
    let Verdict::Respond(answer) = run(&w.snapshot, &w.runtime, &facts(Some("shop.test:8080")), Mode::Serve) else {
        panic!("plain http on the account route is answered locally");
    };
    assert_eq!(answer.page.status, 308);
    assert_eq!(answer.page.body.as_ptr(), rendered.body.as_ptr(), "the body is the one rendered at load");
    assert_eq!(
        answer.page.headers,
        [("location", "https://shop.test:18443/account/orders?page=2".to_string())],
        "only the Location is added"
    );
    assert!(rendered.headers.is_empty(), "the rendered page keeps no request's Location");

    let Verdict::Respond(no_host) = run(&w.snapshot, &w.runtime, &facts(None), Mode::Serve) else {
        panic!("a request without Host is answered locally");
    };
    assert_eq!(no_host.page.status, 400);
    let second = run(&w.snapshot, &w.runtime, &facts(None), Mode::Serve);
    let Verdict::Respond(second) = second else { panic!("answered locally again") };
    assert!(Arc::ptr_eq(&no_host.page, &second.page), "the 400 page is shared, not rendered per request");
    assert!(w.snapshot.routes.iter().filter(|r| r.spec.name != "account").all(|r| r.pages.redirect.is_none()));
}
