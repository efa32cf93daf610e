//! A client that tries to bend its identity, its route or the gateway's own
//! headers, written as an attacker would: raw bytes on a socket, against the
//! real binary and a backend that records every request it received. Each
//! test also checks that no client request became two backend requests.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cart_config_with;
use integration_tests::{free_addr, Backend, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `cart_config` with extra top-level sections (placed before the upstreams).
fn with_sections(base: String, sections: &str) -> String {
    base.replacen("[upstreams.cart-v1]", &format!("{sections}\n\n[upstreams.cart-v1]"), 1)
}

/// What came back on a connection: the bytes until the peer closed or a
/// whole `Content-Length` answer arrived, and whether the peer closed.
struct Reply {
    text: String,
    closed: bool,
}

impl Reply {
    fn status(&self) -> u16 {
        self.text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Every status line in the bytes, in order (pipelined answers).
    fn statuses(&self) -> Vec<u16> {
        self.text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| self.text.get(i + 9..i + 12)?.parse().ok()).collect()
    }

    fn head(&self) -> String {
        self.text.split("\r\n\r\n").next().unwrap_or("").to_ascii_lowercase()
    }
}

/// Writes `bytes`, then reads until the peer closes or `wait` passes.
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Reply {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(bytes).await.expect("write");
    read_reply(&mut conn, wait).await
}

async fn read_reply(conn: &mut TcpStream, wait: Duration) -> Reply {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Reply { text: String::from_utf8_lossy(&got).into_owned(), closed }
}

/// One request that expects one answer on a connection the gateway keeps:
/// reads until the answer's `Content-Length` is complete.
async fn one_answer(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(request).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if n == 0 || complete(&text) {
            return Reply { text, closed: n == 0 };
        }
    }
}

fn complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok());
    len.is_some_and(|len| body.len() >= len)
}

async fn metrics(gateway: &Gateway) -> String {
    gateway.settled_metrics().await
}

/// `gateway_requests_total` of requests that matched no route, in one status class (`4xx`).
fn unrouted(metrics: &str, class: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("gateway_requests_total{")
                && l.contains("route=\"\"")
                && l.contains(&format!("class=\"{class}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_in_x_forwarded_for_does_not_unblock_a_client_behind_a_trusted_proxy() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config = with_sections(
        cart_config_with(&[&v1], &[&v2], 0.0, ""),
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blacklist]\ncidrs = [\"203.0.113.66\"]",
    );
    let gateway = Gateway::start(&config).await;
    let addr = gateway.listen_addr();
    // The client wrote the junk; the trusted proxy appended the real address.
    for xff in [&b"\xff, 203.0.113.66"[..], b"\xff\xfe\xfd", b"unknown, 203.0.113.66", b"1.2.3.4:99999999,203.0.113.66"]
    {
        let mut request = b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: ".to_vec();
        request.extend_from_slice(xff);
        request.extend_from_slice(b"\r\n");
        if xff == b"\xff\xfe\xfd" {
            // Junk in one header, the real entry in the next one.
            request.extend_from_slice(b"X-Forwarded-For: 203.0.113.66\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let reply = one_answer(addr, &request).await;
        assert_eq!(reply.status(), 403, "{}: {}", String::from_utf8_lossy(xff), reply.text);
    }
    assert_eq!(v1.requests() + v2.requests(), 0, "the backends saw no blocked request");
    // A clean client still passes, and the junk it wrote reaches the backend as it was.
    let reply =
        one_answer(addr, b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: \xff, 198.51.100.1\r\n\r\n").await;
    assert_eq!(reply.status(), 200, "{}", reply.text);
    let seen = v1.received();
    let xff = seen[0].headers.get("x-forwarded-for").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    assert_eq!(xff, b"\xff, 198.51.100.1, 127.0.0.1", "{}", String::from_utf8_lossy(&xff));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_listener_sees_ipv4_clients_as_ipv4_everywhere() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    // An IPv4 client on a `[::]` listener arrives as ::ffff:127.0.0.1.
    let port = free_addr().port();
    let config = with_sections(
        cart_config_with(&[&v1], &[&v2], 0.0, "whitelist_ips = [\"198.51.100.7\"]")
            .replace("listen = [\"{listen}\"]", &format!("listen = [\"{{listen}}\", \"[::]:{port}\"]")),
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blacklist]\ncidrs = [\"::ffff:203.0.113.0/120\"]",
    );
    let _gateway = Gateway::start(&config).await;
    let dual = SocketAddr::from(([127, 0, 0, 1], port));
    // Trusted proxy matches, so its X-Forwarded-For is read; the mapped
    // blacklist range in the config is the IPv4 range.
    let blocked =
        one_answer(dual, b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 203.0.113.66\r\n\r\n").await;
    assert_eq!(blocked.status(), 403, "{}", blocked.text);
    let mapped =
        one_answer(dual, b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: ::ffff:203.0.113.9\r\n\r\n").await;
    assert_eq!(mapped.status(), 403, "{}", mapped.text);
    // The whitelist matches an IPv4 client named by a trusted proxy.
    let tester = one_answer(dual, b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n").await;
    assert_eq!(tester.status(), 200, "{}", tester.text);
    assert!(tester.head().contains("x-gateway-version: canary"), "{}", tester.text);
    assert_eq!(v2.requests(), 1);
    // The backend is told the IPv4 peer, not the mapped form.
    assert_eq!(v2.received()[0].header("x-forwarded-for").as_deref(), Some("198.51.100.7, 127.0.0.1"));
    assert_eq!(v1.requests(), 0);
}

/// Two routes on separate backends: `/cart` and `/recommendations`.
fn two_routes(cart: &Backend, recs: &Backend, server_extra: &str) -> String {
    let base = cart_config_with(&[cart], &[cart], 0.0, "");
    let base = base.replace("[server]\n", &format!("[server]\n{server_extra}\n"));
    format!(
        "{base}\n[upstreams.recs]\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"recommendations\"\npath_prefix = \"/recommendations\"\nstable = \"recs\"\n",
        recs.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_walk_from_one_route_into_another() {
    let (cart, recs) = (Backend::start("cart").await, Backend::start("recs").await);
    let gateway = Gateway::start(&two_routes(&cart, &recs, "")).await;
    let addr = gateway.listen_addr();
    for path in ["/recommendations/../cart/x", "/recommendations/%2e%2E/cart/x", "/recommendations//..//cart/x"] {
        let reply = one_answer(addr, format!("GET {path}?q=1 HTTP/1.1\r\nHost: shop\r\n\r\n").as_bytes()).await;
        assert_eq!(reply.status(), 200, "{path}: {}", reply.text);
        assert!(reply.text.contains("\"backend\":\"cart\""), "{path} is the cart route's: {}", reply.text);
    }
    assert_eq!(recs.requests(), 0);
    let forwarded: Vec<_> = cart.received().iter().map(|r| (r.path.clone(), r.query.clone())).collect();
    assert!(forwarded.iter().all(|(p, q)| p == "/cart/x" && q.as_deref() == Some("q=1")), "{forwarded:?}");
    // Climbing above the root is refused, logged and counted; nothing reaches a backend.
    let reply = one_answer(addr, b"GET /recommendations/../../etc/passwd HTTP/1.1\r\nHost: shop\r\n\r\n").await;
    assert_eq!(reply.status(), 400, "{}", reply.text);
    assert_eq!(cart.requests() + recs.requests(), 3);
    assert!(unrouted(&metrics(&gateway).await, "4xx") >= 1);
    // An encoded slash is not a separator: one segment, routed as written.
    let reply = one_answer(addr, b"GET /recommendations/..%2Fcart HTTP/1.1\r\nHost: shop\r\n\r\n").await;
    assert!(reply.text.contains("\"backend\":\"recs\""), "{}", reply.text);
    // Forms other servers read as separators or dot segments, and targets
    // that are not a path, are refused rather than routed as something else.
    for target in [
        "/recommendations/..;/cart/x",
        "/recommendations/%2e%2e;/cart",
        "/recommendations/..\\cart\\x",
        "cart/x",
        "../cart",
    ] {
        let reply =
            exchange(addr, format!("GET {target} HTTP/1.1\r\nHost: shop\r\n\r\n").as_bytes(), Duration::from_secs(5))
                .await;
        assert_eq!(reply.status(), 400, "{target}: {}", reply.text);
    }
    assert_eq!(cart.requests() + recs.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalize_path_false_forwards_the_raw_path() {
    let (cart, recs) = (Backend::start("cart").await, Backend::start("recs").await);
    let gateway = Gateway::start(&two_routes(&cart, &recs, "normalize_path = false")).await;
    let reply =
        one_answer(gateway.listen_addr(), b"GET /recommendations/../cart/x HTTP/1.1\r\nHost: shop\r\n\r\n").await;
    assert!(reply.text.contains("\"backend\":\"recs\""), "{}", reply.text);
    assert_eq!(recs.received()[0].path, "/recommendations/../cart/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_rfc_calls_invalid_get_400_and_never_reach_a_backend() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config_with(&[&v1], &[&v2], 0.0, "")).await;
    let addr = gateway.listen_addr();
    let invalid: [&[u8]; 7] = [
        b"GET /cart/x HTTP/1.1\r\n\r\n",
        b"GET /cart/x HTTP/1.1\r\nHost: shop .example\r\n\r\n",
        b"GET /cart/x HTTP/1.1\r\nHost: shop.example:abc\r\n\r\n",
        b"GET /cart/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nContent-Length: 3, 4\r\n\r\nabcd",
        b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nBad Header: x\r\n\r\n",
    ];
    for request in invalid {
        let reply = exchange(addr, request, Duration::from_secs(5)).await;
        assert_eq!(reply.status(), 400, "{:?}: {}", String::from_utf8_lossy(request), reply.text);
        assert!(reply.closed, "the connection of a refused request is closed");
    }
    assert_eq!(v1.requests() + v2.requests(), 0, "no invalid request reached a backend");
    // Identical duplicates are one Content-Length upstream.
    let reply =
        one_answer(addr, b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")
            .await;
    assert_eq!(reply.status(), 200, "{}", reply.text);
    assert_eq!(v1.requests(), 1);
    assert_eq!(v1.received()[0].headers.get_all("content-length").iter().count(), 1, "one Content-Length upstream");
    assert_eq!(v1.received()[0].header("content-length").as_deref(), Some("3"));
    // Each refusal is counted with route "" and written to the access log.
    let text = metrics(&gateway).await;
    assert_eq!(unrouted(&text, "4xx"), invalid.len() as u64, "{text}");
    let log = gateway.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("access") && l.contains("status=400")).collect();
    assert_eq!(refused.len(), invalid.len(), "{log}");
    assert!(refused.iter().all(|l| l.contains("client=\"127.0.0.1\"")), "each names the client: {refused:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_never_promised_a_keep_alive_that_is_not_kept() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config_with(&[&v1], &[&v2], 0.0, "")).await;
    let two = b"GET /cart/1 HTTP/1.1\r\nHost: shop\r\n\r\nGET /cart/2 HTTP/1.1\r\nHost: shop\r\n\r\n";
    let reply = exchange(gateway.listen_addr(), two, Duration::from_secs(5)).await;
    let statuses = reply.statuses();
    match statuses.as_slice() {
        [200, 200] => {}
        [200] => {
            assert!(reply.head().contains("connection: close"), "one answer must say close: {}", reply.text);
            assert!(reply.closed);
        }
        other => panic!("unexpected answers {other:?}: {}", reply.text),
    }
    assert_eq!(v1.requests(), statuses.len(), "each answered request reached the backend once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_slow_bodies_get_408_and_are_closed() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config = cart_config_with(&[&v1], &[&v2], 0.0, "")
        .replace("[server]\n", "[server]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\n");
    let gateway = Gateway::start(&config).await;
    let addr = gateway.listen_addr();

    // A head trickled a byte at a time: 408 once header_timeout has passed.
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let head = b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nX-Slow: ";
    let mut reply = None;
    for byte in head.iter().chain(std::iter::repeat(&b'a')).take(200) {
        if conn.write_all(&[*byte]).await.is_err() {
            break;
        }
        let r = read_reply(&mut conn, Duration::from_millis(200)).await;
        if !r.text.is_empty() || r.closed {
            reply = Some(r);
            break;
        }
    }
    let reply = reply.expect("the gateway answered or closed before 40 s of trickling");
    assert_eq!(reply.status(), 408, "{}", reply.text);
    assert!(started.elapsed() < Duration::from_secs(30));

    // A connection that sends nothing is closed (after header_timeout), without an answer.
    let silent = exchange(addr, b"", Duration::from_secs(20)).await;
    assert!(silent.closed && silent.text.is_empty(), "{}", silent.text);

    // A body that stops: 408, and the connection is closed.
    let stalled =
        exchange(addr, b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nContent-Length: 10\r\n\r\nab", Duration::from_secs(20))
            .await;
    assert_eq!(stalled.status(), 408, "{}", stalled.text);
    assert!(stalled.closed);

    // The admin listener has the same head deadline.
    let admin = exchange(gateway.admin_addr(), b"GET /api/status HTTP/1.1\r\nHost: a", Duration::from_secs(20)).await;
    assert_eq!(admin.status(), 408, "{}", admin.text);
    assert!(admin.closed);

    let text = metrics(&gateway).await;
    assert!(unrouted(&text, "4xx") >= 1, "the late head is counted: {text}");
    assert!(gateway.log().contains("header_timeout"), "and logged");
    assert_eq!(v2.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_remove_or_forge_the_headers_the_gateway_owns() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config_with(&[&v1], &[&v2], 0.0, "")).await;
    let addr = gateway.listen_addr();
    let request = b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, X-Request-Id, x-forwarded-for, x-forwarded-proto\r\nX-Shadow: 1\r\nX-Request-Id: good-id-1\r\n\r\n";
    let reply = one_answer(addr, request).await;
    assert_eq!(reply.status(), 200, "{}", reply.text);
    let seen = &v1.received()[0];
    assert_eq!(seen.header("x-request-id").as_deref(), Some("good-id-1"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen.header("x-shadow"), None, "a client's shadow marker is removed");
    let connection = seen.header("connection").unwrap_or_default().to_ascii_lowercase();
    assert!(!connection.contains("x-request-id") && !connection.contains("x-forwarded"), "{connection}");

    // An id that is too long or not printable is replaced.
    let long = "a".repeat(129);
    for bad in [long.as_str(), "has space", "tab\there"] {
        let request = format!("GET /cart/x HTTP/1.1\r\nHost: shop\r\nX-Request-Id: {bad}\r\n\r\n");
        assert_eq!(one_answer(addr, request.as_bytes()).await.status(), 200);
    }
    let ids: Vec<String> = v1.received().iter().skip(1).filter_map(|r| r.header("x-request-id")).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| id.len() <= 128 && !id.contains(' ') && !id.contains('\t')), "{ids:?}");

    // Client-controlled values are quoted in the text access log: a request
    // cannot write a field of its own.
    let request = b"GET /cart/x HTTP/1.1\r\nHost: shop\r\nX-Request-Id: x\"status=999\r\n\r\n";
    assert_eq!(one_answer(addr, request).await.status(), 200);
    gateway.settled_metrics().await;
    let log = gateway.log();
    let line = log.lines().find(|l| l.contains("status=999")).expect("the request's access line");
    assert!(line.contains(r#"request_id="x\"status=999""#), "{line}");
    assert!(line.contains("status=200"), "{line}");
    assert_eq!(v1.requests(), 5, "one backend request per client request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_in_chunked_framing_is_a_400_and_never_a_second_request() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config_with(&[&v1], &[&v2], 0.0, "")).await;
    let addr = gateway.listen_addr();
    let smuggling: [&[u8]; 3] = [
        b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\nabc\r\n0\r\n\r\n",
        b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\n\r\nGET /cart/smuggled HTTP/1.1\r\nHost: shop\r\n\r\n",
    ];
    for request in smuggling {
        let reply = exchange(addr, request, Duration::from_secs(5)).await;
        assert_eq!(reply.status(), 400, "{:?}: {}", String::from_utf8_lossy(request), reply.text);
    }
    // Sent in one write, the bad framing is seen with the head: no upstream is asked.
    assert_eq!(v1.requests() + v2.requests(), 0, "no backend saw any of them");

    // Sent in two writes, the bad line arrives while the body streams: the
    // head has gone upstream, nothing after the bad line does, and the client gets 400.
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n").await.expect("head");
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(b"3\nabc\r\n0\r\n\r\nGET /cart/smuggled HTTP/1.1\r\nHost: shop\r\n\r\n").await.expect("body");
    let reply = read_reply(&mut conn, Duration::from_secs(5)).await;
    assert_eq!(reply.status(), 400, "{}", reply.text);
    assert!(v1.received().iter().all(|r| r.path != "/cart/smuggled"), "no second request reached the backend");
    assert!(v1.requests() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_after_a_chunked_body_is_never_promised_a_keep_alive() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config_with(&[&v1], &[&v2], 0.0, "")).await;
    let two = b"POST /cart/1 HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /cart/2 HTTP/1.1\r\nHost: shop\r\n\r\n";
    let reply = exchange(gateway.listen_addr(), two, Duration::from_secs(5)).await;
    match reply.statuses().as_slice() {
        [200, 200] => {}
        [200] => assert!(reply.head().contains("connection: close"), "{}", reply.text),
        other => panic!("unexpected answers {other:?}: {}", reply.text),
    }
    assert_eq!(v1.requests(), reply.statuses().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_as_strict_about_host_and_pipelining() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let gateway = Gateway::start(&cart_config_with(&[&v1], &[&v2], 0.0, "")).await;
    let admin = gateway.admin_addr();
    let reply = exchange(admin, b"GET /healthz HTTP/1.1\r\n\r\n", Duration::from_secs(5)).await;
    assert_eq!(reply.status(), 400, "{}", reply.text);
    let two = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n\r\n";
    let reply = exchange(admin, two, Duration::from_secs(5)).await;
    match reply.statuses().as_slice() {
        [200, 200] => {}
        [200] => assert!(reply.head().contains("connection: close"), "{}", reply.text),
        other => panic!("unexpected answers {other:?}: {}", reply.text),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_after_a_body_leaves_the_connection_idle_not_late() {
    let (v1, v2) = (Backend::start("cart-v1").await, Backend::start("cart-v2").await);
    let config = cart_config_with(&[&v1], &[&v2], 0.0, "").replace("[server]\n", "[server]\nheader_timeout = \"1s\"\n");
    let gateway = Gateway::start(&config).await;
    let mut conn = TcpStream::connect(gateway.listen_addr()).await.expect("connect");
    conn.write_all(b"POST /cart/x HTTP/1.1\r\nHost: shop\r\nContent-Length: 3\r\n\r\nabc").await.expect("post");
    let first = integration_tests::raw_http::read_one_response(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Old browsers send CRLF after a POST body (RFC 9112 2.2 lets servers ignore it).
    conn.write_all(b"\r\n").await.expect("crlf");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.write_all(b"GET /cart/y HTTP/1.1\r\nHost: shop\r\n\r\n").await.expect("get");
    let second = integration_tests::raw_http::read_one_response(&mut conn).await;
    assert!(second.starts_with("HTTP/1.1 200"), "the kept-alive connection still serves: {second}");
    assert_eq!(v1.requests(), 2);
}
