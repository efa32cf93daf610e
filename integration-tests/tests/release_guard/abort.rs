//! A version that misbehaves is taken back to 0% by the guard itself:
//! errors, slowness, and real differences in its answers (not noise).

use integration_tests::Fault;

use super::*;

/// Start, reach the second step (50%) healthy, then break v2 with `fault`;
/// returns the aborted rollout.
async fn break_at_second_step(s: &Setup, fault: Fault) -> Value {
    let g = &s.gateway;
    let traffic = Traffic::start(g, 4, Duration::from_millis(5));
    command(g, "start").await;
    until(g, "at the second step", Duration::from_secs(20), |r| r["step"] == 2).await;
    s.v2.set_fault(fault);
    let aborted = until(g, "aborted", Duration::from_secs(20), |r| r["phase"] == "aborted").await;
    traffic.stop().await;
    aborted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_answering_5xx_at_the_second_step_is_aborted_and_users_leave_it() {
    let rollout_cfg = QUICK.replace("hold = \"2s\"", "hold = \"3s\"");
    let s = Setup::start(&rollout_cfg, "").await;
    let r = break_at_second_step(&s, Fault { status: Some(500), ..Fault::default() }).await;
    // failure_limit = 2: one failed check, then the abort on the second.
    let k = kinds(&r);
    let tail: Vec<&str> = k.iter().rev().take(2).map(String::as_str).collect();
    assert_eq!(tail, ["aborted", "check_failed"], "{r:#}");
    assert!(r["events"][0]["reason"].as_str().is_some_and(|w| w.contains("error_rate")), "{r:#}");
    assert_eq!(r["percent"], 0.0);
    assert_eq!(share_of_v2(&s.gateway, 50).await, 0, "no more non-whitelisted users on v2");
    assert_eq!(version_for(&s.gateway, "tester").await, "v2", "the tester still reaches it");
    let status = s.gateway.status().await;
    assert_eq!(status["rollouts"][0]["phase"], "aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_regression_aborts() {
    // Two failed checks are needed within the step's hold: a 3 s hold gives
    // three checks, and a slowness well past the gate (×3), so that the
    // stable version's own tail on a busy machine (25 to 50 ms of p99 on 2
    // cores with the suite running) cannot hide it. With 60 ms and a 2 s
    // hold, a ratio of 2.4 passed and the rollout went on to 100%.
    let rollout_cfg = QUICK.replace("hold = \"2s\"", "hold = \"3s\"");
    let s = Setup::start(&rollout_cfg, "").await;
    let r = break_at_second_step(&s, Fault { delay_ms: 250, ..Fault::default() }).await;
    assert!(r["events"][0]["reason"].as_str().is_some_and(|w| w.contains("p99_ratio")), "{r:#}");
}

/// Every request mirrored to the other version and compared; noise learnt by asking twice.
const SHADOWED: &str = r#"
[routes.shadow]
percent = 100.0
noise_check = 1.0
ignore_fields = ["$.backend", "$.headers"]
ignore_headers = ["x-backend"]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_difference_aborts_while_noise_does_not() {
    let diff_cfg = format!("{QUICK}\n").replace(
        "gates = { max_error_rate = 5.0, max_error_rate_delta = 5.0, max_p99_ratio = 3.0 }",
        "gates = { max_error_rate = 5.0, max_diff_rate = 10.0 }",
    );
    // Noise: both versions stamp a fresh `ts` into every answer. The guard walks on.
    let s = Setup::start(&diff_cfg, SHADOWED).await;
    s.v1.set_fault(Fault { noisy: true, ..Fault::default() });
    s.v2.set_fault(Fault { noisy: true, ..Fault::default() });
    let g = &s.gateway;
    let traffic = Traffic::start(g, 4, Duration::from_millis(5));
    command(g, "start").await;
    let r = until(g, "promoted despite the noise", Duration::from_secs(40), |r| {
        r["phase"] == "promoted" || r["phase"] == "aborted"
    })
    .await;
    traffic.stop().await;
    assert_eq!(r["phase"], "promoted", "noise is not a regression: {r:#}");

    // A real change: v2 answers a different price.
    let s = Setup::start(&diff_cfg, SHADOWED).await;
    let r = break_at_second_step(&s, Fault { extra: Some(("price".into(), 2.into())), ..Fault::default() }).await;
    assert!(r["events"][0]["reason"].as_str().is_some_and(|w| w.contains("diff_rate")), "{r:#}");
}
