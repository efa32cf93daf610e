//! `--sessions`: the ceiling of the gateway's lean HTTP/1 path. The same
//! building blocks the lean path uses (`gateway/src/proxy/lean.rs`), with
//! nothing of the gateway between them: Pingora's listener, its HTTP/1
//! server session to read a request and write its answer, its HTTP/1
//! client session over a kept-alive upstream connection, and a loop over
//! the requests of a connection. No routing, no header added or removed
//! (but `Connection`, as any proxy must), no metrics, no log.
//!
//! Whatever this does per request, the lean path cannot do with less while
//! Pingora's sessions parse and frame; the distance between the two is the
//! gateway's own work.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;

thread_local! {
    // Idle upstream connections of this thread, as the lean path keeps them
    // (its `idle_upstreams.rs`, without the probe: this upstream never
    // closes one while it is idle in a benchmark run).
    static IDLE: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

/// How long a client connection may idle between requests: Pingora's default.
const KEEPALIVE_SECS: u64 = 60;

pub struct Sessions {
    pub upstream: HttpPeer,
    pub connector: TransportConnector,
}

#[async_trait]
impl ServerApp for Sessions {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, _shutdown: &ShutdownWatch) -> Option<Stream> {
        loop {
            let mut session = ServerSession::new_http1(stream);
            session.set_keepalive(Some(KEEPALIVE_SECS));
            if !session.read_request().await.ok()? {
                return None;
            }
            if self.proxy(&mut session).await.is_err() {
                session.shutdown().await;
                return None;
            }
            stream = session.finish().await.ok()??.into_parts().0;
        }
    }
}

impl Sessions {
    /// One request to the upstream and its answer back.
    async fn proxy(&self, session: &mut ServerSession) -> Result<()> {
        let stream = match IDLE.with_borrow_mut(Vec::pop) {
            Some(stream) => stream,
            None => Box::pin(self.connector.new_stream(&self.upstream)).await?,
        };
        let mut client = UpstreamSession::new_with_options(stream, &self.upstream);
        client.read_timeout = Some(Duration::from_secs(10));
        let mut req = Box::new(session.req_header().clone());
        req.remove_header(&http::header::CONNECTION);
        client.write_request_header(req).await?;
        if !session.is_body_empty() {
            while let Some(bytes) = session.read_request_body().await? {
                client.write_body(&bytes).await?;
            }
            client.finish_body().await?;
        }
        client.read_response().await?;
        let Some(head) = client.resp_header() else {
            return pingora_core::Error::e_explain(pingora_core::ErrorType::InvalidHTTPHeader, "no answer head");
        };
        session.write_response_header(Box::new(head.clone())).await?;
        let mut done = client.is_body_done();
        while !done {
            let chunk = client.read_body_bytes().await?;
            done = client.is_body_done();
            if let Some(bytes) = chunk {
                session.write_response_body(bytes, done).await?;
            }
        }
        client.respect_keepalive();
        if let Some(stream) = client.reuse().await {
            IDLE.with_borrow_mut(|idle| idle.push(stream));
        }
        Ok(())
    }
}
