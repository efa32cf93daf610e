//! One client connection's life: counting it for
//! `gateway_downstream_connections`, and serving its HTTP/1 keep-alive
//! requests with a lean wait between them.
//!
//! Why this loop is ours and not Pingora's: Pingora's HTTP/1 loop
//! (`ServerApp for HttpServerApp`) starts each next request's whole future
//! (about 15 KiB: the proxy state machine, boxed by `async_trait`) plus a
//! session with a 4 KiB header buffer *before* the client has sent a byte, so
//! an idle keep-alive connection holds them for up to a minute. Here an idle
//! connection waits for its next request holding only the stream; the
//! session and the request's future are made when data arrives. The wait
//! reads what arrived into a buffer on the poll's stack and puts it back into
//! the stream for the session to parse, so a connection needs no read buffer
//! of its own (`server.read_buffer` defaults to 0) and a request still costs
//! one read.
//!
//! The loop also runs in a task of its own, not in the task Pingora spawned
//! for the connection: that task's future inlines the TLS handshake (about
//! 9 KiB, allocated for every connection, plain TCP too) and keeps it until
//! the connection closes. Handing the stream to a small task and returning
//! lets Pingora's task end. Measured with 10,000 idle connections in
//! `benches/README.md` (variant d). HTTP/2, h2c and custom protocols are
//! handed to Pingora's loop unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as TcpStream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::IntGauge;

use super::arrived::Arrived;
use tokio::io::{AsyncRead, ReadBuf};

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
        let open = Open(self.open.clone());
        let options = self.inner.server_options();
        let special = options.is_some_and(|o| o.h2c || o.force_custom);
        if special || matches!(stream.selected_alpn_proto(), Some(ALPN::H2 | ALPN::Custom(_))) {
            let _open = open;
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        // `tokio::spawn` stays on this thread's runtime (one per proxy thread
        // without work stealing), where Pingora placed the connection. Pingora
        // tracks no connection task: at shutdown this one is served, waited
        // for and cancelled exactly like the task it replaces.
        let this = Arc::clone(self);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _open = open;
            this.serve_http1(stream, shutdown).await;
        });
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionLoop<A> {
    /// The same steps as Pingora's HTTP/1 loop, with the idle wait moved in
    /// front of the session. Two assumptions, both true of the gateway:
    /// pipelining is never enabled, so a reused stream carries no pipelined
    /// bytes that the wait could miss (Pingora refuses reuse when bytes were
    /// over-read); and the keep-alive timeout is always `KEEPALIVE_SECS`, the
    /// one the wait uses (the carried settings repeat it).
    async fn serve_http1(&self, mut stream: Stream, mut shutdown: ShutdownWatch) {
        let mut carried: Option<HttpPersistentSettings> = None;
        loop {
            let Some(arrived) = next_request(stream, &mut shutdown).await else {
                return;
            };
            let session = self.session(arrived, carried.take(), &shutdown);
            let Some(reused) = self.inner.process_new_http(session, &shutdown).await else {
                return;
            };
            (stream, carried) = reused.consume();
        }
    }

    /// A plain function, not inline in the loop: a session borrowed inside an
    /// `async fn` is kept in its future (about 700 bytes) even after it is
    /// moved away, and that future is what every idle connection holds.
    fn session(
        &self,
        stream: Stream,
        carried: Option<HttpPersistentSettings>,
        shutdown: &ShutdownWatch,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        match carried {
            Some(settings) => settings.apply_to_session(&mut session),
            None => {
                session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_SECS));
                let limit = self.inner.server_options().and_then(|o| o.keepalive_request_limit);
                session.set_keepalive_reuses_remaining(limit);
            }
        }
        session
    }
}

/// Wait, holding nothing but the stream, until the client sends its next
/// request; the stream comes back with those bytes put back for the session
/// to parse. None on close, error, keep-alive timeout or shutdown. A request
/// that has already arrived wins over shutdown: it is served and, as in
/// Pingora's own loop, the proxy then answers without keep-alive.
///
/// Plain TCP streams take the bytes back themselves (`rewind`); any other
/// stream (TLS) is wrapped once in [`Arrived`], which keeps them.
async fn next_request(stream: Stream, shutdown: &mut ShutdownWatch) -> Option<Stream> {
    // The downcasts cannot fail after the `is` checks; a failure would drop
    // the connection.
    if stream.as_any().is::<TcpStream>() {
        let mut tcp = stream.into_any().downcast::<TcpStream>().ok()?;
        return until_arrival(shutdown, arrival(&mut tcp)).await.then_some(tcp as Stream);
    }
    let mut wrapped = if stream.as_any().is::<Arrived>() {
        stream.into_any().downcast::<Arrived>().ok()?
    } else {
        Box::new(Arrived::new(stream))
    };
    let wait = std::future::poll_fn(|cx| wrapped.poll_arrival(cx, &mut [0u8; ARRIVAL_READ]));
    until_arrival(shutdown, wait).await.then_some(wrapped as Stream)
}

/// True when `arrival` finds a request within the keep-alive timeout and
/// before shutdown (checked second, so a request already there wins).
async fn until_arrival(shutdown: &mut ShutdownWatch, arrival: impl Future<Output = std::io::Result<bool>>) -> bool {
    let wait = pingora_timeout::timeout(Duration::from_secs(KEEPALIVE_SECS), arrival);
    tokio::select! {
        biased;
        read = wait => matches!(read, Ok(Ok(true))),
        _ = shutdown_signalled(shutdown) => false,
    }
}

/// Bytes read at once when a request arrives: Pingora's first read of a
/// request head is as large.
const ARRIVAL_READ: usize = 4096;

/// Resolves when the client has sent something (true) or closed (false).
/// The buffer lives on the stack of each poll, not in the future, so it costs
/// an idle connection nothing; what was read is handed back to the stream
/// with `rewind`, which the session's first read returns.
fn arrival(tcp: &mut TcpStream) -> impl Future<Output = std::io::Result<bool>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut buf = [0u8; ARRIVAL_READ];
        let mut read = ReadBuf::new(&mut buf);
        std::task::ready!(Pin::new(&mut *tcp).poll_read(cx, &mut read))?;
        if read.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        tcp.rewind(read.filled());
        Poll::Ready(Ok(true))
    })
}

/// Resolves when shutdown is signalled; never if the sender is gone.
async fn shutdown_signalled(shutdown: &mut ShutdownWatch) {
    if shutdown.changed().await.is_err() {
        std::future::pending::<()>().await
    }
}
