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
