//! Field patterns as QA writes them in `ignore_fields` / `array_sets`.

use super::pattern::{render_path, FieldPattern, PathSeg};

use PathSeg::{Index as I, Key as K};

fn pat(s: &str) -> FieldPattern {
    FieldPattern::parse(s).expect("valid pattern")
}

#[test]
fn dotted_names_match_exactly_that_path() {
    let p = pat("$.meta.trace_id");
    assert!(p.matches(&[K("meta"), K("trace_id")]));
    assert!(!p.matches(&[K("meta")]), "a parent is not the field");
    assert!(!p.matches(&[K("meta"), K("trace_id"), K("x")]), "a child is pruned by the diff, not matched");
    assert!(!p.matches(&[K("other"), K("trace_id")]));
    assert!(pat("$").matches(&[]));
    assert!(!pat("$").matches(&[K("a")]));
}

#[test]
fn brackets_indexes_and_wildcards() {
    assert!(pat("$.meta[\"weird key\"]").matches(&[K("meta"), K("weird key")]));
    assert!(pat("$['a.b']").matches(&[K("a.b")]));
    assert!(pat("$.items[3]").matches(&[K("items"), I(3)]));
    assert!(!pat("$.items[3]").matches(&[K("items"), I(2)]));
    assert!(!pat("$.items[3]").matches(&[K("items"), K("3")]), "an index is not a key");
    for p in ["$.items[*].price", "$.items.*.price"] {
        assert!(pat(p).matches(&[K("items"), I(7), K("price")]), "{p}");
        assert!(pat(p).matches(&[K("items"), K("x"), K("price")]), "{p}: any key too");
        assert!(!pat(p).matches(&[K("items"), K("price")]), "{p}: exactly one level");
    }
}

#[test]
fn double_dot_finds_a_key_at_any_depth() {
    let p = pat("$..timestamp");
    assert!(p.matches(&[K("timestamp")]));
    assert!(p.matches(&[K("meta"), K("timestamp")]));
    assert!(p.matches(&[K("items"), I(4), K("audit"), K("timestamp")]));
    assert!(!p.matches(&[K("timestamp"), K("seconds")]));
    assert!(!p.matches(&[K("meta"), K("timestamps")]));
    let q = pat("$.items..id");
    assert!(q.matches(&[K("items"), I(0), K("sku"), K("id")]));
    assert!(!q.matches(&[K("order"), K("id")]));
    assert!(pat("$..[0]").matches(&[K("a"), K("b"), I(0)]));
}

#[test]
fn malformed_patterns_are_config_errors() {
    for bad in ["", "meta.trace_id", "$.", "$..", "$...a", "$a", "$.a[", "$.a[x]", "$.a[\"b]", "$.a[\"b\"", "$.a]b"] {
        let err = FieldPattern::parse(bad).expect_err(bad);
        assert!(err.contains(&format!("{bad:?}")), "the error names the pattern: {err}");
    }
}

#[test]
fn reported_paths_read_back_as_patterns_for_themselves() {
    let paths: Vec<(Vec<PathSeg>, &str)> = vec![
        (vec![], "$"),
        (vec![K("items"), I(2), K("price")], "$.items[2].price"),
        (vec![K("meta"), K("weird key")], "$.meta[\"weird key\"]"),
        (vec![K("a\"b\\c")], "$[\"a\\\"b\\\\c\"]"),
        (vec![K("")], "$[\"\"]"),
        (vec![K("1st"), K("a.b"), K("x-y"), K("_z")], "$[\"1st\"][\"a.b\"].x-y._z"),
    ];
    for (path, text) in paths {
        assert_eq!(render_path(&path), text);
        assert!(pat(text).matches(&path), "{text} selects the path it names");
    }
}
