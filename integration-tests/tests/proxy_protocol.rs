//! Behind a TCP balancer: the client's address arrives in a PROXY protocol
//! header. Sent by independent implementations (HAProxy's `send-proxy-v2`
//! and `send-proxy`, curl's `--haproxy-protocol`), judged by the gateway.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::{free_addr, is_listening, temp_dir, Backend, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "tls/pki.rs"]
#[allow(dead_code)]
mod pki;

/// HAProxy in TCP mode in front of the gateway: one frontend sending v2
/// headers, one sending v1. Stopped when dropped.
struct Balancer {
    child: Child,
    v2: SocketAddr,
    v1: SocketAddr,
}

impl Balancer {
    /// `tls`: a TLS listener to forward a third frontend to, with v2 headers.
    fn start(dir: &Path, gateway: SocketAddr) -> Balancer {
        Self::start_with(dir, gateway, None).0
    }

    fn start_with(dir: &Path, gateway: SocketAddr, tls: Option<SocketAddr>) -> (Balancer, Option<SocketAddr>) {
        let (v2, v1) = (free_addr(), free_addr());
        let tls_front = tls.map(|_| free_addr());
        let mut cfg = format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fv2\n  bind {v2}\n  default_backend gw2\nbackend gw2\n  server gw {gateway} send-proxy-v2\n\
             frontend fv1\n  bind {v1}\n  default_backend gw1\nbackend gw1\n  server gw {gateway} send-proxy\n"
        );
        if let (Some(front), Some(tls)) = (tls_front, tls) {
            cfg.push_str(&format!(
                "frontend ftls\n  bind {front}\n  default_backend gwtls\nbackend gwtls\n  server gw {tls} send-proxy-v2\n"
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("haproxy config");
        let bin = if Path::new("/usr/sbin/haproxy").exists() { "/usr/sbin/haproxy" } else { "haproxy" };
        let child = Command::new(bin)
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (deploy/dev.sh setup installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(is_listening(v2) && is_listening(v1) && tls_front.is_none_or(is_listening)) {
            assert!(std::time::Instant::now() < deadline, "haproxy did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        (Balancer { child, v2, v1 }, tls_front)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(backend: SocketAddr, extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 1
{extra_server}
[admin]
listen = "{{admin}}"
[blacklist]
cidrs = ["127.0.0.66"]
[upstreams.app]
backends = ["{backend}"]
[[routes]]
name = "app"
path_prefix = "/"
stable = "app"
"#
    )
}

/// A GET through `via` from the local address `from`: (status, the backend's last X-Forwarded-For entry).
async fn get_from(from: &str, via: SocketAddr, backend: &Backend, path: &str) -> (u16, Option<String>) {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().expect("ip"))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let resp = client.get(format!("http://{via}{path}")).send().await.expect("request");
    let status = resp.status().as_u16();
    let xff = backend
        .received()
        .into_iter()
        .rev()
        .find(|r| r.path == path)
        .and_then(|r| r.header("x-forwarded-for"))
        .map(|v| v.rsplit(',').next().unwrap_or("").trim().to_string());
    (status, xff)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_client_in_the_header_is_the_client_for_everything() {
    let backend = Backend::start("app").await;
    let gateway = Gateway::start(&config(backend.addr(), "proxy_protocol = { from = [\"127.0.0.1/32\"] }")).await;
    let balancer = Balancer::start(gateway.dir(), gateway.listen_addr());

    for (version, via) in [("v2", balancer.v2), ("v1", balancer.v1)] {
        // HAProxy connects from 127.0.0.1; the client it names is 127.0.0.9.
        let path = format!("/{version}/allowed");
        let (status, xff) = get_from("127.0.0.9", via, &backend, &path).await;
        assert_eq!(status, 200, "{version}");
        assert_eq!(xff.as_deref(), Some("127.0.0.9"), "{version}: the backend sees the client, not the balancer");
        // The blacklist judges the client in the header, not the balancer.
        let (status, _) = get_from("127.0.0.66", via, &backend, &format!("/{version}/blocked")).await;
        assert_eq!(status, 403, "{version}: a blocked client behind the balancer");
    }
    let log = gateway.log();
    assert!(
        log.lines().any(|l| l.contains("/v2/allowed") && l.contains("127.0.0.9")),
        "the access log names the client:\n{log}"
    );
}

/// `[blacklist] at_accept`: behind the balancer the connection is judged by
/// the client in the header, so a blocked client's connection is dropped
/// and its neighbours behind the same balancer are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_accept_drops_a_blocked_client_named_in_the_header() {
    let backend = Backend::start("app").await;
    let text = config(backend.addr(), "proxy_protocol = { from = [\"127.0.0.1/32\"] }").replacen(
        "[blacklist]\n",
        "[blacklist]\nat_accept = true\n",
        1,
    );
    let gateway = Gateway::start(&text).await;
    let balancer = Balancer::start(gateway.dir(), gateway.listen_addr());
    let (status, _) = get_from("127.0.0.9", balancer.v2, &backend, "/neighbour").await;
    assert_eq!(status, 200, "the balancer's other clients are served");
    let client =
        reqwest::Client::builder().local_address("127.0.0.66".parse::<IpAddr>().expect("ip")).build().expect("client");
    let blocked = client.get(format!("http://{}/blocked", balancer.v2)).send().await;
    assert!(blocked.is_err(), "dropped, no 403 page: {blocked:?}");
    let metrics = reqwest::get(gateway.admin_url("/metrics")).await.expect("m").text().await.expect("t");
    assert!(metrics.contains("gateway_blocked_requests_total{dry_run=\"false\",source=\"config\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_s_v1_header_is_read_and_its_request_served() {
    let backend = Backend::start("app").await;
    let gateway = Gateway::start(&config(backend.addr(), "proxy_protocol = { from = [\"127.0.0.1/32\"] }")).await;
    let url = format!("http://{}/curl", gateway.listen_addr());
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--haproxy-protocol", "--interface", "127.0.0.1", &url])
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(backend.received().iter().any(|r| r.path == "/curl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_peer_without_a_header_and_an_unlisted_peer_with_one_are_refused() {
    let backend = Backend::start("app").await;
    // 127.0.0.1 must send a header; 127.0.0.2 must not.
    let gateway = Gateway::start(&config(backend.addr(), "proxy_protocol = { from = [\"127.0.0.1/32\"] }")).await;

    // A listed peer that sends a plain request: closed without an answer, counted.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let mut conn = socket.connect(gateway.listen_addr()).await.expect("connect");
    conn.write_all(b"GET /sneaky HTTP/1.1\r\nHost: shop\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await.expect("closed");
    assert!(answer.is_empty(), "no answer: {}", String::from_utf8_lossy(&answer));
    let metrics = reqwest::get(gateway.admin_url("/metrics")).await.expect("m").text().await.expect("t");
    assert!(metrics.contains("gateway_proxy_protocol_refused_total{reason=\"invalid\"} 1"), "{metrics}");

    // An unlisted peer that sends one: its bytes are not HTTP, 400.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind");
    let mut conn = socket.connect(gateway.listen_addr()).await.expect("connect");
    conn.write_all(b"PROXY TCP4 198.51.100.1 127.0.0.1 4000 80\r\nGET /forged HTTP/1.1\r\nHost: shop\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await.expect("closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    assert!(
        !backend.received().iter().any(|r| r.path == "/sneaky" || r.path == "/forged"),
        "nothing reached the backend"
    );
}

/// The TLS listener: HAProxy passes the encrypted bytes through after a v2
/// header, and the gateway reads the header before the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_tls_listener_the_header_comes_before_the_handshake() {
    let backend = Backend::start("app").await;
    let ca = pki::Pki::new();
    let dir = temp_dir();
    pki::install(&dir.path().join("certs"), "shop", &ca.leaf(&["shop.test"]));
    let tls = free_addr();
    let server = format!(
        "proxy_protocol = {{ from = [\"127.0.0.1/32\"] }}\n\
         [server.tls]\nlisten = [\"{tls}\"]\ncerts = [{{ cert = \"certs/shop.pem\", key = \"certs/shop.key\" }}]\n"
    );
    let gateway = Gateway::start_in(dir, "gateway.toml", &config(backend.addr(), &server)).await;
    let (_balancer, front) = Balancer::start_with(gateway.dir(), gateway.listen_addr(), Some(tls));
    let front = front.expect("tls frontend");
    for (from, path, want) in [("127.0.0.9", "/tls/allowed", 200), ("127.0.0.66", "/tls/blocked", 403)] {
        let client = pki::tls_client(&ca, &["shop.test"], front)
            .local_address(from.parse::<IpAddr>().expect("ip"))
            .build()
            .expect("client");
        let url = format!("https://shop.test:{}{path}", front.port());
        let resp = client.get(&url).send().await.expect("request over TLS through haproxy");
        assert_eq!(resp.status().as_u16(), want, "{from}");
    }
    let xff =
        backend.received().into_iter().find(|r| r.path == "/tls/allowed").and_then(|r| r.header("x-forwarded-for"));
    assert_eq!(xff.as_deref(), Some("127.0.0.9"));
    // A listed peer that starts the handshake without a header is dropped before TLS.
    let direct = pki::tls_client(&ca, &["shop.test"], tls)
        .local_address("127.0.0.1".parse::<IpAddr>().expect("ip"))
        .build()
        .expect("c");
    assert!(direct.get(format!("https://shop.test:{}/tls/direct", tls.port())).send().await.is_err());
}
