//! Certificates on disk: renewed under load, bad ones refused at check, start and reload.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pki::*;
use integration_tests::{free_addr, http_client, run_cli, temp_dir, Backend, Gateway};
use reqwest::{Client, StatusCode};

/// Outcome counters of one load loop.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
    /// The peer certificate of each answer, in order.
    certs: Mutex<Vec<Vec<u8>>>,
}

/// Requests `url` until `stop`: over `client`'s kept-alive connection, or,
/// with `fresh_via = Some(..)`, each over a new connection and handshake.
fn hammer(
    client: Client,
    fresh_via: Option<(reqwest::Certificate, SocketAddr)>,
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let answer = match &fresh_via {
                Some((root, addr)) => fresh_fetch(root, &["shop.test"], *addr, &url).await,
                None => fetch(&client, &url).await,
            };
            match answer {
                Ok((StatusCode::OK, _, cert, _)) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    tally.certs.lock().expect("lock").push(cert);
                }
                Ok((status, _, _, body)) => tally.failed.lock().expect("lock").push(format!("{status}: {body}")),
                Err(e) => tally.failed.lock().expect("lock").push(format!("{e:?}")),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_on_disk_under_load_fails_no_request() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (gateway, tls, old, _) = start_tls_gateway(&pki, &backend, "").await;
    let url = format!("https://shop.test:{}/load", tls.port());
    let stop = Arc::new(AtomicBool::new(false));

    // Two keep-alive clients (one h2 connection, one HTTP/1.1 connection) and
    // two that open a new connection, so a new handshake, for every request.
    let keepalive_h2 = Arc::new(Tally::default());
    let keepalive_h1 = Arc::new(Tally::default());
    let fresh = Arc::new(Tally::default());
    let client = |b: reqwest::ClientBuilder| b.build().expect("client");
    let h2 = client(tls_client(&pki, &["shop.test"], tls));
    let h1 = client(tls_client(&pki, &["shop.test"], tls).http1_only());
    let via = Some((pki.root(), tls));
    let tasks = vec![
        hammer(h2.clone(), None, url.clone(), stop.clone(), keepalive_h2.clone()),
        hammer(h1, None, url.clone(), stop.clone(), keepalive_h1.clone()),
        hammer(h2.clone(), via.clone(), url.clone(), stop.clone(), fresh.clone()),
        hammer(h2, via, url.clone(), stop.clone(), fresh.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(keepalive_h2.ok.load(Ordering::Relaxed) > 0 && fresh.ok.load(Ordering::Relaxed) > 0, "load is running");

    // Renew: a new key and certificate for the same names, written over the
    // old files in a directory of their own (not the config's).
    let renewed = pki.leaf(&["shop.test", "*.shop.test"]);
    let generation = gateway.generation().await;
    install(&gateway.dir().join("certs"), "shop", &renewed);
    let fresh_seen_before = fresh.certs.lock().expect("lock").len();
    gateway
        .eventually("new handshakes get the renewed certificate", Duration::from_secs(10), || {
            let fresh = fresh.clone();
            let renewed = renewed.der.clone();
            async move { fresh.certs.lock().expect("lock").iter().skip(fresh_seen_before).any(|c| *c == renewed) }
        })
        .await;
    let keepalive_at_switch = (keepalive_h2.ok.load(Ordering::Relaxed), keepalive_h1.ok.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }

    for (name, tally) in [("keep-alive h2", &keepalive_h2), ("keep-alive h1", &keepalive_h1), ("fresh", &fresh)] {
        let failed = tally.failed.lock().expect("lock");
        assert!(failed.is_empty(), "{name}: {} failed requests, first: {:?}", failed.len(), failed.first());
    }
    // New handshakes switched for good once the new certificate was served
    // (two loops: one may have started its handshake just before the switch).
    {
        let fresh_certs = fresh.certs.lock().expect("lock");
        let first_new = fresh_certs.iter().position(|c| *c == renewed.der).expect("renewed certificate seen");
        let late_old = fresh_certs[first_new..].iter().filter(|c| **c != renewed.der).count();
        assert!(late_old <= 1, "{late_old} new handshakes got the old certificate after the switch");
        assert!(fresh_certs[..first_new].iter().all(|c| *c == old.der));
    }
    // The connections opened before the renewal carried on, on their old session.
    for (name, tally, at_switch) in
        [("h2", &keepalive_h2, keepalive_at_switch.0), ("h1", &keepalive_h1, keepalive_at_switch.1)]
    {
        let certs = tally.certs.lock().expect("lock");
        assert!(certs.len() > at_switch, "{name}: the keep-alive connection kept serving after the renewal");
        assert!(certs.iter().all(|c| *c == old.der), "{name}: the keep-alive connection was replaced");
    }
    assert!(gateway.generation().await > generation, "the renewal was applied as a reload");
    let metrics = http_client().get(gateway.admin_url("/metrics")).send().await.expect("metrics");
    let text = metrics.text().await.expect("metrics body");
    assert!(text.contains("gateway_tls_certificate_expiry_timestamp_seconds{name="), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_config_errors_and_never_replace_good_ones() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let good = pki.leaf(&["shop.test"]);
    let other = pki.leaf(&["shop.test"]);
    let expired = pki.expired(&["shop.test"]);
    let mismatched = Leaf { key_pem: other.key_pem.clone(), ..good.clone() };
    let garbage = Leaf { cert_pem: "this is not a certificate\n".into(), ..good.clone() };
    let cases: [(&str, &Leaf, &str, &str); 3] = [
        ("expired", &expired, "cert", "shop.pem: the certificate expired on"),
        ("mismatched", &mismatched, "key", "shop.key: this key does not belong to the certificate"),
        ("garbage", &garbage, "cert", "shop.pem: no PEM certificate"),
    ];

    // `gateway check` and start-up: an error naming the file, line and key; no panic.
    let dir = temp_dir();
    let config = dir.path().join("gateway.toml");
    let tls = free_addr();
    write_file(
        &config,
        &single_cert_config(tls, backend.addr()).replace("{listen}", "127.0.0.1:1").replace("{admin}", "127.0.0.1:2"),
    );
    for (name, leaf, field, message) in cases {
        install(&dir.path().join("certs"), "shop", leaf);
        let out = run_cli(&["check", "-c", &config.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let expected = format!("error: gateway.toml:9: server.tls.certs[0].{field}: ");
        assert!(
            stderr.contains(&expected) && stderr.contains(message),
            "{name}: wanted {expected}..{message}, got {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    std::fs::remove_file(dir.path().join("certs/shop.pem")).expect("remove the certificate");
    let out = run_cli(&["check", "-c", &config.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.tls.certs[0].cert: ") && stderr.contains("shop.pem: cannot read"), "{stderr}");

    let start_dir = temp_dir();
    install(&start_dir.path().join("certs"), "shop", &expired);
    let mut refused = Gateway::spawn_in(start_dir, "gateway.toml", &single_cert_config(free_addr(), backend.addr()));
    let status = refused.wait_exit(Duration::from_secs(20)).await.expect("a bad certificate stops the start");
    assert!(!status.success());
    assert!(refused.log().contains("server.tls.certs[0].cert: "), "{}", refused.log());

    // At run time: every bad certificate is rejected and the good one keeps serving.
    let run_dir = temp_dir();
    install(&run_dir.path().join("certs"), "shop", &good);
    let tls = free_addr();
    let gateway = Gateway::start_in(run_dir, "gateway.toml", &single_cert_config(tls, backend.addr())).await;
    let root = pki.root();
    let url = format!("https://shop.test:{}/x", tls.port());
    let generation = gateway.generation().await;
    for (name, leaf, _, message) in cases {
        install(&gateway.dir().join("certs"), "shop", leaf);
        let (code, body) = gateway.reload().await;
        assert_eq!(code, 422, "{name}: {body}");
        assert!(body.to_string().contains(message), "{name}: {body}");
        let (status, _, cert, _) = fresh_fetch(&root, &["shop.test"], tls, &url).await.expect("still serving");
        assert_eq!(status, StatusCode::OK);
        assert!(cert == good.der, "{name}: the old certificate must keep serving");
    }
    // The file watcher sees the bad file too, and rejects it the same way.
    let status = gateway.status().await;
    assert!(status["last_reload_error"].is_array(), "{status}");
    assert_eq!(gateway.generation().await, generation);

    // A good certificate then applies.
    let renewed = pki.leaf(&["shop.test"]);
    install(&gateway.dir().join("certs"), "shop", &renewed);
    gateway
        .eventually("the renewed certificate is served", Duration::from_secs(10), || {
            let (root, url, renewed) = (root.clone(), url.clone(), renewed.der.clone());
            async move { fresh_fetch(&root, &["shop.test"], tls, &url).await.is_ok_and(|(_, _, cert, _)| cert == renewed) }
        })
        .await;
}
