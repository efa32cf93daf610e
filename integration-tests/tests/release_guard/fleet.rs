//! Two replicas on one Redis run one rollout: their counters are summed,
//! one of them decides, and both apply every step.

use integration_tests::{Fault, RedisServer};

use super::*;

/// What a replica says about the rollout: (phase, step, percent).
async fn view(g: &Gateway) -> (String, u64, f64) {
    let r = rollout(g).await;
    (
        r["phase"].as_str().unwrap_or("").to_string(),
        r["step"].as_u64().unwrap_or(0),
        r["percent"].as_f64().unwrap_or(-1.0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_walk_the_same_steps_and_abort_together() {
    let redis = RedisServer::start();
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let states = [temp_dir(), temp_dir()];
    let cluster = format!("\n[cluster]\nredis = \"{}\"\nkey_prefix = \"gw:ro:\"\n", redis.url());
    let mut replicas = Vec::new();
    for state in &states {
        let text = config(&v1, &v2, &state.path().join("state.json"), QUICK, "").replacen(
            "[upstreams.cart-v1]",
            &format!("{cluster}\n[upstreams.cart-v1]"),
            1,
        );
        replicas.push(Gateway::start(&text).await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    let traffic = [Traffic::start(a, 2, Duration::from_millis(5)), Traffic::start(b, 2, Duration::from_millis(5))];

    // Started through B; decided by whichever holds the lease; applied by both.
    command(b, "start").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut seen = Vec::new();
    loop {
        let (va, vb) = (view(a).await, view(b).await);
        let agree = if va == vb {
            true
        } else {
            // A step in flight between the two answers: asked again, they agree.
            tokio::time::sleep(Duration::from_millis(300)).await;
            view(a).await == view(b).await
        };
        assert!(agree, "the replicas disagree: A {va:?}, B {vb:?}");
        if seen.last() != Some(&va) {
            seen.push(va.clone());
        }
        if va.0 == "promoted" || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let percents: Vec<f64> = seen.iter().map(|v| v.2).collect();
    assert_eq!(seen.last().map(|v| v.0.as_str()), Some("promoted"), "{seen:?}\n{}", a.log_tail(30));
    for p in [10.0, 50.0, 100.0] {
        assert!(percents.contains(&p), "every step was seen: {seen:?}");
    }
    assert_eq!(share_of_v2(b, 30).await, 30, "B routes everyone to v2");

    // A new start, then a bad release: both replicas abort.
    command(a, "start").await;
    until(a, "running again", Duration::from_secs(5), |r| r["phase"] == "running").await;
    v2.set_fault(Fault { status: Some(502), ..Fault::default() });
    until(a, "aborted", Duration::from_secs(20), |r| r["phase"] == "aborted").await;
    until(b, "aborted on B too", Duration::from_secs(2), |r| r["phase"] == "aborted").await;
    for t in traffic {
        t.stop().await;
    }
    // Each replica applies the share it takes in at once (a step is a snapshot swap): within a second.
    for (name, g) in [("A", a), ("B", b)] {
        let start = Instant::now();
        while share_of_v2(g, 30).await > 0 {
            assert!(start.elapsed() < Duration::from_secs(1), "{name} still routes users to v2");
        }
    }
}
