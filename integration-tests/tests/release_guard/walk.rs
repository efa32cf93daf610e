//! A healthy version walks every step to 100%; too little traffic waits;
//! the CLI and explain say where the rollout is.

use integration_tests::run_cli;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_version_walks_every_step_to_100_percent() {
    let s = Setup::start(QUICK, "").await;
    let g = &s.gateway;
    // Pending: the file's 0% holds until someone starts the rollout.
    let r = rollout(g).await;
    assert_eq!((r["phase"].as_str(), r["percent"].as_f64()), (Some("pending"), Some(0.0)), "{r}");
    assert_eq!(share_of_v2(g, 50).await, 0);
    assert_eq!(version_for(g, "tester").await, "v2", "the whitelisted tester already reaches v2");

    let traffic = Traffic::start(g, 4, Duration::from_millis(5));
    let path = g.config_path().display().to_string();
    let out = run_cli(&["rollout", "start", "cart", "-c", &path]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("cart: v2 running at 10%, step 1 of 3"), "{said}");

    let done = until(g, "promoted", Duration::from_secs(40), |r| r["phase"] == "promoted").await;
    traffic.stop().await;
    let steps: Vec<f64> = done["events"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .filter(|e| e["kind"] == "step" || e["kind"] == "promoted" || e["kind"] == "started")
        .filter_map(|e| e["percent"].as_f64())
        .collect();
    assert_eq!(steps, [10.0, 50.0, 100.0, 100.0], "every step in order: {done:#}");
    assert_eq!(done["percent"], 100.0);
    assert_eq!(share_of_v2(g, 50).await, 50, "everyone is on v2 now");
    let checks = done["checks"].as_array().map_or(0, Vec::len);
    assert!(checks >= 3, "every step was checked: {done:#}");

    // The metrics say so too.
    let m = g.admin_request(reqwest::Method::GET, "/metrics").send().await.expect("m").text().await.expect("t");
    assert!(m.contains("gateway_rollout_state{route=\"cart\",state=\"promoted\"} 1"), "{m}");
    assert!(m.contains("gateway_rollout_percent{route=\"cart\",version=\"v2\"} 100"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_makes_the_step_wait() {
    let rollout_cfg = QUICK.replace("min_requests = 10", "min_requests = 100000");
    let s = Setup::start(&rollout_cfg, "").await;
    let g = &s.gateway;
    let traffic = Traffic::start(g, 1, Duration::from_millis(20));
    command(g, "start").await;
    // Several intervals, well past the 2 s hold.
    let r = until(g, "three inconclusive checks", Duration::from_secs(20), |r| {
        r["checks"].as_array().is_some_and(|c| c.len() >= 3)
    })
    .await;
    traffic.stop().await;
    assert_eq!((r["phase"].as_str(), r["step"].as_u64()), (Some("running"), Some(1)), "{r:#}");
    assert!(r["checks"].as_array().into_iter().flatten().all(|c| c["verdict"] == "inconclusive"), "{r:#}");
    assert_eq!(r["percent"], 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_step_and_explain_and_check_say_where_the_rollout_is() {
    let rollout_cfg = QUICK.replace("hold = \"2s\"", "hold = \"1h\"");
    let s = Setup::start(&rollout_cfg, "").await;
    let g = &s.gateway;
    let path = g.config_path().display().to_string();
    let check = run_cli(&["check", "-c", &path]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("rollout v2: 10% -> 50% -> 100%") && said.contains("the file's 0% is the starting point"),
        "{said}"
    );

    command(g, "start").await;
    let paused = command(g, "pause").await;
    assert_eq!(paused["phase"], "paused");
    let (status, refused) = admin(g, reqwest::Method::POST, "/api/rollouts/cart/pause").await;
    assert_eq!(status, 409, "{refused}");

    let out = run_cli(&["explain", "--path", "/cart/items", "--user", "someone", "-c", &path]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("rollout of v2 paused: step 1 of 3, 10% in force (the file says 0%)"), "{said}");
    let (_, explained) = admin(g, reqwest::Method::GET, "/api/explain?path=/cart/items&user=someone").await;
    assert!(explained["rollout"].as_str().is_some_and(|l| l.contains("paused")), "{explained}");

    let out = run_cli(&["rollout", "resume", "cart", "-c", &path]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cart: v2 running at 10%"), "{out:?}");
    let status = g.status().await;
    assert_eq!(status["rollouts"][0]["phase"], "running", "{status}");
}
