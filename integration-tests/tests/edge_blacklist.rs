//! Ops blocking abusive clients: config, list files, run time; forged
//! X-Forwarded-For; restarts; TTLs; a million-line list.

mod common;

use std::io::Write;
use std::time::Duration;

use common::cart_config;
use integration_tests::{get_json, http_client, run_cli, temp_dir, Backend, Gateway, SIGTERM};

/// `cart_config` with extra top-level sections (placed before the upstreams).
fn with_sections(base: String, sections: &str) -> String {
    base.replacen("[upstreams.cart-v1]", &format!("{sections}\n\n[upstreams.cart-v1]"), 1)
}

async fn status_of(gateway: &Gateway, headers: &[(&str, &str)]) -> u16 {
    get_json(&http_client(), &gateway.url("/cart/x"), headers).await.0
}

async fn metrics(gateway: &Gateway) -> String {
    gateway.admin_request(reqwest::Method::GET, "/metrics").send().await.expect("m").text().await.expect("t")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_range_gets_403_and_the_backend_sees_nothing() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config = with_sections(cart_config(&[&v1], &[&v2], 0.0), "[blacklist]\ncidrs = [\"127.0.0.0/8\"]");
    let gateway = Gateway::start(&config).await;
    let (status, _, body) = get_json(&http_client(), &gateway.url("/cart/x"), &[]).await;
    assert_eq!(status, 403);
    assert!(body.as_str().unwrap_or("").contains("blocked"), "{body}");
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(status_of(&gateway, &[("x-forwarded-for", "8.8.8.8")]).await, 403);
    assert_eq!(v1.requests() + v2.requests(), 0, "the upstream never saw a blocked request");
    assert!(metrics(&gateway).await.contains("gateway_blocked_requests_total{dry_run=\"false\",source=\"config\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarded_for_is_honoured_and_an_untrusted_one_is_not() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let trusted = with_sections(
        cart_config(&[&v1], &[&v2], 0.0),
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blacklist]\ncidrs = [\"192.0.2.0/24\"]",
    );
    let gateway = Gateway::start(&trusted).await;
    assert_eq!(status_of(&gateway, &[("x-forwarded-for", "192.0.2.7")]).await, 403);
    // The client prepended a clean address; the proxy appended the real one.
    assert_eq!(status_of(&gateway, &[("x-forwarded-for", "198.51.100.1, 192.0.2.7")]).await, 403);
    assert_eq!(status_of(&gateway, &[("x-forwarded-for", "198.51.100.1")]).await, 200);

    // Same block, but the loopback peer is not trusted: its header is never read.
    let untrusted = with_sections(cart_config(&[&v1], &[&v2], 0.0), "[blacklist]\ncidrs = [\"192.0.2.0/24\"]");
    let gateway = Gateway::start(&untrusted).await;
    assert_eq!(status_of(&gateway, &[("x-forwarded-for", "192.0.2.7")]).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_time_block_survives_a_restart_and_unblock_lifts_it() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let state_dir = temp_dir();
    let state = state_dir.path().join("state.json");
    let config = with_sections(cart_config(&[&v1], &[&v2], 0.0), &format!("[state]\npath = \"{}\"", state.display()));
    let mut first = Gateway::start(&config).await;
    assert_eq!(status_of(&first, &[]).await, 200);

    // "I blocked that range in ten seconds."
    let path = first.config_path().display().to_string();
    let out = run_cli(&["block", "127.0.0.0/8", "--reason", "card testing", "-c", &path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("blocked 127.0.0.0/8"));
    assert_eq!(status_of(&first, &[]).await, 403);
    let listing = run_cli(&["blocks", "-c", &path]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("127.0.0.0/8") && listing.contains("card testing") && listing.contains("api"),
        "{listing}"
    );

    // "... and it stayed blocked after the restart."
    first.signal(SIGTERM);
    first.wait_exit(Duration::from_secs(15)).await.expect("exited");
    let second = Gateway::start(&config).await;
    assert_eq!(status_of(&second, &[]).await, 403);
    let blocks: serde_json::Value =
        second.admin_request(reqwest::Method::GET, "/api/blacklist").send().await.expect("r").json().await.expect("j");
    assert_eq!(blocks["runtime"][0]["reason"], "card testing");

    let path = second.config_path().display().to_string();
    let out = run_cli(&["unblock", "127.0.0.0/8", "-c", &path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status_of(&second, &[]).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_expires_by_itself() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let resp = gateway
        .admin_request(reqwest::Method::POST, "/api/blacklist")
        .body(r#"{"cidr": "127.0.0.1", "reason": "cool down", "ttl": "1s"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 201);
    let entry: serde_json::Value = resp.json().await.expect("json");
    assert!(entry["expires_at"].is_string(), "{entry}");
    assert_eq!(status_of(&gateway, &[]).await, 403);
    gateway
        .eventually("the block expires", Duration::from_secs(10), || async { status_of(&gateway, &[]).await == 200 })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_but_does_not_block() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config =
        with_sections(cart_config(&[&v1], &[&v2], 0.0), "[blacklist]\ncidrs = [\"127.0.0.1\"]\ndry_run = true");
    let gateway = Gateway::start(&config).await;
    assert_eq!(status_of(&gateway, &[]).await, 200);
    assert!(metrics(&gateway).await.contains("gateway_blocked_requests_total{dry_run=\"true\",source=\"config\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_list_file_is_rejected_with_file_and_line() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let dir = temp_dir();
    std::fs::write(dir.path().join("blacklist.txt"), "# abusers\n203.0.113.9 scraping\n").expect("write");
    let config = with_sections(cart_config(&[&v1], &[&v2], 0.0), "[blacklist]\nfiles = [\"blacklist.txt\"]");
    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;
    std::fs::write(gateway.dir().join("blacklist.txt"), "# abusers\n203.0.113.9 scraping\n203.0.113.300\n")
        .expect("write");
    let (code, body) = gateway.reload().await;
    assert_eq!(code, 422, "{body}");
    assert!(body["errors"].to_string().contains("blacklist.txt:3: blacklist.files[0]"), "{body}");
    // The old list keeps working.
    assert_eq!(gateway.status().await["blacklist"]["static_entries"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_line_list_loads_while_the_gateway_keeps_answering() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config = cart_config(&[&v1], &[&v2], 0.0);
    let gateway = Gateway::start(&config).await;
    // One million /32s in 10.0.0.0/8, plus the test client's own address last.
    let list = gateway.dir().join("big.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&list).expect("create"));
        for i in 0..1_000_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0A00_0000 + i * 3);
            writeln!(f, "{ip} generated").expect("write");
        }
        writeln!(f, "127.0.0.1 the test client").expect("write");
    }
    let client = http_client();
    let url = gateway.url("/cart/x");
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..2000 {
            match client.get(&url).send().await {
                Ok(r) => statuses.push(r.status().as_u16()),
                Err(e) => panic!("request failed while the list loaded: {e}"),
            }
        }
        statuses
    });
    gateway.replace_config_by_rename(&with_sections(config, "[blacklist]\nfiles = [\"big.txt\"]"));
    gateway.wait_for_generation(2).await;
    let statuses = load.await.expect("load task");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "only answers, no errors: {:?}",
        statuses.iter().find(|s| **s != 200 && **s != 403)
    );
    assert_eq!(gateway.status().await["blacklist"]["static_entries"], 1_000_001);
    assert_eq!(status_of(&gateway, &[]).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_at_accept_a_blocked_peer_is_dropped_before_http() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config =
        with_sections(cart_config(&[&v1], &[&v2], 0.0), "[blacklist]\ncidrs = [\"127.0.0.1\"]\nat_accept = true");
    let gateway = Gateway::start(&config).await;
    let result = http_client().get(gateway.url("/cart/x")).send().await;
    assert!(result.is_err(), "the connection is closed at accept, no HTTP answer: {result:?}");
    assert_eq!(v1.requests() + v2.requests(), 0);
    assert!(metrics(&gateway).await.contains("gateway_blocked_requests_total{dry_run=\"false\",source=\"config\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_list_file_is_picked_up_without_touching_the_config() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let dir = temp_dir();
    std::fs::write(dir.path().join("blacklist.txt"), "203.0.113.9 scraping\n").expect("write");
    let config = with_sections(cart_config(&[&v1], &[&v2], 0.0), "[blacklist]\nfiles = [\"blacklist.txt\"]");
    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;
    assert_eq!(status_of(&gateway, &[]).await, 200);
    // Ops append the client's address to the list file; the watcher reloads by itself.
    let tmp = gateway.dir().join(".blacklist.txt.tmp");
    std::fs::write(&tmp, "203.0.113.9 scraping\n127.0.0.1 the test client\n").expect("write");
    std::fs::rename(&tmp, gateway.dir().join("blacklist.txt")).expect("rename");
    gateway.wait_for_generation(2).await;
    assert_eq!(status_of(&gateway, &[]).await, 403);
}
