//! A stream with the first bytes of the next request put back in front of it.
//!
//! The keep-alive loop (`connections.rs`) waits for a request by reading
//! what arrives into a buffer on the stack, so an idle connection holds no
//! buffer. The head of a chunked upload goes back into the stream, whose
//! reads then check the body's framing as it passes (any other head goes
//! to the session directly). On plain TCP it goes back with Pingora's
//! `l4::Stream::rewind`. A TLS stream has no such method: this wrapper holds
//! the bytes instead, returns them first and then reads from the stream it
//! wraps. On the proxy listener it wraps plain TCP streams too, to gather an
//! answer's writes (see `gathering_writes`). Everything else is the wrapped
//! stream's: its TLS and socket digests (the client address), its ID, its
//! timing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;

use super::chunk_framing::ChunkFraming;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct Arrived {
    inner: Stream,
    /// Bytes read while waiting and not yet handed to the session; emptied
    /// (and freed) once they are.
    head: Vec<u8>,
    taken: usize,
    /// A chunked request body being checked as it is read: the bytes of the
    /// head still to pass first, and the check (see `chunk_framing`).
    framing: Option<(usize, ChunkFraming)>,
    /// Gather small writes until a flush (`gathering`), in a buffer that
    /// exists only while an answer is being written: Pingora's stream keeps
    /// a 1,460-byte write buffer for the life of the connection, the largest
    /// part of an idle keep-alive connection, for the same purpose (an
    /// answer's head and body in one system call).
    gathering: bool,
    out: Vec<u8>,
    sent: usize,
}

/// The most a write gathers before it goes out: Pingora's write buffer size.
const GATHER: usize = 1460;

impl Arrived {
    pub fn new(inner: Stream) -> Self {
        Self { inner, head: Vec::new(), taken: 0, framing: None, gathering: false, out: Vec::new(), sent: 0 }
    }

    /// For a plain TCP stream without a write buffer of its own: small
    /// writes are gathered until a flush.
    pub fn gathering_writes(inner: Stream) -> Self {
        Self { gathering: true, ..Self::new(inner) }
    }

    /// The plain stream inside, when this wrapper holds nothing but the
    /// stream and its gathering (no bytes kept, no framing check, nothing
    /// gathered): a connection waits for its next request without the
    /// wrapper, which is made again when the request arrives. Otherwise the
    /// wrapper itself comes back.
    pub fn into_idle_stream(self: Box<Self>) -> Result<Stream, Box<Self>> {
        let empty = self.taken >= self.head.len() && self.framing.is_none() && self.out.is_empty();
        if self.gathering && empty {
            Ok(self.inner)
        } else {
            Err(self)
        }
    }

    /// Send what was gathered; the buffer is freed once it is all out.
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.out.capacity() > 0 {
            self.out = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Check the chunked framing of the body that follows the next
    /// `head_len` bytes read (the request head).
    pub fn check_chunked_body(&mut self, head_len: usize) {
        self.framing = Some((head_len, ChunkFraming::default()));
    }

    /// Run the framing check over bytes just read.
    fn check_framing(&mut self, read: &[u8]) -> io::Result<()> {
        let Some((skip, framing)) = self.framing.as_mut() else { return Ok(()) };
        let passed = (*skip).min(read.len());
        *skip -= passed;
        match framing.check(&read[passed..]) {
            Err(e) => {
                self.framing = None;
                super::connections::framing_refused();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            Ok(Some(end)) => {
                self.framing = None;
                if passed + end < read.len() {
                    // A next request came with the body's end.
                    super::connections::pipelined_seen();
                }
            }
            Ok(None) => {}
        }
        Ok(())
    }

    /// Keep `bytes` (read by the wait) to be returned first by the next reads.
    pub fn keep(&mut self, bytes: &[u8]) {
        // The wait reads through `poll_read`, so bytes the last session left
        // unread come first in `bytes`; any it did not reach yet (more than
        // one read's worth) stay behind them.
        let mut kept = bytes.to_vec();
        if self.taken < self.head.len() {
            kept.extend_from_slice(&self.head[self.taken..]);
        }
        self.head = kept;
        self.taken = 0;
    }
}

impl AsyncRead for Arrived {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        // While a checked body's head is still passing, a read returns no
        // more than the head: the session's parser reads the head alone and
        // the body's bytes come with its body reads, where a refusal is a
        // 400 and not a broken head.
        let limit = match &self.framing {
            Some((skip, _)) if *skip > 0 => *skip,
            _ => usize::MAX,
        };
        if self.taken < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.taken).min(limit);
            let (from, to) = (self.taken, self.taken + n);
            buf.put_slice(&self.head[from..to]);
            self.taken += n;
            if self.taken == self.head.len() {
                self.head = Vec::new();
                self.taken = 0;
            }
        } else if limit < buf.remaining() {
            let mut stack = [0u8; 4096];
            let mut part = ReadBuf::new(&mut stack[..limit.min(4096)]);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
            buf.put_slice(part.filled());
        } else {
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        }
        Poll::Ready(self.check_framing(&buf.filled()[before..]))
    }
}

impl AsyncWrite for Arrived {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if !self.gathering {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        // As a `BufWriter` of `GATHER` bytes, with its buffer made on demand.
        if self.out.len() + buf.len() > GATHER {
            std::task::ready!(self.poll_send_gathered(cx))?;
        }
        if buf.len() >= GATHER {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if self.out.capacity() == 0 {
            self.out.reserve_exact(GATHER);
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_send_gathered(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_send_gathered(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.gathering {
            // One slice at a time, through the gathering write.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        !self.gathering && self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Arrived {
    async fn shutdown(&mut self) {
        // What was gathered goes out first, as a write buffer's would.
        let _ = std::future::poll_fn(|cx| self.poll_send_gathered(cx)).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for Arrived {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Arrived {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Arrived {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Arrived {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Arrived {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Peeking is what this wrapper replaces; the session never asks for it.
#[async_trait]
impl Peek for Arrived {}
