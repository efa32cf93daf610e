//! Keeping the shop answering: rate limits, fallback pages when backends
//! fail, canary failover, and degrade levels that switch routes off.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cart_config_with, list};
use integration_tests::{dead_addr, get_json, http_client, temp_dir, Backend, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUSY_PAGE: &str = "<html><body>cart is busy, your items are safe</body></html>";

/// A temp dir holding the fallback page, and the route lines that use it.
fn dir_with_page() -> tempfile::TempDir {
    let dir = temp_dir();
    std::fs::write(dir.path().join("busy.html"), BUSY_PAGE).expect("page");
    dir
}

const FALLBACK: &str = "[routes.fallback]\npage = \"busy.html\"\nstatus = 503\nretry_after = \"30s\"\non = [\"no-healthy-backend\", \"connect-error\", \"timeout\", \"5xx\"]\ncanary_failover = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_clients_get_429_with_retry_after() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let limits = "[routes.rate_limit]\nper_ip = { rate = \"5/m\", burst = 5 }\n";
    let gateway = Gateway::start(&cart_config_with(&[&v1], &[&v2], 0.0, limits)).await;
    let client = http_client();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let (status, headers, _) = get_json(&client, &gateway.url("/cart"), &[]).await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    // 5 per minute: the next token comes within 12 s.
    assert!(retry_after.is_some_and(|s| (1..=12).contains(&s)), "{retry_after:?}");
    assert_eq!(v1.requests(), 5);
    let metrics =
        gateway.admin_request(reqwest::Method::GET, "/metrics").send().await.expect("m").text().await.expect("t");
    assert!(metrics.contains("gateway_rate_limited_total{key=\"ip\",route=\"cart\"} 3"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limits_count_each_user_separately() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let limits = "[routes.rate_limit]\nper_user = { rate = \"2/m\" }\n";
    let gateway = Gateway::start(&cart_config_with(&[&v1], &[&v2], 0.0, limits)).await;
    let client = http_client();
    let mut got = Vec::new();
    for user in ["a", "a", "a", "b", "b", "b"] {
        got.push(get_json(&client, &gateway.url("/cart"), &[("x-user-id", user)]).await.0);
    }
    assert_eq!(got, [200, 200, 429, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_yields_answers_or_the_fallback_page_never_an_error() {
    let (a, mut b, v2) = (Backend::start("a").await, Backend::start("b").await, Backend::start("cart-v2").await);
    let config = cart_config_with(&[&a, &b], &[&v2], 0.0, FALLBACK).replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nhealth_check = { tcp = true, interval = \"200ms\", unhealthy_after = 1 }",
    );
    let gateway = Arc::new(Gateway::start_in(dir_with_page(), "gateway.toml", &config).await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gateway, stop) = (gateway.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = http_client();
            let (mut answers, mut pages, mut bad) = (0, 0, Vec::new());
            for i in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.get(gateway.url(&format!("/cart/{i}"))).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        match status {
                            200 => answers += 1,
                            503 if text == BUSY_PAGE => pages += 1,
                            _ => bad.push(format!("{status}: {text}")),
                        }
                    }
                    Err(e) => bad.push(format!("transport error: {e}")),
                }
            }
            (answers, pages, bad)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.stop().await; // one backend dies mid-load: its share moves to `a`
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(a); // the whole pool is gone: every answer is now the page
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut answers, mut pages, mut bad) = (0, 0, Vec::new());
    for w in workers {
        let (a, p, b) = w.await.expect("worker");
        answers += a;
        pages += p;
        bad.extend(b);
    }
    assert!(
        bad.is_empty(),
        "{} bad answers of {}, e.g. {:?}",
        bad.len(),
        answers + pages + bad.len(),
        &bad[..bad.len().min(3)]
    );
    assert!(answers > 0 && pages > 0, "answers {answers}, fallback pages {pages}");
    let (status, headers, _) = get_json(&http_client(), &gateway.url("/cart"), &[]).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "30");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_5xx_is_replaced_by_the_page() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway =
        Gateway::start_in(dir_with_page(), "gateway.toml", &cart_config_with(&[&v1], &[&v2], 0.0, FALLBACK)).await;
    let resp = http_client().get(gateway.url("/cart/x?status=500")).send().await.expect("request");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-gateway-fallback"], "5xx");
    assert_eq!(resp.text().await.expect("body"), BUSY_PAGE);
    // A healthy answer on the same route is untouched.
    let (status, _, body) = get_json(&http_client(), &gateway.url("/cart/x"), &[]).await;
    assert_eq!((status, body["backend"].as_str()), (200, Some("cart-v1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_canary_fails_over_to_stable_for_idempotent_requests() {
    let v1 = Backend::start("cart-v1").await;
    let dead = dead_addr();
    let config = cart_config_with(&[&v1], &[], 100.0, FALLBACK).replacen(
        "backends = []",
        &format!("backends = {}", list(&[dead])),
        1,
    );
    let gateway = Gateway::start_in(dir_with_page(), "gateway.toml", &config).await;
    let (status, headers, body) = get_json(&http_client(), &gateway.url("/cart"), &[("x-user-id", "5")]).await;
    assert_eq!((status, body["backend"].as_str()), (200, Some("cart-v1")), "{body}");
    assert_eq!(headers["x-gateway-version"], "stable");
    // A POST may have side effects: it is not re-sent elsewhere; the page answers.
    let resp = http_client().post(gateway.url("/cart")).header("x-user-id", "5").body("{}").send().await.expect("post");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.expect("body"), BUSY_PAGE);
    assert_eq!(v1.received().iter().filter(|r| r.method == "POST").count(), 0);
}

/// One raw HTTP/1.1 exchange on an open connection: the status line and body.
async fn exchange(conn: &mut tokio::net::TcpStream, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the gateway closed the keep-alive connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return (head.lines().next().unwrap_or("").to_string(), body[..len].to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_degrade_level_switches_routes_on_the_same_connection_and_survives_restart() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let state_dir = temp_dir();
    let state = state_dir.path().join("state.json");
    let config = cart_config_with(&[&v1], &[&v2], 0.0, &format!("degrade_at = 2\n{FALLBACK}")).replacen(
        "[upstreams.cart-v1]",
        &format!("[state]\npath = \"{}\"\n\n[upstreams.cart-v1]", state.display()),
        1,
    );
    let gateway = Gateway::start_in(dir_with_page(), "gateway.toml", &config).await;
    let mut conn = tokio::net::TcpStream::connect(gateway.listen_addr()).await.expect("connect");
    let (status, _) = exchange(&mut conn, "/cart/a").await;
    assert!(status.contains("200"), "{status}");

    let put = |level: u8| {
        gateway.admin_request(reqwest::Method::PUT, "/api/degrade").body(format!("{{\"level\": {level}}}")).send()
    };
    assert_eq!(put(1).await.expect("put").status(), 200);
    assert!(exchange(&mut conn, "/cart/b").await.0.contains("200"), "level 1 < degrade_at 2");
    assert_eq!(put(2).await.expect("put").status(), 200);
    let before = v1.requests();
    let (status, body) = exchange(&mut conn, "/cart/c").await;
    assert!(status.contains("503"), "{status}");
    assert_eq!(body, BUSY_PAGE);
    assert_eq!(v1.requests(), before, "a degraded route does not contact its upstream");
    let status_json = gateway.status().await;
    assert_eq!(status_json["degrade"]["level"], 2);
    assert_eq!(status_json["degrade"]["degraded_routes"][0], "cart");
    let metrics =
        gateway.admin_request(reqwest::Method::GET, "/metrics").send().await.expect("m").text().await.expect("t");
    assert!(metrics.contains("gateway_degrade_level 2"));
    assert!(metrics.contains("gateway_fallback_responses_total{cause=\"degraded\",route=\"cart\"} 1"));

    // Kept across a restart, like blocks.
    drop(gateway);
    let again = Gateway::start_in(dir_with_page(), "gateway.toml", &config).await;
    assert_eq!(again.status().await["degrade"]["level"], 2);
    let resp = again.admin_request(reqwest::Method::DELETE, "/api/degrade").send().await.expect("delete");
    assert_eq!(resp.status(), 200);
    assert_eq!(get_json(&http_client(), &again.url("/cart"), &[]).await.0, 200);
}

/// Ops fix a typo in the fallback page during an incident: saving the page
/// is enough. The load's record of the files it read notices the change,
/// with the config text untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_fallback_page_is_served_without_a_config_change() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let degraded = format!("degrade_at = 1\n{FALLBACK}");
    let config = cart_config_with(&[&v1], &[&v2], 0.0, &degraded) + "\n[degrade]\nlevel = 1\n";
    let gateway = Gateway::start_in(dir_with_page(), "gateway.toml", &config).await;
    let page = || async { http_client().get(gateway.url("/cart")).send().await.expect("request").text().await };
    assert_eq!(page().await.expect("body"), BUSY_PAGE);
    let generation = gateway.generation().await;

    let fixed = "<html><body>back in five minutes; your cart is safe</body></html>";
    std::fs::write(gateway.dir().join("busy.html"), fixed).expect("edit the page");
    gateway
        .eventually("the edited page is served", Duration::from_secs(10), || async {
            page().await.is_ok_and(|b| b == fixed)
        })
        .await;
    assert!(gateway.generation().await > generation, "it was a reload");
    assert_eq!(v1.requests(), 0, "degraded all along: no upstream contact");
}

/// A degraded route whose fallback page says 204 (no content): the page's
/// bytes never follow the head, so the next answer on the keep-alive
/// connection starts right after it (a body there would be read as the
/// start of the next answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_page_with_a_status_without_a_body_sends_none() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let fallback = FALLBACK.replace("status = 503", "status = 204");
    let config = cart_config_with(&[&v1], &[&v2], 0.0, &format!("degrade_at = 1\n{fallback}"));
    let gateway = Gateway::start_in(dir_with_page(), "gateway.toml", &config).await;
    let put = gateway.admin_request(reqwest::Method::PUT, "/api/degrade").body("{\"level\": 1}").send();
    assert_eq!(put.await.expect("put").status(), 200);
    let mut conn = tokio::net::TcpStream::connect(gateway.listen_addr()).await.expect("connect");
    let mut seen = Vec::new();
    for path in ["/cart/a", "/cart/b"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n");
        conn.write_all(req.as_bytes()).await.expect("write");
        // The answer's head, then whatever else comes before the gateway
        // goes quiet (a body would come in the same write as the head).
        let heads = seen.windows(4).filter(|w| w == b"\r\n\r\n").count();
        let mut chunk = [0u8; 4096];
        while seen.windows(4).filter(|w| w == b"\r\n\r\n").count() == heads {
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the gateway closed the keep-alive connection");
            seen.extend_from_slice(&chunk[..n]);
        }
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut chunk)).await {
            assert!(n > 0, "the gateway closed the keep-alive connection");
            seen.extend_from_slice(&chunk[..n]);
        }
    }
    let text = String::from_utf8_lossy(&seen);
    let answers: Vec<&str> = text.split_inclusive("\r\n\r\n").collect();
    assert_eq!(answers.len(), 2, "two heads and nothing else: {text}");
    assert!(answers.iter().all(|a| a.starts_with("HTTP/1.1 204 ")), "{text}");
    assert_eq!(v1.requests(), 0, "a degraded route does not contact its upstream");
}
