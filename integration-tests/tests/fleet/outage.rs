//! Redis down or gone: clients never notice, replicas keep what they last
//! saw (also across a restart), changes made meanwhile reach the fleet when
//! it returns, and an unblock is not undone by a stale copy of the block.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::run_cli;
use reqwest::Method;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_while_redis_is_down_still_blocks_what_it_last_saw() {
    let mut fleet = Fleet::start(3).await;
    block(fleet.replica(0), "203.0.113.0/24", None).await;
    until_all(&fleet.all(), "203.0.113.9", 403, Duration::from_secs(1)).await;

    fleet.redis.stop();
    fleet.restart(2).await;
    let c = fleet.replica(2);
    assert_eq!(status_for(c, "203.0.113.9").await, 403, "C enforces the block it saw before the restart");
    assert_eq!(status_for(c, "198.51.100.1").await, 200);
    // And says so.
    c.eventually("C reports the store unreachable", Duration::from_secs(10), || async {
        c.status().await["cluster"]["store"] == "unreachable"
    })
    .await;
    let status = c.status().await;
    assert!(status["cluster"]["last_sync"].is_string(), "the last sync is known from the state file: {status}");
    assert!(c.log().contains("enforcing the blocks and degrade level last seen"), "{}", c.log_tail(20));
}

/// Clients hammering every replica until told to stop: (answers, failures).
fn load(fleet: &Fleet, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    fleet
        .all()
        .into_iter()
        .map(|g| {
            let url = g.url("/p");
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let client = http_client();
                let (mut ok, mut failed) = (0, 0);
                // Bounded: at most 20,000 requests per replica.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match client.get(&url).header("x-forwarded-for", "198.51.100.1").send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_no_request_and_a_block_made_meanwhile_reaches_all_on_its_return() {
    let mut fleet = Fleet::start(3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&fleet, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;

    fleet.redis.stop();
    let a = fleet.replica(0);
    a.eventually("A sees the store unreachable", Duration::from_secs(10), || async {
        a.status().await["cluster"]["store"] == "unreachable"
    })
    .await;
    let m = metrics(a).await;
    assert_eq!(metric(&m, "gateway_cluster_store_up "), Some(0.0), "{m}");
    let errors: f64 = m
        .lines()
        .filter(|l| l.starts_with("gateway_cluster_store_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors >= 1.0, "store errors are counted:\n{m}");

    // A block made now applies on A at once and says it reached only A.
    let path = a.config_path().display().to_string();
    let out = run_cli(&["block", "192.0.2.0/24", "-c", &path]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("applied on this replica only: cluster store unreachable"), "{said}");
    assert_eq!(status_for(a, "192.0.2.1").await, 403);
    assert_eq!(status_for(fleet.replica(1), "192.0.2.1").await, 200, "B cannot know yet");
    assert_eq!(a.status().await["cluster"]["pending_changes"], 1);

    // Redis returns (empty, as a Redis without a disk would): A pushes the block, B and C take it.
    fleet.redis.restart();
    until_all(&fleet.all(), "192.0.2.1", 403, Duration::from_secs(10)).await;
    let a = fleet.replica(0);
    a.eventually("A's change is no longer pending", Duration::from_secs(10), || async {
        let s = a.status().await;
        s["cluster"]["store"] == "ok" && s["cluster"]["pending_changes"] == 0
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.expect("client task");
        ok += o;
        failed += f;
    }
    assert!(ok > 100, "the load ran ({ok} answers)");
    assert_eq!(failed, 0, "no client request failed because Redis did ({ok} answered 200)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unblock_made_during_the_outage_is_not_undone_by_a_stale_copy_of_the_block() {
    let mut fleet = Fleet::start(3).await;
    block(fleet.replica(0), "198.51.100.0/24", None).await;
    until_all(&fleet.all(), "198.51.100.7", 403, Duration::from_secs(1)).await;

    fleet.redis.stop();
    // B unblocks while cut off; A and C still hold (and will push back) their older copy of the block.
    let b = fleet.replica(1);
    b.eventually("B sees the store unreachable", Duration::from_secs(10), || async {
        b.status().await["cluster"]["store"] == "unreachable"
    })
    .await;
    let (status, body) = admin(b, Method::DELETE, "/api/blacklist/198.51.100.0%2F24", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], "replica", "{body}");
    assert_eq!(body["warning"], "applied on this replica only: cluster store unreachable");
    assert_eq!(status_for(b, "198.51.100.7").await, 200);
    assert_eq!(status_for(fleet.replica(0), "198.51.100.7").await, 403);

    // The store returns empty: every replica pushes what it knows. Latest change per CIDR wins.
    fleet.redis.restart();
    until_all(&fleet.all(), "198.51.100.7", 200, Duration::from_secs(10)).await;
    // It stays that way after the next exchanges (no replica flips it back).
    tokio::time::sleep(Duration::from_secs(2)).await;
    until_all(&fleet.all(), "198.51.100.7", 200, Duration::from_secs(1)).await;
    let record = fleet.redis.cli(&["HGET", &format!("{}state", fleet.prefix), "block:198.51.100.0/24"]);
    assert!(record.contains("unblocked"), "the store keeps the unblock: {record}");
}
