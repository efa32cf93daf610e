//! Test harness for the gateway's end-to-end tests.
//!
//! Everything is real and local: [`Backend`]s are HTTP/1.1 servers on
//! 127.0.0.1 ephemeral ports, the [`Gateway`] is the built `gateway` binary
//! run as a child process (its listeners on a loopback host of the test
//! process's own, see `free_addr_pair`), and clients speak plain HTTP over loopback. No
//! mocks, so a passing test means the deployed artifact behaves.
//!
//! ```ignore
//! let stable = Backend::start("cart-v1").await;
//! let gateway = Gateway::start(&config_for(&stable)).await;
//! let (status, headers, body) = get_json(&http_client(), &gateway.url("/cart"), &[]).await;
//! assert_eq!(body["backend"], "cart-v1");
//! ```

mod backend;
mod binary;
pub mod browser;
mod client;
mod config_files;
mod gateway;
pub mod raw_http;
mod redis;

use std::future::Future;
use std::time::{Duration, Instant};

pub use backend::{Backend, Fault, ReceivedRequest};
pub use binary::{dead_addr, free_addr, gateway_bin, run_cli, temp_dir};
pub use client::{fresh_connection_client, get_json, http_client, try_get_json, ws_connect, ws_echo_once, WsStream};
pub use gateway::{is_listening, Gateway};
/// Signals for [`Gateway::signal`].
pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM};
pub use redis::RedisServer;
/// Re-exported so tests can build WebSocket messages without their own dep.
pub use tokio_tungstenite;

/// Polls `predicate` every 50 ms until it returns true or `timeout` passes;
/// returns whether it held. Use it for things that happen "soon" (health
/// checks noticing, files being watched) instead of fixed sleeps.
pub async fn wait_until<F, Fut>(mut predicate: F, timeout: Duration) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if predicate().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod self_test;
