//! HTTP/1.1 written by hand on one kept-alive connection (plain TCP or TLS),
//! for tests that control what each write carries.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one `Content-Length` response from a keep-alive connection.
pub async fn read_one_response(conn: &mut (impl AsyncRead + Unpin)) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .expect("content-length");
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// The test backend's JSON echo in a 200 answer.
pub fn echoed(response: &str) -> serde_json::Value {
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).expect("the backend's JSON echo")
}

/// Two requests whose bytes run past the gateway's first read of a request
/// (4 KiB), each checked against the backend's echo: a 10 KiB body in the
/// same write as its head, then a head of 8 KiB with a header after the long
/// one. `host` is the Host header.
pub async fn send_a_body_with_its_head_and_a_long_head(conn: &mut (impl AsyncRead + AsyncWrite + Unpin), host: &str) {
    let body: Vec<u8> = (0..10_240u32).map(|i| (i % 251) as u8).collect();
    let mut post =
        format!("POST /cart/items HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    post.extend_from_slice(&body);
    conn.write_all(&post).await.expect("write");
    let echo = echoed(&read_one_response(conn).await);
    assert_eq!(echo["body_len"], 10_240);
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(&body)));

    let cookie = "c".repeat(8 * 1024);
    let get = format!("GET /cart HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nX-Last: end\r\n\r\n");
    conn.write_all(get.as_bytes()).await.expect("write");
    let echo = echoed(&read_one_response(conn).await);
    assert_eq!(echo["headers"]["cookie"].as_str().map(str::len), Some(cookie.len()));
    assert_eq!(echo["headers"]["x-last"], "end", "the header after the long one arrived");
}
