//! Explain as a dry run of the proxy's pipeline.

use super::*;

// ---------------------------------------------------------------------------
// Explain
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_version_the_proxy_really_serves_each_user() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let mut users = users(60);
    users.extend(["tester-2".to_string(), "tester-3".to_string()]);
    let served = serve_users(&gateway, "/cart", &users).await;
    assert_header_matches_backend(&served);
    let generation = gateway.generation().await;

    let mut disagree = Vec::new();
    for user in &users {
        let (status, answer) = explain(&gateway, &format!("path=/cart&user={user}")).await;
        assert_eq!(status, 200, "{answer}");
        assert_proxied(&answer, user);
        let version = &served[user].version;
        let agrees = answer["version"] == version.as_str()
            && answer["route"] == "cart"
            && answer["pool"] == upstream_of(version)
            && answer["user_id"] == user.as_str()
            && answer["generation"] == generation;
        if !agrees {
            disagree.push(format!("{user}: proxy used {version}, explain says {answer}"));
        }
    }
    assert!(disagree.is_empty(), "{} users explained differently:\n{}", disagree.len(), disagree.join("\n"));
    let versions: HashSet<&str> = served.values().map(|s| s.version.as_str()).collect();
    assert_eq!(versions.len(), 3, "the sample covers every version: {versions:?}");

    // No user ID: the default version, both ways.
    let anonymous = get(&http_client(), &gateway.url("/cart"), &[]).await;
    let (_, answer) = explain(&gateway, "path=/cart").await;
    assert_proxied(&answer, "anonymous");
    assert_eq!((anonymous.version.as_str(), answer["version"].as_str()), ("v1", Some("v1")), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_of_a_blacklisted_ip_says_respond_403_and_counts_nothing() {
    let trio = Trio::start().await;
    // The loopback test client is a trusted proxy, so a real request can come
    // from the blocked range too, and both answers can be compared.
    let top = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[blacklist]\ncidrs = [\"203.0.113.0/24\"]\n";
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).top(top).text(&trio)).await;

    let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1&ip=203.0.113.9").await;
    assert_responds(&answer, 403, "blocked", "blocked ip");
    let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1&ip=198.51.100.1").await;
    assert_proxied(&answer, "an address outside the block");

    let blocked = |metrics: &str| {
        metric(metrics, "gateway_blocked_requests_total", &[("source", "config"), ("dry_run", "false")]).unwrap_or(0.0)
    };
    assert_eq!(blocked(&gateway.settled_metrics().await), 0.0, "explain counted a block");

    // The real pipeline agrees.
    let real = get(&http_client(), &gateway.url("/cart/x"), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(real.status, 403);
    assert_eq!(trio.v1.requests() + trio.v2.requests() + trio.v3.requests(), 0);
    assert_eq!(blocked(&gateway.settled_metrics().await), 1.0, "the real block is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_of_a_degraded_route_reports_its_fallback_pages_status() {
    let trio = Trio::start().await;
    let dir = temp_dir();
    std::fs::write(dir.path().join("busy.html"), "<p>recommendations are resting</p>").expect("page");
    // 529: a status no built-in answer uses, so it can only come from the page.
    let recommendations = "[[routes]]\nname = \"recommendations\"\npath_prefix = \"/recommendations\"\nstable = \"cart-v2\"\ndegrade_at = 2\n\n[routes.fallback]\npage = \"busy.html\"\nstatus = 529\n";
    let config = Cart::new(30.0, 20.0).top("[degrade]\nlevel = 2\n").more(recommendations).text(&trio);
    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;

    let (_, answer) = explain(&gateway, "path=/recommendations/top&user=user-1").await;
    assert_responds(&answer, 529, "degraded", "degraded route");
    let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1").await;
    assert_proxied(&answer, "a route without degrade_at");
    let fallbacks = |metrics: &str| {
        metric(metrics, "gateway_fallback_responses_total", &[("route", "recommendations"), ("cause", "degraded")])
            .unwrap_or(0.0)
    };
    assert_eq!(fallbacks(&gateway.settled_metrics().await), 0.0, "explain counted a fallback");

    let real = get(&http_client(), &gateway.url("/recommendations/top"), &[("x-user-id", "user-1")]).await;
    assert_eq!(real.status, 529, "the proxy serves the page with the status explain announced");
    assert_eq!(trio.v2.requests(), 0, "a degraded route does not contact its upstream");
    assert_eq!(fallbacks(&gateway.settled_metrics().await), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_takes_no_rate_limit_tokens_and_reports_the_limit_once_it_is_reached() {
    let trio = Trio::start().await;
    let limit = "[routes.rate_limit]\nper_ip = { rate = \"1/m\", burst = 1 }\n";
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).route(limit).text(&trio)).await;
    let client = http_client();

    for i in 0..3 {
        let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1&ip=127.0.0.1").await;
        assert_proxied(&answer, &format!("explain #{}", i + 1));
    }
    // The one token is still there for a real request...
    let first = get(&client, &gateway.url("/cart/x"), &[("x-user-id", "user-1")]).await;
    assert_eq!(first.status, 200, "explain used up the rate limit: {first:?}");
    // ...and the limit is live: the next one is refused, and explain says so.
    let second = get(&client, &gateway.url("/cart/x"), &[("x-user-id", "user-1")]).await;
    assert_eq!(second.status, 429, "{second:?}");
    let (_, answer) = explain(&gateway, "path=/cart/x&user=user-1&ip=127.0.0.1").await;
    assert_responds(&answer, 429, "rate-limited-ip", "after the token is spent");

    let metrics = gateway.settled_metrics().await;
    let limited = metric(&metrics, "gateway_rate_limited_total", &[("route", "cart"), ("key", "ip")]);
    assert_eq!(limited, Some(1.0), "only the real 429 is counted\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_without_a_matching_route_says_respond_404() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let (_, answer) = explain(&gateway, "path=/nowhere/x&user=user-1").await;
    assert_responds(&answer, 404, "no-route", "no route");
    let real = get(&http_client(), &gateway.url("/nowhere/x"), &[("x-user-id", "user-1")]).await;
    assert_eq!(real.status, 404);
}

/// The first of `v1`, `v2`, `v3` printed as a word of its own.
fn first_version_named(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .find(|word| matches!(*word, "v1" | "v2" | "v3"))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explain_command_prints_the_version_the_proxy_serves() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).text(&trio)).await;
    let served = serve_users(&gateway, "/cart/x", &users(60)).await;
    assert_header_matches_backend(&served);
    // One user per version: from the bucket for v1 and v2, the whitelist for v3.
    let pick = |version: &str| {
        let mut on: Vec<&String> = served.iter().filter(|(_, s)| s.version == version).map(|(u, _)| u).collect();
        on.sort();
        on.first().map(|u| u.to_string()).unwrap_or_else(|| panic!("none of 60 users is on {version}"))
    };
    let config = gateway.config_path().to_str().expect("temp paths are UTF-8").to_string();
    for (user, version) in [(pick("v1"), "v1"), (pick("v2"), "v2"), ("tester-3".to_string(), "v3")] {
        let out = run_cli(&["explain", "--config", &config, "--path", "/cart/x", "--user", &user]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "explain for {user}: {:?}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(first_version_named(&stdout).as_deref(), Some(version), "explain for {user} printed:\n{stdout}");
    }
}

/// Explain says which route's rules matched: the iOS route for a GET with
/// `x-app: ios`, and nothing for the plain route that takes a POST or
/// another app, as the proxy does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_rules_of_the_route_that_matched() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).more(super::check::IOS_ROUTE).text(&trio)).await;
    let ios_rules = "methods[GET] headers[x-app=ios] query[] cookies[]";

    let (_, answer) = explain(&gateway, "path=/cart/x&user=tester-3&header=x-app%3Aios").await;
    assert_proxied(&answer, "an iOS GET");
    assert_eq!((&answer["route"], &answer["rules"]), (&Value::from("cart-ios"), &Value::from(ios_rules)), "{answer}");
    for (query, what) in [
        ("path=/cart/x&user=tester-3&header=x-app%3Aandroid", "another app"),
        ("path=/cart/x&user=tester-3&method=POST&header=x-app%3Aios", "an iOS POST"),
        ("path=/cart/x&user=tester-3", "no x-app"),
    ] {
        let (_, answer) = explain(&gateway, query).await;
        assert_proxied(&answer, what);
        assert_eq!(answer["route"], "cart", "{what}: {answer}");
        assert!(answer["rules"].is_null(), "{what}: the route taken has no rules: {answer}");
        assert_eq!(answer["version"], "v3", "{what}: tester-3 is whitelisted on cart's v3: {answer}");
    }

    // The proxy agrees: the iOS GET goes to cart-ios (v1's upstream), the others to cart's v3.
    let client = http_client();
    let ios = get(&client, &gateway.url("/cart/x"), &[("x-user-id", "tester-3"), ("x-app", "ios")]).await;
    assert_eq!((ios.status, ios.backend.as_str()), (200, "cart-v1"), "{ios:?}");
    let android = get(&client, &gateway.url("/cart/x"), &[("x-user-id", "tester-3"), ("x-app", "android")]).await;
    assert_eq!((android.status, android.backend.as_str()), (200, "cart-v3"), "{android:?}");
}

/// On an `https_redirect` route explain answers what the plain listener
/// does, a 308 to the TLS listener, and over TLS that the request is proxied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_of_an_https_redirect_route_says_308_over_plain_http_and_proxy_over_tls() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (gateway, tls, _, _) = start_tls_gateway(&pki, &backend, "https_redirect = true").await;

    let (status, answer) = explain(&gateway, "path=/cart/x%3Fa%3D1&host=shop.test").await;
    assert_eq!(status, 200, "{answer}");
    assert_responds(&answer, 308, "redirect", "plain http on a redirect route");
    assert_eq!(answer["route"], "app", "{answer}");
    let (_, answer) = explain(&gateway, "path=/cart/x%3Fa%3D1&host=shop.test&tls=1").await;
    assert_proxied(&answer, "the same request over TLS");
    assert_eq!(answer["route"], "app", "{answer}");

    // The proxy agrees.
    let no_follow =
        reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let plain_port = gateway.listen_addr().port();
    let response = no_follow
        .get(gateway.url("/cart/x?a=1"))
        .header("host", format!("shop.test:{plain_port}"))
        .send()
        .await
        .expect("plain request");
    assert_eq!(response.status().as_u16(), 308);
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(location, format!("https://shop.test:{}/cart/x?a=1", tls.port()));
    assert_eq!(backend.requests(), 0, "explain and the redirect never reach the upstream");
}
