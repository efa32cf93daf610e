//! `/releases`, the release engineer's page, read in a headless browser.

use integration_tests::browser::{browse, chromium};
use integration_tests::Fault;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_releases_page_shows_the_state_the_checks_against_the_gates_and_the_history() {
    let Some(bin) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI is set but chromium is missing: deploy/dev.sh setup installs it");
        eprintln!("skipped: chromium is not installed (apt-get install chromium; deploy/dev.sh setup does it)");
        return;
    };
    let s = Setup::start(QUICK, "").await;
    let g = &s.gateway;
    let traffic = Traffic::start(g, 4, Duration::from_millis(5));
    command(g, "start").await;
    until(g, "at the second step", Duration::from_secs(20), |r| r["step"] == 2).await;
    s.v2.set_fault(Fault { status: Some(503), ..Fault::default() });
    until(g, "aborted", Duration::from_secs(20), |r| r["phase"] == "aborted").await;
    traffic.stop().await;

    let scratch = temp_dir();
    let dom = browse(&bin, scratch.path(), &["--dump-dom".to_string()], &g.admin_url("/releases")).await;
    let section =
        dom.find("id=\"rollout-cart\"").map(|i| &dom[i..]).unwrap_or_else(|| panic!("no cart section:\n{dom}"));
    assert!(section.contains("data-phase=\"aborted\""), "{section}");
    assert!(section.contains("<strong class=\"percent\">0%</strong>"), "the share in force: {section}");
    // The failed checks, with the error rate against its threshold.
    assert!(section.contains("error rate % (max 5)"), "{section}");
    assert!(section.contains("class=\"check fail\""), "{section}");
    assert!(
        section.contains("error_rate ") && section.contains("&gt; 5"),
        "the failed gate and its threshold: {section}"
    );
    // The history, newest first: the abort and why.
    let history = &section[section.find("<h3>History</h3>").unwrap_or(0)..];
    let first = history.find("class=\"event aborted\"").unwrap_or(usize::MAX);
    let started = history.find("class=\"event started\"").unwrap_or(0);
    assert!(first < started, "the abort is listed before the start: {history}");
    assert!(history.contains("failed checks in a row"), "{history}");
}
