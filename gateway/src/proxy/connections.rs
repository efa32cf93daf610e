//! Counting open client connections for `gateway_downstream_connections`.
//!
//! Pingora hands each accepted connection to `ServerApp::process_new`, which
//! for HTTP/1 serves every keep-alive request of it before returning (and for
//! HTTP/2 every stream). Wrapping that call gives exactly one increment and one
//! decrement per connection, with no work per request.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use prometheus::IntGauge;

pub struct CountConnections<A> {
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
impl<A: ServerApp + Send + Sync + 'static> ServerApp for CountConnections<A> {
    async fn process_new(self: &Arc<Self>, session: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.open.inc();
        // Decrements even if the connection task is cancelled at shutdown.
        let _open = Open(self.open.clone());
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
