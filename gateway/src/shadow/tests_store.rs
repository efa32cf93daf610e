//! The store as the admin API and QA use it: written through the queue,
//! read back after a restart, trimmed, and never holding secrets.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::store::{
    body_text, now_unix_ms, outcome, redact, DiffRecord, DiffStore, Retention, StoredDiff, SCHEMA_VERSION,
};
use super::store_writer::DiffWriter;

const HOUR_MS: i64 = 3_600_000;

fn record(route: &str, at: i64, outcome: &str, diff_paths: &[(&str, bool)]) -> DiffRecord {
    DiffRecord {
        at_unix_ms: at,
        route: route.into(),
        request_id: format!("req-{at}"),
        method: "GET".into(),
        path: "/cart/1".into(),
        primary: "stable".into(),
        stable_status: 200,
        canary_status: 200,
        stable_latency_ms: 12.5,
        canary_latency_ms: 14.0,
        outcome: outcome.into(),
        weight: 1,
        diffs: diff_paths
            .iter()
            .map(|(p, noise)| StoredDiff {
                path: p.to_string(),
                stable: json!(1),
                canary: json!({"v": 2}),
                noise: *noise,
            })
            .collect(),
        request_headers: vec![("accept".into(), "application/json".into())],
        request_body: String::new(),
        stable_body: "{\"total\":1}".into(),
        canary_body: "{\"total\":2}".into(),
        ..DiffRecord::default()
    }
}

fn open(dir: &tempfile::TempDir, retention: Retention) -> Arc<DiffStore> {
    Arc::new(DiffStore::open(&dir.path().join("shadow.db"), retention).expect("open"))
}

fn store_all(store: &Arc<DiffStore>, records: Vec<DiffRecord>) {
    let writer = store.writer(1024);
    for r in records {
        assert!(writer.try_send(r), "queue has room");
    }
    writer.flush().expect("flush");
    assert_eq!(writer.dropped(), 0);
}

#[test]
fn records_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = now_unix_ms();
    let original = record("cart", now, outcome::DIFFERENT, &[("$.items[2].price", false), ("header.etag", true)]);
    {
        let store = open(&dir, Retention::default());
        store_all(&store, vec![original.clone(), record("cart", now + 1, outcome::IDENTICAL, &[])]);
    }
    let store = open(&dir, Retention::default());
    let list = store.list(Some("cart"), None, None, 10).expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].outcome, outcome::IDENTICAL, "newest first");
    assert_eq!((list[1].diff_count, list[1].method.as_str(), list[1].stable_status), (2, "GET", 200));
    let got = store.get(list[1].id).expect("get").expect("stored");
    assert_eq!(got, DiffRecord { id: list[1].id, ..original }, "every field round-trips");
    assert_eq!(store.get(9_999).expect("get"), None);
}

#[test]
fn summary_counts_outcomes_and_paths_per_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, Retention::default());
    let t = now_unix_ms();
    store_all(
        &store,
        vec![
            record("cart", t, outcome::DIFFERENT, &[("$.price", false), ("$.ts", true)]),
            record("cart", t + 1, outcome::NOISE_ONLY, &[("$.ts", true)]),
            record("cart", t + 2, outcome::DIFFERENT, &[("$.price", false), ("$.ts", false)]),
            record("cart", t + 3, outcome::IDENTICAL, &[]),
            record("cart", t + 4, outcome::TIMEOUT, &[]),
            record("search", t + 5, outcome::ERROR, &[]),
            record("search", t - 2 * HOUR_MS, outcome::DIFFERENT, &[("$.hits", false)]),
        ],
    );
    let all = store.summary(None, None).expect("summary");
    let routes: Vec<(&str, u64)> = all.iter().map(|s| (s.route.as_str(), s.shadowed)).collect();
    assert_eq!(routes, [("cart", 5), ("search", 2)]);
    let cart = &all[0];
    assert_eq!((cart.identical, cart.different, cart.noise_only, cart.errors, cart.timeouts), (1, 2, 1, 0, 1));
    let paths: Vec<(&str, u64, bool)> = cart.paths.iter().map(|p| (p.path.as_str(), p.count, p.noise)).collect();
    assert_eq!(paths, [("$.ts", 3, true), ("$.price", 2, false)], "most frequent first; noise by majority");
    assert!((cart.paths[1].rate - 0.4).abs() < 1e-9, "2 of 5 shadowed");
    let newest_price = store.list(Some("cart"), Some("$.price"), None, 1).expect("list");
    assert_eq!(cart.paths[1].example_id, newest_price[0].id);

    let recent = store.summary(Some("search"), Some(t - HOUR_MS)).expect("summary");
    assert_eq!(recent.len(), 1);
    assert_eq!((recent[0].shadowed, recent[0].errors, recent[0].paths.len()), (1, 1, 0), "the old record is outside");
}

#[test]
fn list_filters_by_route_field_path_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, Retention::default());
    let t = now_unix_ms();
    store_all(
        &store,
        vec![
            record("cart", t, outcome::DIFFERENT, &[("$.price", false)]),
            record("cart", t + 1, outcome::DIFFERENT, &[("$.name", false)]),
            record("search", t + 2, outcome::DIFFERENT, &[("$.price", false)]),
        ],
    );
    let ids = |route, path, since| -> Vec<String> {
        let list = store.list(route, path, since, 10).expect("list");
        list.into_iter().map(|h| format!("{}@{}", h.route, h.at_unix_ms - t)).collect()
    };
    assert_eq!(ids(None, Some("$.price"), None), ["search@2", "cart@0"]);
    assert_eq!(ids(Some("cart"), Some("$.price"), None), ["cart@0"]);
    assert_eq!(ids(Some("cart"), None, Some(t + 1)), ["cart@1"]);
    assert_eq!(store.list(None, None, None, 2).expect("list").len(), 2, "limit");
}

#[test]
fn retention_keeps_the_newest_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, Retention { max_records: 5, ..Retention::default() });
    let t = now_unix_ms();
    store_all(&store, (0..8).map(|i| record("cart", t + i, outcome::DIFFERENT, &[("$.a", false)])).collect());
    let list = store.list(None, None, None, 100).expect("list");
    let ats: Vec<i64> = list.iter().map(|h| h.at_unix_ms - t).collect();
    assert_eq!(ats, [7, 6, 5, 4, 3]);
    let summary = store.summary(Some("cart"), None).expect("summary");
    assert_eq!(summary[0].paths[0].count, 5, "diffs of deleted records are gone too");
}

#[test]
fn retention_drops_records_older_than_max_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let day = Duration::from_secs(24 * 3600);
    let store = open(&dir, Retention { max_age: day, max_records: 1000 });
    let t = now_unix_ms();
    store_all(
        &store,
        vec![
            record("cart", t - 48 * HOUR_MS, outcome::DIFFERENT, &[("$.a", false)]),
            record("cart", t - HOUR_MS, outcome::IDENTICAL, &[]),
        ],
    );
    let list = store.list(None, None, None, 100).expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].at_unix_ms, t - HOUR_MS);
    assert!(store.list(None, Some("$.a"), None, 10).expect("list").is_empty());
}

#[test]
fn secrets_are_redacted_before_they_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, Retention::default());
    let mut r = record("cart", now_unix_ms(), outcome::DIFFERENT, &[]);
    r.request_headers = vec![
        ("Authorization".into(), "Bearer s3cret".into()),
        ("Cookie".into(), "session=abc".into()),
        ("X-Api-Key".into(), "k-123".into()),
        ("Accept".into(), "*/*".into()),
    ];
    r.diffs = vec![StoredDiff {
        path: "header.set-cookie".into(),
        stable: json!("session=old"),
        canary: serde_json::Value::Null,
        noise: false,
    }];
    store_all(&store, vec![r.clone()]);
    store.set_redacted_headers(["X-API-Key"]);
    store_all(&store, vec![r]);
    let list = store.list(None, None, None, 10).expect("list");
    let default = store.get(list[1].id).expect("get").expect("stored");
    let values: Vec<&str> = default.request_headers.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["[redacted]", "[redacted]", "k-123", "*/*"]);
    assert_eq!(default.diffs[0].stable, json!("[redacted]"));
    assert_eq!(default.diffs[0].canary, serde_json::Value::Null, "absence is not a secret");
    let custom = store.get(list[0].id).expect("get").expect("stored");
    let values: Vec<&str> = custom.request_headers.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["Bearer s3cret", "session=abc", "[redacted]", "*/*"]);
}

#[test]
fn redact_matches_names_case_insensitively() {
    let names: HashSet<String> = ["authorization".to_string()].into();
    let mut headers = vec![("AUTHORIZATION".to_string(), "Basic x".to_string()), ("host".into(), "a".into())];
    redact(&mut headers, &names);
    assert_eq!(headers, [("AUTHORIZATION".to_string(), "[redacted]".to_string()), ("host".into(), "a".into())]);
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let (writer, rx) = DiffWriter::detached(1);
    assert!(writer.try_send(record("cart", 1, outcome::IDENTICAL, &[])));
    assert!(!writer.try_send(record("cart", 2, outcome::IDENTICAL, &[])));
    assert!(!writer.clone().try_send(record("cart", 3, outcome::IDENTICAL, &[])));
    assert_eq!(writer.dropped(), 2, "clones share the counter");
    drop(rx);
    assert!(!writer.try_send(record("cart", 4, outcome::IDENTICAL, &[])), "no writer thread");
    assert_eq!(writer.dropped(), 3);
    assert!(writer.flush().is_err());
}

#[test]
fn bodies_are_cut_on_a_character_boundary() {
    assert_eq!(body_text("héllo".as_bytes(), 64), "héllo");
    assert_eq!(body_text("héllo".as_bytes(), 2), "h…[5 more bytes]", "é is two bytes: not split");
    assert_eq!(body_text(b"\xff{}", 10), "\u{fffd}{}", "binary shows as replacement characters");
}

#[test]
fn long_bodies_are_capped_when_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, Retention::default());
    let mut r = record("cart", now_unix_ms(), outcome::DIFFERENT, &[]);
    r.stable_body = "x".repeat(super::store::MAX_STORED_BODY + 10);
    store_all(&store, vec![r]);
    let id = store.list(None, None, None, 1).expect("list")[0].id;
    let got = store.get(id).expect("get").expect("stored");
    assert!(got.stable_body.ends_with("…[10 more bytes]"), "{}", &got.stable_body[got.stable_body.len() - 30..]);
}

#[test]
fn opening_an_unwritable_path_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let err = DiffStore::open(&file.join("shadow.db"), Retention::default()).err().expect("cannot open");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn past_the_store_budget_records_are_counted_not_stored_and_the_summary_stays_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, Retention::default());
    let writer = store.writer_with_budget(4096, Some(5));
    let started = std::time::Instant::now();
    let now = now_unix_ms();
    // A busy route: every answer differs at $.version, a third also at $.items[2].price.
    // Every 20th comparison timed out: a rarer outcome with a budget of its own.
    for i in 0..1200 {
        let paths: &[(&str, bool)] =
            if i % 3 == 0 { &[("$.version", false), ("$.items[2].price", false)] } else { &[("$.version", false)] };
        let r = if i % 20 == 0 {
            record("cart", now + i, outcome::TIMEOUT, &[])
        } else {
            record("cart", now + i, outcome::DIFFERENT, paths)
        };
        assert!(writer.try_send(r));
    }
    for i in 0..300 {
        assert!(writer.try_send(record("cart", now + 2000 + i, outcome::IDENTICAL, &[])));
    }
    // A quiet route keeps its own budget: its one difference is stored.
    assert!(writer.try_send(record("search", now, outcome::DIFFERENT, &[("$.rank", false)])));
    writer.flush().expect("flush");
    assert_eq!(writer.dropped(), 0);

    let stored = store.list(None, None, None, 10_000).expect("list");
    // 4 keys (cart: different, timeout, identical; search: different), each
    // allowed its burst of 5 plus 5 a second for as long as the test ran.
    let allowed = 4 * (5 + (5.0 * started.elapsed().as_secs_f64()).ceil() as usize + 1);
    assert!(stored.len() <= allowed, "the disk saw a bounded number of rows: {} > {allowed}", stored.len());
    assert!(stored.iter().any(|r| r.outcome == outcome::TIMEOUT), "timeouts keep examples");
    assert!(stored.iter().any(|r| r.route == "search"));
    assert!(stored.iter().any(|r| r.outcome == outcome::IDENTICAL), "identical answers keep examples too");

    let summary = store.summary(Some("cart"), None).expect("summary");
    let cart = &summary[0];
    assert_eq!((cart.shadowed, cart.different, cart.identical, cart.timeouts), (1500, 1140, 300, 60));
    let version = cart.paths.iter().find(|p| p.path == "$.version").expect("$.version");
    assert_eq!(version.count, 1140, "every different record has $.version");
    assert!((version.rate - 0.76).abs() < 1e-9, "{}", version.rate);
    // Sampled, the rarer path is an estimate: each stored record stands for the ones after it.
    let price = cart.paths.iter().find(|p| p.path == "$.items[2].price").expect("price");
    assert!(price.count <= 1140, "{}", price.count);
}

#[test]
fn a_store_written_before_weights_existed_is_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shadow.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "CREATE TABLE shadow_records (id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL,
                route TEXT NOT NULL, request_id TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
                primary_version TEXT NOT NULL, stable_status INTEGER NOT NULL, canary_status INTEGER NOT NULL,
                stable_latency_ms REAL NOT NULL, canary_latency_ms REAL NOT NULL, outcome TEXT NOT NULL,
                diff_count INTEGER NOT NULL, request_headers TEXT NOT NULL, request_body TEXT NOT NULL,
                stable_body TEXT NOT NULL, canary_body TEXT NOT NULL);
             INSERT INTO shadow_records VALUES (1, 1000, 'cart', 'r1', 'GET', '/cart', 'stable', 200, 200, 1.0,
                1.0, 'identical', 0, '[]', '', '{}', '{}');
             PRAGMA user_version = 1;",
        )
        .expect("old schema");
    }
    let store = Arc::new(
        DiffStore::open(&path, Retention { max_age: Duration::from_secs(u64::MAX / 4_000), ..Retention::default() })
            .expect("open"),
    );
    let summary = store.summary(Some("cart"), None).expect("summary");
    assert_eq!((summary[0].shadowed, summary[0].identical), (1, 1), "the old record counts once");
}

#[test]
fn a_record_keeps_the_names_of_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, Retention::default());
    let r = DiffRecord {
        primary: "v3".into(),
        stable_version: "v2".into(),
        canary_version: "v3".into(),
        ..record("cart", now_unix_ms(), outcome::DIFFERENT, &[("$.price", false)])
    };
    store_all(&store, vec![r]);
    let listed = store.list(Some("cart"), None, None, 10).expect("list");
    assert_eq!((listed[0].stable_version.as_str(), listed[0].canary_version.as_str()), ("v2", "v3"));
    assert_eq!(listed[0].side_names(), ("v2", "v3"));
    let got = store.get(listed[0].id).expect("get").expect("stored");
    assert_eq!((got.stable_version.as_str(), got.canary_version.as_str()), ("v2", "v3"));
    assert_eq!(got.compared(), "v2", "v3 answered the client and was compared with v2");
}

#[test]
fn a_store_written_before_side_names_existed_is_migrated_and_its_records_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shadow.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "CREATE TABLE shadow_records (id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL,
                route TEXT NOT NULL, request_id TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
                primary_version TEXT NOT NULL, stable_status INTEGER NOT NULL, canary_status INTEGER NOT NULL,
                stable_latency_ms REAL NOT NULL, canary_latency_ms REAL NOT NULL, outcome TEXT NOT NULL,
                weight INTEGER NOT NULL DEFAULT 1, diff_count INTEGER NOT NULL, request_headers TEXT NOT NULL,
                request_body TEXT NOT NULL, stable_body TEXT NOT NULL, canary_body TEXT NOT NULL);
             INSERT INTO shadow_records VALUES (1, 1000, 'cart', 'r1', 'GET', '/cart', 'canary', 200, 500, 1.0,
                1.0, 'different', 3, 0, '[]', '', '{}', '{}');
             PRAGMA user_version = 2;",
        )
        .expect("the schema before side names");
    }
    let store = open(&dir, Retention { max_age: Duration::from_secs(u64::MAX / 4_000), ..Retention::default() });
    let old = store.get(1).expect("get").expect("the old record is kept");
    assert_eq!((old.primary.as_str(), old.weight, old.canary_status), ("canary", 3, 500));
    assert_eq!(old.side_names(), ("stable", "canary"), "labelled as the shorthand named its sides");
    let listed = store.list(Some("cart"), None, None, 10).expect("list");
    assert_eq!(listed[0].side_names(), ("stable", "canary"));
    let version: i64 = rusqlite::Connection::open(&path)
        .and_then(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .expect("user_version");
    assert_eq!(usize::try_from(version).ok(), Some(SCHEMA_VERSION));

    // New records next to it carry their names.
    let named = DiffRecord {
        primary: "v1".into(),
        stable_version: "v1".into(),
        canary_version: "v2".into(),
        ..record("cart", now_unix_ms(), outcome::IDENTICAL, &[])
    };
    store_all(&store, vec![named]);
    let listed = store.list(Some("cart"), None, None, 10).expect("list");
    assert_eq!(listed[0].side_names(), ("v1", "v2"));
    // Opening again changes nothing.
    drop(store);
    let again = open(&dir, Retention { max_age: Duration::from_secs(u64::MAX / 4_000), ..Retention::default() });
    assert_eq!(again.list(Some("cart"), None, None, 10).expect("list").len(), 2);
}
