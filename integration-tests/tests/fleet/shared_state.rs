//! Blocks, unblocks, the degrade level and TTLs reach every replica.

use std::time::Duration;

use super::*;
use integration_tests::run_cli;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_through_one_replica_is_refused_by_all_within_a_second() {
    let fleet = Fleet::start(3).await;
    let (a, b, c) = (fleet.replica(0), fleet.replica(1), fleet.replica(2));
    until_all(&fleet.all(), "203.0.113.7", 200, Duration::from_secs(5)).await;
    // The stores are in contact before the clock starts.
    for g in fleet.all() {
        g.eventually("store ok", Duration::from_secs(10), || async { g.status().await["cluster"]["store"] == "ok" })
            .await;
    }

    // Through the CLI, as ops would: it says the block reached the fleet.
    let path = a.config_path().display().to_string();
    let out = run_cli(&["block", "203.0.113.0/24", "--reason", "card testing", "-c", &path]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("blocked 203.0.113.0/24") && said.contains("applied on every replica"), "{said}");

    // Pub/sub carries it: the reconcile interval is 30 s.
    let took = until_all(&[b, c], "203.0.113.7", 403, Duration::from_secs(1)).await;
    eprintln!("block reached the other replicas in {took:?}");
    assert_eq!(status_for(a, "198.51.100.1").await, 200, "other clients still pass");
    let listed = admin(c, Method::GET, "/api/blacklist", None).await.1;
    assert_eq!(listed["runtime"][0]["reason"], "card testing", "{listed}");

    // The store holds the record; an unblock through C lifts it everywhere.
    let stored = fleet.redis.cli(&["HGET", &format!("{}state", fleet.prefix), "block:203.0.113.0/24"]);
    assert!(stored.contains("card testing"), "{stored}");
    let (status, body) = admin(c, Method::DELETE, "/api/blacklist/203.0.113.0%2F24", None).await;
    assert_eq!((status, body["applied"].as_str()), (200, Some("cluster")), "{body}");
    until_all(&[a, b], "203.0.113.7", 200, Duration::from_secs(1)).await;

    let m = metrics(b).await;
    assert_eq!(metric(&m, "gateway_cluster_store_up "), Some(1.0), "{m}");
    assert!(metric(&m, "gateway_cluster_changes_received_total ").unwrap_or(0.0) >= 2.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degrade_through_one_replica_switches_the_others() {
    let fleet = Fleet::start(3).await;
    let (a, b, c) = (fleet.replica(0), fleet.replica(1), fleet.replica(2));
    until_all(&[a, c], "198.51.100.1", 200, Duration::from_secs(5)).await;

    let path = b.config_path().display().to_string();
    let out = run_cli(&["degrade", "2", "-c", &path]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("degrade level 2"), "{said}");
    // The route degrades at 2: every replica answers with its fallback page.
    until_all(&[a, c], "198.51.100.1", 503, Duration::from_secs(1)).await;
    assert_eq!(admin(a, Method::GET, "/api/degrade", None).await.1["level"], 2);
    assert!(metrics(c).await.contains("gateway_degrade_level 2"));

    // Back to the config's level, from A this time.
    let (status, body) = admin(a, Method::DELETE, "/api/degrade", None).await;
    assert_eq!((status, body["applied"].as_str()), (200, Some("cluster")), "{body}");
    until_all(&[b, c], "198.51.100.1", 200, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_expires_on_every_replica_and_stays_expired_after_a_restart() {
    let fleet = Fleet::start(3).await;
    let body = block(fleet.replica(0), "192.0.2.0/24", Some("2s")).await;
    assert_eq!(body["applied"], "cluster", "{body}");
    until_all(&fleet.all(), "192.0.2.1", 403, Duration::from_secs(1)).await;
    // Expired everywhere: every replica judges the same absolute expiry.
    until_all(&fleet.all(), "192.0.2.1", 200, Duration::from_secs(5)).await;
    // The expired record stays in the store for a week, ordering later writes (a stale copy of
    // an older block cannot come back); it blocks nothing, also after a restart.
    let key = format!("{}state", fleet.prefix);
    let record = fleet.redis.cli(&["HGET", &key, "block:192.0.2.0/24"]);
    assert!(record.contains("expires_at"), "{record}");
    let mut fleet = fleet;
    fleet.restart(1).await;
    until_all(&fleet.all(), "192.0.2.1", 200, Duration::from_secs(1)).await;
    assert_eq!(fleet.replica(1).status().await["blacklist"]["runtime_entries"], 0);
}
