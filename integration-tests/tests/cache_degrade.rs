//! Degrade to cached answers: a route's answers kept in memory, served while
//! fresh, after the backend fails (stale, before the fallback page), and
//! under a degrade level without asking the backend, per version; never an
//! answer that must not be shared; purged on demand.

use std::time::Duration;

use integration_tests::{http_client, run_cli, temp_dir, Backend, Fault, Gateway};
use reqwest::Method;
use serde_json::json;

/// Route `shop` on v1 (and v2 at `percent`), cached as `cache` says, with a fallback page for failures.
async fn start(v1: &Backend, v2: &Backend, percent: f64, cache: &str) -> Gateway {
    let dir = temp_dir();
    std::fs::write(dir.path().join("busy.html"), "<h1>busy</h1>\n").expect("page");
    let config = format!(
        r#"
[server]
listen = ["{{listen}}"]
version_header = "x-gateway-version"

[admin]
listen = "{{admin}}"

[upstreams.v1]
backends = ["{v1}"]
connect_timeout = "500ms"

[upstreams.v2]
backends = ["{v2}"]
connect_timeout = "500ms"

[[routes]]
name = "shop"
path_prefix = "/"
default = "v1"
versions = [{{ name = "v1", upstream = "v1" }}, {{ name = "v2", upstream = "v2", percent = {percent} }}]
user_id = ["header:x-user-id"]

[routes.fallback]
page = "busy.html"
status = 503
on = ["connect-error", "timeout", "5xx"]

[routes.cache]
{cache}
"#,
        v1 = v1.addr(),
        v2 = v2.addr(),
    );
    Gateway::start_in(dir, "gateway.toml", &config).await
}

/// (status, x-gateway-cache, backend that made the body, age)
async fn get(g: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String, String, Option<u64>) {
    let mut req = http_client().get(g.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (status, cache, age) = (resp.status().as_u16(), h("x-gateway-cache"), h("age").parse().ok());
    let body = resp.text().await.unwrap_or_default();
    let backend = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["backend"].as_str().map(String::from))
        .unwrap_or(body);
    (status, cache, backend, age)
}

/// Waits until the cache holds at least `n` answers: a copy is kept once its
/// request completes, just after the client has the answer.
async fn until_kept(g: &Gateway, n: u64) {
    g.eventually(&format!("{n} answer(s) kept"), Duration::from_secs(5), || async {
        let m = match g.admin_request(Method::GET, "/metrics").send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        m.lines()
            .find(|l| l.starts_with("gateway_cache_entries "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .is_some_and(|kept| kept >= n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_route_answers_from_cache_within_its_ttl_and_asks_again_after() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let g = start(&v1, &v2, 0.0, "ttl = \"2s\"").await;
    assert_eq!(get(&g, "/items/7", &[]).await.1, "miss");
    until_kept(&g, 1).await;
    for _ in 0..5 {
        let (status, cache, backend, age) = get(&g, "/items/7", &[]).await;
        assert_eq!((status, cache.as_str(), backend.as_str()), (200, "hit", "v1"));
        assert!(age.is_some_and(|a| a <= 2), "Age says how old the copy is");
    }
    assert_eq!(v1.requests(), 1, "the backend was asked once");
    let head = http_client().head(g.url("/items/7")).send().await.expect("head");
    assert_eq!(head.headers().get("x-gateway-cache").map(|v| v.as_bytes()), Some(&b"hit"[..]));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(get(&g, "/items/7", &[]).await.1, "miss", "expired: asked again");
    assert_eq!(v1.requests(), 2);
    // The answer's own Cache-Control wins over the route's ttl.
    get(&g, "/cc?cache_control=max-age%3D60", &[]).await;
    let m = g.admin_request(Method::GET, "/metrics").send().await.expect("m").text().await.expect("t");
    assert!(m.contains("gateway_cache_responses_total{outcome=\"hit\",route=\"shop\",version=\"v1\"} 6"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_gets_stale_copies_then_the_fallback_page_once_they_are_too_old() {
    let (mut v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let g = start(&v1, &v2, 0.0, "ttl = \"3s\"\nstale_if_error = \"3s\"").await;
    assert_eq!(get(&g, "/items/1", &[]).await.0, 200);
    until_kept(&g, 1).await;
    // Explain says which answer a request gets: the fresh copy, later the upstream with the copy to stand in.
    let explain = async |g: &Gateway| {
        let url = format!("/api/explain?path=/items/1&host={}", g.listen_addr());
        let v: serde_json::Value =
            g.admin_request(Method::GET, &url).send().await.expect("explain").json().await.expect("json");
        v["explanation"].as_str().unwrap_or("").to_string()
    };
    assert!(explain(&g).await.contains("answered from the route's cache (hit)"));
    // A 5xx answer is replaced by the copy too.
    v1.set_fault(Fault { status: Some(500), ..Fault::default() });
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let text = explain(&g).await;
    assert!(text.contains("if it fails, a copy ") && text.contains("before the fallback page"), "{text}");
    let (status, cache, backend, _) = get(&g, "/items/1", &[]).await;
    assert_eq!((status, cache.as_str(), backend.as_str()), (200, "stale", "v1"), "a 5xx stood in for");
    // Killed: connection refused, the copy stands in.
    v1.stop().await;
    let (status, cache, backend, age) = get(&g, "/items/1", &[]).await;
    assert_eq!((status, cache.as_str(), backend.as_str()), (200, "stale", "v1"));
    assert!(age.is_some_and(|a| a >= 1));
    // Older than ttl + stale_if_error (6 s): the fallback page.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, cache, body, _) = get(&g, "/items/1", &[]).await;
    assert_eq!((status, cache.as_str()), (503, ""), "{body}");
    assert!(body.contains("busy"), "{body}");
    // A path never cached has no copy: the fallback page at once.
    assert_eq!(get(&g, "/never", &[]).await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_degrade_level_2_copies_up_to_30_minutes_old_answer_without_the_backend() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let g = start(&v1, &v2, 0.0, "ttl = \"1s\"\ndegrade_ttl = { 2 = \"30m\" }").await;
    get(&g, "/items/9", &[]).await;
    until_kept(&g, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = (
        g.admin_request(Method::PUT, "/api/degrade").json(&json!({"level": 1})).send().await.expect("put").status(),
        (),
    );
    assert_eq!(status, 200);
    assert_eq!(get(&g, "/items/9", &[]).await.1, "miss", "level 1 has no degrade_ttl: asked");
    let seen = v1.requests();
    g.admin_request(Method::PUT, "/api/degrade").json(&json!({"level": 2})).send().await.expect("put");
    for _ in 0..3 {
        let (status, cache, backend, _) = get(&g, "/items/9", &[]).await;
        assert_eq!((status, cache.as_str(), backend.as_str()), (200, "degraded", "v1"));
    }
    assert_eq!(v1.requests(), seen, "no upstream contact");
    // Explain says so (the copy is keyed by host, as the request's was).
    let url = format!("/api/explain?path=/items/9&host={}", g.listen_addr());
    let explained: serde_json::Value =
        g.admin_request(Method::GET, &url).send().await.expect("explain").json().await.expect("json");
    assert_eq!(explained["answer"], "cache-degraded", "{explained}");
    // Nothing cached for this path: proxied as usual (the route has no degrade_at).
    assert_eq!(get(&g, "/other", &[]).await.1, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_and_canary_copies_never_cross() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let g = start(&v1, &v2, 50.0, "ttl = \"1m\"").await;
    // Users on each version, same URL.
    let mut on = std::collections::HashMap::new();
    for i in 0..40 {
        let user = format!("u{i}");
        let (_, _, backend, _) = get(&g, "/product/1", &[("x-user-id", &user)]).await;
        on.entry(backend).or_insert(user);
    }
    assert_eq!(on.len(), 2, "both versions served: {on:?}");
    until_kept(&g, 2).await;
    for (version, user) in &on {
        for _ in 0..3 {
            let (_, cache, backend, _) = get(&g, "/product/1", &[("x-user-id", user)]).await;
            assert_eq!(
                (cache.as_str(), backend.as_str()),
                ("hit", version.as_str()),
                "{user} keeps its version's copy"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_must_not_be_shared_are_not_cached_and_purge_drops_a_prefix() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let g = start(&v1, &v2, 0.0, "ttl = \"1m\"\nbypass_cookies = [\"session\"]").await;
    for path in ["/me?set_cookie=sid%3D1", "/me?cache_control=private", "/me?cache_control=no-store", "/me?status=500"]
    {
        get(&g, path, &[]).await;
        let (_, cache, _, _) = get(&g, path, &[]).await;
        assert_ne!(cache, "hit", "{path} must not be served from the cache");
    }
    get(&g, "/cart/items", &[]).await;
    until_kept(&g, 1).await;
    assert_eq!(get(&g, "/cart/items", &[]).await.1, "hit");
    assert_eq!(get(&g, "/cart/items", &[("authorization", "Bearer t")]).await.1, "", "not for an authorized request");
    assert_eq!(get(&g, "/cart/items", &[("cookie", "theme=x; session=abc")]).await.1, "", "not with a session cookie");
    assert_eq!(get(&g, "/cart/items", &[("range", "bytes=0-3")]).await.1, "", "not for a part of it");
    let sent = http_client().post(g.url("/cart/items")).send().await.expect("post");
    assert!(sent.headers().get("x-gateway-cache").is_none(), "POST is never cached");

    get(&g, "/catalog/1", &[]).await;
    until_kept(&g, 2).await;
    let path = g.config_path().display().to_string();
    let out = run_cli(&["cache", "purge", "--route", "shop", "--prefix", "/cart", "-c", &path]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("purged 1 cached answer(s) of shop under /cart"), "{said}");
    assert_eq!(get(&g, "/cart/items", &[]).await.1, "miss");
    assert_eq!(get(&g, "/catalog/1", &[]).await.1, "hit", "other paths keep their copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_under_max_size() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let g = start(&v1, &v2, 0.0, "ttl = \"1h\"\nmax_size = \"64KiB\"").await;
    for i in 0..600 {
        get(&g, &format!("/item/{i}"), &[]).await;
    }
    let m = g.admin_request(Method::GET, "/metrics").send().await.expect("m").text().await.expect("t");
    let value = |name: &str| {
        m.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok())
    };
    let (bytes, entries) =
        (value("gateway_cache_bytes ").unwrap_or(-1.0), value("gateway_cache_entries ").unwrap_or(-1.0));
    assert!(bytes > 0.0 && bytes <= 65536.0, "{bytes} bytes held");
    assert!(entries > 10.0 && entries < 600.0, "{entries} entries: the oldest were evicted");
}
