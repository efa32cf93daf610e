//! A real upstream HTTP/1.1 server that reports what it received.
//!
//! Tests assert on routing ("which backend answered?") and on what the proxy
//! forwarded ("did the upstream see X-Forwarded-For?"), so every answer names
//! the backend and echoes the request, and every request is recorded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// One request as the backend saw it (health checks on `/healthz` excluded).
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The TCP peer, i.e. the gateway's upstream-side socket.
    pub peer: SocketAddr,
}

impl ReceivedRequest {
    /// A header's value; repeated headers are joined by ", " as on the wire.
    pub fn header(&self, name: &str) -> Option<String> {
        joined(&self.headers, name)
    }
}

struct State {
    name: String,
    healthy: AtomicBool,
    /// A misbehaviour switched on at run time (a bad release).
    fault: Mutex<Fault>,
    received: Mutex<Vec<ReceivedRequest>>,
    /// Tells upgraded WebSocket tasks (which hyper hands off to their own
    /// tasks, outside our connection set) to hang up when the backend stops.
    stopping: watch::Sender<bool>,
}

/// How a backend misbehaves from now on ([`Backend::set_fault`]): a new
/// release that answers errors, answers slowly, or answers differently.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// Answer this status instead of 200.
    pub status: Option<u16>,
    /// Wait this long before answering.
    pub delay_ms: u64,
    /// Add this field to the JSON answer (a changed answer).
    pub extra: Option<(String, serde_json::Value)>,
    /// Add a field `ts` with a fresh value every time (noise).
    pub noisy: bool,
}

/// A named upstream on 127.0.0.1.
///
/// Behaviour, for any method and path:
/// - `/healthz` → 200 `ok`, or 503 after [`Backend::set_healthy`]`(false)`;
///   not counted in [`Backend::requests`].
/// - `/ws` with a WebSocket upgrade → an echo server (text and binary).
/// - query `sleep_ms=N` → waits N ms before answering (slow requests, draining).
/// - query `status=NNN` → answers with that status instead of 200.
/// - query `cache_control=V`, `set_cookie=V` → the answer carries that header.
/// - anything else → 200 with header `x-backend: <name>` and a JSON body
///   `{backend, method, path, query, headers, body_len, body_sha256}`.
pub struct Backend {
    name: String,
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on an ephemeral port of 127.0.0.1.
    pub async fn start(name: &str) -> Backend {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(name, addr).await
    }

    /// Starts a backend on a given address: used to bring a killed backend
    /// back on the same port, so the gateway's configured upstream recovers.
    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().expect("bound listener has an address");
        let state = Arc::new(State {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            fault: Mutex::new(Fault::default()),
            received: Mutex::new(Vec::new()),
            stopping: watch::Sender::new(false),
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, state.clone(), shutdown_rx));
        Backend { name: name.to_string(), addr, state, shutdown: Some(shutdown), task: Some(task) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes `/healthz` answer 200 (`true`) or 503 (`false`) from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Misbehave from now on (health checks still pass): see [`Fault`].
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().expect("fault lock") = fault;
    }

    /// How many requests arrived, health checks excluded. A request is counted
    /// when it arrives, before any `sleep_ms` delay.
    pub fn requests(&self) -> usize {
        self.state.received.lock().expect("received lock").len()
    }

    /// Every request received so far, health checks excluded.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.state.received.lock().expect("received lock").clone()
    }

    /// Closes the listener and every open connection (idle keep-alive,
    /// in-flight and WebSocket alike), as a crashed process would. When this
    /// returns the port is free for [`Backend::start_on`]. Idempotent.
    pub async fn stop(&mut self) {
        self.state.stopping.send_replace(true);
        if let Some(shutdown) = self.shutdown.take() {
            // The receiver is gone only if the serve task already ended.
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            // Errors here mean the task panicked or was aborted: either way
            // the listener and connections have been dropped.
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.state.stopping.send_replace(true);
        if let Some(task) = self.task.take() {
            // Dropping the task's JoinSet aborts every connection task.
            task.abort();
        }
    }
}

/// Binds with SO_REUSEADDR, retrying briefly: a just-stopped backend's port
/// may still be held for a moment by sockets being torn down.
async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let mut attempts = 0;
    loop {
        let bound = TcpSocket::new_v4().and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)
        });
        match bound {
            Ok(listener) => return listener,
            Err(_) if attempts < 40 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("backend cannot bind {addr}: {err}"),
        }
    }
}

/// Accepts connections until told to stop; owns every connection task so
/// stopping (or aborting this task) closes them all.
async fn serve(listener: TcpListener, state: Arc<State>, mut shutdown: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, peer, req).await) }
                    });
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new());
                    // Errors are the client hanging up; nothing to report.
                    let _ = http
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn handle(state: Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let param = |key: &str| query_param(query.as_deref(), key);

    if path != "/healthz" {
        state.received.lock().expect("received lock").push(ReceivedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers.clone(),
            peer,
        });
    }
    if let Some(ms) = param("sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fault = state.fault.lock().expect("fault lock").clone();
    if fault.delay_ms > 0 && path != "/healthz" {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }

    let mut response = if path == "/healthz" {
        if state.healthy.load(Ordering::SeqCst) {
            (StatusCode::OK, "ok").into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy").into_response()
        }
    } else if path == "/ws" && parts.headers.contains_key("upgrade") {
        match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => {
                let stopping = state.stopping.subscribe();
                upgrade.on_upgrade(move |socket| echo(socket, stopping))
            }
            Err(rejection) => rejection.into_response(),
        }
    } else {
        let status = param("status")
            .and_then(|s| s.parse::<u16>().ok())
            .or(fault.status)
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let (body_len, body_sha256) = digest(body).await;
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .keys()
            .map(|name| {
                let value = joined(&parts.headers, name.as_str()).unwrap_or_default();
                (name.to_string(), value.into())
            })
            .collect();
        let echo = serde_json::json!({
            "backend": state.name,
            "method": parts.method.as_str(),
            "path": path,
            "query": query,
            "headers": headers,
            "body_len": body_len,
            "body_sha256": body_sha256,
        });
        let mut echo = echo;
        if let Some((key, value)) = fault.extra {
            echo[key] = value;
        }
        if fault.noisy {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            echo["ts"] = serde_json::Value::from(nanos.to_string());
        }
        (status, axum::Json(echo)).into_response()
    };
    if let Ok(name) = HeaderValue::from_str(&state.name) {
        response.headers_mut().insert("x-backend", name);
    }
    // `cache_control=...` and `set_cookie=...` add those headers (cache tests).
    for (param_name, header) in [("cache_control", "cache-control"), ("set_cookie", "set-cookie")] {
        if let Some(v) = param(param_name).and_then(|v| HeaderValue::from_str(v).ok()) {
            response.headers_mut().insert(header, v);
        }
    }
    response
}

/// Streams the request body through SHA-256 rather than buffering it, so
/// tests can send large uploads without a body-size limit getting in the way.
async fn digest(body: Incoming) -> (u64, String) {
    let mut stream = Body::new(body).into_data_stream();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (len, hex::encode(hasher.finalize()))
}

async fn echo(mut socket: WebSocket, mut stopping: watch::Receiver<bool>) {
    loop {
        // The select only picks the next message; handling it happens after,
        // so the watch guard is not held across the send.
        let message = tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            message = socket.recv() => message,
        };
        match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            // Pings are answered by the protocol layer itself.
            Some(Ok(_)) => {}
        }
    }
}

/// Value of `key` in a raw query string (no percent-decoding: tests only
/// pass plain numbers).
fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> =
        headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}
