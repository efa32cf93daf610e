//! QA's shadow traffic, end to end: real backends that differ on purpose,
//! the gateway mirroring and comparing, records read back from the store.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::shop::{shadow_config, Shop};
use gateway::shadow::{DiffStore, Retention};
use integration_tests::{dead_addr, free_addr, http_client, run_cli, temp_dir, Gateway};
use serde_json::json;
use sha2::{Digest, Sha256};

fn config(stable: SocketAddr, canary: SocketAddr, shadow: &str, store: &std::path::Path) -> String {
    shadow_config(stable, canary, &store.display().to_string(), shadow)
}

async fn records(store_path: &std::path::Path, at_least: usize) -> Vec<gateway::shadow::DiffRecord> {
    let store = DiffStore::open(store_path, Retention::default()).expect("open store");
    for _ in 0..200 {
        let headers = store.list(Some("cart"), None, None, 10_000).expect("list");
        if headers.len() >= at_least {
            return headers.iter().filter_map(|h| store.get(h.id).ok().flatten()).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {at_least} diff records were stored");
}

async fn get(gateway: &Gateway, user: &str) -> u16 {
    http_client().get(gateway.url("/cart/items")).header("x-user-id", user).send().await.expect("get").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_differing_field_is_recorded_at_exactly_its_path_with_both_values() {
    let (stable, _) = Shop::new(10).start().await;
    let (canary, canary_shop) = Shop::new(12).start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let gateway = Gateway::start(&config(stable, canary, "percent = 100.0", &store)).await;
    for i in 0..10 {
        assert_eq!(get(&gateway, &format!("u{i}")).await, 200);
    }
    let recs = records(&store, 10).await;
    for r in &recs {
        assert_eq!(r.outcome, "different", "{r:?}");
        assert_eq!(r.primary, "stable");
        let paths: Vec<&str> = r.diffs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["$.items[2].price"], "only the price differs");
        assert_eq!((r.diffs[0].stable.clone(), r.diffs[0].canary.clone()), (json!(10), json!(12)));
    }
    // The shadow carried the marker and the client's request id.
    let shadowed = canary_shop.shadow_requests();
    assert_eq!(shadowed.len(), 10);
    assert!(shadowed.iter().all(|(_, h, _)| h.get("x-request-id").is_some()));
    let ids: Vec<&str> = recs.iter().map(|r| r.request_id.as_str()).collect();
    let sent: Vec<String> = shadowed
        .iter()
        .filter_map(|(_, h, _)| h.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string))
        .collect();
    assert!(ids.iter().all(|id| sent.iter().any(|s| s == id)), "records carry the same request ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_timestamp_in_both_versions_is_noise_and_the_price_is_real() {
    let (stable, _) = Shop { random_ts: true, ..Shop::new(10) }.start().await;
    let (canary, _) = Shop { random_ts: true, ..Shop::new(12) }.start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let gateway = Gateway::start(&config(stable, canary, "percent = 100.0\nnoise_check = 1.0", &store)).await;
    for i in 0..40 {
        assert_eq!(get(&gateway, &format!("u{i}")).await, 200);
        // One at a time, so each comparison sees the classification of the ones before.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recs = records(&store, 40).await;
    let last = recs.iter().max_by_key(|r| r.id).expect("records");
    let ts = last.diffs.iter().find(|d| d.path == "$.ts").expect("$.ts differs");
    let price = last.diffs.iter().find(|d| d.path == "$.items[2].price").expect("price differs");
    assert!(ts.noise, "$.ts differs between two answers of the same version too: noise");
    assert!(!price.noise, "the price differs only across versions: a real difference");
    assert_eq!(last.outcome, "different");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_mirrored_only_when_listed_and_then_byte_for_byte() {
    let (stable, _) = Shop::new(10).start().await;
    let (canary, canary_shop) = Shop::new(10).start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();

    let gateway = Gateway::start(&config(stable, canary, "percent = 100.0", &store)).await;
    let resp = http_client().post(gateway.url("/cart/order")).body(body.clone()).send().await.expect("post");
    assert_eq!(resp.status(), 200);
    drop(gateway);
    assert!(canary_shop.shadow_requests().is_empty(), "POST is not mirrored by default");

    let listed = "percent = 100.0\nmethods = [\"GET\", \"POST\"]\nmax_body = \"2MiB\"";
    let gateway = Gateway::start(&config(stable, canary, listed, &store)).await;
    let resp = http_client().post(gateway.url("/cart/order")).body(body.clone()).send().await.expect("post");
    assert_eq!(resp.status(), 200);
    gateway
        .eventually("the POST is mirrored", Duration::from_secs(10), || async {
            !canary_shop.shadow_requests().is_empty()
        })
        .await;
    let (method, headers, got) = canary_shop.shadow_requests().pop().expect("mirrored");
    assert_eq!(method, "POST");
    assert_eq!(headers.get("x-shadow").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(
        hex::encode(Sha256::digest(&got)),
        hex::encode(Sha256::digest(&body)),
        "the exact bytes the client sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_is_not_mirrored_and_is_counted() {
    let (stable, _) = Shop::new(10).start().await;
    let (canary, canary_shop) = Shop::new(10).start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let listed = "methods = [\"POST\"]\nmax_body = \"1KiB\"";
    let gateway = Gateway::start(&config(stable, canary, listed, &store)).await;
    let resp = http_client().post(gateway.url("/cart/order")).body(vec![b'x'; 4096]).send().await.expect("post");
    assert_eq!(resp.status(), 200, "the client is served normally");
    let metrics = || async {
        gateway.admin_request(reqwest::Method::GET, "/metrics").send().await.expect("m").text().await.expect("t")
    };
    gateway
        .eventually("skipped_body_too_large is counted", Duration::from_secs(5), || async {
            metrics()
                .await
                .contains("gateway_shadow_requests_total{outcome=\"skipped_body_too_large\",route=\"cart\"} 1")
        })
        .await;
    assert!(canary_shop.shadow_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_does_not_delay_the_client() {
    let (stable, _) = Shop::new(10).start().await;
    let (canary, canary_shop) = Shop { shadow_delay: Duration::from_secs(2), ..Shop::new(10) }.start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let gateway = Gateway::start(&config(stable, canary, "percent = 100.0\ntimeout = \"5s\"", &store)).await;
    assert_eq!(get(&gateway, "u1").await, 200);
    // The client has its answer; the shadow backend is still sleeping on its copy.
    assert!(!canary_shop.shadow_done.load(Ordering::SeqCst), "the client waited for the shadow");
    gateway
        .eventually("the shadow completes later", Duration::from_secs(10), || async {
            canary_shop.shadow_done.load(Ordering::SeqCst)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_shadows_are_dropped_and_counted() {
    let (stable, _) = Shop::new(10).start().await;
    let (canary, canary_shop) = Shop { shadow_delay: Duration::from_secs(3), ..Shop::new(10) }.start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let gateway =
        Gateway::start(&config(stable, canary, "percent = 100.0\ntimeout = \"10s\"\nmax_in_flight = 2", &store)).await;
    for i in 0..10 {
        assert_eq!(get(&gateway, &format!("u{i}")).await, 200);
    }
    let text = gateway.settled_metrics().await;
    let dropped: u64 = text
        .lines()
        .find(|l| l.starts_with("gateway_shadow_requests_total{outcome=\"dropped\",route=\"cart\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("dropped counter");
    let started = canary_shop.hits.load(Ordering::SeqCst) as u64;
    assert!(dropped >= 1, "some shadows were dropped");
    assert!(started <= 10 - dropped, "dropped shadows never reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart_retention_holds_and_secrets_are_redacted() {
    let (stable, _) = Shop::new(10).start().await;
    let (canary, _) = Shop::new(12).start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let text = config(stable, canary, "percent = 100.0", &store)
        .replace("max_stored_body", "max_records = 5\nmax_stored_body");
    let gateway = Gateway::start(&text).await;
    for i in 0..12 {
        let resp = http_client()
            .get(gateway.url("/cart/items"))
            .header("x-user-id", format!("u{i}"))
            .header("authorization", "Bearer secret-token")
            .header("cookie", "session=abc123")
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 200);
    }
    let recs = records(&store, 5).await;
    drop(gateway);
    for r in &recs {
        let auth = r.request_headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.as_str());
        let cookie = r.request_headers.iter().find(|(k, _)| k == "cookie").map(|(_, v)| v.as_str());
        assert_eq!((auth, cookie), (Some("[redacted]"), Some("[redacted]")));
        assert!(!serde_json::to_string(r).expect("json").contains("secret-token"));
    }
    // Retention: at most the newest 5 are kept (applied by the writer).
    let again = Gateway::start(&text).await;
    let store_read = DiffStore::open(&store, Retention::default()).expect("open");
    again
        .eventually("retention trims to 5", Duration::from_secs(10), || async {
            store_read.list(Some("cart"), None, None, 100).map(|l| l.len()).unwrap_or(0) <= 5
        })
        .await;
    let kept = store_read.list(Some("cart"), None, None, 100).expect("list");
    assert!(!kept.is_empty(), "records survived the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_hold_a_shadow_slot() {
    use tokio::io::AsyncWriteExt;
    let (stable, _) = Shop::new(10).start().await;
    let (canary, canary_shop) = Shop::new(10).start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let shadow = "percent = 100.0\nmax_in_flight = 1\nmethods = [\"GET\", \"POST\"]";
    let gateway = Gateway::start(&config(stable, canary, shadow, &store)).await;
    // A POST whose body stalls after 10 of its 100 bytes: routed, being
    // proxied, and (before the fix) holding the route's only shadow slot.
    let mut slow = tokio::net::TcpStream::connect(gateway.listen_addr()).await.expect("connect");
    let head = "POST /cart/items HTTP/1.1\r\nHost: shop\r\nx-user-id: slow\r\nContent-Length: 100\r\n\r\n0123456789";
    slow.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile every complete request is still mirrored, one after the other.
    // The next request goes once the previous shadow is counted: that is when
    // its slot is free again (seeing the copy at the canary is too early, the
    // lane still has to read its answer and compare).
    for i in 0..3 {
        assert_eq!(get(&gateway, &format!("u{i}")).await, 200);
        let done = integration_tests::wait_until(
            || async { shadows_counted(&gateway).await.0 > i as u64 },
            Duration::from_secs(20),
        )
        .await;
        let (finished, dropped) = shadows_counted(&gateway).await;
        assert_eq!(dropped, 0, "no shadow was dropped for want of a slot (request {i})");
        assert!(done, "request {i}'s shadow finished ({finished} did) although a slow client is mid-body");
        assert!(canary_shop.shadow_requests().len() > i, "request {i} reached the canary");
    }
    drop(slow);
}

/// The route's shadows counted so far: those that ran to an outcome, and
/// those dropped for want of a `max_in_flight` slot.
async fn shadows_counted(gateway: &Gateway) -> (u64, u64) {
    let text =
        gateway.admin_request(reqwest::Method::GET, "/metrics").send().await.expect("m").text().await.expect("t");
    let (mut finished, mut dropped) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("gateway_shadow_requests_total{")) {
        let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        match ["identical", "different", "noise-only", "error", "timeout"]
            .iter()
            .any(|o| line.contains(&format!("outcome=\"{o}\"")))
        {
            true => finished += n,
            false if line.contains("outcome=\"dropped\"") => dropped += n,
            false => {}
        }
    }
    (finished, dropped)
}

/// The mirrored copy travels in the lane of the version it is sent to: a
/// service behind the canary that reads `version_request_header` must see
/// `canary`, not the lane of the version that answered the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_copy_carries_the_lane_of_the_version_it_is_sent_to() {
    let (stable, stable_shop) = Shop::new(10).start().await;
    let (canary, canary_shop) = Shop::new(10).start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let text = config(stable, canary, "percent = 100.0", &store);
    let with_lane = text.replacen("[server]\n", "[server]\nversion_request_header = \"x-lane\"\n", 1);
    assert_ne!(with_lane, text);
    let gateway = Gateway::start(&with_lane).await;
    assert_eq!(get(&gateway, "42").await, 200);
    gateway
        .eventually("the request is mirrored", Duration::from_secs(10), || async {
            !canary_shop.shadow_requests().is_empty()
        })
        .await;
    let lane = |h: &axum::http::HeaderMap| h.get("x-lane").and_then(|v| v.to_str().ok()).map(str::to_string);
    let primary = stable_shop.seen.lock().expect("lock").first().map(|(_, h, _)| lane(h));
    assert_eq!(primary, Some(Some("stable".to_string())), "the client's request, in its lane");
    let (_, headers, _) = canary_shop.shadow_requests().pop().expect("mirrored");
    assert_eq!(lane(&headers).as_deref(), Some("canary"), "the copy, in the canary's lane");
}

/// Three versions, each on its own shop (v1 prices the item 10, v2 20, v3
/// 30), with `against = "v2"`. The users `to-v2` and `to-v3` are whitelisted
/// on their versions; everyone else is on v1, the default.
fn three_versions_against_v2(v1: SocketAddr, v2: SocketAddr, v3: SocketAddr, store: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
[admin]
listen = "{{admin}}"
[shadow]
store = "{store}"
max_stored_body = "4KiB"
[upstreams.cart-v1]
backends = ["{v1}"]
[upstreams.cart-v2]
backends = ["{v2}"]
[upstreams.cart-v3]
backends = ["{v3}"]
[[routes]]
name = "cart"
path_prefix = "/cart"
default = "v1"
versions = [
  {{ name = "v1", upstream = "cart-v1" }},
  {{ name = "v2", upstream = "cart-v2", whitelist_users = ["to-v2"] }},
  {{ name = "v3", upstream = "cart-v3", whitelist_users = ["to-v3"] }},
]
[routes.shadow]
percent = 100.0
against = "v2"
"#,
        store = store.display()
    )
}

/// The users whose requests `shop` received as mirrored copies.
fn mirrored_users(shop: &Shop) -> Vec<String> {
    let user = |h: &axum::http::HeaderMap| h.get("x-user-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    shop.shadow_requests().iter().map(|(_, h, _)| user(h)).collect()
}

/// With `against`, every other version is compared with that one: copies of
/// v1's and v3's requests go to v2's backend, and v2's own requests are
/// compared with the first other version in the list, v1. The named version
/// is always the record's `stable` side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_against_every_version_is_compared_with_the_named_one_and_it_with_the_first_other() {
    let (v1, v1_shop) = Shop::new(10).start().await;
    let (v2, v2_shop) = Shop::new(20).start().await;
    let (v3, v3_shop) = Shop::new(30).start().await;
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let gateway = Gateway::start(&three_versions_against_v2(v1, v2, v3, &store)).await;
    for user in ["on-v1", "to-v2", "to-v3"] {
        assert_eq!(get(&gateway, user).await, 200, "{user}");
    }

    let recs = records(&store, 3).await;
    let record_of = |user: &str| {
        let mine: Vec<_> =
            recs.iter().filter(|r| r.request_headers.iter().any(|(k, v)| k == "x-user-id" && v == user)).collect();
        assert_eq!(mine.len(), 1, "one record for {user}: {recs:#?}");
        mine[0].clone()
    };
    // (user, the version that answered, the price on the stable side, on the canary side)
    for (user, primary, stable, canary) in [("on-v1", "v1", 20, 10), ("to-v3", "v3", 20, 30), ("to-v2", "v2", 20, 10)] {
        let r = record_of(user);
        assert_eq!(r.primary, primary, "{user}: {r:?}");
        assert_eq!(r.outcome, "different", "{user}: {r:?}");
        let price = r.diffs.iter().find(|d| d.path == "$.items[2].price").unwrap_or_else(|| panic!("{r:?}"));
        assert_eq!((price.stable.clone(), price.canary.clone()), (json!(stable), json!(canary)), "{user}");
    }

    // The backends agree: v2 got the copies of v1's and v3's requests, v1 the copy of v2's, v3 none.
    let mut to_v2 = mirrored_users(&v2_shop);
    to_v2.sort();
    assert_eq!(to_v2, ["on-v1", "to-v3"], "v2's backend receives the other versions' copies");
    assert_eq!(mirrored_users(&v1_shop), ["to-v2"], "v2's own requests are compared with v1");
    assert!(mirrored_users(&v3_shop).is_empty(), "nothing is compared with v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_an_against_that_names_no_version_with_file_line_and_key() {
    let dir = temp_dir();
    let store = dir.path().join("diffs.sqlite");
    let good = three_versions_against_v2(dead_addr(), dead_addr(), dead_addr(), &store)
        .replace("{listen}", &free_addr().to_string())
        .replace("{admin}", &free_addr().to_string());
    let path = dir.path().join("gateway.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).expect("write the config");
        let out = run_cli(&["check", "-c", path.to_str().expect("temp paths are UTF-8")]);
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)))
    };
    let (code, printed) = check(&good);
    assert_eq!(code, Some(0), "against = \"v2\" is valid:\n{printed}");
    assert!(printed.contains("against v2"), "check shows the version compared against:\n{printed}");

    let bad = good.replace("against = \"v2\"", "against = \"nope\"");
    assert_ne!(bad, good);
    let (code, printed) = check(&bad);
    assert_eq!(code, Some(1), "against = \"nope\":\n{printed}");
    // The shadow table runs from its header to the end of the file.
    let lines: Vec<&str> = bad.lines().collect();
    let table = lines.iter().position(|l| l.trim() == "[routes.shadow]").expect("the shadow table") + 1..=lines.len();
    let located = printed.lines().any(|l| {
        let Some((_, rest)) = l.split_once("gateway.toml:") else { return false };
        let Some((line, rest)) = rest.split_once(": ") else { return false };
        line.parse::<usize>().is_ok_and(|n| table.contains(&n))
            && rest.starts_with("routes[0].shadow.against: ")
            && rest.contains("\"nope\"")
    });
    assert!(located, "no `gateway.toml:<line in {table:?}>: routes[0].shadow.against: ...\"nope\"...`:\n{printed}");
}
