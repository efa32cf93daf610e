//! What passes through the gateway, as a backend and a client see it.

mod common;

use std::time::Duration;

use common::{cart_config, cart_config_with, list, version_of};
use integration_tests::{dead_addr, get_json, http_client, ws_echo_once, Backend, Gateway};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_path_query_headers_and_forwarding_headers_reach_the_backend() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let client = http_client();
    let resp = client
        .delete(gateway.url("/cart/items/7?force=1&x=%2F"))
        .header("x-user-id", "42")
        .header("x-custom", "kept")
        .header("x-forwarded-for", "198.51.100.9")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(version_of(resp.headers()), "stable");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["method"], "DELETE");
    assert_eq!(body["path"], "/cart/items/7");
    assert_eq!(body["query"], "force=1&x=%2F");

    let seen = v1.received().pop().expect("backend saw the request");
    assert_eq!(seen.header("x-custom").as_deref(), Some("kept"));
    // The untrusted client's own X-Forwarded-For is kept, and its real peer appended.
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("198.51.100.9, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(v2.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_added_kept_and_logged() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let client = http_client();

    client.get(gateway.url("/cart")).send().await.expect("request");
    let generated = v1.received().pop().and_then(|r| r.header("x-request-id")).expect("an id was added");
    assert_eq!(generated.len(), 32, "{generated}");

    client.get(gateway.url("/cart")).header("x-request-id", "client-chosen-1").send().await.expect("request");
    let kept = v1.received().pop().and_then(|r| r.header("x-request-id"));
    assert_eq!(kept.as_deref(), Some("client-chosen-1"));

    // The same ids are in the access log lines.
    let log_has = |id: String| {
        let gateway = &gateway;
        async move { gateway.log().lines().any(|l| l.contains("access") && l.contains(&id)) }
    };
    assert!(integration_tests::wait_until(|| log_has(generated.clone()), Duration::from_secs(5)).await);
    assert!(integration_tests::wait_until(|| log_has("client-chosen-1".into()), Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_and_chunked_bodies_arrive_byte_for_byte() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let want = hex::encode(Sha256::digest(&body));

    // Content-Length body.
    let resp = http_client().post(gateway.url("/cart/upload")).body(body.clone()).send().await.expect("post");
    let got: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(got["body_len"], body.len());
    assert_eq!(got["body_sha256"], want);

    // Chunked body: a stream with no length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let resp = http_client().put(gateway.url("/cart/upload")).body(stream).send().await.expect("put");
    let got: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(got["method"], "PUT");
    assert_eq!(got["body_sha256"], want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config = cart_config(&[&v1], &[&v2], 0.0).replace("path_prefix = \"/cart\"", "path_prefix = \"/\"");
    let gateway = Gateway::start(&config).await;
    let url = gateway.url("/ws").replacen("http://", "ws://", 1);
    assert_eq!(ws_echo_once(&url, "hello through the gateway").await, "hello through the gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_get_a_small_404_page() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let (status, headers, body) = get_json(&http_client(), &gateway.url("/cartoon"), &[]).await;
    assert_eq!(status, 404);
    assert!(headers["content-type"].to_str().unwrap_or("").starts_with("text/html"));
    assert!(body.as_str().unwrap_or("").contains("No route matches"), "{body}");
    assert_eq!(v1.requests() + v2.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_backend() {
    let (live, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    // Nothing listens on `dead`; no health check, so only the retry saves the request.
    let dead = dead_addr();
    let config =
        cart_config(&[&live], &[&v2], 0.0).replacen(&format!("[\"{}\"]", live.addr()), &list(&[dead, live.addr()]), 1);
    let gateway = Gateway::start(&config).await;
    let client = http_client();
    for i in 0..20 {
        let (status, _, body) = get_json(&client, &gateway.url(&format!("/cart/{i}")), &[]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["backend"], "cart-v1");
    }
    let metrics = client.get(gateway.admin_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.lines().any(|l| l.starts_with("gateway_upstream_errors_total{kind=\"connect\",pool=\"cart-v1\"}")),
        "connect errors are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_a_live_backend_answers_a_clear_error() {
    let v2 = Backend::start("cart-v2").await;
    let config = cart_config_with(&[], &[&v2], 0.0, "").replacen(
        "backends = []",
        &format!("backends = {}", list(&[dead_addr()])),
        1,
    );
    let gateway = Gateway::start(&config).await;
    let (status, _, body) = get_json(&http_client(), &gateway.url("/cart"), &[]).await;
    assert!(status == 502 || status == 503, "status {status}: {body}");
    assert!(body.as_str().unwrap_or("").contains("backend"), "{body}");
}

/// Sends raw bytes on a fresh connection and returns what came back (up to 4 KiB or close).
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(bytes).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n =
        tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("answer in time").unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_and_the_gateway_keeps_serving() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 50.0)).await;
    for garbage in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET /cart HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"GET /cart HTTP/1.1\r\nHost: x\r\nx-user-id: \xff\xfe\r\n\r\n",
    ] {
        let answer = raw_exchange(gateway.listen_addr(), garbage).await;
        let status = answer.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
        // Either a 4xx, or (for the non-UTF-8 user ID, which is valid HTTP) a normal answer as an anonymous user.
        assert!(matches!(status, Some(400..=499) | Some(200)), "{answer:?}");
    }
    let (status, _, _) = get_json(&http_client(), &gateway.url("/cart"), &[]).await;
    assert_eq!(status, 200, "still serving");
}
