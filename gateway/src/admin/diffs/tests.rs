//! Tests of the routing, and across the API and the pages on one sample record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;

use super::api::{summary_routes, Live};
use super::handles;
use super::page::{record_page_context, render, summary_page_context};
use super::since::unix_ms;
use crate::shadow::{DiffRecord, DiffStore, NoiseTracker, StoredDiff};

#[test]
fn only_the_diff_paths_are_handled() {
    for p in ["/api/diffs", "/api/diffs/summary", "/api/diffs/12", "/diffs", "/diffs/12"] {
        assert!(handles(p), "{p}");
    }
    for p in ["/api/diffsx", "/diffsx", "/api/status", "/"] {
        assert!(!handles(p), "{p}");
    }
}

fn record() -> DiffRecord {
    DiffRecord {
        id: 7,
        at_unix_ms: 1_777_777_777_000,
        route: "cart".into(),
        request_id: "req-1".into(),
        method: "GET".into(),
        path: "/cart/items?x=<b>".into(),
        primary: "v1".into(),
        stable_version: "v1".into(),
        canary_version: "v3".into(),
        stable_status: 200,
        canary_status: 200,
        stable_latency_ms: 1.25,
        canary_latency_ms: 2.5,
        outcome: "different".into(),
        weight: 1,
        diffs: vec![
            StoredDiff { path: "$.items[2].price".into(), stable: json!(10), canary: json!(12), noise: false },
            StoredDiff { path: "$.ts".into(), stable: json!(1), canary: json!(2), noise: true },
        ],
        request_headers: vec![("x-user-id".into(), "<script>alert(1)</script>".into())],
        request_body: String::new(),
        stable_body: r#"{"items":[{"price":5},{"price":7},{"price":10}],"ts":1}"#.into(),
        canary_body: r#"{"items":[{"price":5},{"price":7},{"price":12}],"ts":2,"note":"<img src=x>"}"#.into(),
    }
}

#[test]
fn the_record_page_marks_the_differing_lines_and_escapes_everything() {
    let page = render("diff_record.html", &record_page_context(&record(), &NoiseTracker::new())).expect("render");
    assert!(page.contains("<mark data-path=\"$.items[2].price\""), "{page}");
    assert!(page.contains("&quot;price&quot;: 12</mark>"), "{page}");
    assert!(page.contains("&quot;price&quot;: 10</mark>"), "{page}");
    assert!(!page.contains("<script>alert"), "header values are escaped");
    assert!(!page.contains("<img src=x>"), "bodies are escaped");
    assert!(page.contains("&lt;script&gt;alert(1)"), "shown, escaped");
    assert!(page.contains("1.2 ms") || page.contains("1.3 ms"));
}

#[test]
fn the_record_page_names_both_versions_and_the_one_compared_with() {
    let page = render("diff_record.html", &record_page_context(&record(), &NoiseTracker::new())).expect("render");
    assert!(page.contains("<th class=\"side stable\">v1</th><th class=\"side canary\">v3</th>"), "{page}");
    assert!(page.contains("<dt class=\"side canary\">v3</dt>"), "{page}");
    assert!(page.contains("client got <strong>v1</strong>, compared with <strong>v3</strong>"), "{page}");
    assert!(page.contains("v3 answer"), "{page}");
    assert!(!page.contains("Stable") && !page.contains("Canary"), "no fixed side labels: {page}");

    // A record stored before the names were kept is labelled as the shorthand named its sides.
    let old = DiffRecord {
        primary: "stable".into(),
        stable_version: String::new(),
        canary_version: String::new(),
        ..record()
    };
    let page = render("diff_record.html", &record_page_context(&old, &NoiseTracker::new())).expect("render");
    assert!(page.contains("<th class=\"side stable\">stable</th><th class=\"side canary\">canary</th>"), "{page}");
}

#[test]
fn the_summary_separates_noise_from_real_differences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DiffStore::open(&dir.path().join("d.sqlite"), Default::default()).expect("open"));
    let writer = store.writer(64);
    for i in 0..4 {
        let mut r = record();
        r.at_unix_ms = unix_ms(SystemTime::now()) - 1000 + i;
        assert!(writer.try_send(r));
    }
    writer.flush().expect("flush");
    let noise = NoiseTracker::new();
    let counter = |route: &str, outcome: &str| if (route, outcome) == ("cart", "dropped") { 3 } else { 1 };
    let live = Live { noise: &noise, shadowed_routes: vec!["cart".into(), "idle".into()], counter: &counter };
    let routes = summary_routes(&store, &live, None, None).expect("summary");
    assert_eq!(routes.len(), 2, "a shadowed route without records is listed too");
    let cart = &routes[0];
    assert_eq!(
        (cart["shadowed"].as_u64(), cart["dropped"].as_u64(), cart["skipped"].as_u64()),
        (Some(4), Some(3), Some(2))
    );
    let paths = cart["paths"].as_array().expect("paths");
    let find = |p: &str| paths.iter().find(|x| x["path"] == p).expect(p).clone();
    assert_eq!(find("$.items[2].price")["noise"], false);
    assert_eq!(find("$.ts")["noise"], true);
    assert_eq!(find("$.ts")["noise_source"], "recorded", "no live verdict yet");
    assert_eq!(find("$.ts")["rate"], 1.0);
    assert_eq!(cart["regression_paths"], 1);
    assert_eq!(routes[1]["route"], "idle");
    let one = summary_routes(&store, &live, Some("idle"), None).expect("summary");
    assert_eq!(one.len(), 1);

    let page =
        render("diffs.html", &summary_page_context(&routes, &HashMap::new(), &[], None, Some("1h"))).expect("render");
    let row = |p: &str| {
        let start = page.find(&format!("data-path=\"{p}\"")).expect(p);
        page[start..start + page[start..].find("</tr>").expect("row end")].to_string()
    };
    assert!(row("$.ts").contains("badge noise"), "{page}");
    assert!(!row("$.items[2].price").contains("badge noise"));
    assert!(row("$.items[2].price").contains("100.0%"));
    assert!(page.contains("value=\"1h\""));
}
