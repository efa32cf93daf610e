//! List files, the static list, and the run-time list with its state file.

use super::*;
use crate::control::state::testutil::TempDir;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("net")
}

#[test]
fn list_file_with_comments_reasons_and_v6() {
    let dir = TempDir::new("gw-blacklist");
    let path = dir.path().join("blocked.txt");
    let text = "# abusive ranges, reviewed weekly\n\
                \n\
                203.0.113.0/24  card testing 2026-11-11\n\
                198.51.100.7    # scraper, no reason given\n\
                \t2001:db8:bad::/48 credential stuffing # ticket 4411\n\
                192.0.2.77/24\n";
    std::fs::write(&path, text).expect("write");
    let entries = parse_list_file(&path, "blacklist.files[0]").expect("parses");
    let got: Vec<_> = entries.iter().map(|e| (e.cidr, e.reason.as_deref(), e.source.clone())).collect();
    let file = |line| BlockSource::File { path: path.clone(), line };
    assert_eq!(
        got,
        vec![
            (net("203.0.113.0/24"), Some("card testing 2026-11-11"), file(3)),
            (net("198.51.100.7/32"), None, file(4)),
            (net("2001:db8:bad::/48"), Some("credential stuffing"), file(5)),
            // Host bits are dropped, as everywhere else in the config.
            (net("192.0.2.0/24"), None, file(6)),
        ]
    );
    assert_eq!(entries[0].source.label(), "file");
}

#[test]
fn every_bad_line_is_reported_with_file_and_line() {
    let dir = TempDir::new("gw-blacklist");
    let path = dir.path().join("blocked.txt");
    std::fs::write(&path, "192.0.2.1\n300.1.2.3 typo\n# fine\n2001:db8::/129\n10.0.0.0/8\n").expect("write");
    let errors = parse_list_file(&path, "blacklist.files[1]").expect_err("bad lines");
    let shown: Vec<_> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        shown,
        [
            "blocked.txt:2: blacklist.files[1]: \"300.1.2.3\" is not an IP address or CIDR",
            "blocked.txt:4: blacklist.files[1]: \"2001:db8::/129\" is not an IP address or CIDR",
        ]
    );
}

#[test]
fn a_garbage_file_reports_twenty_lines_and_a_count() {
    let dir = TempDir::new("gw-blacklist");
    let path = dir.path().join("garbage.bin");
    std::fs::write(&path, "junk\n".repeat(1000)).expect("write");
    let errors = parse_list_file(&path, "k").expect_err("garbage");
    assert_eq!(errors.len(), 21);
    assert_eq!(errors[19].line, 20);
    assert_eq!(errors[20].message, "… and 980 more malformed lines");
}

#[test]
fn unreadable_file_is_one_error() {
    let dir = TempDir::new("gw-blacklist");
    let errors = parse_list_file(&dir.path().join("missing.txt"), "blacklist.files[0]").expect_err("missing");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.starts_with("cannot read block list"), "{}", errors[0].message);
}

#[test]
fn static_list_finds_the_most_specific_block() {
    let entry =
        |cidr: &str, source| BlockEntry { cidr: net(cidr), source, reason: None, added_at: None, expires_at: None };
    let list = StaticBlacklist::build(vec![
        entry("10.0.0.0/8", BlockSource::Config),
        entry("10.1.2.3/32", BlockSource::File { path: "a.txt".into(), line: 9 }),
    ]);
    assert_eq!(list.len(), 2);
    assert_eq!(list.lookup(ip("10.1.2.3")).map(|e| e.source.label()), Some("file"));
    assert_eq!(list.lookup(ip("10.9.9.9")).map(|e| e.source.label()), Some("config"));
    assert!(list.lookup(ip("11.0.0.1")).is_none());
}

fn runtime(dir: &TempDir) -> RuntimeBlacklist {
    RuntimeBlacklist::open(Arc::new(StateFile::open(dir.path().join("state.json")))).expect("open")
}

#[test]
fn runtime_add_lookup_remove() {
    let dir = TempDir::new("gw-blacklist");
    let list = runtime(&dir);
    assert!(list.lookup(ip("198.51.100.7")).is_none());

    let added = list.add(net("198.51.100.7/24"), Some("scraper".into()), None).expect("add");
    assert_eq!(added.cidr, net("198.51.100.0/24"));
    let hit = list.lookup(ip("::ffff:198.51.100.200")).expect("blocked");
    assert_eq!((hit.source.label(), hit.reason.as_deref()), ("api", Some("scraper")));

    // Re-adding replaces the reason instead of adding a second block.
    list.add(net("198.51.100.0/24"), Some("scraper, escalated".into()), None).expect("re-add");
    assert_eq!(list.list().len(), 1);
    assert_eq!(list.lookup(ip("198.51.100.1")).and_then(|e| e.reason.clone()).as_deref(), Some("scraper, escalated"));

    assert!(list.remove(net("198.51.100.0/24")).expect("remove"));
    assert!(!list.remove(net("198.51.100.0/24")).expect("remove again"));
    assert!(list.lookup(ip("198.51.100.1")).is_none());
    assert!(list.list().is_empty());
}

#[test]
fn expired_block_stops_matching_before_the_sweep_and_the_broader_block_still_does() {
    let dir = TempDir::new("gw-blacklist");
    let list = runtime(&dir);
    list.add(net("10.0.0.0/8"), Some("wide".into()), None).expect("add wide");
    list.add(net("10.1.2.3/32"), Some("short".into()), Some(Duration::from_millis(1))).expect("add short");
    std::thread::sleep(Duration::from_millis(20));

    let hit = list.lookup(ip("10.1.2.3")).expect("still blocked by the /8");
    assert_eq!(hit.reason.as_deref(), Some("wide"));
    assert_eq!(list.list().len(), 1);

    assert_eq!(list.sweep_expired(), 1);
    assert_eq!(list.sweep_expired(), 0);
    assert_eq!(list.len(), 1);
    let on_disk = StateFile::open(dir.path().join("state.json")).load().expect("load");
    assert_eq!(on_disk.blacklist.iter().map(|b| b.cidr.as_str()).collect::<Vec<_>>(), ["10.0.0.0/8"]);
}

#[test]
fn blocks_survive_a_restart() {
    let dir = TempDir::new("gw-blacklist");
    {
        let list = runtime(&dir);
        list.add(net("203.0.113.0/24"), Some("card testing".into()), Some(Duration::from_secs(3600))).expect("add");
        list.add(net("2001:db8::/32"), None, None).expect("add v6");
        list.add(net("192.0.2.1/32"), None, None).expect("add");
        list.remove(net("192.0.2.1/32")).expect("remove");
    }
    let list = runtime(&dir);
    let cidrs: Vec<_> = list.list().iter().map(|e| e.cidr.to_string()).collect();
    assert_eq!(cidrs, ["203.0.113.0/24", "2001:db8::/32"]);
    let hit = list.lookup(ip("203.0.113.50")).expect("still blocked");
    assert_eq!(hit.reason.as_deref(), Some("card testing"));
    assert!(hit.expires_at.is_some());
    assert!(list.lookup(ip("2001:db8::1")).is_some());
    assert!(list.lookup(ip("192.0.2.1")).is_none());
}

#[test]
fn expired_blocks_are_dropped_on_open_and_other_state_is_kept() {
    let dir = TempDir::new("gw-blacklist");
    let state = StateFile::open(dir.path().join("state.json"));
    let block = |cidr: &str, expires_at_unix| PersistedBlock {
        cidr: cidr.into(),
        reason: None,
        added_at_unix: 1_700_000_000,
        expires_at_unix,
    };
    state
        .update(|s| {
            s.degrade_level = Some(3);
            s.blacklist = vec![block("192.0.2.0/24", Some(1_700_000_060)), block("198.51.100.0/24", None)];
        })
        .expect("seed");
    let list = runtime(&dir);
    assert!(list.lookup(ip("192.0.2.1")).is_none());
    assert!(list.lookup(ip("198.51.100.1")).is_some());

    list.add(net("203.0.113.0/24"), None, None).expect("add");
    let on_disk = state.load().expect("load");
    assert_eq!(on_disk.degrade_level, Some(3));
    assert_eq!(on_disk.blacklist.len(), 2);
}

#[test]
fn corrupt_state_refuses_to_open() {
    let dir = TempDir::new("gw-blacklist");
    std::fs::write(dir.path().join("state.json"), r#"{"blacklist": [{"cidr": "not-an-ip"}]}"#).expect("write");
    let state = Arc::new(StateFile::open(dir.path().join("state.json")));
    assert!(RuntimeBlacklist::open(state).is_err());
}

#[test]
fn a_list_file_that_grows_past_the_cap_while_read_is_refused() {
    // The cap is checked against bytes read, not only the size at open.
    let dir = TempDir::new("gw-blacklist");
    let path = dir.path().join("blocked.txt");
    std::fs::write(&path, "192.0.2.1\n".repeat(10)).expect("write");
    let errors = read_list_file(&path, "blacklist.files[0]", 50).expect_err("100 bytes > 50");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("over blacklist.max_file_size (50 bytes)"), "{}", errors[0].message);
    assert_eq!(read_list_file(&path, "blacklist.files[0]", 100).expect("at the cap").len(), 10);
}

#[test]
fn a_ttl_over_ten_years_is_refused_and_nothing_is_stored() {
    let dir = TempDir::new("gw-blacklist");
    let list = runtime(&dir);
    let ten_thousand_years = crate::config::values::duration("10000y").expect("humantime parses it");
    let err = list.add(net("192.0.2.0/24"), None, Some(ten_thousand_years)).expect_err("too long");
    assert!(matches!(err, BlockError::TtlTooLong(_)), "{err:?}");
    assert!(err.to_string().contains("longer than the limit of 10 years"), "{err}");
    assert!(list.list().is_empty());
    assert!(!dir.path().join("state.json").exists(), "nothing was written");

    let ten_years = crate::config::values::duration("10y").expect("parses");
    assert_eq!(ten_years, MAX_BLOCK_TTL);
    let entry = list.add(net("192.0.2.0/24"), None, Some(ten_years)).expect("10y is the limit, accepted");
    assert!(entry.expires_at.is_some());
    // And it reloads after a restart.
    assert_eq!(runtime(&dir).list().len(), 1);
}

#[test]
fn an_entry_past_year_9999_in_the_state_file_refuses_to_open_and_names_the_field() {
    let dir = TempDir::new("gw-blacklist");
    let path = dir.path().join("state.json");
    std::fs::write(&path, r#"{"blacklist": [{"cidr": "192.0.2.1", "added_at_unix": 18446744073709551615}]}"#)
        .expect("write");
    let err = RuntimeBlacklist::open(Arc::new(StateFile::open(&path))).err().expect("refused, not a panic");
    assert!(err.to_string().contains("blacklist[0].added_at_unix"), "{err}");
}

#[test]
fn times_are_written_rounded_up_and_capped_to_what_loads() {
    let entry = |expires_at| BlockEntry {
        cidr: net("192.0.2.0/24"),
        source: BlockSource::Api,
        reason: None,
        added_at: Some(UNIX_EPOCH + Duration::from_secs(5)),
        expires_at,
    };
    let half = UNIX_EPOCH + Duration::from_millis(10_500);
    assert_eq!(to_persisted(&entry(Some(half))).expires_at_unix, Some(11));
    let far = UNIX_EPOCH + Duration::from_secs(MAX_UNIX_TIME * 2);
    assert_eq!(to_persisted(&entry(Some(far))).expires_at_unix, Some(MAX_UNIX_TIME));
    assert_eq!(from_unix(u64::MAX), UNIX_EPOCH + Duration::from_secs(MAX_UNIX_TIME));
}
