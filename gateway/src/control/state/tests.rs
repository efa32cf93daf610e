//! The state file: round trips, corrupt and out-of-range files, writability.

use super::testutil::TempDir;
use super::*;
use std::sync::Arc;

fn block(cidr: &str) -> PersistedBlock {
    PersistedBlock {
        cidr: cidr.into(),
        reason: Some("abuse".into()),
        added_at_unix: 1_700_000_000,
        expires_at_unix: None,
        change: None,
    }
}

#[test]
fn missing_file_is_default_and_update_creates_parent_dirs() {
    let dir = TempDir::new("gw-state");
    let state = StateFile::open(dir.path().join("var/lib/gateway/state.json"));
    assert_eq!(state.load().expect("load"), PersistedState::default());
    state.update(|s| s.degrade_level = Some(2)).expect("update");
    assert_eq!(state.load().expect("load").degrade_level, Some(2));
}

#[test]
fn an_empty_file_or_an_array_is_refused_not_read_as_no_blocks() {
    let dir = TempDir::new("gw-state");
    let path = dir.path().join("state.json");
    for (text, what) in [("", "is empty"), ("  \n", "is empty"), ("[]", "is not a JSON object")] {
        fs::write(&path, text).expect("write");
        let err = StateFile::open(&path).load().expect_err("refused");
        assert!(err.to_string().contains(&format!("state.json {what}")), "{text:?}: {err}");
    }
}

#[test]
fn round_trip_survives_reopen_and_leaves_no_temp_file() {
    let dir = TempDir::new("gw-state");
    let path = dir.path().join("state.json");
    let state = StateFile::open(&path);
    state.update(|s| s.blacklist.push(block("192.0.2.0/24"))).expect("first update");
    state.update(|s| s.blacklist.push(block("2001:db8::/32"))).expect("second update");

    let reopened = StateFile::open(&path).load().expect("load");
    assert_eq!(reopened.blacklist, vec![block("192.0.2.0/24"), block("2001:db8::/32")]);
    let names: Vec<_> = fs::read_dir(dir.path()).expect("read dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["state.json"]);
}

#[test]
fn older_files_without_new_fields_load() {
    let dir = TempDir::new("gw-state");
    let path = dir.path().join("state.json");
    fs::write(&path, r#"{"blacklist": [{"cidr": "192.0.2.1/32", "added_at_unix": 5}]}"#).expect("write");
    let s = StateFile::open(&path).load().expect("load");
    assert_eq!(s.degrade_level, None);
    assert_eq!(s.blacklist[0].cidr, "192.0.2.1/32");
    assert_eq!(s.blacklist[0].reason, None);
}

#[test]
fn corrupt_file_is_an_error_and_is_not_overwritten() {
    let dir = TempDir::new("gw-state");
    let path = dir.path().join("state.json");
    fs::write(&path, "{\"blacklist\": [").expect("write");
    let state = StateFile::open(&path);
    let err = state.load().expect_err("corrupt file must not load").to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(state.update(|s| s.degrade_level = Some(1)).is_err());
    assert_eq!(fs::read_to_string(&path).expect("read"), "{\"blacklist\": [");
}

#[test]
fn concurrent_updates_all_land() {
    let dir = TempDir::new("gw-state");
    let state = Arc::new(StateFile::open(dir.path().join("state.json")));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                for i in 0..20 {
                    state.update(|s| s.blacklist.push(block(&format!("10.{t}.{i}.0/24")))).expect("update");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let mut cidrs: Vec<_> = state.load().expect("load").blacklist.into_iter().map(|b| b.cidr).collect();
    cidrs.sort();
    cidrs.dedup();
    assert_eq!(cidrs.len(), 40);
}

/// Writes `json` as a state file and returns the error loading it gives, as shown to ops.
fn load_error(json: &str) -> (String, String) {
    let dir = TempDir::new("gw-state");
    let path = dir.path().join("state.json");
    fs::write(&path, json).expect("write");
    let err = StateFile::open(&path).load().expect_err("out-of-range state must not load");
    (err.to_string(), path.display().to_string())
}

#[test]
fn a_time_beyond_year_9999_is_an_error_naming_the_file_and_the_field() {
    for (json, field) in [
        (
            r#"{"blacklist": [{"cidr": "192.0.2.1", "expires_at_unix": 18446744073709551615}]}"#,
            "blacklist[0].expires_at_unix",
        ),
        (
            r#"{"blacklist": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.2", "added_at_unix": 253402300800}]}"#,
            "blacklist[1].added_at_unix",
        ),
        (r#"{"blacklist": [{"cidr": "192.0.2.1", "expires_at_unix": -1}]}"#, "blacklist[0].expires_at_unix"),
        (r#"{"blacklist": [{"cidr": "192.0.2.1", "expires_at_unix": 1e300}]}"#, "blacklist[0].expires_at_unix"),
    ] {
        let (err, path) = load_error(json);
        assert!(err.contains(&path), "{err}");
        assert!(err.contains(&format!("{field}: ")), "{field} not named: {err}");
    }
}

#[test]
fn the_last_second_of_year_9999_still_loads() {
    let dir = TempDir::new("gw-state");
    let path = dir.path().join("state.json");
    fs::write(&path, r#"{"blacklist": [{"cidr": "192.0.2.1", "expires_at_unix": 253402300799}]}"#).expect("write");
    let s = StateFile::open(&path).load().expect("load");
    assert_eq!(s.blacklist[0].expires_at_unix, Some(MAX_UNIX_TIME));
}

#[test]
fn a_degrade_level_outside_the_configs_range_is_an_error() {
    for level in ["11", "200", "300", "-1", "2.5"] {
        let (err, path) = load_error(&format!(r#"{{"degrade_level": {level}}}"#));
        assert!(err.contains(&path), "{err}");
        assert!(err.contains(&format!("degrade_level: {level} is outside 0..=10")), "{err}");
    }
    let dir = TempDir::new("gw-state");
    let path = dir.path().join("state.json");
    fs::write(&path, r#"{"degrade_level": 10}"#).expect("write");
    assert_eq!(StateFile::open(&path).load().expect("10 is the highest level").degrade_level, Some(10));
}

#[test]
fn a_malformed_cidr_is_an_error_naming_its_entry() {
    let (err, _) = load_error(r#"{"blacklist": [{"cidr": "192.0.2.1"}, {"cidr": "not-an-ip"}]}"#);
    assert!(err.contains("blacklist[1].cidr: \"not-an-ip\" is not an IP address or CIDR"), "{err}");
}

#[test]
fn a_directory_that_cannot_be_created_is_not_writable() {
    let dir = TempDir::new("gw-state");
    // Root ignores permission bits; a regular file in the way fails for everyone.
    fs::write(dir.path().join("a-file"), "").expect("write");
    let state = StateFile::open(dir.path().join("a-file/state/state.json"));
    for mode in [OpenMode::Create, OpenMode::Inspect] {
        let err = state.check_writable(mode).expect_err("cannot create a directory under a file");
        assert!(matches!(err, StateError::NotWritable { .. }), "{err:?}");
    }
    let err = state.check_writable(OpenMode::Inspect).expect_err("under a file");
    assert!(matches!(err, StateError::NotWritable { .. }), "{err:?}");
    assert!(err.to_string().contains("a-file/state/state.json"), "{err}");
}

#[test]
fn inspecting_creates_nothing_and_creating_leaves_only_the_directory() {
    let dir = TempDir::new("gw-state");
    let state = StateFile::open(dir.path().join("lib/gateway/state.json"));
    state.check_writable(OpenMode::Inspect).expect("the temp dir is writable");
    let names: Vec<_> = fs::read_dir(dir.path()).expect("read").map(|e| e.expect("entry").file_name()).collect();
    assert!(names.is_empty(), "inspect left {names:?}");
    state.check_writable(OpenMode::Create).expect("writable");
    let names: Vec<_> =
        fs::read_dir(dir.path().join("lib/gateway")).expect("created").map(|e| e.expect("entry").file_name()).collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_directory_that_takes_no_new_file_is_not_writable_even_for_root() {
    // /proc exists and reads, but no file can be created in it.
    let state = StateFile::open("/proc/gateway-state.json");
    assert_eq!(state.load().expect("missing reads as empty"), PersistedState::default());
    for mode in [OpenMode::Create, OpenMode::Inspect] {
        let err = state.check_writable(mode).expect_err("/proc takes no file");
        assert!(err.to_string().contains("/proc/gateway-state.json: its directory is not writable"), "{err}");
    }
}
