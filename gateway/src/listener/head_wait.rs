//! Waiting for a request head on a kept-alive or new connection, and reading
//! it whole before Pingora's parser does: so a head has a deadline
//! (`server.header_timeout`), a refused head can be told from a closed
//! connection, and a chunked body that came with its head can be checked
//! before any upstream is asked.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora_core::protocols::l4::stream::Stream as TcpStream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, ReadBuf};

use super::arrived::Arrived;
use super::chunk_framing::ChunkFraming;
use super::idle_clock::{IdleClock, IdleTicket};

/// The largest request head read here: Pingora refuses a larger one (400).
const MAX_HEAD: usize = 1 << 20;

/// What the wait for a request head found.
pub(super) enum Head {
    /// The whole head arrived (and `extra` bytes after it). `read`: those
    /// bytes, for the session to parse first (`set_pipelined_prefix`); a
    /// head that declares a `Transfer-Encoding` (`chunked`: its length) is
    /// instead handed back to the stream, whose reads check the body's
    /// framing as it passes. `lean`: the lean HTTP/1 path may serve it
    /// (`lean_eligible`).
    Complete { extra: usize, chunked: Option<usize>, lean: bool, read: Option<BytesMut> },
    /// The client closed, or sent nothing in time, or shutdown came first.
    Closed,
    /// Part of a head arrived, the rest not in time (or the client closed).
    Late,
    /// The chunked body bytes that came with the head break its framing:
    /// refused before any upstream is asked.
    BadFraming,
}

/// A connection waiting for its next request head, holding nothing but
/// its stream; the stream comes back with the bytes read (see
/// [`Head::Complete`]) from [`Waiting::into_stream`].
///
/// A chunked body's head goes back into the stream: plain TCP streams take
/// the bytes back themselves (`rewind`); any other stream (TLS) is wrapped
/// once in [`Arrived`], which keeps them. With `gather_writes` (a listener
/// whose TCP streams have no write buffer), a plain TCP stream is wrapped
/// too, to gather its writes, but only while it serves a request: an idle
/// one waits unwrapped (`Arrived::into_idle_stream`), one allocation fewer
/// per idle connection for one per request.
pub(super) enum Waiting {
    Tcp(Box<TcpStream>),
    Wrapped(Box<Arrived>),
}

impl Waiting {
    /// `None`: a failed downcast, which the `is` checks rule out (the
    /// connection is dropped).
    pub(super) fn new(stream: Stream) -> Option<Self> {
        if stream.as_any().is::<TcpStream>() {
            return stream.into_any().downcast::<TcpStream>().ok().map(Self::Tcp);
        }
        if !stream.as_any().is::<Arrived>() {
            return Some(Self::Wrapped(Box::new(Arrived::new(stream))));
        }
        let wrapped = stream.into_any().downcast::<Arrived>().ok()?;
        match wrapped.into_idle_stream() {
            Ok(inner) if inner.as_any().is::<TcpStream>() => {
                inner.into_any().downcast::<TcpStream>().ok().map(Self::Tcp)
            }
            Ok(inner) => Some(Self::Wrapped(Box::new(Arrived::gathering_writes(inner)))),
            Err(wrapped) => Some(Self::Wrapped(wrapped)),
        }
    }

    fn source(&mut self) -> &mut dyn HeadSource {
        match self {
            Self::Tcp(tcp) => &mut **tcp,
            Self::Wrapped(wrapped) => &mut **wrapped,
        }
    }

    /// The stream to serve `head` from.
    pub(super) fn into_stream(self, head: &Head, gather_writes: bool) -> Stream {
        let chunked = match head {
            Head::Complete { chunked, .. } => *chunked,
            _ => None,
        };
        let mut wrapped = match self {
            Self::Wrapped(wrapped) => wrapped,
            Self::Tcp(tcp) if !gather_writes && chunked.is_none() => return tcp,
            Self::Tcp(tcp) if gather_writes => Box::new(Arrived::gathering_writes(tcp)),
            Self::Tcp(tcp) => Box::new(Arrived::new(tcp)),
        };
        if let Some(head_len) = chunked {
            // A chunked body is read through the wrapper that checks its framing.
            wrapped.check_chunked_body(head_len);
        }
        wrapped
    }
}

/// The deadlines of a wait: the first bytes may take `idle`; the whole head
/// must then arrive within `header_timeout` (counted from the start of the
/// wait for a connection's first request, from the first byte for the next
/// ones).
pub(super) struct Limits {
    pub idle: Duration,
    pub header_timeout: Duration,
    /// A new connection's first request: its deadlines are kept to the
    /// millisecond; a kept-alive connection's `idle` is kept to the second
    /// (`idle_clock`).
    pub head_clock_from_start: bool,
}

/// Bytes read at once when a request arrives: Pingora's first read of a
/// request head is as large.
const ARRIVAL_READ: usize = 4096;

/// A stream the wait reads from and gives the bytes back to.
trait HeadSource: AsyncRead + Unpin + Send {
    fn give_back(&mut self, bytes: &[u8]);
}

impl HeadSource for TcpStream {
    fn give_back(&mut self, bytes: &[u8]) {
        self.rewind(bytes);
    }
}

impl HeadSource for Arrived {
    fn give_back(&mut self, bytes: &[u8]) {
        self.keep(bytes);
    }
}

/// One read into `read` (a buffer on the caller's poll stack, left
/// uninitialised: zeroing 4 KiB twice per request was a tenth of the lean
/// path's instructions); nothing filled at end of stream.
fn poll_read_into<S: HeadSource + ?Sized>(
    source: &mut S,
    cx: &mut std::task::Context<'_>,
    read: &mut ReadBuf<'_>,
) -> Poll<std::io::Result<()>> {
    Pin::new(source).poll_read(cx, read)
}

/// What the first read of an idle connection found.
enum FirstBytes {
    Whole(Head),
    /// Part of a head.
    Part(Vec<u8>),
    /// The client closed or failed.
    Nothing,
}

/// One poll of the first read: a head that arrived whole, or part of one.
/// The read goes into a buffer on the stack of this poll, not in the
/// future, so an idle connection holds no buffer.
fn poll_first_bytes<S: HeadSource + ?Sized>(source: &mut S, cx: &mut std::task::Context<'_>) -> Poll<FirstBytes> {
    loop {
        let mut buf = [MaybeUninit::<u8>::uninit(); ARRIVAL_READ];
        let mut read = ReadBuf::uninit(&mut buf);
        if std::task::ready!(poll_read_into(source, cx, &mut read)).is_err() {
            return Poll::Ready(FirstBytes::Nothing);
        }
        let got = read.filled();
        if got.is_empty() {
            return Poll::Ready(FirstBytes::Nothing);
        }
        // Empty lines before a request (some clients send CRLF after a POST
        // body) are dropped, as RFC 9112 section 2.2 allows: the connection
        // is still idle, and the head's clock has not started.
        if got.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            continue;
        }
        if let Some(end) = head_end(got, 0) {
            return Poll::Ready(FirstBytes::Whole(arrived(source, got, end)));
        }
        return Poll::Ready(FirstBytes::Part(got.to_vec()));
    }
}

/// The common case reads the whole head at once (`poll_first_bytes`) and
/// hands it to the session. A head that comes in pieces is gathered on the
/// heap by `read_rest`. Shutdown closes a connection that has not sent a
/// whole head; a request already there wins.
///
/// This wait is what every idle keep-alive connection's task holds, so it
/// holds little (56 bytes): references to the stream, the shutdown watch
/// and the limits, and a ticket on this thread's [`IdleClock`], which keeps
/// the keep-alive deadline and watches shutdown for every waiting
/// connection at once. A timer and a shutdown waiter of its own made the
/// wait 264 bytes larger, an `async fn` 128 bytes larger still (its
/// arguments are stored twice, its states laid out side by side); composed
/// with a `select!` over a timeout, as at first, it was larger again
/// (`benches/README.md`, sessions 9 and 10). A new connection's first wait
/// is boxed and precise (`read_first_head`), and so is the rest of a head
/// that came in pieces.
pub(super) fn read_head<'a>(
    waiting: &'a mut Waiting,
    shutdown: &'a mut ShutdownWatch,
    limits: &'a Limits,
) -> ReadHead<'a> {
    ReadHead { parts: Some((waiting, shutdown)), limits, ticket: None, slow: None }
}

/// The wait for a request head: see [`read_head`].
pub(super) struct ReadHead<'a> {
    /// The stream and the shutdown watch, until a boxed wait takes them.
    parts: Option<(&'a mut Waiting, &'a mut ShutdownWatch)>,
    limits: &'a Limits,
    /// Taken once a poll found nothing to read.
    ticket: Option<IdleTicket>,
    /// A new connection's first wait, or the rest of a head in pieces.
    slow: Option<Pin<Box<dyn Future<Output = Head> + Send + 'a>>>,
}

impl Future for ReadHead<'_> {
    type Output = Head;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Head> {
        let this = &mut *self;
        loop {
            if let Some(slow) = this.slow.as_mut() {
                let head = std::task::ready!(slow.as_mut().poll(cx));
                this.slow = None;
                return Poll::Ready(head);
            }
            // Gone only once the wait returned.
            let Some((waiting, shutdown)) = this.parts.take() else { return Poll::Ready(Head::Closed) };
            let limits = this.limits;
            if limits.head_clock_from_start {
                this.slow = Some(Box::pin(read_first_head(waiting.source(), shutdown, limits)));
                continue;
            }
            match poll_first_bytes(waiting.source(), cx) {
                Poll::Ready(FirstBytes::Whole(head)) => return Poll::Ready(head),
                Poll::Ready(FirstBytes::Nothing) => return Poll::Ready(Head::Closed),
                Poll::Ready(FirstBytes::Part(partial)) => {
                    // The head's own deadline from now on, not the idle one.
                    this.ticket = None;
                    let deadline = Instant::now() + limits.header_timeout;
                    this.slow = Some(Box::pin(read_rest(waiting.source(), shutdown, partial, deadline)));
                    continue;
                }
                Poll::Pending => {}
            }
            // Registered only when nothing has arrived yet.
            let ticket = this
                .ticket
                .get_or_insert_with(|| IdleClock::with_this_thread(shutdown, |clock| clock.enter(limits.idle)));
            // Nothing arrived in time, or shutdown came first.
            if ticket.poll_over(cx).is_ready() {
                return Poll::Ready(Head::Closed);
            }
            this.parts = Some((waiting, shutdown));
            return Poll::Pending;
        }
    }
}

/// A new connection's first head: the first bytes within `limits.idle`
/// and the whole head within `header_timeout` of the start, both to the
/// millisecond (a timer and a shutdown waiter of its own, made in place).
/// Boxed: it is made once per connection and gone before the connection
/// is idle again.
async fn read_first_head(source: &mut dyn HeadSource, shutdown: &mut ShutdownWatch, limits: &Limits) -> Head {
    let started = Instant::now();
    let first = {
        let mut idle_over = std::pin::pin!(pingora_timeout::sleep(limits.idle));
        let mut stop = std::pin::pin!(shutdown_signalled(shutdown));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(first) = poll_first_bytes(source, cx) {
                return Poll::Ready(first);
            }
            // Nothing arrived in time, or shutdown came first.
            if idle_over.as_mut().poll(cx).is_ready() || stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(FirstBytes::Nothing);
            }
            Poll::Pending
        })
        .await
    };
    match first {
        FirstBytes::Whole(head) => head,
        FirstBytes::Part(partial) => read_rest(source, shutdown, partial, started + limits.header_timeout).await,
        FirstBytes::Nothing => Head::Closed,
    }
}

/// The rest of a head that came in pieces, by `deadline`; shutdown first
/// closes the connection.
async fn read_rest<S: HeadSource + ?Sized>(
    source: &mut S,
    shutdown: &mut ShutdownWatch,
    mut partial: Vec<u8>,
    deadline: Instant,
) -> Head {
    let rest = std::future::poll_fn(|cx| loop {
        let mut buf = [MaybeUninit::<u8>::uninit(); ARRIVAL_READ];
        let mut read = ReadBuf::uninit(&mut buf);
        std::task::ready!(poll_read_into(source, cx, &mut read))?;
        let got = read.filled();
        if got.is_empty() {
            return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
        }
        let from = partial.len().saturating_sub(3);
        partial.extend_from_slice(got);
        // Past the limit, Pingora's parser refuses the head with 400.
        if let Some(end) = head_end(&partial, from).or((partial.len() > MAX_HEAD).then_some(partial.len())) {
            return Poll::Ready(Ok(arrived(source, &partial, end)));
        }
    });
    tokio::select! {
        biased;
        head = tokio::time::timeout_at(deadline.into(), rest) => match head {
            Ok(Ok(head)) => head,
            _ => Head::Late,
        },
        _ = shutdown_signalled(shutdown) => Head::Closed,
    }
}

/// A whole head found in `read`, ending at `end`: the bytes go to the
/// session as they are (one allocation, or storage the thread reuses for
/// the lean path, and the session's parser reads no stream), or, for a
/// chunked body, back into the stream.
fn arrived<S: HeadSource + ?Sized>(source: &mut S, read: &[u8], end: usize) -> Head {
    let mut head = complete(read, end);
    match &mut head {
        // Pingora refuses a prefix longer than its head limit before parsing
        // it, body bytes included; such a read goes back into the stream,
        // whose reads the parser takes in pieces, as before.
        Head::Complete { chunked: None, read: bytes, lean, .. } if read.len() < MAX_HEAD => {
            *bytes = Some(match lean {
                // In storage the thread reuses (`proxy::lean::arrived`).
                true => crate::proxy::lean::arrived::copy(read),
                false => BytesMut::from(read),
            })
        }
        _ => source.give_back(read),
    }
    head
}

/// What a whole head found in `read`, ending at `end`, is.
fn complete(read: &[u8], end: usize) -> Head {
    let chunked = declares_transfer_encoding(&read[..end]);
    // The body bytes that came with the head are checked now, so that the
    // common smuggling attempt (everything in one write) never reaches an
    // upstream; later bytes are checked as they are read.
    if chunked && ChunkFraming::default().check(&read[end..]).is_err() {
        return Head::BadFraming;
    }
    let lean = !chunked && lean_eligible(&read[..end]);
    Head::Complete { extra: read.len() - end, chunked: chunked.then_some(end), lean, read: None }
}

/// Whether the lean HTTP/1 path (`proxy::lean`) may serve a request with
/// this head: HTTP/1.1 in origin form, not `CONNECT`, no upgrade, no
/// `Expect`, no body but one of at most `lean::MAX_BODY` bytes by
/// `Content-Length`, and no hop-by-hop field but `Connection` naming only
/// `keep-alive` or `close` (the one thing to remove on the way upstream).
/// Anything else, or anything odd, goes to Pingora's path, which handles
/// every case; this check only has to be right when it says yes.
pub(super) fn lean_eligible(head: &[u8]) -> bool {
    let mut lines = lines(head);
    let Some(request_line) = lines.find(|l| !l.is_empty()) else { return false };
    let mut parts = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if method == b"CONNECT" || !target.starts_with(b"/") || version != b"HTTP/1.1" {
        return false;
    }
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some(colon) = memchr::memchr(b':', line) else { return false };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"content-length") {
            let small = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
            if small.is_none_or(|n| n > crate::proxy::lean::MAX_BODY) {
                return false;
            }
        } else if is(b"connection") {
            let plain = |t: &[u8]| t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close");
            if !value.split(|b| *b == b',').all(|t| plain(t.trim_ascii())) {
                return false;
            }
        } else if HOP_BY_HOP.iter().any(|h| is(h)) {
            return false;
        }
    }
    true
}

/// Fields that take a request to Pingora's path: they change its framing,
/// ask for an upgrade or an interim answer, or are hop-by-hop fields that
/// Pingora's path removes with care.
const HOP_BY_HOP: [&[u8]; 10] = [
    b"transfer-encoding",
    b"upgrade",
    b"expect",
    b"te",
    b"trailer",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"http2-settings",
];

/// A `Transfer-Encoding` field among the head's lines (Pingora accepts only
/// chunked as the last coding, so a body it reads is then chunked). No
/// whitespace may come between a field name and its colon (RFC 9112 5.1).
fn declares_transfer_encoding(head: &[u8]) -> bool {
    lines(head).skip(1).any(|line| line.get(..18).is_some_and(|p| p.eq_ignore_ascii_case(b"transfer-encoding:")))
}

/// The lines of a head without their line ends (CRLF or a bare LF), found
/// with `memchr`: a byte-by-byte split was most of the cost of judging a
/// head.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = head;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(lf) => (&rest[..lf], &rest[lf + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

/// Where a request head ends (just past its empty line), searching from
/// `from`. Line ends are CRLF or, as Pingora's parser also accepts, a bare LF;
/// empty lines before the request line are skipped (RFC 9112 section 2.2).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?.max(from);
    let mut i = start;
    while let Some(p) = memchr::memchr(b'\n', buf.get(i..)?) {
        let lf = i + p;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// Resolves when shutdown is signalled; never if the sender is gone.
pub(super) async fn shutdown_signalled(shutdown: &mut ShutdownWatch) {
    if shutdown.changed().await.is_err() {
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_with_crlf_or_bare_lf_line_ends() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 0), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(22), "blank lines before the request line");
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        // Searching from the end of an earlier read still finds a CRLF split across reads.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_end(head, head.len() - 2 - 3), Some(head.len()));
    }

    #[test]
    fn a_transfer_encoding_field_is_recognised_in_any_case_but_not_in_a_value() {
        assert!(declares_transfer_encoding(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(declares_transfer_encoding(b"POST / HTTP/1.1\r\ntransfer-encoding:chunked\r\n\r\n"));
        assert!(!declares_transfer_encoding(b"POST / HTTP/1.1\r\nX-Note: transfer-encoding: chunked\r\n\r\n"));
        assert!(!declares_transfer_encoding(b"POST /transfer-encoding: HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn bad_framing_that_came_with_the_head_is_seen_before_any_upstream() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut bad = head.to_vec();
        bad.extend_from_slice(b"3\nabc\r\n0\r\n\r\n");
        assert!(matches!(complete(&bad, head.len()), Head::BadFraming));
        let mut good = head.to_vec();
        good.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
        assert!(matches!(
            complete(&good, head.len()),
            Head::Complete { chunked: Some(n), extra: 13, lean: false, read: None } if n == head.len()
        ));
    }

    #[test]
    fn the_lean_path_takes_plain_http11_requests_and_nothing_else() {
        let lean = |h: &str| lean_eligible(h.as_bytes());
        assert!(lean("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"));
        assert!(lean("POST /a HTTP/1.1\nHost: x\nContent-Length: 65536\nConnection: Close\n\n"));
        assert!(lean("\r\nHEAD / HTTP/1.1\r\nHost: x\r\nX-Te: trailers\r\n\r\n"), "blank lines first");
        for refused in [
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic eA==\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        ] {
            assert!(!lean(refused), "{refused:?}");
        }
    }
}
