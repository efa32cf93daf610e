//! One client connection's life: counting it for
//! `gateway_downstream_connections`, and serving its HTTP/1 keep-alive
//! requests with a lean wait between them.
//!
//! Why this loop is ours and not Pingora's: Pingora's HTTP/1 loop
//! (`ServerApp for HttpServerApp`) starts each next request's whole future
//! (about 15 KiB: the proxy state machine, boxed by `async_trait`) plus a
//! session with a 4 KiB header buffer *before* the client has sent a byte, so
//! an idle keep-alive connection holds them for up to a minute. Here an idle
//! connection waits for the first byte of its next request holding only the
//! stream; the session and the request's future are made when data arrives.
//! Measured with 10,000 idle connections in `benches/README.md` (variant d).
//! HTTP/2, h2c and custom protocols are handed to Pingora's loop unchanged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::IntGauge;

/// How long an idle keep-alive connection is kept: Pingora's default.
const KEEPALIVE_SECS: u64 = 60;

pub struct ConnectionLoop<A> {
    pub inner: Arc<A>,
    pub open: IntGauge,
}

struct Open(IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionLoop<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.open.inc();
        // Decrements even if the connection task is cancelled at shutdown.
        let _open = Open(self.open.clone());
        let options = self.inner.server_options();
        let special = options.is_some_and(|o| o.h2c || o.force_custom);
        if special || matches!(stream.selected_alpn_proto(), Some(ALPN::H2 | ALPN::Custom(_))) {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionLoop<A> {
    /// The same steps as Pingora's HTTP/1 loop, with the idle wait moved in
    /// front of the session. Pipelining is never enabled by the gateway, so a
    /// reused stream carries no pipelined bytes that the wait could miss
    /// (Pingora refuses reuse when bytes were over-read).
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let mut shutdown = shutdown.clone();
        let mut carried: Option<HttpPersistentSettings> = None;
        loop {
            if !next_request_arrives(&mut stream, &mut shutdown).await {
                return;
            }
            let mut session = ServerSession::new_http1(stream);
            match carried.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECS));
                    let limit = self.inner.server_options().and_then(|o| o.keepalive_request_limit);
                    session.set_keepalive_reuses_remaining(limit);
                }
            }
            let Some(reused) = self.inner.process_new_http(session, &shutdown).await else {
                return;
            };
            (stream, carried) = reused.consume();
        }
    }
}

/// Wait, holding nothing but the stream, until the client sends the first
/// byte of its next request. False on close, error, keep-alive timeout or
/// shutdown. A request that has already arrived wins over shutdown: it is
/// served and, as in Pingora's own loop, the proxy then answers without
/// keep-alive. The peeked byte is put back, so the session parses it.
/// Streams that cannot peek (TLS) return at once and the session's own read
/// waits.
async fn next_request_arrives(stream: &mut Stream, shutdown: &mut ShutdownWatch) -> bool {
    let mut first_byte = [0u8; 1];
    let wait = pingora_timeout::timeout(Duration::from_secs(KEEPALIVE_SECS), stream.try_peek(&mut first_byte));
    tokio::select! {
        biased;
        peeked = wait => matches!(peeked, Ok(Ok(_))),
        _ = shutdown_signalled(shutdown) => false,
    }
}

/// Resolves when shutdown is signalled; never if the sender is gone.
async fn shutdown_signalled(shutdown: &mut ShutdownWatch) {
    if shutdown.changed().await.is_err() {
        std::future::pending::<()>().await
    }
}
