//! The run-time list: adds, removes, expiry, the state file, and the fleet's merge rule.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::control::state::testutil::TempDir;
use crate::control::state::PersistedBlock;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("net")
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
        change: None,
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

fn fleet(dir: &TempDir, origin: &str) -> RuntimeBlacklist {
    let state = Arc::new(StateFile::open(dir.path().join("state.json")));
    let persisted = state.load().expect("load");
    RuntimeBlacklist::from_persisted(state, &persisted, Sharing { origin: origin.into(), fleet: true }).expect("open")
}

fn remote(at_ms: u64, origin: &str, body: Body) -> SharedRecord {
    SharedRecord { stamp: Stamp { at_ms, origin: origin.into() }, body }
}

fn blocked(reason: &str) -> Body {
    Body::Block { reason: Some(reason.into()), added_at: 1_700_000_000, expires_at: None }
}

#[test]
fn in_a_fleet_changes_stay_pending_until_the_store_has_them_even_across_a_restart() {
    let dir = TempDir::new("gw-fleet");
    let list = fleet(&dir, "a");
    list.add(net("203.0.113.0/24"), Some("bots".into()), None).expect("add");
    let pending = list.pending();
    assert_eq!(pending.len(), 1);
    let (cidr, record) = &pending[0];
    assert_eq!(record.stamp.origin, "a");

    // Restarted before the store came back: still pending, still blocked.
    drop(list);
    let list = fleet(&dir, "a");
    assert_eq!(list.pending().len(), 1);
    assert!(list.lookup(ip("203.0.113.9")).is_some());

    list.mark_stored(&[(*cidr, record.stamp.clone())]).expect("stored");
    assert!(list.pending().is_empty());
    assert!(fleet(&dir, "a").pending().is_empty(), "the cleared mark is persisted");
}

#[test]
fn latest_change_per_cidr_wins_and_an_unblock_is_not_undone_by_a_stale_block() {
    let dir = TempDir::new("gw-fleet");
    let list = fleet(&dir, "b");
    let cidr = net("198.51.100.0/24");
    // Replica A blocked it at t=1000; B merges that.
    assert_eq!(list.merge(vec![(cidr, remote(1_000, "a", blocked("scraper")))], false).expect("merge"), 1);
    assert!(list.lookup(ip("198.51.100.1")).is_some());

    // B unblocks it (a tombstone, later than A's block).
    assert!(list.remove(cidr).expect("remove"));
    assert!(list.lookup(ip("198.51.100.1")).is_none());
    let (_, tomb) = list.pending().pop().expect("the unblock is pending");
    assert_eq!(tomb.body, Body::Unblocked);
    assert!(tomb.stamp.at_ms > 1_000);

    // A's old block arrives again (a replica cut off during the unblock writes it back): ignored,
    // and B's unblock is marked to be pushed again.
    assert_eq!(list.merge(vec![(cidr, remote(1_000, "a", blocked("scraper")))], false).expect("merge"), 0);
    assert!(list.lookup(ip("198.51.100.1")).is_none());
    assert_eq!(list.pending().len(), 1);

    // A later block from C wins over the unblock.
    let later = tomb.stamp.at_ms + 1;
    assert_eq!(list.merge(vec![(cidr, remote(later, "c", blocked("again")))], false).expect("merge"), 1);
    assert_eq!(list.lookup(ip("198.51.100.1")).and_then(|e| e.reason.clone()).as_deref(), Some("again"));
    assert!(list.pending().is_empty(), "the store's newer record replaced the pending one");

    // Same time, greater replica name wins.
    assert_eq!(list.merge(vec![(cidr, remote(later, "d", Body::Unblocked))], false).expect("merge"), 1);
    assert!(list.lookup(ip("198.51.100.1")).is_none());
}

#[test]
fn a_complete_read_of_a_store_that_lost_records_pushes_them_back() {
    // A Redis restored from an old snapshot, failed over to a lagging replica, or emptied:
    // what this replica knows and the store lacks is pushed again, never dropped.
    let dir = TempDir::new("gw-fleet");
    let list = fleet(&dir, "a");
    let old = net("192.0.2.0/24");
    list.merge(vec![(old, remote(1_000, "x", blocked("old")))], false).expect("merge");
    assert!(list.pending().is_empty(), "taken from the store");
    list.add(net("10.0.0.0/8"), None, None).expect("add (pending)");
    assert_eq!(list.merge(Vec::new(), true).expect("complete merge"), 0, "nothing unblocked");
    let left: Vec<_> = list.list().iter().map(|e| e.cidr.to_string()).collect();
    assert_eq!(left, ["192.0.2.0/24", "10.0.0.0/8"]);
    let mut pending: Vec<_> = list.pending().into_iter().map(|(c, _)| c.to_string()).collect();
    pending.sort();
    assert_eq!(pending, ["10.0.0.0/8", "192.0.2.0/24"]);
    let stored: Vec<_> = list.pending().into_iter().map(|(c, r)| (c, r.stamp)).collect();
    list.mark_stored(&stored).expect("stored");
    assert!(list.pending().is_empty());
}

#[test]
fn an_expired_block_still_outranks_an_older_copy_until_it_is_spent() {
    let dir = TempDir::new("gw-fleet");
    let list = fleet(&dir, "a");
    let cidr = net("203.0.113.0/24");
    // A permanent block (t=1000) everywhere; then, here, a newer 1 ms block that expires.
    list.merge(vec![(cidr, remote(1_000, "x", blocked("permanent")))], false).expect("merge");
    list.add(cidr, Some("short".into()), Some(Duration::from_millis(1))).expect("add");
    std::thread::sleep(Duration::from_millis(20));
    assert!(list.lookup(ip("203.0.113.1")).is_none(), "expired");
    list.sweep_expired();
    assert_eq!(list.pending().len(), 1, "kept (and pending) after the sweep");
    // The older permanent block comes back from a stale replica: it loses to the expired, newer change.
    assert_eq!(list.merge(vec![(cidr, remote(1_000, "x", blocked("permanent")))], false).expect("merge"), 0);
    assert!(list.lookup(ip("203.0.113.1")).is_none());
}

#[test]
fn a_single_gateway_keeps_no_unblock_records() {
    let dir = TempDir::new("gw-single");
    let list = runtime(&dir);
    list.add(net("192.0.2.0/24"), None, None).expect("add");
    list.remove(net("192.0.2.0/24")).expect("remove");
    let on_disk = StateFile::open(dir.path().join("state.json")).load().expect("load");
    assert!(on_disk.unblocked.is_empty() && on_disk.blacklist.is_empty());
    assert!(on_disk.blacklist.iter().all(|b| b.change.is_none()));
}
