//! Active health checks take a failing backend out and put it back, with no
//! failed client request while they do.

mod common;

use std::time::Duration;

use common::{addrs, cart_config};
use integration_tests::{get_json, http_client, Backend, Gateway};

fn with_health_check(config: String) -> String {
    config.replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nhealth_check = { path = \"/healthz\", interval = \"200ms\", unhealthy_after = 1, healthy_after = 1 }",
    )
}

async fn healthy(gateway: &Gateway, addr: std::net::SocketAddr) -> Option<bool> {
    let status = gateway.status().await;
    status["upstreams"]
        .as_array()?
        .iter()
        .flat_map(|u| u["backends"].as_array().cloned().unwrap_or_default())
        .find_map(|b| (b["addr"] == addr.to_string()).then(|| b["healthy"].as_bool()).flatten())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_taken_out_and_put_back() {
    let (a, b, v2) = (Backend::start("a").await, Backend::start("b").await, Backend::start("cart-v2").await);
    let config = with_health_check(cart_config(&[&a, &b], &[&v2], 0.0));
    assert!(config.contains(&addrs(&[&a, &b])));
    let gateway = Gateway::start(&config).await;
    let client = http_client();

    a.set_healthy(false);
    gateway
        .eventually("a is marked down", Duration::from_secs(10), || async {
            healthy(&gateway, a.addr()).await == Some(false)
        })
        .await;
    let before = a.requests();
    for _ in 0..20 {
        let (status, _, body) = get_json(&client, &gateway.url("/cart"), &[]).await;
        assert_eq!((status, body["backend"].as_str()), (200, Some("b")));
    }
    assert_eq!(a.requests(), before, "a down backend gets no traffic");
    let metrics = client.get(gateway.admin_url("/metrics")).send().await.expect("m").text().await.expect("t");
    assert!(
        metrics.contains(&format!("gateway_backend_up{{backend=\"{}\",pool=\"cart-v1\"}} 0", a.addr())),
        "{metrics}"
    );

    a.set_healthy(true);
    gateway
        .eventually("a is back", Duration::from_secs(10), || async { healthy(&gateway, a.addr()).await == Some(true) })
        .await;
    let mut served_by_a = 0;
    for _ in 0..20 {
        let (_, _, body) = get_json(&client, &gateway.url("/cart"), &[]).await;
        served_by_a += usize::from(body["backend"] == "a");
    }
    assert!(served_by_a > 0, "a takes traffic again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_noticed_and_its_restart_too() {
    let (mut a, b, v2) = (Backend::start("a").await, Backend::start("b").await, Backend::start("cart-v2").await);
    let config = with_health_check(cart_config(&[&a, &b], &[&v2], 0.0)).replace("path = \"/healthz\"", "tcp = true");
    let gateway = Gateway::start(&config).await;
    let addr = a.addr();
    a.stop().await;
    gateway
        .eventually("a is marked down", Duration::from_secs(10), || async {
            healthy(&gateway, addr).await == Some(false)
        })
        .await;
    for _ in 0..10 {
        let (status, _, body) = get_json(&http_client(), &gateway.url("/cart"), &[]).await;
        assert_eq!((status, body["backend"].as_str()), (200, Some("b")));
    }
    let _a = Backend::start_on("a", addr).await;
    gateway
        .eventually("a is back", Duration::from_secs(10), || async { healthy(&gateway, addr).await == Some(true) })
        .await;
}
