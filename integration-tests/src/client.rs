//! Clients for talking to the gateway the way real callers do.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for any single request, so a hung gateway fails the test
/// instead of hanging CI. Slow-request tests stay well below it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client that keeps connections alive and reuses them, like a browser or
/// service mesh would. Never goes through a proxy from the environment.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().expect("build the HTTP client")
}

/// A client that opens a new TCP connection for every request: for tests
/// that must not ride on a connection established before a change (reload,
/// drain, backend restart).
pub fn fresh_connection_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build the HTTP client")
}

/// `GET url` with extra headers; returns the status, the response headers
/// and the body as JSON (a non-JSON body comes back as a JSON string, so
/// error pages are still readable in assertion messages). Panics if the
/// request itself fails; see [`try_get_json`].
pub async fn get_json(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
    try_get_json(client, url, headers).await.unwrap_or_else(|err| panic!("GET {url} failed: {err}"))
}

/// [`get_json`] that returns connection errors instead of panicking, for
/// tests where a refused or reset connection is an expected outcome.
pub async fn try_get_json(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, HeaderMap, Value), reqwest::Error> {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await?;
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, headers, json))
}

/// A client-side WebSocket connection.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `url` (`ws://...`), e.g. `gateway.url("/ws")` with
/// the scheme swapped; returns the stream and the 101 response.
pub async fn ws_connect(
    url: &str,
) -> Result<
    (WsStream, tokio_tungstenite::tungstenite::handshake::client::Response),
    tokio_tungstenite::tungstenite::Error,
> {
    tokio_tungstenite::connect_async(url).await
}

/// Connects to a backend's `/ws` echo (directly or through the gateway),
/// sends `text` and returns what came back. Panics on any failure.
pub async fn ws_echo_once(url: &str, text: &str) -> String {
    let (mut ws, _) = ws_connect(url).await.unwrap_or_else(|err| panic!("WebSocket connect to {url} failed: {err}"));
    ws.send(Message::text(text)).await.unwrap_or_else(|err| panic!("WebSocket send to {url} failed: {err}"));
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, ws.next())
        .await
        .unwrap_or_else(|_| panic!("no WebSocket echo from {url}"));
    let reply = match reply {
        Some(Ok(Message::Text(reply))) => reply.to_string(),
        other => panic!("unexpected WebSocket reply from {url}: {other:?}"),
    };
    // Best effort: the test has its answer either way.
    let _ = ws.close(None).await;
    reply
}
