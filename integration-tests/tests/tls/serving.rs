//! Serving: SNI, ALPN, kept-alive HTTP/1 connections, the plain-HTTP redirect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::pki::*;
use integration_tests::raw_http::{echoed, read_one_response, send_a_body_with_its_head_and_a_long_head};
use integration_tests::{http_client, Backend};
use reqwest::{Client, StatusCode, Version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_h2_and_http1_both_work() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (gateway, tls, shop, default) = start_tls_gateway(&pki, &backend, "").await;
    let port = tls.port();
    let names = ["shop.test", "www.shop.test", "a.b.shop.test", "other.test"];

    let h2 = tls_client(&pki, &names, tls).build().expect("h2 client");
    let (status, version, cert, body) = fetch(&h2, &format!("https://shop.test:{port}/cart")).await.expect("shop.test");
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert!(cert == shop.der, "shop.test must get the shop certificate");
    assert_eq!(body["backend"], "app");
    assert_eq!(body["path"], "/cart");

    let (_, _, cert, _) = fetch(&h2, &format!("https://www.shop.test:{port}/")).await.expect("wildcard");
    assert!(cert == shop.der, "*.shop.test covers www.shop.test");

    // An address sends no SNI: the default certificate (which lists it).
    let (status, _, cert, _) = fetch(&h2, &format!("https://{tls}/")).await.expect("no SNI");
    assert_eq!(status, StatusCode::OK);
    assert!(cert == default.der, "a client without SNI gets the default certificate");

    // Names no certificate covers get the default one too (which the client then rejects).
    let err = fetch(&h2, &format!("https://other.test:{port}/")).await.expect_err("unknown name is not verified");
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    let lax = tls_client(&pki, &names, tls).danger_accept_invalid_certs(true).build().expect("lax client");
    for name in ["other.test", "a.b.shop.test"] {
        let (status, _, cert, _) = fetch(&lax, &format!("https://{name}:{port}/")).await.expect("unknown name");
        assert_eq!(status, StatusCode::OK);
        assert!(cert == default.der, "{name} must get the default certificate");
    }

    let h1 = tls_client(&pki, &names, tls).http1_only().build().expect("h1 client");
    let (status, version, cert, _) = fetch(&h1, &format!("https://shop.test:{port}/cart")).await.expect("h1");
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));
    assert!(cert == shop.der);

    // Many streams at once over the one h2 connection.
    let url = format!("https://shop.test:{port}/cart/many");
    let answers = futures::future::join_all((0..32).map(|_| fetch(&h2, &url))).await;
    for a in answers {
        let (status, version, _, _) = a.expect("concurrent h2 request");
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    }

    // The upstream is told how the client came in.
    let plain = http_client().get(gateway.url("/plain")).send().await.expect("plain request");
    assert_eq!(plain.status(), StatusCode::OK);
    let received = backend.received();
    let proto = |path: &str| {
        received.iter().find(|r| r.path == path).and_then(|r| r.header("x-forwarded-proto")).unwrap_or_default()
    };
    assert_eq!(proto("/cart"), "https");
    assert_eq!(proto("/plain"), "http");
}

/// Between requests an HTTP/1 TLS connection waits without a session: what
/// arrives is read on the stack and handed to the parser by a wrapper around
/// the TLS stream. Whatever lies past that first read, or comes with it,
/// must reach the backend intact, on the one kept-alive connection: a body
/// in the same write as the head, a head longer than the read, a request
/// whose first byte comes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_reused_tls_connection_arrive_whole() {
    use tokio::io::AsyncWriteExt;
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (_gateway, tls, _, _) = start_tls_gateway(&pki, &backend, "").await;
    let mut conn = raw_tls_connection(&pki, tls, "shop.test").await;

    conn.write_all(b"GET /cart HTTP/1.1\r\nHost: shop.test\r\n\r\n").await.expect("write");
    assert_eq!(echoed(&read_one_response(&mut conn).await)["path"], "/cart");
    tokio::time::sleep(Duration::from_millis(300)).await;

    send_a_body_with_its_head_and_a_long_head(&mut conn, "shop.test").await;

    let request = b"GET /cart/last HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    conn.write_all(&request[..1]).await.expect("write the first byte");
    conn.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_all(&request[1..]).await.expect("write the rest");
    assert_eq!(echoed(&read_one_response(&mut conn).await)["path"], "/cart/last");
    assert_eq!(backend.requests(), 4, "all four requests were served on the one connection");
}

/// A TLS connection to `addr` for `name`, trusting `pki`'s CA, offering HTTP/1.1.
async fn raw_tls_connection(
    pki: &Pki,
    addr: SocketAddr,
    name: &'static str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.pem.as_bytes()).expect("CA PEM")).expect("trust the CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(name).expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_on_redirect_routes() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (gateway, tls, _, _) = start_tls_gateway(&pki, &backend, "https_redirect = true").await;
    let plain_port = gateway.listen_addr().port();

    let no_follow = Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let response = no_follow
        .post(gateway.url("/cart/x?a=1&b=2"))
        .header("host", format!("shop.test:{plain_port}"))
        .body("payload")
        .send()
        .await
        .expect("plain request");
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(location, format!("https://shop.test:{}/cart/x?a=1&b=2", tls.port()));
    assert_eq!(backend.requests(), 0, "a redirected request never reaches the upstream");

    // A browser-like client follows it to the TLS listener, where it is served.
    let follow = tls_client(&pki, &["shop.test"], tls).build().expect("client");
    let response = follow.get(format!("http://shop.test:{plain_port}/cart/y")).send().await.expect("followed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.url().as_str(), format!("https://shop.test:{}/cart/y", tls.port()));
    assert_eq!(backend.requests(), 1);
}

/// A lenient HTTP/1.1 backend, like many in the wild: it answers any line
/// it is sent as a request (`{"path": ...}`), keeps the connection unless the
/// request says `Connection: close`, and reads chunked and sized bodies.
async fn lenient_backend() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or(line.trim()).to_string();
                    let (mut chunked, mut length, mut close) = (false, 0usize, false);
                    loop {
                        let mut h = String::new();
                        if conn.read_line(&mut h).await.unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        let h = h.to_ascii_lowercase();
                        chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
                        close |= h.starts_with("connection:") && h.contains("close");
                        if let Some(v) = h.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = Vec::new();
                    if chunked {
                        loop {
                            let mut size = String::new();
                            let _ = conn.read_line(&mut size).await;
                            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                            let mut chunk = vec![0u8; n + 2];
                            let _ = conn.read_exact(&mut chunk).await;
                            if n == 0 {
                                break;
                            }
                            body.extend_from_slice(&chunk[..n]);
                        }
                    } else {
                        body.resize(length, 0);
                        let _ = conn.read_exact(&mut body).await;
                    }
                    let json = format!("{{\"path\":{path:?},\"body_len\":{}}}", body.len());
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    if conn.get_mut().write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Pingora 0.9.1 sends a streamed HTTP/2 request body upstream as chunked with
/// a second last-chunk, which a lenient backend answers as a request `0`; that
/// answer waited on the pooled connection for the next request, so a later
/// request (from anyone) got it. The gateway closes such a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_h2_upload_cannot_leave_an_answer_for_the_next_request() {
    let pki = Pki::new();
    let placeholder = Backend::start("unused").await;
    let backend = lenient_backend().await;
    let dir = integration_tests::temp_dir();
    let tls = integration_tests::free_addr();
    let shop = pki.leaf(&["shop.test"]);
    install(&dir.path().join("certs"), "shop", &shop);
    let config = single_cert_config(tls, backend);
    drop(placeholder);
    let gateway = integration_tests::Gateway::start_in(
        dir,
        "gateway.toml",
        &config.replace("[server.tls]", "[server.tls]\nhttp2 = true"),
    )
    .await;
    let h2 = tls_client(&pki, &["shop.test"], tls).build().expect("h2 client");
    let url = format!("https://shop.test:{}/upload", tls.port());
    for round in 0..3 {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok("hel".into()), Ok("lo".into())];
        let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
        let resp = h2.put(&url).body(body).send().await.expect("streamed upload");
        assert_eq!((resp.status(), resp.version()), (StatusCode::OK, Version::HTTP_2));
        let echo: serde_json::Value = resp.json().await.expect("echo");
        assert_eq!((echo["path"].as_str(), echo["body_len"].as_u64()), (Some("/upload"), Some(5)), "round {round}");
        // Requests after it each get their own answer.
        for i in 0..5 {
            let path = format!("/after/{round}/{i}");
            let resp = http_client().get(gateway.url(&path)).send().await.expect("plain request");
            let echo: serde_json::Value = resp.json().await.expect("echo");
            assert_eq!(echo["path"], path.as_str(), "another request's answer came back");
        }
    }
}
