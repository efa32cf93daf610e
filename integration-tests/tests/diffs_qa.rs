//! QA's interfaces to the shadow diffs, end to end: two shop backends that
//! differ on purpose (`$.items[2].price` 10 vs 12, a random `$.ts` in both),
//! the gateway mirroring every request with a noise check, then the admin
//! API, the `gateway diffs` command and the HTML pages in a headless browser.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::shop::Shop;
use integration_tests::{http_client, run_cli, temp_dir, Gateway};
use serde_json::{json, Value};

const REQUESTS: u64 = 40;
const PRICE: &str = "$.items[2].price";

/// A JSON shop: `$.items[2].price` is `price`, `$.ts` random (18 digits) in every answer.
async fn shop(price: u32) -> SocketAddr {
    Shop { random_ts: true, ..Shop::new(price) }.start().await.0
}

/// Route `cart` with versions `v1` (the default, on `stable`) and `v2` (at
/// 0%, on `canary`), every request mirrored and noise-checked.
fn config(stable: SocketAddr, canary: SocketAddr) -> String {
    versions_config(&[("v1", stable, ""), ("v2", canary, "")], "percent = 100.0\nnoise_check = 1.0\n")
}

/// Route `cart` with `versions` as (name, backend, whitelisted user or ""),
/// the first the default, the others at 0%; `shadow` is `[routes.shadow]`'s body.
fn versions_config(versions: &[(&str, SocketAddr, &str)], shadow: &str) -> String {
    let mut upstreams = String::new();
    let mut entries = String::new();
    for (name, addr, user) in versions {
        upstreams.push_str(&format!("[upstreams.cart-{name}]\nbackends = [\"{addr}\"]\n"));
        let whitelist = if user.is_empty() { String::new() } else { format!(", whitelist_users = [\"{user}\"]") };
        entries.push_str(&format!("  {{ name = \"{name}\", upstream = \"cart-{name}\"{whitelist} }},\n"));
    }
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
[admin]
listen = "{{admin}}"
[shadow]
store = "{{dir}}/diffs.sqlite"
max_stored_body = "4KiB"
{upstreams}
[[routes]]
name = "cart"
path_prefix = "/cart"
versions = [
{entries}]
[routes.shadow]
{shadow}"#
    )
}

async fn admin_json(gateway: &Gateway, path: &str) -> (u16, Value) {
    let resp = gateway.admin_request(reqwest::Method::GET, path).send().await.expect("admin request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A gateway shadowing `cart` to backends that differ on purpose, after
/// [`REQUESTS`] requests have been compared and stored.
async fn seeded_gateway() -> Gateway {
    let (stable, canary) = (shop(10).await, shop(12).await);
    let gateway = Gateway::start(&config(stable, canary)).await;
    for i in 0..REQUESTS {
        let resp = http_client()
            .get(gateway.url("/cart/items"))
            .header("x-user-id", format!("u{i}"))
            .send()
            .await
            .expect("request through the gateway");
        assert_eq!(resp.status(), 200);
        // One at a time, so the noise tracker sees the comparisons in order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway
        .eventually("every shadow is compared and stored", Duration::from_secs(20), || async {
            let (status, body) = admin_json(&gateway, "/api/diffs/summary?route=cart").await;
            status == 200 && body["routes"][0]["shadowed"].as_u64() >= Some(REQUESTS)
        })
        .await;
    gateway
}

fn path_entry<'a>(route: &'a Value, path: &str) -> &'a Value {
    let paths = route["paths"].as_array().expect("paths");
    paths.iter().find(|p| p["path"] == path).unwrap_or_else(|| panic!("{path} not in {route:#}"))
}

async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("run the CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_reads_which_fields_differ_how_often_and_which_are_noise() {
    let gateway = seeded_gateway().await;

    // The summary: the price differs on every request and is real; $.ts is noise.
    let (status, summary) = admin_json(&gateway, "/api/diffs/summary?route=cart&since=1h").await;
    assert_eq!(status, 200, "{summary}");
    let cart = &summary["routes"][0];
    assert_eq!(cart["route"], "cart");
    assert_eq!(cart["shadowed"].as_u64(), Some(REQUESTS), "{cart:#}");
    assert_eq!(cart["different"].as_u64(), Some(REQUESTS), "the price makes every request differ: {cart:#}");
    assert_eq!((cart["errors"].as_u64(), cart["timeouts"].as_u64()), (Some(0), Some(0)));
    assert_eq!((cart["dropped"].as_u64(), cart["skipped"].as_u64()), (Some(0), Some(0)));
    let price = path_entry(cart, PRICE);
    let rate = price["rate"].as_f64().expect("rate");
    assert!((rate - 1.0).abs() < 0.05, "{PRICE} differs on every request: {price}");
    assert_eq!(price["noise"], false, "{price}");
    assert_eq!(price["class"], "real", "the live classifier has a verdict after {REQUESTS} noise checks");
    let ts = path_entry(cart, "$.ts");
    assert_eq!(ts["noise"], true, "$.ts differs between two answers of one version: {ts}");
    assert_eq!(cart["paths"].as_array().map(Vec::len), Some(2), "only the price and $.ts differ: {cart:#}");
    assert_eq!(cart["regression_paths"], 1, "only the price counts as a regression");
    let example = price["example_id"].as_i64().expect("example id");

    // The window: nothing since a future time (the route is still listed), a bad `since` is a 400.
    let (_, later) = admin_json(&gateway, "/api/diffs/summary?since=2099-01-01T00:00:00Z").await;
    assert_eq!(later["routes"][0]["shadowed"], 0, "{later}");
    let (status, bad) = admin_json(&gateway, "/api/diffs/summary?since=yesterday").await;
    assert_eq!(status, 400, "{bad}");

    // The list, filtered by the differing path, newest first, limited.
    let resp = gateway
        .admin_request(reqwest::Method::GET, "/api/diffs")
        .query(&[("route", "cart"), ("path", PRICE), ("limit", "5")])
        .send()
        .await
        .expect("list");
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.expect("json");
    let records = list["records"].as_array().expect("records");
    assert_eq!(records.len(), 5, "{list}");
    assert!(records.windows(2).all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()), "newest first");
    assert!(records.iter().all(|r| r["route"] == "cart" && r["diff_count"].as_u64() >= Some(2)), "{list}");
    let (_, capped) = admin_json(&gateway, "/api/diffs?limit=5000").await;
    assert_eq!(capped["limit"], 1000);
    assert_eq!(capped["count"].as_u64(), Some(REQUESTS));

    // One record, whole.
    let (status, record) = admin_json(&gateway, &format!("/api/diffs/{example}")).await;
    assert_eq!(status, 200, "{record}");
    let diff = record["diffs"].as_array().expect("diffs").iter().find(|d| d["path"] == PRICE).expect("price diff");
    assert_eq!((&diff["stable"], &diff["canary"]), (&json!(10), &json!(12)));
    assert!(record["stable_body"].as_str().is_some_and(|b| b.contains("\"price\":10")), "{record}");
    assert!(record["at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let (status, _) = admin_json(&gateway, "/api/diffs/999999").await;
    assert_eq!(status, 404);
    let (status, _) = admin_json(&gateway, "/api/diffs/abc").await;
    assert_eq!(status, 400);
    let resp = gateway.admin_request(reqwest::Method::POST, "/api/diffs/summary").send().await.expect("post");
    assert_eq!(resp.status(), 405);

    // The terminal: the price path, and $.ts marked as noise.
    let config = gateway.config_path().display().to_string();
    let out = cli(vec!["diffs".into(), "-c".into(), config.clone(), "--route".into(), "cart".into()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |p: &str| text.lines().find(|l| l.trim_start().starts_with(p)).unwrap_or_else(|| panic!("{p}:\n{text}"));
    assert!(line(PRICE).contains("100.0%") && !line(PRICE).contains("NOISE"), "{text}");
    assert!(line("$.ts").trim_end().ends_with("NOISE"), "{text}");
    assert!(text.contains(&format!("shadowed {REQUESTS}")), "{text}");

    let out = cli(vec!["diffs".into(), "-c".into(), config.clone(), "--show".into(), example.to_string()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("{PRICE}\n      v1: 10\n      v2: 12")), "{text}");
    assert!(text.contains("  v1 200 in ") && text.contains("   v2 200 in "), "each side named by its version:\n{text}");
    assert!(text.contains("$.ts  NOISE"), "{text}");

    let out = cli(vec!["diffs".into(), "-c".into(), config, "--show".into(), "999999".into()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shadowed_route_the_diff_endpoints_say_so() {
    let (stable, canary) = (shop(10).await, shop(12).await);
    let text = config(stable, canary).replace("[routes.shadow]\npercent = 100.0\nnoise_check = 1.0\n", "");
    let gateway = Gateway::start(&text).await;
    let (status, body) = admin_json(&gateway, "/api/diffs/summary").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("no shadow diff store")), "{body}");
    let resp = gateway.admin_request(reqwest::Method::GET, "/diffs").send().await.expect("page");
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.expect("html").contains("no shadow diff store"));
}

/// A record says which version answered the client and which one it was
/// compared with, and the API and pages label both sides by version name:
/// with three versions, "stable" and "canary" would not say which is which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_names_the_version_that_answered_and_the_one_it_was_compared_with() {
    let (v1, v2, v3) = (shop(10).await, shop(20).await, shop(30).await);
    let versions = [("v1", v1, ""), ("v2", v2, "to-v2"), ("v3", v3, "to-v3")];
    let gateway = Gateway::start(&versions_config(&versions, "percent = 100.0\n")).await;
    // (user, the version that answers, the one compared with; v1 is `against`, always the stable side)
    let expected = [("on-v1", "v1", "v2"), ("to-v2", "v2", "v1"), ("to-v3", "v3", "v1")];
    for (user, _, _) in expected {
        let resp = http_client().get(gateway.url("/cart/items")).header("x-user-id", user).send().await.expect("get");
        assert_eq!(resp.status(), 200, "{user}");
    }
    gateway
        .eventually("three records are stored", Duration::from_secs(20), || async {
            admin_json(&gateway, "/api/diffs?route=cart").await.1["count"].as_u64() >= Some(3)
        })
        .await;
    let (_, list) = admin_json(&gateway, "/api/diffs?route=cart").await;
    let records = list["records"].as_array().expect("records");
    for (user, primary, compared) in expected {
        let listed = records
            .iter()
            .find(|r| r["primary"] == primary)
            .unwrap_or_else(|| panic!("no record answered by {primary}: {list:#}"));
        let canary_side = if primary == "v1" { compared } else { primary };
        assert_eq!((&listed["stable_version"], &listed["canary_version"]), (&json!("v1"), &json!(canary_side)));

        let id = listed["id"].as_i64().expect("id");
        let (_, record) = admin_json(&gateway, &format!("/api/diffs/{id}")).await;
        assert!(record["request_headers"].to_string().contains(user), "{user}: {record}");
        assert_eq!(record["compared"], compared, "{user}: {record}");
        assert_eq!((&record["stable_version"], &record["canary_version"]), (&json!("v1"), &json!(canary_side)));

        let page = gateway.admin_request(reqwest::Method::GET, &format!("/diffs/{id}")).send().await.expect("page");
        let html = page.text().await.expect("html");
        let header = format!("<th class=\"side stable\">v1</th><th class=\"side canary\">{canary_side}</th>");
        assert!(html.contains(&header), "{user}: the diff table names both versions:\n{html}");
        let got = format!("client got <strong>{primary}</strong>, compared with <strong>{compared}</strong>");
        assert!(html.contains(&got), "{user}: {got:?} in\n{html}");
        assert!(!html.contains("Stable") && !html.contains("Canary"), "{user}: fixed side labels in\n{html}");
    }
    let page = gateway.admin_request(reqwest::Method::GET, "/diffs?route=cart").send().await.expect("page");
    let html = page.text().await.expect("html");
    let v3_row = "<span class=\"version\">v1</span> 200 · <span class=\"version\">v3</span> 200";
    assert!(html.contains(v3_row), "the summary's records name their versions:\n{html}");
}

// ---- the pages in a headless browser -----------------------------------------

/// The text of the element starting at `start` (up to its closing `</tag>`).
fn element_at<'a>(dom: &'a str, start: usize, tag: &str) -> &'a str {
    let end = dom[start..].find(&format!("</{tag}>")).map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

async fn screenshot(bin: &Path, dir: &Path, url: &str, name: &str, copy_to: &str) {
    let shot = dir.join(name);
    let args = [format!("--screenshot={}", shot.display()), "--window-size=1280,900".to_string()];
    integration_tests::browser::browse(bin, dir, &args, url).await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is not a real screenshot", shot.display());
    std::fs::copy(&shot, copy_to).unwrap_or_else(|e| panic!("copy to {copy_to}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diff_pages_show_the_difference_highlighted_and_the_noise_apart() {
    let Some(bin) = integration_tests::browser::chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI is set but chromium is missing: deploy/dev.sh setup installs it");
        eprintln!("skipped: chromium is not installed (apt-get install chromium; deploy/dev.sh setup does it)");
        return;
    };
    let gateway = seeded_gateway().await;
    let (_, summary) = admin_json(&gateway, "/api/diffs/summary?route=cart").await;
    let example = path_entry(&summary["routes"][0], PRICE)["example_id"].as_i64().expect("example id");
    let scratch = temp_dir();

    // The summary page: the price among the differences, $.ts with a noise badge.
    let page = gateway.admin_url("/diffs?route=cart&since=1h");
    let dom = integration_tests::browser::browse(&bin, scratch.path(), &["--dump-dom".to_string()], &page).await;
    let row = |path: &str| {
        let start = dom.find(&format!("data-path=\"{path}\"")).unwrap_or_else(|| panic!("no row for {path}:\n{dom}"));
        element_at(&dom, start, "tr").to_string()
    };
    assert!(row("$.ts").contains("class=\"badge noise\""), "{}", row("$.ts"));
    assert!(row(PRICE).contains("class=\"badge real\"") && !row(PRICE).contains("badge noise"), "{}", row(PRICE));
    assert!(row(PRICE).contains("100.0%"), "{}", row(PRICE));
    let noise_table = dom.find("<table class=\"paths noise\">").expect("a separate noise table");
    assert!(dom.find("data-path=\"$.ts\"").is_some_and(|i| i > noise_table), "$.ts is listed with the noise");
    assert!(dom.find(&format!("data-path=\"{PRICE}\"")).is_some_and(|i| i < noise_table), "the price is not");

    // The record page: the price lines of both answers inside <mark>.
    let record = gateway.admin_url(&format!("/diffs/{example}"));
    let dom = integration_tests::browser::browse(&bin, scratch.path(), &["--dump-dom".to_string()], &record).await;
    let marks: Vec<&str> = dom.match_indices("<mark").map(|(i, _)| element_at(&dom, i, "mark")).collect();
    let price_marks: Vec<&&str> = marks.iter().filter(|m| m.contains(&format!("data-path=\"{PRICE}\""))).collect();
    assert_eq!(price_marks.len(), 2, "one highlighted line per answer:\n{marks:#?}");
    assert!(price_marks[0].ends_with("\"price\": 10") && price_marks[1].ends_with("\"price\": 12"), "{price_marks:?}");
    assert!(marks.iter().any(|m| m.contains("class=\"noise\"") && m.contains("\"ts\": ")), "$.ts marked as noise");
    assert!(!marks.iter().any(|m| m.contains("\"price\": 7")), "unchanged prices are not marked");
    assert!(dom.contains("<td class=\"val stable\">10</td>") && dom.contains("<td class=\"val canary\">12</td>"));
    // The sides are labelled by version name: v1 answered, compared with v2.
    assert!(dom.contains("<th class=\"side stable\">v1</th><th class=\"side canary\">v2</th>"), "{dom}");
    assert!(dom.contains("<h3>v2 answer"), "the answers are headed by version name");
    assert!(dom.contains("compared with <strong>v2</strong>"), "{dom}");

    // Screenshots for people: under the test's temp dir, copied to /tmp.
    screenshot(&bin, scratch.path(), &page, "diffs-page.png", "/tmp/diffs-page.png").await;
    screenshot(&bin, scratch.path(), &record, "diffs-record.png", "/tmp/diffs-record.png").await;
}
