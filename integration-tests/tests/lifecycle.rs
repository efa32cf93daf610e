//! Start, drain and the admin listener's guard rails.

mod common;

use std::time::Duration;

use common::cart_config;
use integration_tests::raw_http::{echoed, read_one_response, send_a_body_with_its_head_and_a_long_head};
use integration_tests::{http_client, temp_dir, Backend, Gateway, SIGTERM};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let mut gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let url = gateway.url("/cart/slow?sleep_ms=1500");
    let slow = tokio::spawn(async move { http_client().get(url).send().await.map(|r| r.status().as_u16()) });
    // Wait until the backend holds the request, then ask the gateway to stop.
    let arrived = integration_tests::wait_until(|| async { v1.requests() == 1 }, Duration::from_secs(10)).await;
    assert!(arrived, "the slow request reached the backend");
    gateway.signal(SIGTERM);

    assert_eq!(slow.await.expect("task").expect("the in-flight request completes"), 200);
    // Exits once drained, well inside shutdown_grace (10 s), with success.
    let exit = gateway.wait_exit(Duration::from_secs(9)).await.expect("exited after draining");
    assert!(exit.success(), "{exit:?}");
    // And no longer accepts connections.
    assert!(http_client().get(gateway.url("/cart")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_serves_its_next_request_and_is_closed_on_sigterm() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let mut gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let mut conn = tokio::net::TcpStream::connect(gateway.listen_addr()).await.expect("connect");
    let request = b"GET /cart HTTP/1.1\r\nHost: shop\r\nx-user-id: 7\r\n\r\n";

    conn.write_all(request).await.expect("write");
    assert!(read_one_response(&mut conn).await.starts_with("HTTP/1.1 200"));
    // Idle between requests, then a request whose first byte arrives alone:
    // the gateway waits for that byte holding only the socket, and must
    // still parse the whole request from it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(&request[..1]).await.expect("write first byte");
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_all(&request[1..]).await.expect("write the rest");
    let second = read_one_response(&mut conn).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(v1.requests(), 2, "both requests on the one connection reached the backend");
    let metrics = http_client().get(gateway.admin_url("/metrics")).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    let open = metrics.lines().find(|l| l.starts_with("gateway_downstream_connections ")).expect("gauge");
    assert!(open.ends_with(" 1") || open.ends_with(" 2"), "the idle connection is counted: {open}");

    // SIGTERM with the connection idle: nothing is in flight, so the gateway
    // exits at once and the client sees the connection closed, not hung.
    gateway.signal(SIGTERM);
    let exit = gateway.wait_exit(Duration::from_secs(9)).await.expect("exited");
    assert!(exit.success(), "{exit:?}");
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut rest)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "the idle connection is closed: {n:?}");
}

/// The gateway reads what arrives on an idle connection in one read of up to
/// 4 KiB and hands it back to the HTTP parser. Whatever lies past that read,
/// or comes with it, must reach the backend intact: a body sent in the same
/// write as the head, a head longer than the read, a body in pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_reused_connection_arrive_whole_whatever_their_size() {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncWriteExt;
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let mut conn = tokio::net::TcpStream::connect(gateway.listen_addr()).await.expect("connect");

    // A body in the same write as its head, then a head twice the first read.
    send_a_body_with_its_head_and_a_long_head(&mut conn, "shop").await;

    // A chunked body in two writes with a pause between them.
    conn.write_all(b"POST /cart/items HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write_all(b"3\r\ndef\r\n0\r\n\r\n").await.expect("write");
    let echo = echoed(&read_one_response(&mut conn).await);
    assert_eq!(echo["body_len"], 6);
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(b"abcdef")));
    assert_eq!(v1.requests(), 3, "all three requests were served on the one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_are_served() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let client = http_client();
    for _ in 0..3 {
        client.get(gateway.url("/cart")).header("x-user-id", "7").send().await.expect("req");
    }
    client.get(gateway.url("/cart")).header("x-user-id", "1001").send().await.expect("req");
    let get = |p: &str| client.get(gateway.admin_url(p)).send();
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
    let metrics = gateway.settled_metrics().await;
    for line in [
        "gateway_requests_total{class=\"2xx\",route=\"cart\",version=\"stable\"} 3",
        "gateway_requests_total{class=\"2xx\",route=\"cart\",version=\"canary\"} 1",
        "gateway_request_duration_seconds_count{route=\"cart\",version=\"stable\"} 3",
        "gateway_config_generation 1",
        "gateway_route_canary_percent{route=\"cart\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // A keep-alive client connection is open right now.
    let open = metrics.lines().find(|l| l.starts_with("gateway_downstream_connections ")).expect("gauge");
    assert!(open.ends_with(" 1") || open.ends_with(" 2"), "{open}");

    let explain = get("/api/explain?path=/cart/x&user=1001")
        .await
        .expect("explain")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    assert_eq!(explain["version"], "canary");
    assert_eq!(explain["explanation"], "route cart -> canary: whitelisted user 1001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_file_every_admin_call_needs_the_token() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let dir = temp_dir();
    std::fs::write(dir.path().join("admin.token"), "let-me-in\n").expect("token");
    let config = cart_config(&[&v1], &[&v2], 0.0).replace("[admin]\n", "[admin]\ntoken_file = \"admin.token\"\n");
    let mut gateway = Gateway::start_in(dir, "gateway.toml", &config).await;
    let client = http_client();
    // Probes work without the token (kubelet cannot carry secrets); nothing else does.
    assert_eq!(client.get(gateway.admin_url("/readyz")).send().await.expect("req").status(), 200);
    assert_eq!(client.get(gateway.admin_url("/metrics")).send().await.expect("req").status(), 401);
    gateway.set_admin_token(Some("let-me-in"));
    assert_eq!(gateway.status().await["generation"], 1);

    let no_token = client.get(gateway.admin_url("/api/status")).send().await.expect("req");
    assert_eq!(no_token.status(), 401);
    let wrong = client.post(gateway.admin_url("/api/reload")).bearer_auth("let-me-out").send().await.expect("req");
    assert_eq!(wrong.status(), 401);
    assert_eq!(gateway.generation().await, 1, "an unauthorised reload did nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_at_start_exits_with_every_error() {
    let mut gateway = Gateway::spawn(
        "[server]\nlisten = [\"{listen}\"]\nthreads = 0\n[admin]\nlisten = \"{admin}\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nstable = \"missing\"\n",
    );
    let exit = gateway.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert!(!exit.success());
    let log = gateway.log();
    assert!(log.contains("gateway.toml:3: server.threads: 0 is outside 1..=256"), "{log}");
    assert!(log.contains("gateway.toml:9: routes[0].stable: unknown upstream \"missing\""), "{log}");
}
