//! A cluster rate limit: one budget for the fleet, and what it does while
//! the store is unreachable.

use std::time::{Duration, Instant};

use super::*;

/// Hammer every replica from one client address for `secs`; (admitted, limited).
async fn hammer(fleet: &Fleet, secs: u64) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = fleet
        .all()
        .into_iter()
        .flat_map(|g| [g.url("/p"), g.url("/p")])
        .map(|url| {
            tokio::spawn(async move {
                let client = http_client();
                let (mut ok, mut limited) = (0, 0);
                // Bounded in count as well as time.
                for _ in 0..200_000 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    match client.get(&url).header("x-forwarded-for", "203.0.113.50").send().await.map(|r| r.status()) {
                        Ok(s) if s == 200 => ok += 1,
                        Ok(s) if s == 429 => limited += 1,
                        other => panic!("unexpected answer {other:?}"),
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    let mut total = (0, 0);
    for t in tasks {
        let (ok, limited) = t.await.expect("client task");
        total = (total.0 + ok, total.1 + limited);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_limit_of_100_per_second_admits_about_100_per_second_across_three_replicas() {
    let limit = r#"
[routes.rate_limit]
per_ip = { rate = "100/s", burst = 10, scope = "cluster" }
"#;
    let fleet = Fleet::start_with(3, limit).await;
    for g in fleet.all() {
        g.eventually("store ok", Duration::from_secs(10), || async { g.status().await["cluster"]["store"] == "ok" })
            .await;
    }
    let (ok, limited) = hammer(&fleet, 10).await;
    eprintln!("cluster limit 100/s over 3 replicas, 10 s: {ok} admitted, {limited} limited");
    assert!(limited > ok, "the clients asked for more than the limit ({ok} admitted, {limited} limited)");
    // Each replica alone would admit 100/s: 3,000 in total.
    assert!((850..=1150).contains(&ok), "{ok} admitted in 10 s; the fleet's budget is 1,000 ± 15%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_is_unreachable_a_cluster_limit_does_what_on_store_error_says() {
    let limit = |on_error: &str| {
        format!(
            "\n[routes.rate_limit]\nper_ip = {{ rate = \"1/m\", burst = 2, scope = \"cluster\", on_store_error = \"{on_error}\" }}\n"
        )
    };
    let mut fleet = Fleet::start_with(1, &limit("allow")).await;
    let statuses = async |g: &Gateway, n: usize| {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(status_for(g, "203.0.113.60").await);
        }
        out
    };
    let g = fleet.replica(0);
    g.eventually("store ok", Duration::from_secs(10), || async { g.status().await["cluster"]["store"] == "ok" }).await;
    // Store up: the burst of 2 holds.
    assert_eq!(statuses(g, 4).await, [200, 200, 429, 429]);

    fleet.redis.stop();
    let g = fleet.replica(0);
    g.eventually("store unreachable", Duration::from_secs(10), || async {
        g.status().await["cluster"]["store"] == "unreachable"
    })
    .await;
    assert_eq!(statuses(g, 3).await, [200, 200, 200], "on_store_error = allow admits while the store is away");

    // The same limit with "deny", applied live.
    let text = replica_config(&fleet.backend, &fleet.redis.url(), &fleet.prefix, &fleet.state_path(0), &limit("deny"));
    g.write_config(&text);
    g.wait_for_generation(2).await;
    assert_eq!(statuses(g, 2).await, [429, 429], "on_store_error = deny refuses while the store is away");

    // Back: judged by the fleet's budget again (a fresh limit, so its burst first).
    fleet.redis.restart();
    let g = fleet.replica(0);
    g.eventually("store ok again", Duration::from_secs(10), || async { g.status().await["cluster"]["store"] == "ok" })
        .await;
    assert_eq!(statuses(g, 3).await, [200, 200, 429]);
}
