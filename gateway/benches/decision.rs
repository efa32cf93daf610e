//! The per-request decision, as the proxy runs it. Issue 12's budget: the
//! whole pipeline (blacklist, route match among 100 routes with match rules,
//! user ID, whitelist of 10,000 users, three versions' buckets, rate limits)
//! under 1 µs.
//!
//! cargo bench -p gateway --bench decision

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::config::LimitSpec;
use gateway::control::runtime::RuntimeState;
use gateway::control::snapshot::Snapshot;
use gateway::control::state::OpenMode;
use gateway::edge::rate_limit::RateLimiter;
use gateway::pipeline::{run, Mode, RequestFacts, Verdict};
use http::{HeaderMap, HeaderValue, Method};

/// 100 routes: 96 fillers on their own prefixes (a quarter of them with
/// header rules), three on `/cart` told apart by rules, and the cart route
/// with three versions and a 10,000-user whitelist.
fn config_text() -> String {
    let users: Vec<String> = (0..10_000).map(|i| format!("\"tester-{i}\"")).collect();
    let mut text = String::from(
        "[upstreams.v1]\nbackends = [\"127.0.0.1:9001\"]\n[upstreams.v2]\nbackends = [\"127.0.0.1:9002\"]\n\
         [upstreams.v3]\nbackends = [\"127.0.0.1:9003\"]\n",
    );
    for i in 0..96 {
        let rules = if i % 4 == 0 { "headers = { \"x-app\" = \"ios\" }\n" } else { "" };
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/section-{i}\"\nstable = \"v1\"\n{rules}"
        ));
    }
    text.push_str(
        "[[routes]]\nname = \"cart-ios\"\npath_prefix = \"/cart\"\nstable = \"v1\"\nheaders = { \"x-app\" = \"ios\" }\n\
         [[routes]]\nname = \"cart-writes\"\npath_prefix = \"/cart\"\nstable = \"v1\"\nmethods = [\"POST\", \"PUT\"]\n\
         [[routes]]\nname = \"checkout\"\npath_prefix = \"/cart/checkout\"\nstable = \"v1\"\n",
    );
    text.push_str(&format!(
        "[[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\nuser_id = [\"header:x-user-id\", \"cookie:uid\", \"query:uid\"]\n\
         salt = \"cart-2026-11\"\ndefault = \"v1\"\nversions = [\n  {{ name = \"v1\", upstream = \"v1\" }},\n  \
         {{ name = \"v2\", upstream = \"v2\", percent = 10.0, whitelist_users = [{}] }},\n  \
         {{ name = \"v3\", upstream = \"v3\", percent = 2.5 }},\n]\n\
         [routes.rate_limit]\nper_ip = {{ rate = \"1000000/s\", burst = 1000000 }}\n",
        users.join(", ")
    ));
    text
}

fn bench_pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.toml");
    let snapshot = Snapshot::from_toml(&path, &config_text()).expect("valid bench config");
    let runtime = RuntimeState::open(&dir.path().join("state.json"), OpenMode::Inspect).expect("empty state");
    let ip: IpAddr = "203.0.113.7".parse().expect("ip");
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("shop.example.com"));
    headers.insert("x-user-id", HeaderValue::from_static("user-123456"));
    headers.insert("cookie", HeaderValue::from_static("session=abc; theme=dark"));
    let facts = |headers| RequestFacts {
        method: &Method::GET,
        host: Some("shop.example.com"),
        path: black_box("/cart/items/42"),
        query: Some("ref=home"),
        path_and_query: "/cart/items/42?ref=home",
        headers,
        client_ip: ip,
        tls: false,
        now: 1_767_225_600,
    };
    let name = |v: &Verdict| match v {
        Verdict::Continue(r) => r.route.spec.name.len(),
        Verdict::Respond(_) => 0,
    };
    assert!(matches!(run(&snapshot, &runtime, &facts(&headers), Mode::Serve), Verdict::Continue(_)));
    c.bench_function("pipeline/100 routes, rules, 3 versions, user bucket", |b| {
        b.iter(|| black_box(name(&run(&snapshot, &runtime, &facts(&headers), Mode::Serve))))
    });
    let mut whitelisted = headers.clone();
    whitelisted.insert("x-user-id", HeaderValue::from_static("tester-9999"));
    c.bench_function("pipeline/whitelisted user", |b| {
        b.iter(|| black_box(name(&run(&snapshot, &runtime, &facts(&whitelisted), Mode::Serve))))
    });
    let view = gateway::routing::RequestView { method: &Method::GET, headers: &headers, query: Some("ref=home") };
    c.bench_function("router/100 routes, rules", |b| {
        b.iter(|| black_box(snapshot.router.route(Some("shop.example.com"), black_box("/cart/items/42"), &view)))
    });
}

fn bench_rate_limit(c: &mut Criterion) {
    let limiter = RateLimiter::new(LimitSpec {
        rate: 1_000_000,
        per: Duration::from_secs(1),
        burst: 1_000_000,
        scope: Default::default(),
    });
    let mut i = 0u32;
    c.bench_function("rate_limit/check (distinct keys)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(limiter.check(&i.to_le_bytes()))
        })
    });
}

criterion_group!(benches, bench_pipeline, bench_rate_limit);
criterion_main!(benches);
