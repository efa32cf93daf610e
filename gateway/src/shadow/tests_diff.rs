//! What QA sees for a pair of answers: one entry per differing field, stable left.

use bytes::Bytes;
use serde_json::{json, Value};

use super::answer::{Answer, DiffOptions, FieldDiff};
use super::diff::{diff, MAX_LINE_DIFFS};
use super::json::MAX_JSON_DIFFS;
use super::pattern::FieldPattern;

fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    Answer {
        status,
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        body: body.into(),
        ..Answer::default()
    }
}

fn json_answer(v: &Value) -> Answer {
    answer(200, &[("Content-Type", "application/json")], v.to_string())
}

fn opts(ignore_fields: &[&str], array_sets: &[&str], tolerance: Option<f64>) -> DiffOptions {
    let parse = |l: &[&str]| l.iter().map(|p| FieldPattern::parse(p).expect("pattern")).collect();
    DiffOptions {
        ignore_fields: parse(ignore_fields),
        array_sets: parse(array_sets),
        numeric_tolerance: tolerance,
        ..DiffOptions::default()
    }
}

fn json_diff(a: Value, b: Value, o: &DiffOptions) -> Vec<(String, Value, Value)> {
    diff(&json_answer(&a), &json_answer(&b), o).into_iter().map(|d| (d.path, d.stable, d.canary)).collect()
}

fn fd(path: &str, stable: Value, canary: Value) -> (String, Value, Value) {
    (path.to_string(), stable, canary)
}

#[test]
fn equal_json_in_another_key_order_and_layout_is_identical() {
    let a = answer(200, &[], r#"{"id": 7, "items": [1, 2], "meta": {"a": true, "b": null}}"#);
    let b = answer(200, &[], "{\n  \"meta\": {\"b\": null, \"a\": true},\n  \"items\": [1,2], \"id\": 7.0\n}");
    assert_eq!(diff(&a, &b, &DiffOptions::default()), vec![]);
}

#[test]
fn status_and_headers() {
    let stable = answer(
        200,
        &[
            ("Content-Type", "text/plain"),
            ("Vary", "a"),
            ("vary", "b"),
            ("Date", "x"),
            ("Transfer-Encoding", "chunked"),
        ],
        "",
    );
    let canary = answer(503, &[("content-type", "text/plain"), ("VARY", "a, c"), ("Retry-After", "5")], "");
    let got = diff(&stable, &canary, &DiffOptions::default());
    let want = vec![
        FieldDiff { path: "status".into(), stable: json!(200), canary: json!(503) },
        FieldDiff { path: "header.vary".into(), stable: json!("a, b"), canary: json!("a, c") },
        FieldDiff { path: "header.retry-after".into(), stable: Value::Null, canary: json!("5") },
    ];
    assert_eq!(got, want, "date is ignored by default, framing always; names compare case-insensitively");
    let o = DiffOptions { ignore_headers: ["vary".to_string()].into(), ..DiffOptions::default() };
    let paths: Vec<String> = diff(&stable, &canary, &o).into_iter().map(|d| d.path).collect();
    assert_eq!(paths, ["status", "header.date", "header.retry-after"], "a route's list replaces the default only");
}

#[test]
fn json_fields_are_reported_by_path_stable_left() {
    let a = json!({"items": [{"price": 1}, {"price": 2}, {"price": 3.5}], "meta": {"weird key": "x"}, "gone": 1});
    let b = json!({"items": [{"price": 1}, {"price": 2}, {"price": 4}], "meta": {"weird key": "y"}, "new": [1]});
    let got = json_diff(a, b, &DiffOptions::default());
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.contains(&fd("$.items[2].price", json!(3.5), json!(4))));
    assert!(got.contains(&fd("$.meta[\"weird key\"]", json!("x"), json!("y"))));
    assert!(got.contains(&fd("$.gone", json!(1), Value::Null)));
    assert!(got.contains(&fd("$.new", Value::Null, json!([1]))));
}

#[test]
fn different_root_types_and_extra_elements() {
    assert_eq!(json_diff(json!([1]), json!({"a": 1}), &DiffOptions::default()), [fd("$", json!([1]), json!({"a": 1}))]);
    let got = json_diff(json!({"l": [1, 2]}), json!({"l": [1, 2, {"x": 3}]}), &DiffOptions::default());
    assert_eq!(got, [fd("$.l[2]", Value::Null, json!({"x": 3}))]);
    let got = json_diff(json!({"l": [1, 2]}), json!({"l": [1]}), &DiffOptions::default());
    assert_eq!(got, [fd("$.l[1]", json!(2), Value::Null)]);
}

#[test]
fn ignored_fields_and_their_subtrees_are_skipped() {
    let a = json!({"meta": {"trace_id": "a1", "n": 1}, "timestamp": 1, "items": [{"timestamp": 5, "q": 1}],
                   "debug": {"host": "s1", "ms": 3}});
    let b = json!({"meta": {"trace_id": "b2", "n": 1}, "timestamp": 2, "items": [{"timestamp": 6, "q": 2}],
                   "debug": {"host": "c9", "extra": true}});
    let o = opts(&["$.meta.trace_id", "$..timestamp", "$.debug"], &[], None);
    assert_eq!(json_diff(a, b, &o), [fd("$.items[0].q", json!(1), json!(2))]);
}

#[test]
fn numbers_within_tolerance_are_equal() {
    let within = opts(&[], &[], Some(0.001));
    assert_eq!(json_diff(json!({"p": 19.99}), json!({"p": 19.995}), &within), []);
    assert_eq!(json_diff(json!({"p": 1000}), json!({"p": 1000.9}), &within), [], "relative above 1");
    assert_eq!(json_diff(json!({"p": 0.0001}), json!({"p": 0.0009}), &within), [], "absolute below 1");
    assert_eq!(json_diff(json!({"p": 10}), json!({"p": 10.5}), &within).len(), 1);
    assert_eq!(json_diff(json!({"p": 0.001}), json!({"p": 0.003}), &within).len(), 1);
    let exact = DiffOptions::default();
    assert_eq!(json_diff(json!({"p": 19.99}), json!({"p": 19.990001}), &exact).len(), 1);
    let (big, bigger) = (json!({"n": 9_007_199_254_740_993u64}), json!({"n": 9_007_199_254_740_992u64}));
    assert_eq!(json_diff(big, bigger, &exact).len(), 1, "integers beyond f64 precision still compare exactly");
}

#[test]
fn set_arrays_ignore_order_but_not_multiplicity() {
    let o = opts(&["$..ts"], &["$.tags", "$.items"], None);
    assert_eq!(json_diff(json!({"tags": ["a", "b", "c"]}), json!({"tags": ["c", "a", "b"]}), &o), []);
    let got = json_diff(json!({"tags": ["a", "a", "b"]}), json!({"tags": ["b", "a", "b"]}), &o);
    assert_eq!(got, [fd("$.tags[*]", json!("a"), json!("b"))]);
    let got = json_diff(json!({"tags": ["a"]}), json!({"tags": ["a", "z"]}), &o);
    assert_eq!(got, [fd("$.tags[*]", Value::Null, json!("z"))]);
    // Elements match when equal under the options: here ignoring their timestamps.
    let a = json!({"items": [{"sku": 1, "ts": 10}, {"sku": 2, "ts": 11}]});
    let b = json!({"items": [{"sku": 2, "ts": 90}, {"sku": 1, "ts": 91}]});
    assert_eq!(json_diff(a, b, &o), []);
    let unlisted = DiffOptions::default();
    assert_eq!(json_diff(json!({"l": ["a", "b"]}), json!({"l": ["b", "a"]}), &unlisted).len(), 2, "by position");
}

#[test]
fn a_large_reordered_set_matches_in_linear_time() {
    let o = opts(&[], &["$"], None);
    let a: Vec<Value> = (0..20_000).map(|i| json!({"id": i})).collect();
    let b: Vec<Value> = a.iter().rev().cloned().collect();
    assert_eq!(json_diff(Value::Array(a), Value::Array(b), &o), []);
    // Not exactly equal, so found by the pairwise search after hashing missed them.
    let o = opts(&[], &["$"], Some(0.001));
    let a: Vec<Value> = (0..30).map(|i| json!(f64::from(i) * 10.0)).collect();
    let b: Vec<Value> = (0..30).rev().map(|i| json!(f64::from(i) * 10.0 + 0.0001)).collect();
    assert_eq!(json_diff(Value::Array(a), Value::Array(b.clone()), &o), []);
    let mut c = b;
    c[0] = json!(1e9);
    assert_eq!(
        json_diff(Value::Array(c.clone()), Value::Array(c[1..].to_vec()), &o),
        [fd("$[*]", json!(1e9), Value::Null)]
    );
}

#[test]
fn wholly_different_json_is_capped() {
    let a: serde_json::Map<String, Value> = (0..150).map(|i| (format!("f{i}"), json!(i))).collect();
    let b: serde_json::Map<String, Value> = (0..150).map(|i| (format!("f{i}"), json!(-i - 1))).collect();
    let got = json_diff(Value::Object(a), Value::Object(b), &DiffOptions::default());
    assert_eq!(got.len(), MAX_JSON_DIFFS + 1);
    let counts = json!({"differing": 150, "shown": MAX_JSON_DIFFS});
    assert_eq!(got.last(), Some(&fd("body:more", counts.clone(), counts)));
}

fn text_answer(s: &str) -> Answer {
    answer(200, &[("Content-Type", "text/plain")], s.to_string())
}

#[test]
fn text_bodies_are_diffed_by_line() {
    let got = diff(&text_answer("a\nb\nc\nd\n"), &text_answer("a\nb\nX\nd\n"), &DiffOptions::default());
    assert_eq!(got[0], FieldDiff { path: "body:line 3".into(), stable: json!("c"), canary: json!("X") });
    assert_eq!(got[1].path, "body:lines");
    assert_eq!(got[1].stable, json!({"lines": 4, "differing": 1}));
    assert_eq!(got.len(), 2);
    // One inserted line is one entry, not a shift of every line after it.
    let got = diff(&text_answer("a\nb\nc"), &text_answer("a\nnew\nb\nc"), &DiffOptions::default());
    assert_eq!(got[0], FieldDiff { path: "body:line 2".into(), stable: Value::Null, canary: json!("new") });
    assert_eq!(got[1].canary, json!({"lines": 4, "differing": 1}));
}

#[test]
fn many_differing_lines_are_capped_with_a_summary() {
    let a: String = (0..50).map(|i| format!("line {i}\n")).collect();
    let b: String = (0..50).map(|i| format!("LINE {i}\n")).collect();
    let got = diff(&text_answer(&a), &text_answer(&b), &DiffOptions::default());
    assert_eq!(got.len(), MAX_LINE_DIFFS + 1);
    assert_eq!(got[MAX_LINE_DIFFS - 1].path, format!("body:line {MAX_LINE_DIFFS}"));
    assert_eq!(got[MAX_LINE_DIFFS].stable, json!({"lines": 50, "differing": 50}));
}

#[test]
fn json_against_an_error_page_is_a_text_diff() {
    let stable = json_answer(&json!({"ok": true}));
    let canary = answer(200, &[("Content-Type", "text/html")], "<html>oops</html>");
    let got = diff(&stable, &canary, &DiffOptions::default());
    let paths: Vec<&str> = got.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["header.content-type", "body:line 1", "body:lines"]);
    assert_eq!((&got[1].stable, &got[1].canary), (&json!("{\"ok\":true}"), &json!("<html>oops</html>")));
}

#[test]
fn binary_bodies_compare_by_length_and_hash() {
    let stable = answer(200, &[], Bytes::from_static(b"abc\0"));
    let canary = answer(200, &[], Bytes::from_static(b"\xff\xfe"));
    let got = diff(&stable, &canary, &DiffOptions::default());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "body");
    assert_eq!(got[0].stable["len"], json!(4));
    assert_eq!(got[0].canary["len"], json!(2));
    let abc = diff(&answer(200, &[], Bytes::from_static(b"abc")), &canary, &DiffOptions::default());
    let sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(abc[0].stable, json!({"len": 3, "sha256": sha_abc}));
}

#[test]
fn large_or_truncated_bodies_compare_by_hash_only() {
    let o = DiffOptions { max_compare_body: 16, ..DiffOptions::default() };
    let a = json_answer(&json!({"a": 1, "padding": "xxxxxxxxxx"}));
    let b = json_answer(&json!({"a": 2, "padding": "xxxxxxxxxx"}));
    let got = diff(&a, &b, &o);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "body", "one hash entry instead of `$.a`");
    assert_eq!(diff(&a, &a.clone(), &o), []);
    let mut cut = json_answer(&json!({"a": 1}));
    cut.body_truncated = true;
    let got = diff(&cut, &json_answer(&json!({"a": 2})), &DiffOptions::default());
    assert_eq!(got[0].path, "body");
    assert_eq!(got[0].stable["truncated"], json!(true));
    assert_eq!(got[0].canary.get("truncated"), None);
}

#[test]
fn json_without_a_content_type_and_scalar_roots() {
    let got = diff(&answer(200, &[], "[1, 2]"), &answer(200, &[], "[1, 3]"), &DiffOptions::default());
    assert_eq!(got, [FieldDiff { path: "$[1]".into(), stable: json!(2), canary: json!(3) }]);
    let got = diff(&json_answer(&json!("a")), &json_answer(&json!("b")), &DiffOptions::default());
    assert_eq!(got, [FieldDiff { path: "$".into(), stable: json!("a"), canary: json!("b") }]);
}

#[test]
fn config_strings_build_options_or_name_the_error() {
    let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let o = DiffOptions::from_config(&strings(&["X-Request-Id"]), &strings(&["$..timestamp"]), Some(0.001), &[], 1024)
        .expect("valid");
    assert!(o.ignore_headers.contains("x-request-id"));
    let err = DiffOptions::from_config(&[], &strings(&["meta.x"]), None, &[], 1024).expect_err("bad pattern");
    assert!(err.contains("meta.x"), "{err}");
    assert!(DiffOptions::from_config(&[], &[], Some(-1.0), &[], 1024).is_err());
}
