//! A managed Redis is reached over TLS (`rediss://`): the store's
//! certificate is verified, against `[cluster] ca_file` when given.

use std::time::Duration;

use reqwest::Method;

use super::*;

#[path = "../tls/pki.rs"]
#[allow(dead_code)]
mod pki;

/// One gateway on a TLS-only redis-server; `ca_file`: whether the config names the test CA.
async fn gateway_on(redis: &RedisServer, backend: &Backend, ca_pem: &str, ca_file: bool) -> Gateway {
    let dir = temp_dir();
    std::fs::write(dir.path().join("busy.html"), "busy\n").expect("page");
    std::fs::write(dir.path().join("redis-ca.pem"), ca_pem).expect("ca");
    let state = dir.path().join("state.json");
    let mut config = replica_config(backend, &redis.url(), "gw:tls:", &state, "");
    if ca_file {
        config = config.replace("timeout = \"200ms\"", "timeout = \"200ms\"\nca_file = \"redis-ca.pem\"");
    }
    Gateway::start_in(dir, "gateway.toml", &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_store_is_verified_against_the_configured_ca() {
    let ca = pki::Pki::new();
    let backend = Backend::start("shop").await;
    // Every listener of this test process is on one loopback host of its own.
    let host = integration_tests::free_addr().ip().to_string();
    let leaf = ca.leaf(&[&host]);
    let redis = RedisServer::start_tls(&leaf.cert_pem, &leaf.key_pem, &ca.pem);
    assert_eq!(redis.addr().ip().to_string(), host, "the certificate names the server's address");

    let trusted = gateway_on(&redis, &backend, &ca.pem, true).await;
    trusted
        .eventually("the store is reached over TLS", Duration::from_secs(10), || async {
            trusted.status().await["cluster"]["store"] == "ok"
        })
        .await;
    let body = block(&trusted, "203.0.113.0/24", None).await;
    assert_eq!(body["applied"], "cluster", "{body}");
    let stored = redis.cli(&["HGET", "gw:tls:state", "block:203.0.113.0/24"]);
    assert!(stored.contains("at_ms"), "the record is in the TLS store: {stored}");

    // Without ca_file the system's roots are used, which do not know the test CA: no contact.
    let untrusted = gateway_on(&redis, &backend, &ca.pem, false).await;
    untrusted
        .eventually("the store is refused", Duration::from_secs(10), || async {
            untrusted.status().await["cluster"]["store"] == "unreachable"
        })
        .await;
    let (status, body) =
        admin(&untrusted, Method::POST, "/api/blacklist", Some(serde_json::json!({"cidr": "192.0.2.0/24"}))).await;
    assert_eq!((status, body["applied"].as_str()), (201, Some("replica")), "{body}");
}
