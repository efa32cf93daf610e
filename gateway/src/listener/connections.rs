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
//! reads what arrived into a buffer on the poll's stack and hands a copy to
//! the session, which parses it without reading again, so a connection needs
//! no read buffer of its own (`server.read_buffer` defaults to 0) and a
//! request still costs one read.
//!
//! The loop also runs in a task of its own, not in the task Pingora spawned
//! for the connection: that task's future inlines the TLS handshake (about
//! 9 KiB, allocated for every connection, plain TCP too) and keeps it until
//! the connection closes. Handing the stream to a small task and returning
//! lets Pingora's task end. Measured with 10,000 idle connections in
//! `benches/README.md` (variant d). HTTP/2, h2c and custom protocols are
//! handed to Pingora's loop unchanged.
//!
//! The wait reads a request's whole head before Pingora parses it
//! (`head_wait.rs`): a head that is late gets 408 here, and a head that
//! arrived whole but never reached the proxy was refused by the parser, so
//! it is logged and counted here too.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as TcpStream;
use pingora_core::protocols::{SocketDigest, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_http::RequestHeader;
use prometheus::IntGauge;
use tokio::io::AsyncWriteExt;

use super::head_wait::{read_head, Head, Limits, Waiting};
use crate::control::snapshot::SnapshotHandle;
use crate::edge::client_ip;
use crate::proxy::respond::LocalResponse;

/// How long an idle keep-alive connection is kept: Pingora's default.
const KEEPALIVE_SECS: u64 = 60;

pub struct ConnectionLoop<A> {
    pub inner: Arc<A>,
    /// `gateway_downstream_connections`, for the proxy listeners.
    pub open: Option<IntGauge>,
    /// Where `server.header_timeout` and `server.body_timeout` are read, live.
    pub snapshots: SnapshotHandle,
    /// Log (access log) and count (`gateway_requests_total`, route `""`)
    /// requests refused before the proxy sees them: the proxy listeners, not
    /// the admin one.
    pub account_refusals: bool,
    /// The proxy listeners read PROXY protocol headers from the peers
    /// `server.proxy_protocol` lists, then judge the client they name with
    /// the accept-time blacklist; the admin listener takes none.
    pub proxy_protocol: Option<Arc<crate::edge::accept_filter::BlockAtAccept>>,
    /// The lean HTTP/1 path, for the proxy listeners: it serves the requests
    /// `lean_eligible` accepts while `server.lean_http1` is on.
    pub lean: Option<Arc<crate::proxy::lean::LeanPath>>,
    /// The listener's plain TCP streams have no write buffer (an idle
    /// connection keeps none): their writes are gathered per answer.
    pub gather_writes: bool,
}

struct Open(Option<IntGauge>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

tokio::task_local! {
    /// What the wait learned about the request being served: read by the
    /// proxy's phases through [`head_parsed`] and [`pipelined_after`].
    static ARRIVED: ArrivedHead;
}

struct ArrivedHead {
    /// Bytes that came after the head in the same reads.
    extra: usize,
    /// Set once Pingora's parser accepted the head.
    parsed: Cell<bool>,
    /// Set when the body's chunked framing was refused (`chunk_framing`).
    bad_framing: Cell<bool>,
    /// Set when bytes of a next request followed a chunked body in one read.
    pipelined: Cell<bool>,
}

/// Called by the stream when a next request's bytes follow a chunked body.
pub fn pipelined_seen() {
    let _ = ARRIVED.try_with(|head| head.pipelined.set(true));
}

/// Called by the stream when the body's chunked framing is invalid; the
/// proxy then answers 400 (the read fails with `InvalidData`).
pub fn framing_refused() {
    let _ = ARRIVED.try_with(|head| head.bad_framing.set(true));
}

/// True when this request's chunked framing was refused.
pub fn framing_was_refused() -> bool {
    ARRIVED.try_with(|head| head.bad_framing.get()).unwrap_or(false)
}

/// Called by the proxy once Pingora parsed the head: a request whose head
/// arrived whole and that never gets here was refused by the parser.
pub fn head_parsed() {
    let _ = ARRIVED.try_with(|head| head.parsed.set(true));
}

/// True when bytes of a next request arrived with this one. Pingora does not
/// serve pipelined requests (it closes after the first answer), so the proxy
/// answers this one with `Connection: close` instead of promising a
/// keep-alive it will not keep.
pub fn pipelined_after(req: &RequestHeader) -> bool {
    let Ok((extra, pipelined)) = ARRIVED.try_with(|head| (head.extra, head.pipelined.get())) else { return false };
    // The common case, nothing after the head, needs no header lookup.
    if pipelined || extra == 0 {
        return pipelined;
    }
    // A chunked body's end is found by the framing check as it is read
    // ([`pipelined_seen`]); here its extra bytes are taken as body.
    let body = if req.headers.contains_key(TRANSFER_ENCODING) {
        usize::MAX
    } else {
        req.headers.get(CONTENT_LENGTH).map_or(Some(0), |v| v.to_str().ok()?.trim().parse().ok()).unwrap_or(usize::MAX)
    };
    extra > body
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionLoop<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if let Some(g) = &self.open {
            g.inc();
        }
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
        // The connection's own future is the task, not a block around it: a
        // block would store the arguments it passes a second time.
        tokio::spawn(this.serve_http1(stream, shutdown, open));
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> ConnectionLoop<A> {
    /// A connection from a peer listed in `server.proxy_protocol`: its PROXY
    /// header is read and judged here on the plain listener (`admit`); on the
    /// TLS listener Pingora's pre-TLS hook did it before the handshake.
    /// `None`: the connection is closed.
    async fn proxy_header(&self, stream: Stream) -> Option<Stream> {
        let Some(block) = self.proxy_protocol.as_ref() else { return Some(stream) };
        if !stream.as_any().is::<TcpStream>() {
            return Some(stream);
        }
        let Ok(mut tcp) = stream.into_any().downcast::<TcpStream>() else { return None };
        super::proxy_protocol::admit(&self.snapshots, block, &mut tcp).await.then_some(tcp as Stream)
    }

    /// The same steps as Pingora's HTTP/1 loop, with the idle wait and the
    /// reading of the request head moved in front of the session. Two
    /// assumptions, both true of the gateway: pipelining is never enabled, so
    /// a reused stream carries no pipelined bytes that the wait could miss
    /// (Pingora refuses reuse when bytes were over-read), nor settings from
    /// the proxy's phases for the next request; and the keep-alive timeout
    /// is always `KEEPALIVE_SECS`, the one the wait uses.
    ///
    /// Deadlines: a new connection's first request head must arrive whole
    /// within `server.header_timeout` of the accept; a kept-alive
    /// connection may idle `KEEPALIVE_SECS` (to the second: `idle_clock`),
    /// and once a request's first byte arrives its whole head must follow
    /// within `header_timeout`. A head
    /// that is late gets 408 and the connection is closed; a connection that
    /// sent nothing is closed without an answer.
    ///
    /// A block, not an `async fn`: an `async fn` moves its arguments into
    /// locals and keeps both copies in every state (32 bytes here, in every
    /// idle connection's task); a block uses what it captured in place.
    #[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice (above)")]
    fn serve_http1(
        self: Arc<Self>,
        stream: Stream,
        mut shutdown: ShutdownWatch,
        open: Open,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            // Held until the task ends (captured, not moved into a local).
            let _ = &open;
            // Boxed, as the refusals below: a connection's task is as large as
            // its largest state, and every idle connection holds that task. The
            // PROXY header's read and a refusal's timed writes are rare and
            // larger than the idle wait.
            let Some(mut stream) = Box::pin(self.proxy_header(stream)).await else { return };
            // Requests served on this connection before the one awaited: what
            // the keep-alive request limit counts. Pingora's loop carries its
            // `HttpPersistentSettings` (80 bytes) instead; of them, the gateway
            // uses only this count and the keep-alive timeout, which is always
            // `KEEPALIVE_SECS` (a session whose keep-alive was turned off is not
            // reused), so an idle connection holds four bytes, not a box.
            let mut served: u32 = 0;
            let mut first = true;
            loop {
                let header_timeout = self.snapshots.load().config.server.header_timeout;
                let idle = if first { header_timeout } else { Duration::from_secs(KEEPALIVE_SECS) };
                let started = Instant::now();
                // The blocks below end what they declare before the next wait:
                // a local whose scope spans two waits is kept in every state of
                // the task, the idle wait's included (`benches/README.md`,
                // session 9).
                let (arrived, extra, lean, read, gather_writes) = {
                    let (back, arrival, gather_writes) = {
                        let Some(mut waiting) = Waiting::new(stream) else { return };
                        let limits = Limits { idle, header_timeout, head_clock_from_start: first };
                        let head = read_head(&mut waiting, &mut shutdown, &limits).await;
                        // The lean path gathers its own writes: its plain TCP
                        // stream is not wrapped (one allocation fewer per request).
                        let lean = matches!(head, Head::Complete { lean: true, .. }) && self.lean_switched_on();
                        let gather_writes = self.gather_writes && !lean;
                        let back = waiting.into_stream(&head, gather_writes);
                        let arrival = match head {
                            Head::Complete { extra, lean, read, .. } => Ok((extra, lean, read)),
                            Head::Closed => return,
                            Head::Late => Err(Refusal::HeadTimeout),
                            Head::BadFraming => Err(Refusal::BadFraming),
                        };
                        (back, arrival, self.gather_writes && lean)
                    };
                    match arrival {
                        Ok((extra, lean, read)) => (back, extra, lean, read, gather_writes),
                        Err(refusal) => {
                            let mut refused = back;
                            Box::pin(self.refuse(&mut refused, refusal, started)).await;
                            return;
                        }
                    }
                };
                first = false;
                // Kept for the access line of a head the parser refuses (an Arc clone).
                let digest = arrived.get_socket_digest();
                // The request's future is boxed (async_trait) and made here, so
                // the block below holds a pointer, not the session: every idle
                // connection's task is as large as its largest state.
                let switched_on = self.lean_switched_on();
                if self.lean.is_some() && !switched_on {
                    crate::proxy::lean::switched_off();
                }
                let lean = self.lean.as_ref().filter(|_| lean && switched_on);
                let request = match lean {
                    // The lean path's future owns what it borrows: a block around
                    // it would keep a second copy of the stream. It reads the
                    // head itself, or makes the session.
                    Some(lean) => {
                        let arrival = self.arrival(arrived, read, served, &shutdown, gather_writes);
                        Box::pin(Arc::clone(lean).serve(arrival, shutdown.clone()))
                    }
                    None => self.inner.process_new_http(self.session(arrived, read, served, &shutdown), &shutdown),
                };
                let serve = async move {
                    let reused = request.await;
                    (reused, ARRIVED.with(|head| head.parsed.get()))
                };
                let arrived_head = ArrivedHead {
                    extra,
                    parsed: Cell::new(false),
                    bad_framing: Cell::new(false),
                    pipelined: Cell::new(false),
                };
                let (reused, parsed) = ARRIVED.scope(arrived_head, serve).await;
                if !parsed && self.account_refusals {
                    // The whole head had arrived, so Pingora refused it (and answered 400).
                    self.account(Refusal::Unparsable, started, digest.as_deref());
                }
                let Some(reused) = reused else {
                    return;
                };
                // The settings Pingora's session hands back are made again by
                // `session` from `served` (see above).
                (stream, _) = reused.consume();
                served = served.saturating_add(1);
            }
        }
    }

    /// A plain function, not inline in the loop: a session borrowed inside an
    /// `async fn` is kept in its future (about 700 bytes) even after it is
    /// moved away, and that future is what every idle connection holds.
    /// `served`: requests this connection served before; with a keep-alive
    /// request limit, the session may be reused that many times fewer (as
    /// Pingora's `HttpPersistentSettings::apply_to_session` counts).
    fn session(&self, stream: Stream, read: Option<BytesMut>, served: u32, shutdown: &ShutdownWatch) -> ServerSession {
        // The stream is already wrapped as Pingora's path needs it.
        self.arrival(stream, read, served, shutdown, false).into_session()
    }

    /// What a request's session is told (the lean path reads the head
    /// itself, or makes the session from it too).
    fn arrival(
        &self,
        stream: Stream,
        read: Option<BytesMut>,
        served: u32,
        shutdown: &ShutdownWatch,
        gather_writes: bool,
    ) -> crate::proxy::lean::Arrival {
        let limit = self.inner.server_options().and_then(|o| o.keepalive_request_limit);
        crate::proxy::lean::Arrival {
            stream,
            read,
            keepalive: (!*shutdown.borrow()).then_some(KEEPALIVE_SECS),
            reuses_remaining: limit.map(|limit| limit.saturating_sub(served)),
            // The admin listener's body reads; the proxy sets it again per request.
            read_timeout: self.snapshots.load().config.server.body_timeout,
            gather_writes,
        }
    }

    /// Whether this listener serves on the lean path now (`server.lean_http1`).
    fn lean_switched_on(&self) -> bool {
        self.lean.is_some() && self.snapshots.load().config.server.lean_http1
    }

    /// Answer a request refused before any session exists, then account for it.
    async fn refuse(&self, stream: &mut Stream, refusal: Refusal, started: Instant) {
        let page = refusal.page();
        let reason = http::StatusCode::from_u16(page.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        let head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n\r\n",
            page.status,
            page.content_type,
            page.body.len()
        );
        // The client may be gone or not reading; the write is bounded like any read.
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&page.body).await?;
            stream.flush().await
        };
        let _ = pingora_timeout::timeout(Duration::from_secs(5), write).await;
        if self.account_refusals {
            self.account(refusal, started, stream.get_socket_digest().as_deref());
        }
    }

    fn account(&self, refusal: Refusal, started: Instant, digest: Option<&SocketDigest>) {
        let snapshot = self.snapshots.load();
        let status = refusal.status();
        snapshot.unrouted_metrics.observe(status, started.elapsed().as_secs_f64());
        // The TCP peer: X-Forwarded-For is not read from a head that was refused.
        let peer = digest.and_then(|d| d.peer_addr()).and_then(|a| a.as_inet()).map(|a| client_ip::canonical(a.ip()));
        crate::telemetry::access_log::refused(&snapshot, peer, status, refusal.label(), started.elapsed());
    }
}

/// A plain TCP stream of a listener whose streams have no write buffer,
/// wrapped to gather an answer's writes, as the loop wraps it for
/// Pingora's path (`Arrived::gathering_writes`).
pub fn gathering_writes(stream: Stream) -> Stream {
    if stream.as_any().is::<TcpStream>() {
        Box::new(super::arrived::Arrived::gathering_writes(stream))
    } else {
        stream
    }
}

/// Why a request was refused before the proxy saw it.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The head did not arrive whole within `server.header_timeout`.
    HeadTimeout,
    /// Pingora's parser refused the head (it answered 400 itself).
    Unparsable,
    /// The chunked body that came with the head has invalid framing.
    BadFraming,
}

impl Refusal {
    fn status(self) -> u16 {
        match self {
            Self::HeadTimeout => 408,
            Self::Unparsable | Self::BadFraming => 400,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::HeadTimeout => "header_timeout",
            Self::Unparsable => "bad_request",
            Self::BadFraming => "bad_chunked_framing",
        }
    }

    /// The small page a refusal is answered with (Pingora writes its own
    /// for `Unparsable`; this one says the same).
    fn page(self) -> LocalResponse {
        match self {
            Self::HeadTimeout => LocalResponse::page(408, "Request Timeout", "The request did not arrive in time."),
            Self::BadFraming => {
                LocalResponse::page(400, "Bad Request", "The request body's chunked framing is invalid.")
            }
            Self::Unparsable => LocalResponse::page(400, "Bad Request", "The request could not be read."),
        }
    }
}
