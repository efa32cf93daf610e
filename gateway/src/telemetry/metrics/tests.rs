//! Series that exist before their first event, and the process metrics.

use super::*;

fn text(m: &Metrics) -> String {
    String::from_utf8(m.render()).expect("the exposition is UTF-8")
}

#[test]
fn upstream_errors_exist_at_zero_for_every_kind_once_a_pool_is_known() {
    let m = Metrics::new();
    m.init_upstream_errors("cart-v1");
    let shown = text(&m);
    for kind in ["connect", "timeout", "5xx", "no-healthy-backend", "other"] {
        let line = format!("gateway_upstream_errors_total{{kind=\"{kind}\",pool=\"cart-v1\"}} 0");
        assert!(shown.lines().any(|l| l == line), "missing {line}:\n{shown}");
    }
    m.upstream_error("cart-v1", UpstreamErrorKind::Timeout);
    m.init_upstream_errors("cart-v1");
    assert!(text(&m).contains("gateway_upstream_errors_total{kind=\"timeout\",pool=\"cart-v1\"} 1"), "kept on re-init");
    m.forget_upstream_errors("cart-v1");
    assert!(!text(&m).contains("pool=\"cart-v1\""));
}

#[test]
fn last_reload_successful_follows_the_last_attempt() {
    let m = Metrics::new();
    m.loaded(true);
    assert!(text(&m).contains("\ngateway_config_last_reload_successful 1\n"));
    m.reload(false);
    assert!(text(&m).contains("\ngateway_config_last_reload_successful 0\n"));
    m.reload(true);
    let shown = text(&m);
    assert!(shown.contains("\ngateway_config_last_reload_successful 1\n"), "{shown}");
    assert!(!shown.contains("\ngateway_config_last_reload_success_timestamp_seconds 0\n"), "{shown}");
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_are_exported() {
    let shown = text(&Metrics::new());
    for name in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds"] {
        assert!(shown.lines().any(|l| l.starts_with(&format!("{name} "))), "missing {name}:\n{shown}");
    }
}
