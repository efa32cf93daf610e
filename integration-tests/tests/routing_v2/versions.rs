//! N versions: shares, widening, the shorthand, per-version metrics and the lane header.

use super::*;

// ---------------------------------------------------------------------------
// N versions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_versions_share_users_by_their_percents_and_each_user_keeps_one_version() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let users = users(300);

    let first = serve_users(&gateway, "/cart/items", &users).await;
    assert_header_matches_backend(&first);
    let counts = count_by_version(&first);
    let (v1, v2, v3) = (counts.get("v1").copied(), counts.get("v2").copied(), counts.get("v3").copied());
    // 50/30/20 of 300 users, about four standard deviations either way
    // (the hash is deterministic, so this never flickers).
    assert!(v1.is_some_and(|n| (115..=185).contains(&n)), "v1 (default, ~50%) got {v1:?} of 300: {counts:?}");
    assert!(v2.is_some_and(|n| (60..=120).contains(&n)), "v2 (30%) got {v2:?} of 300: {counts:?}");
    assert!(v3.is_some_and(|n| (33..=87).contains(&n)), "v3 (20%) got {v3:?} of 300: {counts:?}");
    assert_eq!(counts.len(), 3, "only v1, v2 and v3 answer: {counts:?}");
    // The backends saw exactly the split the header reported.
    for version in ["v1", "v2", "v3"] {
        assert_eq!(trio.backend(version).requests(), counts[version], "requests that reached {version}'s backend");
    }

    // The same users again: every one lands where it landed before.
    let again = serve_users(&gateway, "/cart/items", &users).await;
    assert_header_matches_backend(&again);
    let moved: Vec<_> =
        users.iter().filter(|u| first[*u].version != again[*u].version).map(|u| (u, &first[u], &again[u])).collect();
    assert!(moved.is_empty(), "{} users changed version on repeat, e.g. {:?}", moved.len(), moved.first());

    // A tester whitelisted on v3 always gets v3.
    let client = http_client();
    for _ in 0..5 {
        let served = get(&client, &gateway.url("/cart/items"), &[("x-user-id", "tester-3")]).await;
        assert_eq!(served, Served { status: 200, version: "v3".into(), backend: "cart-v3".into() });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_v2_by_hot_reload_moves_users_only_from_the_default_to_v2_and_no_v3_user_moves() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(10.0, 10.0).text(&trio)).await;
    let users = users(300);
    let before = serve_users(&gateway, "/cart", &users).await;
    assert_header_matches_backend(&before);

    // "I changed v2 from 10 to 40 and saved."
    let generation = gateway.generation().await;
    gateway.write_config(&Cart::new(40.0, 10.0).text(&trio));
    gateway.wait_for_generation(generation + 1).await;

    let after = serve_users(&gateway, "/cart", &users).await;
    assert_header_matches_backend(&after);
    let mut moved = 0;
    let mut wrong = Vec::new();
    for user in &users {
        let (b, a) = (&before[user].version, &after[user].version);
        if b != a {
            moved += 1;
            if !(b == "v1" && a == "v2") {
                wrong.push(format!("{user}: {b} -> {a}"));
            }
        }
    }
    assert!(wrong.is_empty(), "users moved other than v1 -> v2: {wrong:?}");
    let v3_before: HashSet<&String> = users.iter().filter(|u| before[*u].version == "v3").collect();
    let v3_after: HashSet<&String> = users.iter().filter(|u| after[*u].version == "v3").collect();
    assert!(!v3_before.is_empty(), "some of 300 users are on v3 at 10%");
    assert_eq!(v3_before, v3_after, "the v3 cohort changed although only v2's percent did");
    // The widening did happen: about 30% of the users (90 of 300) moved.
    assert!((45..=135).contains(&moved), "{moved} of 300 users moved for a 10% -> 40% change");
    let v2_after = users.iter().filter(|u| after[*u].version == "v2").count();
    assert!((85..=160).contains(&v2_after), "v2 has {v2_after} of 300 users at 40%");
    let metrics = gateway.settled_metrics().await;
    let percent = metric(&metrics, "gateway_route_version_percent", &[("route", "cart"), ("version", "v2")]);
    assert_eq!(percent, Some(40.0), "gateway_route_version_percent for v2 after the reload");
}

// ---------------------------------------------------------------------------
// The two-version shorthand
// ---------------------------------------------------------------------------

fn shorthand_config(stable: &Backend, canary: &Backend, percent: f64) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
shutdown_grace = "5s"
version_header = "{VERSION_HEADER}"

[admin]
listen = "{{admin}}"

[upstreams.cart-v1]
backends = ["{stable}"]

[upstreams.cart-v2]
backends = ["{canary}"]

[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "cart-v1"
canary = "cart-v2"
canary_percent = {percent:.2}
whitelist_users = ["1001"]
"#,
        stable = stable.addr(),
        canary = canary.addr(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stable_canary_shorthand_still_splits_users_and_labels_metrics_stable_and_canary() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&shorthand_config(&v1, &v2, 25.0)).await;
    let client = http_client();

    let served = serve_users(&gateway, "/cart/items", &users(200)).await;
    let bad: Vec<_> = served
        .values()
        .filter(|s| {
            s.status != 200
                || !matches!((s.version.as_str(), s.backend.as_str()), ("stable", "cart-v1") | ("canary", "cart-v2"))
        })
        .take(5)
        .collect();
    assert!(bad.is_empty(), "answers not labelled stable/cart-v1 or canary/cart-v2: {bad:?}");
    let counts = count_by_version(&served);
    let canary = counts.get("canary").copied().unwrap_or(0);
    assert!((26..=74).contains(&canary), "canary got {canary} of 200 users at 25%: {counts:?}");

    // The route-level whitelist still means canary; no user ID means stable.
    for _ in 0..3 {
        let tester = get(&client, &gateway.url("/cart/items"), &[("x-user-id", "1001")]).await;
        assert_eq!(tester, Served { status: 200, version: "canary".into(), backend: "cart-v2".into() });
    }
    for _ in 0..2 {
        let anonymous = get(&client, &gateway.url("/cart/items"), &[]).await;
        assert_eq!(anonymous, Served { status: 200, version: "stable".into(), backend: "cart-v1".into() });
    }

    let metrics = gateway.settled_metrics().await;
    let requests = |version: &str| {
        metric(&metrics, "gateway_requests_total", &[("route", "cart"), ("version", version), ("class", "2xx")])
    };
    let stable_count = counts.get("stable").copied().unwrap_or(0) + 2;
    assert_eq!(requests("stable"), Some(stable_count as f64), "stable requests in\n{metrics}");
    assert_eq!(requests("canary"), Some((canary + 3) as f64), "canary requests in\n{metrics}");
    assert_eq!(metric(&metrics, "gateway_route_canary_percent", &[("route", "cart")]), Some(25.0));
    assert_eq!(
        metric(&metrics, "gateway_route_version_percent", &[("route", "cart"), ("version", "canary")]),
        Some(25.0),
        "the shorthand's canary is a version named canary\n{metrics}"
    );
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_version_metrics_and_the_access_log_carry_version_names_and_configured_percents() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let client = http_client();
    for _ in 0..4 {
        let served = get(&client, &gateway.url("/cart/x"), &[("x-user-id", "tester-3")]).await;
        assert_eq!((served.status, served.version.as_str()), (200, "v3"));
    }
    // No user ID and no `anonymous` setting: the default version.
    for _ in 0..3 {
        let served = get(&client, &gateway.url("/cart/x"), &[]).await;
        assert_eq!((served.status, served.version.as_str(), served.backend.as_str()), (200, "v1", "cart-v1"));
    }

    let metrics = gateway.settled_metrics().await;
    let requests = |version: &str| {
        metric(&metrics, "gateway_requests_total", &[("route", "cart"), ("version", version), ("class", "2xx")])
    };
    assert_eq!(requests("v3"), Some(4.0), "requests served by v3 in\n{metrics}");
    assert_eq!(requests("v1"), Some(3.0), "requests served by v1 in\n{metrics}");
    assert_eq!(
        metric(&metrics, "gateway_request_duration_seconds_count", &[("route", "cart"), ("version", "v3")]),
        Some(4.0),
        "latency histogram of v3 in\n{metrics}"
    );
    let percent =
        |version: &str| metric(&metrics, "gateway_route_version_percent", &[("route", "cart"), ("version", version)]);
    assert_eq!(percent("v2"), Some(30.0), "{metrics}");
    assert_eq!(percent("v3"), Some(20.0), "{metrics}");
    // The old gauge stays: the sum of the non-default versions' percents.
    assert_eq!(metric(&metrics, "gateway_route_canary_percent", &[("route", "cart")]), Some(50.0), "{metrics}");

    // The access log names the version too.
    let logged = |gateway: &Gateway| {
        gateway.log().lines().any(|l| {
            (l.contains("route=\"cart\"") || l.contains("route=cart"))
                && (l.contains("version=\"v3\"") || l.contains("version=v3"))
        })
    };
    let found = wait_until(|| async { logged(&gateway) }, std::time::Duration::from_secs(5)).await;
    assert!(found, "no access log line with route cart and version v3:\n{}", gateway.log_tail(20));
}

// ---------------------------------------------------------------------------
// Lane header
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_header_carries_the_chosen_version_upstream_and_a_client_cannot_forge_it() {
    let trio = Trio::start().await;
    let config = Cart::new(30.0, 20.0).server("version_request_header = \"x-gateway-version\"").text(&trio);
    let gateway = Gateway::start(&config).await;
    let client = http_client();
    let lane_at = |backend: &Backend, path: &str| {
        let seen: Vec<_> = backend.received().into_iter().filter(|r| r.path == path).collect();
        assert_eq!(seen.len(), 1, "{path} reached {} {} times", backend.name(), seen.len());
        seen[0].header("x-gateway-version")
    };

    // A v2 request carries v2 upstream.
    let served = get(&client, &gateway.url("/cart/lane-a"), &[("x-user-id", "tester-2")]).await;
    assert_eq!((served.status, served.version.as_str(), served.backend.as_str()), (200, "v2", "cart-v2"));
    assert_eq!(lane_at(&trio.v2, "/cart/lane-a").as_deref(), Some("v2"));

    // A request routed to v1 that claims v3 reaches v1's backend saying v1, once.
    let forged = [("x-gateway-version", "v3")];
    let served = get(&client, &gateway.url("/cart/lane-b"), &forged).await;
    assert_eq!((served.status, served.version.as_str(), served.backend.as_str()), (200, "v1", "cart-v1"));
    assert_eq!(lane_at(&trio.v1, "/cart/lane-b").as_deref(), Some("v1"));

    // Same on the v2 lane: the gateway's value replaces the client's.
    let served =
        get(&client, &gateway.url("/cart/lane-c"), &[("x-user-id", "tester-2"), ("x-gateway-version", "v3")]).await;
    assert_eq!((served.status, served.version.as_str()), (200, "v2"));
    assert_eq!(lane_at(&trio.v2, "/cart/lane-c").as_deref(), Some("v2"));
    assert_eq!(trio.v3.requests(), 0, "nothing was routed to v3");
}
