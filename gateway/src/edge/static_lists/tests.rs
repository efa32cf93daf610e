//! The size cap of list files, also for files already parsed and cached.

use super::*;
use crate::control::state::testutil::TempDir;

fn spec(path: &std::path::Path, max_file_size: u64) -> BlacklistSpec {
    BlacklistSpec {
        files: vec![(path.to_path_buf(), "blacklist.files[0]".into())],
        max_file_size,
        ..Default::default()
    }
}

#[test]
fn a_list_file_over_max_file_size_is_an_error_naming_file_size_and_limit() {
    let dir = TempDir::new("gw-lists");
    let path = dir.path().join("big.txt");
    std::fs::write(&path, "192.0.2.1\n".repeat(200)).expect("write");
    let errors = ListCache::default().build(&spec(&path, 1000)).expect_err("2000 bytes > 1000");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [format!(
            "big.txt: blacklist.files[0]: {} is 2000 bytes, over blacklist.max_file_size (1000 bytes); \
             split the list or raise the limit",
            path.display()
        )]
    );
}

#[test]
fn a_file_at_the_limit_loads_and_lowering_the_limit_rejects_the_cached_parse() {
    let dir = TempDir::new("gw-lists");
    let path = dir.path().join("list.txt");
    std::fs::write(&path, "192.0.2.1\n".repeat(100)).expect("write");
    let cache = ListCache::default();
    let set = cache.build(&spec(&path, 1000)).expect("exactly at the limit");
    assert!(set.lookup("192.0.2.1".parse().expect("ip")).is_some());
    let errors = cache.build(&spec(&path, 999)).expect_err("same file, lower limit");
    assert!(errors[0].message.contains("over blacklist.max_file_size (999 bytes)"), "{}", errors[0].message);
}

#[test]
fn sizes_over_a_mebibyte_are_also_shown_in_mib() {
    let dir = TempDir::new("gw-lists");
    let path = dir.path().join("list.txt");
    let e = crate::edge::blacklist::too_large(&path, "k", 300 << 20, 256 << 20);
    assert!(e.message.ends_with("is 314572800 bytes (300 MiB), over blacklist.max_file_size (268435456 bytes (256 MiB)); split the list or raise the limit"), "{}", e.message);
}
