//! Sticky anonymous users: the signed cookie, its attributes, stickiness across reloads and replicas, and TLS.

use super::*;

// ---------------------------------------------------------------------------
// Sticky anonymous users
// ---------------------------------------------------------------------------

/// A `Set-Cookie` value: name, value, and the attributes as written.
#[derive(Debug, Clone)]
struct SetCookie {
    name: String,
    value: String,
    attributes: Vec<String>,
}

impl SetCookie {
    fn parse(line: &str) -> SetCookie {
        let mut parts = line.split(';').map(str::trim);
        let (name, value) = parts.next().and_then(|p| p.split_once('=')).unwrap_or(("", ""));
        SetCookie {
            name: name.to_string(),
            value: value.to_string(),
            attributes: parts.filter(|p| !p.is_empty()).map(str::to_string).collect(),
        }
    }

    /// The attributes, lower-cased names, sorted: order is not part of the contract.
    fn attribute_set(&self) -> Vec<String> {
        let mut set: Vec<String> = self
            .attributes
            .iter()
            .map(|a| match a.split_once('=') {
                Some((k, v)) => format!("{}={v}", k.to_ascii_lowercase()),
                None => a.to_ascii_lowercase(),
            })
            .collect();
        set.sort();
        set
    }
}

/// The `Set-Cookie` headers of a response that set cookie `name`.
fn set_cookies(headers: &HeaderMap, name: &str) -> Vec<SetCookie> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(SetCookie::parse)
        .filter(|c| c.name == name)
        .collect()
}

/// `<16 hex>.<32 hex>`.
fn is_anon_value(value: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    value.split_once('.').is_some_and(|(id, mac)| hex(id, 16) && hex(mac, 32))
}

fn sorted(attributes: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = attributes.iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

/// One anonymous request: (version, backend, the `gw_anon` cookies set).
async fn anonymous_get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (String, String, Vec<SetCookie>) {
    let (status, response_headers, body) = get_json(client, url, headers).await;
    assert_eq!(status, 200, "GET {url} with {headers:?}: {body}");
    (
        header(&response_headers, VERSION_HEADER),
        body["backend"].as_str().unwrap_or("").to_string(),
        set_cookies(&response_headers, "gw_anon"),
    )
}

/// A cookie route: v2 holds `percent`.
fn cookie_route(percent: f64) -> String {
    route("cart", "/cart", percent, "anonymous = \"cookie\"", None)
}

/// `n` fresh visitors: each one's cookie value and the version of its first answer.
async fn fresh_visitors(gateway: &Gateway, n: usize) -> Vec<(String, String)> {
    let client = http_client();
    let url = gateway.url("/cart/x");
    let visitors: Vec<(String, String)> = stream::iter(0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (version, backend, cookies) = anonymous_get(&client, &url, &[]).await;
                assert_eq!((version.clone(), backend), on(&version), "the version header names the backend");
                assert_eq!(cookies.len(), 1, "a fresh visitor gets one gw_anon cookie: {cookies:?}");
                (cookies[0].value.clone(), version)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    visitors
}

/// The version each cookie holder gets now; asserts no new cookie is issued.
async fn versions_with_cookies(gateway: &Gateway, visitors: &[(String, String)]) -> Vec<String> {
    let client = http_client();
    let url = gateway.url("/cart/x");
    stream::iter(visitors.iter().cloned())
        .map(|(value, _)| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let cookie = format!("gw_anon={value}");
                let (version, backend, cookies) = anonymous_get(&client, &url, &[("cookie", &cookie)]).await;
                assert_eq!((version.clone(), backend), on(&version), "the version header names the backend");
                assert!(cookies.is_empty(), "a valid cookie {value} got a new one: {cookies:?}");
                version
            }
        })
        .buffered(8)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_visitor_gets_a_signed_cookie_and_keeps_its_version_with_it() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");

    let (first_version, backend, cookies) = anonymous_get(&client, &url, &[]).await;
    assert_eq!((first_version.clone(), backend), on(&first_version));
    assert_eq!(cookies.len(), 1, "one gw_anon Set-Cookie: {cookies:?}");
    let cookie = &cookies[0];
    assert!(is_anon_value(&cookie.value), "gw_anon=<16 hex>.<32 hex>, got {:?}", cookie.value);
    assert_eq!(
        cookie.attribute_set(),
        sorted(&["path=/", "max-age=7776000", "httponly", "samesite=Lax"]),
        "attributes of {cookie:?} (no Secure on plain HTTP)"
    );

    // Coming back with it: the same version every time, no new cookie.
    let with_cookie = format!("gw_anon={}", cookie.value);
    for i in 0..10 {
        let (version, backend, again) = anonymous_get(&client, &url, &[("cookie", &with_cookie)]).await;
        assert_eq!((version, backend), on(&first_version), "request {i} with the cookie");
        assert!(again.is_empty(), "request {i}: a valid cookie was replaced: {again:?}");
    }
    // Among other cookies too.
    let among = format!("theme=dark; {with_cookie}; lang=de");
    let (version, _, again) = anonymous_get(&client, &url, &[("cookie", &among)]).await;
    assert_eq!(version, first_version);
    assert!(again.is_empty(), "{again:?}");

    // A signed-in user is not anonymous: no cookie for them.
    let (_, _, for_user) = anonymous_get(&client, &url, &[("x-user-id", "u1")]).await;
    assert!(for_user.is_empty(), "a request with a user ID got an anonymous cookie: {for_user:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_anonymous_visitors_are_split_by_the_percent_and_each_stays_put() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let n = 200;
    let visitors = fresh_visitors(&gateway, n).await;
    let ids: HashSet<&str> = visitors.iter().map(|(value, _)| value.split('.').next().unwrap_or("")).collect();
    assert_eq!(ids.len(), n, "every visitor gets its own random ID");
    let on_v2 = visitors.iter().filter(|(_, v)| v == "v2").count();
    // 50% of 200: 100 ± 7 (one standard deviation); 60..=140 is beyond 5.
    assert!((60..=140).contains(&on_v2), "{on_v2} of {n} fresh visitors on v2 at 50%");
    assert_eq!(visitors.iter().filter(|(_, v)| v == "v1").count(), n - on_v2, "only v1 and v2 answer");

    let again = versions_with_cookies(&gateway, &visitors).await;
    let moved: Vec<_> = visitors.iter().zip(&again).filter(|((_, first), now)| first != *now).collect();
    assert!(moved.is_empty(), "{} visitors changed version on their second request: {moved:?}", moved.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anonymous_id_is_bucketed_like_a_user_id_with_the_same_salt() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");
    let visitors = fresh_visitors(&gateway, 40).await;
    for (value, version) in &visitors {
        let id = value.split('.').next().unwrap_or("");
        let (as_user, _) = served(&client, &url, &[("x-user-id", id)]).await;
        assert_eq!(&as_user, version, "cookie {value}: its ID {id} sent as x-user-id gets another version");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_anonymous_cookie_is_treated_as_absent() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");
    let (_, _, cookies) = anonymous_get(&client, &url, &[]).await;
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let good = cookies[0].value.clone();
    assert!(is_anon_value(&good), "{good}");
    let mac_at = good.find('.').expect("id.mac") + 1;

    let forged = [
        ("a char of the ID changed", flip_hex(&good, 0)),
        ("the last char of the ID changed", flip_hex(&good, mac_at - 2)),
        ("a char of the signature changed", flip_hex(&good, mac_at)),
        ("no signature", good[..mac_at - 1].to_string()),
        ("junk", "hello".to_string()),
    ];
    for (what, value) in forged {
        assert_ne!(value, good);
        let cookie = format!("gw_anon={value}");
        let (_, _, issued) = anonymous_get(&client, &url, &[("cookie", &cookie)]).await;
        assert_eq!(issued.len(), 1, "{what} ({value}): expected a new cookie, got {issued:?}");
        let fresh = &issued[0].value;
        assert!(is_anon_value(fresh), "{what}: {fresh}");
        assert_ne!(fresh, &value, "{what}: the forged value was signed back");
        assert_ne!(fresh, &good, "{what}");
        // The new cookie is honoured from then on.
        let (_, _, again) = anonymous_get(&client, &url, &[("cookie", &format!("gw_anon={fresh}"))]).await;
        assert!(again.is_empty(), "{what}: the newly issued cookie was not accepted: {again:?}");
    }
    // The untouched cookie is still fine.
    let (_, _, again) = anonymous_get(&client, &url, &[("cookie", &format!("gw_anon={good}"))]).await;
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_from_one_replica_is_honoured_by_another_with_the_same_key_only() {
    let (v1, v2) = backends().await;
    let text = config(v1.addr(), v2.addr(), "", &anonymous_cookie(""), &[cookie_route(50.0)]);
    let a = Gateway::start_in(dir_with_keys(), "gateway.toml", &text).await;
    let b = Gateway::start_in(dir_with_keys(), "gateway.toml", &text).await;
    let other_dir = dir_with_keys();
    std::fs::write(other_dir.path().join("anon.key"), "another-key-entirely-0123456789\n").expect("write anon.key");
    let other = Gateway::start_in(other_dir, "gateway.toml", &text).await;
    let client = http_client();

    for (value, version) in fresh_visitors(&a, 20).await {
        let cookie = format!("gw_anon={value}");
        let (on_b, _, issued) = anonymous_get(&client, &b.url("/cart/x"), &[("cookie", &cookie)]).await;
        assert_eq!(on_b, version, "replica b disagrees with a on cookie {value}");
        assert!(issued.is_empty(), "replica b replaced a's valid cookie {value}: {issued:?}");
        let (_, _, issued) = anonymous_get(&client, &other.url("/cart/x"), &[("cookie", &cookie)]).await;
        assert_eq!(issued.len(), 1, "a gateway with another key must not accept {value}: {issued:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_anonymous_cookie_serves_every_cookie_route_and_other_routes_set_none() {
    let (v1, v2) = backends().await;
    let routes = [
        cookie_route(50.0),
        route("checkout", "/checkout", 50.0, "anonymous = \"cookie\"", None),
        route("search", "/search", 50.0, "", None),
    ];
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &routes).await;
    let client = http_client();

    let (_, _, issued) = anonymous_get(&client, &gateway.url("/cart/x"), &[]).await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    let cookie = format!("gw_anon={}", issued[0].value);
    let (first, _, again) = anonymous_get(&client, &gateway.url("/checkout/pay"), &[("cookie", &cookie)]).await;
    assert!(again.is_empty(), "checkout replaced the cart's cookie: {again:?}");
    for _ in 0..5 {
        let (version, _, again) = anonymous_get(&client, &gateway.url("/checkout/pay"), &[("cookie", &cookie)]).await;
        assert_eq!(version, first, "sticky on checkout too");
        assert!(again.is_empty(), "{again:?}");
    }

    // anonymous = "default" (the default): no cookie, the default version.
    for _ in 0..5 {
        let (version, _, issued) = anonymous_get(&client, &gateway.url("/search/q"), &[]).await;
        assert_eq!(version, "v1", "an anonymous request on a default-policy route");
        assert!(issued.is_empty(), "a route without anonymous = \"cookie\" set one: {issued:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_the_percent_moves_cookie_holders_only_from_the_default_version() {
    let (v1, v2) = backends().await;
    let top = anonymous_cookie("");
    let gateway = start(&v1, &v2, "", &top, &[cookie_route(50.0)]).await;
    let n = 200;
    let visitors = fresh_visitors(&gateway, n).await;
    let at_50 = versions_with_cookies(&gateway, &visitors).await;

    // "I changed 50 to 80 and saved."
    let generation = gateway.generation().await;
    gateway.write_config(&config(v1.addr(), v2.addr(), "", &top, &[cookie_route(80.0)]));
    gateway.wait_for_generation(generation + 1).await;
    let at_80 = versions_with_cookies(&gateway, &visitors).await;

    let back: Vec<_> =
        visitors.iter().zip(at_50.iter().zip(&at_80)).filter(|(_, (a, b))| *a == "v2" && *b != "v2").collect();
    assert!(back.is_empty(), "{} cookie holders left v2 when its percent rose: {back:?}", back.len());
    let (v2_at_50, v2_at_80) =
        (at_50.iter().filter(|v| *v == "v2").count(), at_80.iter().filter(|v| *v == "v2").count());
    assert!(v2_at_80 > v2_at_50, "no one moved to v2: {v2_at_50} -> {v2_at_80}");
    // 80% of 200: 160 ± 5.7; 130..=190 is beyond 5 standard deviations.
    assert!((130..=190).contains(&v2_at_80), "{v2_at_80} of {n} cookie holders on v2 at 80%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_cookie_attributes_follow_the_config() {
    let (v1, v2) = backends().await;
    let top = anonymous_cookie("name = \"visitor\"\nmax_age = \"1d\"\nhttp_only = false\nsame_site = \"Strict\"");
    let gateway = start(&v1, &v2, "", &top, &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");
    let (status, headers, body) = get_json(&client, &url, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(set_cookies(&headers, "gw_anon").is_empty(), "the cookie is renamed");
    let cookies = set_cookies(&headers, "visitor");
    assert_eq!(cookies.len(), 1, "{headers:?}");
    assert!(is_anon_value(&cookies[0].value), "{:?}", cookies[0]);
    assert_eq!(cookies[0].attribute_set(), sorted(&["path=/", "max-age=86400", "samesite=Strict"]), "{:?}", cookies[0]);

    // It works under its own name.
    let version = header(&headers, VERSION_HEADER);
    let cookie = format!("visitor={}", cookies[0].value);
    for _ in 0..3 {
        let (status, again, _) = get_json(&client, &url, &[("cookie", &cookie)]).await;
        assert_eq!(status, 200);
        assert_eq!(header(&again, VERSION_HEADER), version);
        assert!(set_cookies(&again, "visitor").is_empty(), "{again:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_anonymous_cookie_as_the_reason() {
    let (v1, v2) = backends().await;
    let gateway = start(&v1, &v2, "", &anonymous_cookie(""), &[cookie_route(50.0)]).await;
    let client = http_client();
    let url = gateway.url("/cart/x");
    for (value, version) in fresh_visitors(&gateway, 4).await {
        let (again, _) = served(&client, &url, &[("cookie", &format!("gw_anon={value}"))]).await;
        assert_eq!(again, version);
        let report = explain(&gateway, &format!("path=/cart/x&ip=127.0.0.1&header=cookie%3Agw_anon%3D{value}")).await;
        assert_eq!(report["version"], version.as_str(), "{report}");
        assert_eq!(report["reason"], "anonymous-cookie", "{report}");
    }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_anonymous_cookie_is_marked_secure() {
    let (v1, v2) = backends().await;
    let ca = pki::Pki::new();
    let dir = dir_with_keys();
    pki::install(&dir.path().join("certs"), "shop", &ca.leaf(&["shop.test"]));
    let tls = free_addr();
    let top = format!(
        "[server.tls]\nlisten = [\"{tls}\"]\ncerts = [{{ cert = \"certs/shop.pem\", key = \"certs/shop.key\" }}]\n\
         http2 = true\n\n{}",
        anonymous_cookie("")
    );
    let text = config(v1.addr(), v2.addr(), "", &top, &[cookie_route(50.0)]);
    let gateway = Gateway::start_in(dir, "gateway.toml", &text).await;
    let url = format!("https://shop.test:{}/cart/x", tls.port());
    let expected = sorted(&["path=/", "max-age=7776000", "httponly", "samesite=Lax", "secure"]);

    for (protocol, client) in [
        ("HTTP/2", pki::tls_client(&ca, &["shop.test"], tls).build().expect("h2 client")),
        ("HTTP/1.1", pki::tls_client(&ca, &["shop.test"], tls).http1_only().build().expect("h1 client")),
    ] {
        let response = client.get(&url).send().await.unwrap_or_else(|e| panic!("{protocol} over TLS: {e}"));
        assert_eq!(response.status(), 200, "{protocol}");
        let cookies = set_cookies(response.headers(), "gw_anon");
        assert_eq!(cookies.len(), 1, "{protocol}: {:?}", response.headers());
        assert!(is_anon_value(&cookies[0].value), "{protocol}: {:?}", cookies[0]);
        assert_eq!(cookies[0].attribute_set(), expected, "{protocol}: {:?}", cookies[0]);
    }

    // The plain listener of the same gateway: no Secure.
    let (_, _, plain) = anonymous_get(&http_client(), &gateway.url("/cart/x"), &[]).await;
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(plain[0].attribute_set(), sorted(&["path=/", "max-age=7776000", "httponly", "samesite=Lax"]));
}
