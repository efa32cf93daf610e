//! The per-request decision, as the proxy runs it: route match, user-ID
//! extraction, whitelist of 10,000 users, bucket hash; and a rate-limit check.
//!
//! cargo bench -p gateway --bench decision

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::config::{self, LimitSpec};
use gateway::edge::rate_limit::RateLimiter;
use gateway::routing::{decide, find_user_id, RequestView, Router};
use http::{HeaderMap, HeaderValue};

fn config_with_whitelist() -> config::GatewayConfig {
    let users: Vec<String> = (0..10_000).map(|i| format!("\"tester-{i}\"")).collect();
    let text = format!(
        r#"
[upstreams.v1]
backends = ["127.0.0.1:9001"]
[upstreams.v2]
backends = ["127.0.0.1:9002"]
[[routes]]
name = "search"
path_prefix = "/search"
stable = "v1"
[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "v1"
canary = "v2"
canary_percent = 10.0
user_id = ["header:x-user-id", "cookie:uid", "query:uid"]
salt = "cart-2026-11"
whitelist_users = [{}]
whitelist_ips = ["192.0.2.0/24"]
[[routes]]
name = "checkout"
path_prefix = "/cart/checkout"
stable = "v1"
"#,
        users.join(", ")
    );
    config::parse(Path::new("bench.toml"), &text).expect("valid bench config").config
}

fn bench_decision(c: &mut Criterion) {
    let cfg = config_with_whitelist();
    let router = Router::new(&cfg.routes);
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static("user-123456"));
    headers.insert("cookie", HeaderValue::from_static("session=abc; theme=dark"));
    let ip: IpAddr = "203.0.113.7".parse().expect("ip");
    c.bench_function("decision/route+user_id+whitelist+bucket", |b| {
        b.iter(|| {
            let route = router.route(Some("shop.example.com"), black_box("/cart/items/42")).expect("route");
            let view = RequestView { headers: &headers, query: Some("ref=home") };
            let user = find_user_id(&route.spec.user_id, &view);
            black_box(decide(route, user, ip))
        })
    });
    let mut whitelisted = HeaderMap::new();
    whitelisted.insert("x-user-id", HeaderValue::from_static("tester-9999"));
    c.bench_function("decision/whitelisted user", |b| {
        b.iter(|| {
            let route = router.route(None, black_box("/cart")).expect("route");
            let view = RequestView { headers: &whitelisted, query: None };
            black_box(decide(route, find_user_id(&route.spec.user_id, &view), ip))
        })
    });
}

fn bench_rate_limit(c: &mut Criterion) {
    let limiter = RateLimiter::new(LimitSpec { rate: 1_000_000, per: Duration::from_secs(1), burst: 1_000_000 });
    let mut i = 0u32;
    c.bench_function("rate_limit/check (distinct keys)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(limiter.check(&i.to_le_bytes()))
        })
    });
}

criterion_group!(benches, bench_decision, bench_rate_limit);
criterion_main!(benches);
