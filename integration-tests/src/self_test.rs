//! Checks of the harness itself, so a failing end-to-end test points at the
//! gateway rather than at its test doubles. No gateway binary is needed.

use std::time::{Duration, Instant};

use crate::{fresh_connection_client, get_json, http_client, try_get_json, ws_echo_once, Backend};

#[tokio::test]
async fn backend_echoes_the_request_and_names_itself() {
    let backend = Backend::start("cart-v1").await;
    let url = format!("http://{}/cart/items?id=7", backend.addr());
    let (status, headers, body) = get_json(&http_client(), &url, &[("x-user-id", "42")]).await;

    assert_eq!(status, 200);
    assert_eq!(headers["x-backend"], "cart-v1");
    assert_eq!(body["backend"], "cart-v1");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/cart/items");
    assert_eq!(body["query"], "id=7");
    assert_eq!(body["headers"]["x-user-id"], "42");
    assert_eq!(body["body_len"], 0);
    // SHA-256 of the empty string.
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(body["body_sha256"], empty);
    assert_eq!(backend.requests(), 1);
    assert_eq!(backend.received()[0].header("x-user-id").as_deref(), Some("42"));
}

#[tokio::test]
async fn backend_hashes_uploaded_bodies() {
    let backend = Backend::start("upload").await;
    let response = http_client()
        .post(format!("http://{}/upload", backend.addr()))
        .body("abc")
        .send()
        .await
        .expect("POST to the backend");
    let body: serde_json::Value = response.json().await.expect("JSON echo");
    assert_eq!(body["body_len"], 3);
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(body["body_sha256"], abc);
}

#[tokio::test]
async fn health_toggles_and_is_not_counted() {
    let backend = Backend::start("svc").await;
    let url = format!("http://{}/healthz", backend.addr());
    let client = http_client();
    assert_eq!(get_json(&client, &url, &[]).await.0, 200);
    backend.set_healthy(false);
    assert_eq!(get_json(&client, &url, &[]).await.0, 503);
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn sleep_and_status_query_parameters() {
    let backend = Backend::start("slow").await;
    let url = format!("http://{}/x?sleep_ms=200&status=503", backend.addr());
    let started = Instant::now();
    let (status, _, _) = get_json(&http_client(), &url, &[]).await;
    assert_eq!(status, 503);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn stop_closes_kept_alive_connections_and_the_port_can_be_reused() {
    let mut backend = Backend::start("v1").await;
    let addr = backend.addr();
    let url = format!("http://{addr}/");
    // The pooled connection from this request must not survive the stop.
    let client = http_client();
    assert_eq!(get_json(&client, &url, &[]).await.0, 200);
    backend.stop().await;
    assert!(try_get_json(&client, &url, &[]).await.is_err());
    assert!(try_get_json(&fresh_connection_client(), &url, &[]).await.is_err());

    let again = Backend::start_on("v1-again", addr).await;
    let (_, _, body) = get_json(&client, &url, &[]).await;
    assert_eq!(body["backend"], "v1-again");
    assert_eq!(again.requests(), 1);
}

#[tokio::test]
async fn stop_cuts_in_flight_requests() {
    let mut backend = Backend::start("v1").await;
    let url = format!("http://{}/?sleep_ms=10000", backend.addr());
    let request = tokio::spawn(async move { try_get_json(&http_client(), &url, &[]).await });
    assert!(crate::wait_until(|| async { backend.requests() == 1 }, Duration::from_secs(5)).await);
    backend.stop().await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("the in-flight request ends promptly")
        .expect("request task");
    assert!(outcome.is_err(), "in-flight request was answered: {outcome:?}");
}

#[tokio::test]
async fn websocket_echo() {
    let backend = Backend::start("ws").await;
    let reply = ws_echo_once(&format!("ws://{}/ws", backend.addr()), "hello").await;
    assert_eq!(reply, "hello");
    assert_eq!(backend.received()[0].path, "/ws");
}

#[test]
fn configmap_swap_replaces_the_data_symlink() {
    let dir = crate::temp_dir();
    let link = crate::config_files::configmap_init(dir.path(), "gateway.toml", "a = 1\n");
    assert_eq!(std::fs::read_to_string(&link).expect("read config"), "a = 1\n");
    for swap in 1..=3 {
        let text = format!("a = {}\n", swap + 1);
        crate::config_files::configmap_swap(dir.path(), "gateway.toml", &text, swap);
        assert_eq!(std::fs::read_to_string(&link).expect("read config"), text);
    }
    // Only ..data, its one target, the symlink itself remain.
    let entries = std::fs::read_dir(dir.path()).expect("list dir").count();
    assert_eq!(entries, 3);
}
