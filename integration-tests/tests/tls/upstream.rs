//! TLS to upstreams, a second gateway serving as the TLS backend.

use std::net::SocketAddr;
use std::time::Duration;

use super::pki::*;
use integration_tests::{free_addr, http_client, run_cli, temp_dir, Backend, Gateway};
use reqwest::StatusCode;
use serde_json::Value;

/// A gateway that serves `backend` over TLS as `backend.test`: the TLS upstream.
async fn tls_upstream(pki: &Pki, backend: &Backend) -> (Gateway, SocketAddr) {
    let dir = temp_dir();
    install(&dir.path().join("certs"), "shop", &pki.leaf(&["backend.test"]));
    let tls = free_addr();
    (Gateway::start_in(dir, "gateway.toml", &single_cert_config(tls, backend.addr())).await, tls)
}

fn pool(name: &str, addr: SocketAddr, tls_keys: &str) -> String {
    format!("[upstreams.{name}]\nbackends = [\"{addr}\"]\ntls = true\n{tls_keys}\n\n")
}

fn route(name: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nstable = \"{name}\"\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_with_ca_file_and_refuses_untrusted_backends() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let backend = Backend::start("app").await;
    let (_upstream, upstream_tls) = tls_upstream(&pki, &backend).await;

    let dir = temp_dir();
    write_file(&dir.path().join("ca.pem"), &pki.pem);
    write_file(&dir.path().join("other-ca.pem"), &stranger.pem);
    let hc = "health_check = { path = \"/healthz\", interval = \"300ms\", timeout = \"1s\" }";
    let mut config = "[server]\nlisten = [\"{listen}\"]\n\n[admin]\nlisten = \"{admin}\"\n\n".to_string();
    for (name, keys) in [
        ("trusted", format!("sni = \"backend.test\"\nca_file = \"ca.pem\"\n{hc}")),
        ("untrusted", "sni = \"backend.test\"\nca_file = \"other-ca.pem\"".to_string()),
        ("lax", "sni = \"backend.test\"\nca_file = \"other-ca.pem\"\nverify = false".to_string()),
        ("wrongname", "sni = \"elsewhere.test\"\nca_file = \"ca.pem\"".to_string()),
        ("probed", format!("sni = \"backend.test\"\nca_file = \"other-ca.pem\"\n{hc}")),
    ] {
        config.push_str(&pool(name, upstream_tls, &keys));
    }
    for name in ["trusted", "untrusted", "lax", "wrongname", "probed"] {
        config.push_str(&route(name));
    }
    let check = dir.path().join("check.toml");
    write_file(&check, &config.replace("{listen}", "127.0.0.1:1").replace("{admin}", "127.0.0.1:2"));
    let out = run_cli(&["check", "-c", &check.to_string_lossy()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("upstreams.lax.verify: false"), "gateway check warns about verify = false: {stdout}");

    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;
    let client = http_client();
    let get = |path: &str| {
        let (client, url) = (client.clone(), gateway.url(path));
        async move { client.get(url).send().await.expect("request").status() }
    };
    assert_eq!(get("/trusted/x").await, StatusCode::OK);
    let seen = backend.received();
    let last = seen.iter().rev().find(|r| r.path == "/trusted/x").expect("the backend got the request");
    assert_eq!(last.header("x-forwarded-proto").as_deref(), Some("https"), "it came through the TLS upstream");
    assert_eq!(get("/untrusted/x").await, StatusCode::BAD_GATEWAY, "a certificate from an unknown CA is refused");
    assert_eq!(get("/wrongname/x").await, StatusCode::BAD_GATEWAY, "a certificate for another name is refused");
    assert_eq!(get("/lax/x").await, StatusCode::OK, "verify = false accepts it");

    // Health probes go over TLS and verify like requests do.
    gateway
        .eventually("the probe of the untrusted backend fails", Duration::from_secs(10), || async {
            let status = gateway.status().await;
            let pool = status["upstreams"].as_array().and_then(|u| u.iter().find(|p| p["name"] == "probed")).cloned();
            pool.is_some_and(|p| p["healthy_backends"] == 0)
        })
        .await;
    assert_eq!(get("/probed/x").await, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = gateway.status().await;
    let trusted = status["upstreams"].as_array().and_then(|u| u.iter().find(|p| p["name"] == "trusted")).cloned();
    assert_eq!(trusted.map(|p| p["healthy_backends"].clone()), Some(Value::from(1)), "{status}");
    assert_eq!(get("/trusted/y").await, StatusCode::OK);
}
