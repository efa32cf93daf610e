//! Hot reload as release engineers and Kubernetes do it: under load, with
//! bad configs in between, by rename, by ConfigMap symlink swap, by SIGHUP.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cart_config, version_of};
use integration_tests::{http_client, Backend, Gateway, SIGHUP};

/// Which (version, backend) answers one config allows.
type Allowed = HashSet<(String, String)>;

fn config_and_allowed(stable: &[&Backend], canary: &[&Backend], percent: f64) -> (String, Allowed) {
    let mut allowed = Allowed::new();
    for b in stable {
        allowed.insert(("stable".into(), b.name().into()));
    }
    for b in canary {
        allowed.insert(("canary".into(), b.name().into()));
    }
    (cart_config(stable, canary, percent), allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_keepalive_load_fail_no_request() {
    let s: Vec<Backend> =
        futures::future::join_all((1..=3).map(|i| async move { Backend::start(&format!("stable-{i}")).await })).await;
    let c: Vec<Backend> =
        futures::future::join_all((1..=2).map(|i| async move { Backend::start(&format!("canary-{i}")).await })).await;
    // Config i: the percentage moves, backends are added and removed.
    let config_for = |i: usize| {
        let stable: Vec<&Backend> = match i % 4 {
            0 => vec![&s[0]],
            1 => vec![&s[0], &s[1]],
            2 => vec![&s[1], &s[2]],
            _ => vec![&s[2]],
        };
        let canary: Vec<&Backend> = if i.is_multiple_of(3) { vec![&c[0]] } else { vec![&c[0], &c[1]] };
        config_and_allowed(&stable, &canary, ((i * 37) % 101) as f64)
    };
    let (first, allowed) = config_for(0);
    let gateway = Arc::new(Gateway::start(&first).await);
    // Every config ever written, in order; a request may be served by the
    // config current when it started, or by any written before it ended.
    let history: Arc<Mutex<Vec<Allowed>>> = Arc::new(Mutex::new(vec![allowed]));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for worker in 0..4 {
        let (gateway, history, stop, sent) = (gateway.clone(), history.clone(), stop.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            // One keep-alive client per worker: connections live across reloads.
            let client = http_client();
            let mut problems = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                i += 1;
                let user = format!("w{worker}-{}", i % 5000);
                let start = history.lock().map(|h| h.len()).unwrap_or(0);
                let result = client.get(gateway.url("/cart/x")).header("x-user-id", &user).send().await;
                let end = history.lock().map(|h| h.len()).unwrap_or(0);
                sent.fetch_add(1, Ordering::Relaxed);
                let resp = match result {
                    Ok(r) => r,
                    Err(e) => {
                        problems.push(format!("request error: {e}"));
                        continue;
                    }
                };
                let status = resp.status().as_u16();
                let version = version_of(resp.headers());
                let backend = resp.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let _ = resp.bytes().await;
                if status != 200 {
                    problems.push(format!("status {status}"));
                    continue;
                }
                let candidates = history.lock().map(|h| h[start.saturating_sub(2)..end].to_vec()).unwrap_or_default();
                if !candidates.iter().any(|a| a.contains(&(version.clone(), backend.clone()))) {
                    problems.push(format!("{version} answered by {backend}, which no current config allowed"));
                }
            }
            problems
        }));
    }

    let mut reloads = 0;
    for i in 1..=100 {
        if i == 50 {
            // A bad config in the middle changes nothing and is visible.
            gateway.replace_config_by_rename(&config_for(i).0.replace("canary_percent =", "canary_percent = 300 #"));
            let (code, body) = gateway.reload().await;
            assert_eq!(code, 422, "{body}");
            let status = gateway.status().await;
            let errors = status["last_reload_error"].to_string();
            assert!(errors.contains("canary_percent: 300 is outside 0..=100"), "{status}");
        }
        let (text, allowed) = config_for(i);
        history.lock().expect("history").push(allowed);
        gateway.replace_config_by_rename(&text);
        let (code, body) = gateway.reload().await;
        assert_eq!(code, 200, "{body}");
        reloads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut problems = Vec::new();
    for c in clients {
        problems.extend(c.await.expect("client task"));
    }
    let total = sent.load(Ordering::Relaxed);
    assert!(
        problems.is_empty(),
        "{} of {total} requests went wrong, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert!(total > 1000, "only {total} requests were sent");
    let status = gateway.status().await;
    assert!(status["last_reload_error"].is_null(), "a good config clears the error: {status}");
    assert!(status["generation"].as_u64().unwrap_or(0) > reloads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_save_by_rename_is_picked_up() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 10.0)).await;
    gateway.replace_config_by_rename(&cart_config(&[&v1], &[&v2], 42.5));
    gateway.wait_for_generation(2).await;
    assert_eq!(gateway.status().await["routes"][0]["canary_percent"], 42.5);
    // And again: the watch survives the inode it watched being replaced.
    gateway.replace_config_by_rename(&cart_config(&[&v1], &[&v2], 50.0));
    gateway.wait_for_generation(3).await;
    assert_eq!(gateway.status().await["routes"][0]["canary_percent"], 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_configmap_update_is_picked_up() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let mut gateway = Gateway::start_configmap(&cart_config(&[&v1], &[&v2], 10.0)).await;
    gateway.configmap_swap(&cart_config(&[&v1], &[&v2], 25.0));
    gateway.wait_for_generation(2).await;
    assert_eq!(gateway.status().await["routes"][0]["canary_percent"], 25.0);
    gateway.configmap_swap(&cart_config(&[&v1], &[&v2], 35.0));
    gateway.wait_for_generation(3).await;
    assert_eq!(gateway.status().await["routes"][0]["canary_percent"], 35.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_bad_file_keeps_the_old_config() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let mut gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    gateway.signal(SIGHUP);
    gateway.wait_for_generation(2).await;

    // A broken save: rejected, reported, and traffic still flows on the old config.
    gateway.write_config("[[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\nstable = \"nowhere\"\n");
    gateway
        .eventually("the reload error shows in /api/status", Duration::from_secs(10), || async {
            gateway.status().await["last_reload_error"].to_string().contains("unknown upstream \\\"nowhere\\\"")
        })
        .await;
    let resp = http_client().get(gateway.url("/cart")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(gateway.generation().await, 2);
    let metrics = http_client().get(gateway.admin_url("/metrics")).send().await.expect("m").text().await.expect("t");
    assert!(metrics.contains("gateway_config_reloads_total{result=\"error\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_change_is_reported_as_needing_a_restart_and_the_rest_applies() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let moved = cart_config(&[&v1], &[&v2], 100.0).replace("listen = [\"{listen}\"]", "listen = [\"127.0.0.1:1\"]");
    gateway.replace_config_by_rename(&moved);
    let (code, body) = gateway.reload().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restart_needed"][0], "server.listen", "{body}");
    // Still listening where it was, with the new percentage.
    let resp = http_client().get(gateway.url("/cart")).header("x-user-id", "9").send().await.expect("request");
    assert_eq!(version_of(resp.headers()), "canary");
}

/// The log format is set up once at start: a reload that changes it says a
/// restart is needed, and the log keeps the format it has (before routing v2
/// such a reload answered "applied" and changed nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_format_change_waits_for_a_restart_and_says_so() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config(&[&v1], &[&v2], 0.0)).await;
    let text = cart_config(&[&v1], &[&v2], 100.0);
    let json = text.replacen("[server]\n", "[server]\naccess_log = \"json\"\n", 1);
    assert_ne!(json, text, "the config has a [server] section to add the key to");
    gateway.replace_config_by_rename(&json);
    let (code, body) = gateway.reload().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restart_needed"], serde_json::json!(["server.access_log"]), "{body}");
    // The rest applied (100% canary), and the request's access line is still text.
    let resp = http_client().get(gateway.url("/cart/after")).header("x-user-id", "9").send().await.expect("request");
    assert_eq!(version_of(resp.headers()), "canary");
    gateway
        .eventually("the request's access line is logged", Duration::from_secs(10), || async {
            gateway.log().lines().any(|l| l.contains("/cart/after"))
        })
        .await;
    let line = gateway.log().lines().find(|l| l.contains("/cart/after")).map(str::to_string).unwrap_or_default();
    assert!(!line.trim_start().starts_with('{'), "still the text format: {line}");
}
