//! `gateway check` errors for routes no request could tell apart and for version shares.

use super::*;

// ---------------------------------------------------------------------------
// gateway check
// ---------------------------------------------------------------------------

const CHECK_HEAD: &str = r#"[server]
listen = ["127.0.0.1:18080"]

[admin]
listen = "127.0.0.1:19900"

[upstreams.a]
backends = ["127.0.0.1:9001"]

[upstreams.b]
backends = ["127.0.0.1:9002"]

[upstreams.c]
backends = ["127.0.0.1:9003"]
"#;

/// `gateway check -c <dir>/gateway.toml` on `text`: the exit code and
/// everything printed (stderr, then stdout).
fn check(text: &str) -> (Option<i32>, String) {
    let dir = temp_dir();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write the config");
    let out = run_cli(&["check", "-c", path.to_str().expect("temp paths are UTF-8")]);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(!printed.contains("panicked"), "check panicked:\n{printed}");
    (out.status.code(), printed)
}

/// `(line, key, whole line)` of every `error: ...gateway.toml:LINE: KEY: message` line.
fn located_errors(printed: &str) -> Vec<(usize, String, String)> {
    printed
        .lines()
        .filter(|l| l.trim_start().starts_with("error:"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("gateway.toml:")?;
            let (line, rest) = rest.split_once(": ")?;
            let line = line.parse().ok()?;
            let key = rest.split_once(": ").map_or(rest, |(k, _)| k);
            Some((line, key.to_string(), l.to_string()))
        })
        .collect()
}

/// 1-based line numbers of the first `versions = [` ... `]` block.
fn versions_block(text: &str) -> std::ops::RangeInclusive<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim_start().starts_with("versions = [")).expect("a versions block");
    let end = start + lines[start..].iter().position(|l| l.trim() == "]").expect("the block's end");
    (start + 1)..=(end + 1)
}

fn two_routes(first_rule: &str, second_rule: &str) -> String {
    format!(
        r#"{CHECK_HEAD}
[[routes]]
name = "cart-ios"
hosts = ["shop.example"]
path_prefix = "/cart"
headers = {{ "x-app" = "{first_rule}" }}
stable = "a"

[[routes]]
name = "cart-iphone"
hosts = ["shop.example"]
path_prefix = "/cart"
headers = {{ "x-app" = "{second_rule}" }}
stable = "b"
"#
    )
}

#[test]
fn check_refuses_two_routes_with_the_same_hosts_prefix_and_rules_and_names_both() {
    let (code, printed) = check(&two_routes("ios", "ios"));
    assert!(code.is_some_and(|c| c != 0), "check accepted two identical routes (exit {code:?}):\n{printed}");
    let names_both = located_errors(&printed).iter().any(|(_, _, line)| {
        (line.contains("cart-ios") || line.contains("routes[0]"))
            && (line.contains("cart-iphone") || line.contains("routes[1]"))
    });
    assert!(names_both, "no `file:line: key` error naming both cart-ios and cart-iphone:\n{printed}");

    // The same two routes with different rules are two reachable routes.
    let (code, printed) = check(&two_routes("ios", "android"));
    assert_eq!(code, Some(0), "routes that differ only in their rules are valid:\n{printed}");
}

fn versions_route(versions: &[&str]) -> String {
    let entries: String = versions.iter().map(|v| format!("  {v},\n")).collect();
    format!("{CHECK_HEAD}\n[[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\nversions = [\n{entries}]\n")
}

#[test]
fn check_refuses_a_percent_or_a_whitelist_on_the_default_version_naming_file_line_and_key() {
    for (default_entry, what) in [
        (r#"{ name = "v1", upstream = "a", percent = 10.0 }"#, "percent"),
        (r#"{ name = "v1", upstream = "a", whitelist_users = ["1001"] }"#, "whitelist"),
    ] {
        let text = versions_route(&[default_entry, r#"{ name = "v2", upstream = "b", percent = 5.0 }"#]);
        let (code, printed) = check(&text);
        assert!(code.is_some_and(|c| c != 0), "check accepted a {what} on the default version:\n{printed}");
        let block = versions_block(&text);
        let errors = located_errors(&printed);
        let named = errors.iter().any(|(line, key, whole)| {
            block.contains(line) && key.starts_with("routes[0].versions[0]") && whole.contains(what)
        });
        assert!(
            named,
            "no error `gateway.toml:<line in {block:?}>: routes[0].versions[0]...` about the {what}:\n{printed}"
        );
    }
    // Without them the same route is fine (the first version is the default).
    let text = versions_route(&[
        r#"{ name = "v1", upstream = "a" }"#,
        r#"{ name = "v2", upstream = "b", percent = 5.0, whitelist_users = ["1001"] }"#,
    ]);
    let (code, printed) = check(&text);
    assert_eq!(code, Some(0), "{printed}");
}

#[test]
fn check_refuses_version_percents_that_add_up_to_more_than_100_naming_file_line_and_key() {
    let over = versions_route(&[
        r#"{ name = "v1", upstream = "a" }"#,
        r#"{ name = "v2", upstream = "b", percent = 60.0 }"#,
        r#"{ name = "v3", upstream = "c", percent = 50.0 }"#,
    ]);
    let (code, printed) = check(&over);
    assert!(code.is_some_and(|c| c != 0), "check accepted 60% + 50%:\n{printed}");
    let block = versions_block(&over);
    let named = located_errors(&printed)
        .iter()
        .any(|(line, key, _)| block.contains(line) && key.starts_with("routes[0].versions"));
    assert!(named, "no error `gateway.toml:<line in {block:?}>: routes[0].versions...`:\n{printed}");

    // Exactly 100 is allowed: the two lanes meet.
    let full = over.replace("percent = 50.0", "percent = 40.0");
    let (code, printed) = check(&full);
    assert_eq!(code, Some(0), "60% + 40% is valid:\n{printed}");
}

/// Two routes on one prefix, any host, the first listed first in the file.
fn listed_in_order(first: (&str, &str), second: (&str, &str)) -> String {
    format!(
        r#"{CHECK_HEAD}
[[routes]]
name = "{}"
path_prefix = "/cart"
{}
stable = "a"

[[routes]]
name = "{}"
path_prefix = "/cart"
{}
stable = "b"
"#,
        first.0, first.1, second.0, second.1
    )
}

/// 1-based line of the first line of `text` equal to `wanted` after the nth
/// (0-based) `[[routes]]` header.
fn line_in_route(text: &str, route: usize, wanted: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().enumerate().filter(|(_, l)| l.trim() == "[[routes]]").nth(route).expect("the route").0;
    header + 1 + lines[header..].iter().position(|l| l.trim() == wanted).expect("the line")
}

#[test]
fn check_refuses_a_route_an_earlier_route_with_a_wider_rule_always_takes() {
    let any_app = ("cart-any-app", r#"headers = { "x-app" = "*" }"#);
    let ios = ("cart-ios", r#"headers = { "x-app" = "ios" }"#);
    let text = listed_in_order(any_app, ios);
    let (code, printed) = check(&text);
    assert_eq!(code, Some(1), "x-app = \"*\" listed before x-app = \"ios\" on /cart:\n{printed}");
    let prefix_line = line_in_route(&text, 1, r#"path_prefix = "/cart""#);
    let named = located_errors(&printed).iter().any(|(line, key, whole)| {
        *line == prefix_line
            && key == "routes[1].path_prefix"
            && whole.contains("cart-any-app")
            && whole.contains("cart-ios")
    });
    assert!(named, "no `gateway.toml:{prefix_line}: routes[1].path_prefix: ...` naming both routes:\n{printed}");

    // Listed the other way round, the narrower route is tried first: both are reachable.
    let (code, printed) = check(&listed_in_order(ios, any_app));
    assert_eq!(code, Some(0), "x-app = \"ios\" before x-app = \"*\" is valid:\n{printed}");
}

#[test]
fn check_refuses_shadowed_routes_by_method_and_regex_and_reports_them_all_at_once() {
    let text = format!(
        r#"{CHECK_HEAD}
[[routes]]
name = "read-write"
path_prefix = "/orders"
methods = ["GET", "POST"]
stable = "a"

[[routes]]
name = "read-only"
path_prefix = "/orders"
methods = ["GET"]
stable = "b"

[[routes]]
name = "apple"
path_prefix = "/cart"
headers = {{ "x-app" = "~^(ios|ipad)$" }}
stable = "a"

[[routes]]
name = "ipad"
path_prefix = "/cart"
headers = {{ "x-app" = "ipad" }}
stable = "b"

[[routes]]
name = "android"
path_prefix = "/cart"
headers = {{ "x-app" = "android" }}
stable = "c"
"#
    );
    let (code, printed) = check(&text);
    assert_eq!(code, Some(1), "{printed}");
    let errors = located_errors(&printed);
    let reported = |shadowed: &str, by: &str, key: &str| {
        errors.iter().any(|(_, k, whole)| k == key && whole.contains(shadowed) && whole.contains(by))
    };
    assert!(reported("read-only", "read-write", "routes[1].path_prefix"), "GET is inside GET, POST:\n{printed}");
    assert!(reported("ipad", "apple", "routes[3].path_prefix"), "\"ipad\" matches ~^(ios|ipad)$:\n{printed}");
    assert!(!printed.contains("routes[4]"), "android is reachable:\n{printed}");
}

#[test]
fn check_accepts_a_narrower_route_the_router_tries_first() {
    // More conditions are tried first, whatever the file order; another host
    // list or another prefix is another set of requests.
    let text = format!(
        r#"{CHECK_HEAD}
[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "a"

[[routes]]
name = "cart-beta"
path_prefix = "/cart"
cookies = {{ "beta" = "1" }}
stable = "b"

[[routes]]
name = "cart-shop"
hosts = ["shop.example"]
path_prefix = "/cart"
stable = "c"

[[routes]]
name = "checkout"
path_prefix = "/cart/checkout"
stable = "c"
"#
    );
    let (code, printed) = check(&text);
    assert_eq!(code, Some(0), "{printed}");
}

/// The iOS route `check` and explain are asked about: same prefix as `cart`,
/// two rules, on v1's upstream.
pub(super) const IOS_ROUTE: &str = r#"
[[routes]]
name = "cart-ios"
path_prefix = "/cart"
methods = ["GET"]
headers = { "x-app" = "ios" }
stable = "cart-v1"
"#;

/// `[start, end)` from a `check` version line `... 20.00%, buckets [8000, 10000) ...`.
fn bucket_range(line: &str) -> std::ops::Range<u64> {
    let (_, rest) = line.split_once("buckets [").unwrap_or_else(|| panic!("no bucket range in {line:?}"));
    let (range, _) = rest.split_once(')').unwrap_or_else(|| panic!("no end of the range in {line:?}"));
    let (start, end) = range.split_once(", ").unwrap_or_else(|| panic!("not `start, end`: {line:?}"));
    let number = |n: &str| n.trim().parse::<u64>().unwrap_or_else(|_| panic!("not a bucket: {n:?} in {line:?}"));
    number(start)..number(end)
}

/// What `check` prints is what the running gateway does: the rules of the
/// route with rules, and v3's bucket range, which holds exactly the buckets
/// of the users the proxy sends to v3 by bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_rules_and_the_bucket_range_the_proxy_uses_for_each_version() {
    let trio = Trio::start().await;
    let gateway = Gateway::start(&Cart::new(30.0, 20.0).more(IOS_ROUTE).text(&trio)).await;
    let config = gateway.config_path().to_str().expect("temp paths are UTF-8").to_string();
    let out = tokio::task::spawn_blocking(move || run_cli(&["check", "-c", &config])).await.expect("check");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = printed.lines().map(str::trim).collect();

    let ios =
        lines.iter().position(|l| l.starts_with("cart-ios ")).unwrap_or_else(|| panic!("no cart-ios:\n{printed}"));
    assert_eq!(lines[ios + 1], "rules methods[GET] headers[x-app=ios] query[] cookies[]", "{printed}");
    let cart = lines.iter().position(|l| l.starts_with("cart ")).unwrap_or_else(|| panic!("no cart:\n{printed}"));
    assert!(!lines[cart + 1].starts_with("rules"), "cart has no rules:\n{printed}");

    let version_line = |name: &str| {
        let prefix = format!("version {name} ");
        lines[cart..]
            .iter()
            .find(|l| l.starts_with(&prefix))
            .copied()
            .unwrap_or_else(|| panic!("no {name}:\n{printed}"))
    };
    let v3 = version_line("v3");
    assert!(v3.contains("-> cart-v3") && v3.contains("20.00%"), "{v3}");
    let v3_range = bucket_range(v3);
    assert_eq!(v3_range.end - v3_range.start, 2_000, "20% of 10,000 buckets: {v3}");
    let v2_range = bucket_range(version_line("v2"));
    assert_eq!(v2_range.end - v2_range.start, 3_000, "30% of 10,000 buckets");
    assert!(version_line("v1").contains("default"), "{printed}");
    // The running gateway reports the same ranges.
    let status = gateway.status().await;
    let cart_status = status["routes"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "cart")).cloned();
    let versions = cart_status.map(|c| c["versions"].clone()).unwrap_or_default();
    for (name, range) in [("v2", &v2_range), ("v3", &v3_range)] {
        let reported = versions.as_array().and_then(|v| v.iter().find(|v| v["name"] == name)).map(|v| &v["buckets"]);
        assert_eq!(reported, Some(&serde_json::json!([range.start, range.end])), "{name} in {status}");
    }

    // Every user the proxy bucketed onto a version has a bucket in that version's range.
    let served = serve_users(&gateway, "/cart", &users(80)).await;
    assert_header_matches_backend(&served);
    let mut seen = HashSet::new();
    for (user, s) in &served {
        let (_, answer) = explain(&gateway, &format!("path=/cart&user={user}")).await;
        assert_eq!(answer["version"], s.version.as_str(), "{user}: {answer}");
        let bucket = answer["bucket"].as_u64().unwrap_or_else(|| panic!("{user}: no bucket in {answer}"));
        let (in_v2, in_v3) = (v2_range.contains(&bucket), v3_range.contains(&bucket));
        let expected = match (in_v2, in_v3) {
            (true, _) => "v2",
            (_, true) => "v3",
            _ => "v1",
        };
        assert_eq!(s.version, expected, "{user}: bucket {bucket}, v2 {v2_range:?}, v3 {v3_range:?}");
        seen.insert(expected);
    }
    assert_eq!(seen.len(), 3, "80 users cover all three ranges: {seen:?}");
}
