//! Idle upstream connections of the lean path, kept per proxy thread.
//!
//! Pingora's pool spawns a task to watch every connection it takes back
//! and wakes it again when the connection is handed out: on a keep-alive
//! load that is a task, a channel and seven allocations per request, 18%
//! of the lean path's instructions (callgrind, `benches/README.md`). Here
//! an idle connection is a stream in a per-thread list, taken back last in
//! first out; no task watches it. A connection the upstream closed while
//! idle is found when it is next used: a request without a body is then
//! sent again on a new connection (`lean/`). Every connection handed
//! out is first probed with a read that does not wait, as Pingora does: a
//! connection that was closed, or that holds bytes nobody asked for (an
//! upstream that wrote past the end of its answer), is dropped, so no
//! request ever reads another one's answer.
//!
//! Proxy threads run their own runtimes (`server.work_stealing = false`,
//! the default), so a thread's list serves the connections that thread
//! accepted. With work stealing on, a task may take a connection another
//! thread put back: still correct, the list is only a cache.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

struct Idle {
    /// The upstream's `reuse_hash` (address, TLS name and options).
    key: u64,
    stream: Stream,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<VecDeque<Idle>> = const { RefCell::new(VecDeque::new()) };
}

/// The most recently used idle connection to the upstream `key`, idle for
/// less than `max_idle`, that shows no sign of being closed or of holding
/// stray bytes. The probe costs a system call only when the reactor saw the
/// socket readable (strace: 2 `recvfrom` per proxied request, as before).
pub fn take(key: u64, max_idle: Duration) -> Option<Stream> {
    let now = Instant::now();
    loop {
        let found = IDLE.with_borrow_mut(|idle| {
            // Connections idle too long are closed from the oldest end.
            while idle.front().is_some_and(|c| now.duration_since(c.since) >= max_idle) {
                idle.pop_front();
            }
            let at = idle.iter().rposition(|c| c.key == key)?;
            idle.remove(at)
        })?;
        let mut stream = found.stream;
        if looks_open(&mut stream) {
            return Some(stream);
        }
    }
}

/// Keep a connection whose last answer was read whole, for the next
/// request; the thread keeps at most `limit`, dropping the oldest.
pub fn put(key: u64, stream: Stream, limit: usize) {
    IDLE.with_borrow_mut(|idle| {
        while idle.len() >= limit {
            idle.pop_front();
        }
        idle.push_back(Idle { key, stream, since: Instant::now() });
    });
}

/// Close this thread's idle connections (the lean path was switched off:
/// nothing would take them again).
pub fn clear() {
    IDLE.with_borrow_mut(|idle| {
        if !idle.is_empty() {
            idle.clear();
        }
    });
}

/// Whether an idle connection still looks usable: a read that does not
/// wait finds nothing. End of stream (the upstream closed it), an error,
/// or bytes nobody asked for all mean it is not.
fn looks_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: with the task's budget spent, tokio would answer
    // "not ready" without asking the socket, and a closed connection would
    // look open.
    let read = tokio::task::unconstrained(stream.read(&mut byte));
    read.now_or_never().is_none()
}
