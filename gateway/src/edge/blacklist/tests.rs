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
