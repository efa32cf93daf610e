//! A request head that arrived for the lean path, and the client it
//! becomes: the head read here (`request.rs`), or Pingora's session.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

use super::client::{Client, RawClient, Unanswered};
use super::request;
use crate::listener::connections;

/// A request head that arrived for the lean path: the stream, the bytes
/// the connection's wait read (`None`: they went back into the stream),
/// and what a session for it is told.
pub struct Arrival {
    pub stream: Stream,
    pub read: Option<BytesMut>,
    /// Pingora's keep-alive timeout; `None` when the process is stopping.
    pub keepalive: Option<u64>,
    /// Requests the connection may still carry (the keep-alive request limit).
    pub reuses_remaining: Option<u32>,
    /// `server.body_timeout`.
    pub read_timeout: Duration,
    /// The stream is a plain TCP stream without a write buffer, left
    /// unwrapped: the lean path gathers its own writes, and a session made
    /// for the request gathers through the connection loop's wrapper.
    pub gather_writes: bool,
}

impl Arrival {
    /// The request's client: the head read here (`request.rs`), or
    /// Pingora's session, which then reads it.
    pub(super) fn into_client(self, shutdown: &ShutdownWatch) -> Client {
        let Arrival { stream, read, keepalive, reuses_remaining, read_timeout, gather_writes } = self;
        let read = match read.map(request::parse) {
            Some(Ok(own)) => {
                let stopping = *shutdown.borrow();
                let unanswered = Unanswered {
                    arrived: own.arrived,
                    head_len: own.head_len,
                    body_len: own.body_len,
                    from_stream: Bytes::new(),
                    body_read: false,
                    reuses_remaining,
                };
                return Client::Raw(RawClient {
                    stream,
                    req: own.req,
                    keepalive: own.keepalive && !stopping && keepalive.is_some() && reuses_remaining != Some(0),
                    status: 0,
                    timeout: read_timeout,
                    unanswered: Some(unanswered),
                    gathered: None,
                    gather_writes,
                });
            }
            Some(Err(read)) => Some(read),
            None => None,
        };
        let arrival = Arrival { stream, read, keepalive, reuses_remaining, read_timeout, gather_writes };
        Client::Session(arrival.into_session())
    }

    /// Pingora's session for this request, set as the connection decided:
    /// it then reads the head from `read` (or the stream).
    pub fn into_session(self) -> ServerSession {
        let Arrival { stream, read, keepalive, reuses_remaining, read_timeout, gather_writes } = self;
        let stream = if gather_writes { connections::gathering_writes(stream) } else { stream };
        let mut session = ServerSession::new_http1(stream);
        if let Some(head) = read {
            // Parsed before the stream is read again.
            session.set_pipelined_prefix(head);
        }
        session.set_keepalive(keepalive);
        session.set_keepalive_reuses_remaining(reuses_remaining);
        session.set_read_timeout(Some(read_timeout));
        session
    }
}
