//! A rollout survives restarts, and a new build of the version starts its
//! analysis over.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_resumes_at_the_same_step_and_time_left() {
    let rollout_cfg = QUICK.replace("hold = \"2s\"", "hold = \"30s\"");
    let mut s = Setup::start(&rollout_cfg, "").await;
    let traffic = Traffic::start(&s.gateway, 2, Duration::from_millis(10));
    command(&s.gateway, "start").await;
    let before = until(&s.gateway, "some time held", Duration::from_secs(20), |r| {
        r["time_left_s"].as_u64().is_some_and(|t| t <= 27)
    })
    .await;
    traffic.stop().await;

    // A crash (SIGKILL) and a start on the same state file.
    let config = s.config(&rollout_cfg, "");
    s.gateway = Gateway::start(&config).await;
    let after = rollout(&s.gateway).await;
    assert_eq!((after["phase"].as_str(), after["step"].as_u64()), (Some("running"), Some(1)), "{after:#}");
    let (was, now) = (before["time_left_s"].as_u64().unwrap_or(0), after["time_left_s"].as_u64().unwrap_or(99));
    assert!(now <= was && now > 0, "time left {was} s before the restart, {now} s after");
    assert_eq!(after["percent"], 10.0, "the share in force is the rollout's, not the file's 0%");
    assert!(share_of_v2(&s.gateway, 100).await > 0, "v2 gets its 10% right after the start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_of_the_version_restarts_the_analysis_from_the_first_step() {
    let s = Setup::start(QUICK, "").await;
    let g = &s.gateway;
    let traffic = Traffic::start(g, 4, Duration::from_millis(5));
    command(g, "start").await;
    until(g, "at the second step", Duration::from_secs(20), |r| r["step"] == 2).await;

    // A new build: v2's upstream moves to another backend.
    let v2b = Backend::start("cart-v2-build2").await;
    let text = s.config(QUICK, "").replace(&s.v2.addr().to_string(), &v2b.addr().to_string());
    g.write_config(&text);
    g.wait_for_generation(2).await;
    let r = until(g, "back at the first step", Duration::from_secs(10), |r| r["events"][0]["kind"] == "revision").await;
    traffic.stop().await;
    assert_eq!(
        (r["phase"].as_str(), r["step"].as_u64(), r["percent"].as_f64()),
        (Some("running"), Some(1), Some(10.0)),
        "{r:#}"
    );
}
