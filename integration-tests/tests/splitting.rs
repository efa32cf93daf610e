//! A release engineer's four promises, through the running gateway: the
//! canary share matches the setting, widening it never flips a canary user
//! back, every replica agrees, and a new salt draws a new cohort.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{cart_config, cart_config_with, version_of};
use futures::stream::{self, StreamExt};
use integration_tests::{get_json, http_client, Backend, Gateway};

/// Sends one GET per user ID (`x-user-id: u<i>`) with bounded concurrency and
/// returns the users that `x-gateway-version` says were served by canary.
async fn canary_users(gateway: &Gateway, path: &str, users: std::ops::Range<usize>) -> HashSet<usize> {
    let client = http_client();
    let url = Arc::new(gateway.url(path));
    let results: Vec<(usize, String, u16)> = stream::iter(users)
        .map(|i| {
            let (client, url) = (client.clone(), Arc::clone(&url));
            async move {
                let user = format!("u{i}");
                let resp = client.get(url.as_str()).header("x-user-id", &user).send().await.expect("request");
                let status = resp.status().as_u16();
                let version = version_of(resp.headers());
                (i, version, status)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let failed: Vec<_> = results.iter().filter(|r| r.2 != 200).collect();
    assert!(failed.is_empty(), "{} requests failed, e.g. {:?}", failed.len(), failed.first());
    results.into_iter().filter(|(_, v, _)| v == "canary").map(|(i, _, _)| i).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_share_is_within_half_a_point_over_100k_users() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 10.0)).await;
    let n = 100_000;
    let canary = canary_users(&gateway, "/cart/items", 0..n).await.len();
    let share = canary as f64 * 100.0 / n as f64;
    assert!((share - 10.0).abs() <= 0.5, "canary share {share:.2}% for a 10% setting");
    // The version header tells the truth: the backends saw the same split.
    assert_eq!(v2.requests(), canary);
    assert_eq!(v1.requests(), n - canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_percentage_keeps_every_canary_user_on_canary() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 5.0)).await;
    let users = 0..10_000;
    let at_5 = canary_users(&gateway, "/cart", users.clone()).await;

    // "I changed 5 to 20 and saved."
    gateway.write_config(&cart_config(&[&v1], &[&v2], 20.0));
    gateway.wait_for_generation(2).await;
    let at_20 = canary_users(&gateway, "/cart", users.clone()).await;

    let moved_back: Vec<_> = at_5.difference(&at_20).collect();
    assert!(moved_back.is_empty(), "{} users went from canary back to stable", moved_back.len());
    let share = at_20.len() as f64 / users.len() as f64 * 100.0;
    assert!((share - 20.0).abs() <= 1.5, "share {share:.2}% after raising to 20%");
    assert!(at_20.len() > at_5.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_the_same_config_agree_on_every_user() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config = cart_config(&[&v1], &[&v2], 30.0);
    let a = Gateway::start(&config).await;
    let b = Gateway::start(&config).await;
    let users = 0..10_000;
    let on_a = canary_users(&a, "/cart", users.clone()).await;
    let on_b = canary_users(&b, "/cart", users).await;
    assert!(!on_a.is_empty());
    assert_eq!(on_a, on_b, "replicas disagree on {} users", on_a.symmetric_difference(&on_b).count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_salt_draws_an_independent_cohort() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    // A second route over the same pools with another salt.
    let second = "\n[[routes]]\nname = \"cart-next\"\npath_prefix = \"/next\"\nstable = \"cart-v1\"\ncanary = \"cart-v2\"\ncanary_percent = 20.0\nsalt = \"cart-2026-12\"\n";
    let config = cart_config(&[&v1], &[&v2], 20.0) + second;
    let gateway = Gateway::start(&config).await;
    let users = 0..10_000;
    let first = canary_users(&gateway, "/cart", users.clone()).await;
    let other = canary_users(&gateway, "/next", users).await;
    // Independent 20% cohorts share about 20% of their members; the same salt would share 100%.
    let overlap = first.intersection(&other).count() as f64 / first.len() as f64;
    assert!((0.14..0.26).contains(&overlap), "overlap {overlap:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelisted_users_and_ips_always_get_canary() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    // 0%: only whitelists reach canary. The office route whitelists loopback,
    // and a trusted proxy's X-Forwarded-For is believed for the IP whitelist.
    let office = "\n[[routes]]\nname = \"office\"\npath_prefix = \"/office\"\nstable = \"cart-v1\"\ncanary = \"cart-v2\"\nwhitelist_ips = [\"127.0.0.1\"]\n";
    let config = cart_config_with(&[&v1], &[&v2], 0.0, "whitelist_ips = [\"192.0.2.0/24\"]")
        .replace("[upstreams.cart-v1]", "[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n[upstreams.cart-v1]")
        + office;
    let gateway = Gateway::start(&config).await;
    let client = http_client();
    let version = |headers: Vec<(&'static str, String)>, path: &'static str| {
        let client = client.clone();
        let url = gateway.url(path);
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, headers, body) = get_json(&client, &url, &h).await;
            assert_eq!(status, 200, "{body}");
            (version_of(&headers), body["backend"].as_str().unwrap_or("").to_string())
        }
    };
    let mut seen = HashMap::new();
    for user in ["1001", "1002", "7", "8"] {
        seen.insert(user, version(vec![("x-user-id", user.to_string())], "/cart").await);
    }
    assert_eq!(seen["1001"], ("canary".into(), "cart-v2".into()));
    assert_eq!(seen["1002"], ("canary".into(), "cart-v2".into()));
    assert_eq!(seen["7"], ("stable".into(), "cart-v1".into()));
    assert_eq!(seen["8"], ("stable".into(), "cart-v1".into()));
    // Whitelisted by cookie-borne user ID too.
    assert_eq!(version(vec![("cookie", "a=b; uid=1001".into())], "/cart").await.0, "canary");
    // By IP: the office route whitelists 127.0.0.1, the peer of every test request.
    assert_eq!(version(vec![], "/office/x").await.0, "canary");
    // By IP through a trusted proxy: the client behind it is in 192.0.2.0/24.
    assert_eq!(version(vec![("x-forwarded-for", "192.0.2.44".into())], "/cart").await.0, "canary");
    assert_eq!(version(vec![("x-forwarded-for", "198.51.100.1".into())], "/cart").await.0, "stable");
}
