//! Tester overrides: plain values from allowed IPs, signed values from anywhere, what the backend sees, and explain.

use super::*;

// ---------------------------------------------------------------------------
// Tester overrides: plain values
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_override_from_an_allowed_ip_sends_the_request_to_the_named_version() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_LOOPBACK_HEADER));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2")]).await;
    assert_eq!(got, on("v2"), "user {on_v1}, bucketed on v1, asked for v2 from 127.0.0.1");
    let got = served(&client, &url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, "v1")]).await;
    assert_eq!(got, on("v1"), "user {on_v2}, bucketed on v2, asked for v1");
    // The override comes before the whitelist.
    let got = served(&client, &url, &[("x-user-id", "1001"), (OVERRIDE_HEADER, "v1")]).await;
    assert_eq!(got, on("v1"), "whitelisted user 1001 asked for v1");
    // And before the anonymous policy.
    assert_eq!(served(&client, &url, &[(OVERRIDE_HEADER, "v2")]).await, on("v2"), "anonymous, asked for v2");
    // It is per request: without the header the user is back on its bucket.
    assert_eq!(served(&client, &url, &[("x-user-id", &on_v1)]).await, on("v1"));
    assert_eq!(served(&client, &url, &[("x-user-id", "1001")]).await, on("v2"));

    expect_overrides(&gateway, "cart", 4, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_override_from_an_ip_outside_allow_from_is_ignored_and_counted_as_refused() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_OFFICE_HEADER));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2")]).await;
    assert_eq!(got, on("v1"), "127.0.0.1 is not in 10.0.0.0/8: user {on_v1} stays on its bucket's v1");
    let got = served(&client, &url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, "v1")]).await;
    assert_eq!(got, on("v2"), "user {on_v2} stays on its bucket's v2");
    let got = served(&client, &url, &[("x-user-id", "1001"), (OVERRIDE_HEADER, "v1")]).await;
    assert_eq!(got, on("v2"), "whitelisted user 1001 stays on v2");
    // A forged X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
    let got =
        served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2"), ("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(got, on("v1"), "X-Forwarded-For from an untrusted peer must not put the client in allow_from");

    expect_overrides(&gateway, "cart", 0, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_from_is_matched_against_the_client_behind_a_trusted_proxy() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_OFFICE_HEADER));
    let top = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n";
    let gateway = start(&v1, &v2, "", top, &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;

    // The office laptop 10.1.2.3 behind the load balancer (the trusted 127.0.0.1).
    let got =
        served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2"), ("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(got, on("v2"), "the client 10.1.2.3 is in allow_from");
    // A customer behind the same load balancer.
    let got =
        served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2"), ("x-forwarded-for", "192.0.2.9")])
            .await;
    assert_eq!(got, on("v1"), "the client 192.0.2.9 is not in allow_from");
    // A customer who wrote an office address left of its own: the walk stops at its real address.
    let got = served(
        &client,
        &url,
        &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2"), ("x-forwarded-for", "10.1.2.3, 192.0.2.9")],
    )
    .await;
    assert_eq!(got, on("v1"), "the client is 192.0.2.9 whatever it wrote to the left");

    expect_overrides(&gateway, "cart", 1, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_naming_an_unknown_version_is_refused_and_the_request_keeps_its_version() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_LOOPBACK_HEADER));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v9")]).await;
    assert_eq!(got, on("v1"), "v9 does not exist: user {on_v1} keeps v1");
    let got = served(&client, &url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, "v9")]).await;
    assert_eq!(got, on("v2"), "v9 does not exist: user {on_v2} keeps v2");
    // Upstream (pool) names are not version names.
    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "cart-v2")]).await;
    assert_eq!(got, on("v1"), "a pool name is not a version");

    expect_overrides(&gateway, "cart", 0, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_override_works_like_the_header_and_only_from_allowed_ips() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some("cookie = \"gw_version\"\nallow_from = [\"127.0.0.0/8\"]"));
    let checkout =
        route("checkout", "/checkout", 10.0, "", Some("cookie = \"gw_version\"\nallow_from = [\"10.0.0.0/8\"]"));
    let gateway = start(&v1, &v2, "", "", &[cart, checkout]).await;
    let client = http_client();
    let cart_url = gateway.url("/cart/items");
    let checkout_url = gateway.url("/checkout/pay");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;
    let checkout_v1 = user_on(&gateway, "/checkout/pay", "v1").await;

    // Allowed: the cookie among others picks the version.
    let got =
        served(&client, &cart_url, &[("x-user-id", &on_v1), ("cookie", "session=abc; gw_version=v2; theme=dark")])
            .await;
    assert_eq!(got, on("v2"), "user {on_v1} with gw_version=v2 from 127.0.0.1");
    let got = served(&client, &cart_url, &[("x-user-id", &on_v2), ("cookie", "gw_version=v1")]).await;
    assert_eq!(got, on("v1"), "user {on_v2} with gw_version=v1 from 127.0.0.1");
    // A cookie whose name merely ends in gw_version is not the override.
    let got = served(&client, &cart_url, &[("x-user-id", &on_v1), ("cookie", "my_gw_version=v2")]).await;
    assert_eq!(got, on("v1"), "my_gw_version is another cookie");

    // Not allowed: ignored, counted on that route.
    let got = served(&client, &checkout_url, &[("x-user-id", &checkout_v1), ("cookie", "gw_version=v2")]).await;
    assert_eq!(got, on("v1"), "127.0.0.1 is not in checkout's allow_from");

    expect_overrides(&gateway, "cart", 2, 0).await;
    expect_overrides(&gateway, "checkout", 0, 1).await;
}

// ---------------------------------------------------------------------------
// Tester overrides: signed values
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_token_from_the_cli_is_honoured_from_an_ip_outside_allow_from() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;

    let before = now_unix();
    let to_v2 = mint(gateway.config_path(), "cart", "v2", "8h").await;
    let (version, expiry, _) = token_parts(&to_v2);
    assert_eq!(version, "v2", "{to_v2}");
    let eight_hours = 8 * 3600;
    assert!(
        (before + eight_hours..=now_unix() + eight_hours + 1).contains(&expiry),
        "--ttl 8h: expiry {expiry} should be 8 h after {before}"
    );
    let to_v1 = mint(gateway.config_path(), "cart", "v1", "8h").await;

    // By header and by cookie, from 127.0.0.1, which may not send plain names.
    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &to_v2)]).await;
    assert_eq!(got, on("v2"), "user {on_v1} with a signed v2 token in the header");
    let cookie = format!("a=1; gw_version={to_v2}");
    let got = served(&client, &url, &[("x-user-id", &on_v1), ("cookie", &cookie)]).await;
    assert_eq!(got, on("v2"), "user {on_v1} with a signed v2 token in the cookie");
    let got = served(&client, &url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, &to_v1)]).await;
    assert_eq!(got, on("v1"), "user {on_v2} with a signed v1 token");
    // The plain name from the same client is refused.
    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, "v2")]).await;
    assert_eq!(got, on("v1"), "a plain v2 from outside allow_from");

    expect_overrides(&gateway, "cart", 3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_token_or_a_token_for_another_route_is_refused() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE));
    let checkout = route("checkout", "/checkout", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart, checkout]).await;
    let client = http_client();
    let cart_url = gateway.url("/cart/items");
    let checkout_url = gateway.url("/checkout/pay");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;
    let checkout_v1 = user_on(&gateway, "/checkout/pay", "v1").await;

    let token = mint(gateway.config_path(), "cart", "v2", "8h").await;
    let (_, expiry, mac) = token_parts(&token);
    let mac_at = token.len() - mac.len();

    // One hex char of the HMAC flipped (first and last).
    for at in [mac_at, token.len() - 1] {
        let bad = flip_hex(&token, at);
        let got = served(&client, &cart_url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &bad)]).await;
        assert_eq!(got, on("v1"), "a token with a flipped HMAC char ({bad}) must be refused");
    }
    // The version swapped under the same signature.
    let swapped = format!("v1{}", &token["v2".len()..]);
    let got = served(&client, &cart_url, &[("x-user-id", &on_v2), (OVERRIDE_HEADER, &swapped)]).await;
    assert_eq!(got, on("v2"), "v2's signature on a v1 token ({swapped}) must be refused");
    // The expiry pushed out under the same signature.
    let extended = format!("v2.{}.{mac}", expiry + 86_400 * 365);
    let got = served(&client, &cart_url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &extended)]).await;
    assert_eq!(got, on("v1"), "a token with a later expiry than signed ({extended}) must be refused");
    expect_overrides(&gateway, "cart", 0, 4).await;

    // The cart token on checkout (same secret, same version names): refused.
    let got = served(&client, &checkout_url, &[("x-user-id", &checkout_v1), (OVERRIDE_HEADER, &token)]).await;
    assert_eq!(got, on("v1"), "a token minted for route cart must not work on route checkout");
    // Checkout's own token works there, so the refusal above is the route binding.
    let own = mint(gateway.config_path(), "checkout", "v2", "8h").await;
    let got = served(&client, &checkout_url, &[("x-user-id", &checkout_v1), (OVERRIDE_HEADER, &own)]).await;
    assert_eq!(got, on("v2"), "checkout's own token");
    expect_overrides(&gateway, "checkout", 1, 1).await;
    expect_overrides(&gateway, "cart", 0, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;

    let before = now_unix();
    let token = mint(gateway.config_path(), "cart", "v2", "1s").await;
    let (_, expiry, _) = token_parts(&token);
    assert!((before..=now_unix() + 2).contains(&expiry), "--ttl 1s: expiry {expiry}, minted at {before}");
    // Let it expire: past its expiry second, whichever way the boundary is read.
    let deadline = Instant::now() + Duration::from_secs(10);
    while now_unix() <= expiry {
        assert!(Instant::now() < deadline, "the clock did not pass {expiry}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &token)]).await;
    assert_eq!(got, on("v1"), "token {token} expired at {expiry}, now {}", now_unix());
    let got = served(&client, &url, &[("x-user-id", &on_v1), ("cookie", &format!("gw_version={token}"))]).await;
    assert_eq!(got, on("v1"), "the same expired token in the cookie");
    expect_overrides(&gateway, "cart", 0, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_token_exits_1_for_an_unknown_version_a_route_without_a_secret_or_an_unknown_route() {
    let dir = dir_with_keys();
    let routes = [
        route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE)),
        route("plain", "/plain", 10.0, "", Some(ALLOW_OFFICE_HEADER)),
        route("bare", "/bare", 10.0, "", None),
    ];
    let text = config(dead_addr(), dead_addr(), "", "", &routes)
        .replace("{listen}", &free_addr().to_string())
        .replace("{admin}", &free_addr().to_string());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write the config");
    let config = path.to_str().expect("temp paths are UTF-8");

    // The same config mints for a known version of a route with a secret.
    token_parts(&mint(&path, "cart", "v2", "8h").await);

    for (route, version, why) in [
        ("cart", "v9", "cart has no version v9"),
        ("plain", "v2", "route plain has no secret_file"),
        ("bare", "v2", "route bare has no override at all"),
        ("nope", "v2", "there is no route nope"),
    ] {
        let out =
            cli(&["override-token", "--config", config, "--route", route, "--version", version, "--ttl", "8h"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{why}: expected exit 1\nstdout: {stdout}\nstderr: {stderr}");
        assert!(!stderr.trim().is_empty(), "{why}: a message on stderr");
        assert!(!stderr.contains("panicked"), "{why}: {stderr}");
        assert!(stdout.trim().is_empty(), "{why}: nothing a script could take for a token on stdout: {stdout}");
    }
}

// ---------------------------------------------------------------------------
// What the backend sees
// ---------------------------------------------------------------------------

/// The one request both backends received with query `case=<case>`.
fn received_case(v1: &Backend, v2: &Backend, case: &str) -> integration_tests::ReceivedRequest {
    let query = format!("case={case}");
    let all: Vec<_> =
        v1.received().into_iter().chain(v2.received()).filter(|r| r.query.as_deref() == Some(&query)).collect();
    assert_eq!(all.len(), 1, "exactly one upstream request for {query}: {all:?}");
    all.into_iter().next().expect("one request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_override_header_never_reaches_the_backend() {
    let (v1, v2) = backends().await;
    let cart = route(
        "cart",
        "/cart",
        10.0,
        "",
        Some("header = \"x-gateway-version\"\nallow_from = [\"127.0.0.0/8\"]\nsecret_file = \"override.key\""),
    );
    let checkout = route("checkout", "/checkout", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart, checkout]).await;
    let client = http_client();
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let token = mint(gateway.config_path(), "cart", "v2", "8h").await;

    let cases: [(&str, &str, &str, &str); 4] = [
        ("applied", "/cart/items", "v2", "v2"),
        ("unknown", "/cart/items", "v9", "v1"),
        ("refused", "/checkout/pay", "v2", ""),
        ("signed", "/cart/items", &token, "v2"),
    ];
    for (case, path, value, expect) in cases {
        let url = gateway.url(&format!("{path}?case={case}"));
        let (version, _) = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, value)]).await;
        if !expect.is_empty() {
            assert_eq!(version, expect, "case {case}");
        }
        let request = received_case(&v1, &v2, case);
        assert_eq!(request.header("x-user-id").as_deref(), Some(on_v1.as_str()), "case {case}: headers are recorded");
        assert_eq!(request.header(OVERRIDE_HEADER), None, "case {case}: the override header reached the backend");
    }
}

/// The override cookie is judged by the gateway and removed like the
/// header: a signed value a tester holds never reaches a backend, and the
/// request's other cookies do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_override_cookie_never_reaches_the_backend_and_other_cookies_do() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some("cookie = \"gw_version\"\nallow_from = [\"127.0.0.0/8\"]"));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    for (case, cookie, expect) in
        [("applied", "session=abc; gw_version=v2", "v2"), ("unknown", "gw_version=v9; session=abc", "v1")]
    {
        let url = gateway.url(&format!("/cart/items?case={case}"));
        let (version, _) = served(&client, &url, &[("x-user-id", &on_v1), ("cookie", cookie)]).await;
        assert_eq!(version, expect, "case {case}");
        let request = received_case(&v1, &v2, case);
        assert_eq!(
            request.header("cookie").as_deref(),
            Some("session=abc"),
            "case {case}: only the override cookie went"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lane_header_of_the_same_name_the_backend_sees_the_version_chosen_not_the_one_asked() {
    let (v1, v2) = backends().await;
    let cart = route(
        "cart",
        "/cart",
        10.0,
        "",
        Some("header = \"x-gateway-version\"\nallow_from = [\"127.0.0.0/8\"]\nsecret_file = \"override.key\""),
    );
    let checkout = route("checkout", "/checkout", 10.0, "", Some(ALLOW_OFFICE_HEADER));
    let gateway = start(&v1, &v2, "version_request_header = \"x-gateway-version\"", "", &[cart, checkout]).await;
    let client = http_client();
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let on_v2 = user_on(&gateway, "/cart/items", "v2").await;
    let checkout_v1 = user_on(&gateway, "/checkout/pay", "v1").await;
    let token = mint(gateway.config_path(), "cart", "v2", "8h").await;

    // (case, path, user, override value or "" for none, the version that must answer and be named upstream)
    let cases: [(&str, &str, &str, &str, &str); 5] = [
        ("applied", "/cart/items", &on_v1, "v2", "v2"),
        ("signed", "/cart/items", &on_v1, &token, "v2"),
        ("unknown", "/cart/items", &on_v1, "v9", "v1"),
        ("refused", "/checkout/pay", &checkout_v1, "v2", "v1"),
        ("none", "/cart/items", &on_v2, "", "v2"),
    ];
    for (case, path, user, value, expect) in cases {
        let url = gateway.url(&format!("{path}?case={case}"));
        let mut headers = vec![("x-user-id", user)];
        if !value.is_empty() {
            headers.push((OVERRIDE_HEADER, value));
        }
        assert_eq!(served(&client, &url, &headers).await, on(expect), "case {case}");
        let request = received_case(&v1, &v2, case);
        let values: Vec<_> = request.headers.get_all(OVERRIDE_HEADER).iter().collect();
        assert_eq!(values.len(), 1, "case {case}: one x-gateway-version upstream, got {values:?}");
        assert_eq!(request.header(OVERRIDE_HEADER).as_deref(), Some(expect), "case {case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_an_applied_override_and_counts_nothing() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(ALLOW_LOOPBACK_HEADER));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;

    let from_office =
        explain(&gateway, &format!("path=/cart/items&user={on_v1}&ip=127.0.0.1&header=x-gateway-version%3Av2")).await;
    assert_eq!(from_office["version"], "v2", "{from_office}");
    assert_eq!(from_office["reason"], "override", "{from_office}");

    let from_outside =
        explain(&gateway, &format!("path=/cart/items&user={on_v1}&ip=192.0.2.7&header=x-gateway-version%3Av2")).await;
    assert_eq!(from_outside["version"], "v1", "{from_outside}");
    assert_ne!(from_outside["reason"], "override", "{from_outside}");

    let text = gateway.settled_metrics().await;
    assert_eq!(override_counts(&text, "cart"), (0, 0), "explain is a dry run and counts no override");
}
