//! Byte buffers the lean path borrows for a request and gives back: the
//! request head it writes upstream, the answer head it writes to the
//! client, the upstream read buffer.
//!
//! Why: each was a fresh `Vec` per request, three of the allocations every
//! proxied request made (`benches/README.md`, session 13). A proxy thread
//! serves one request at a time per connection but many connections at
//! once, so the buffers are kept per thread, a few of them, and only the
//! small ones: a buffer that grew for a large body is freed, so an idle
//! thread holds at most `KEPT * KEPT_CAPACITY` bytes.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread.
const KEPT: usize = 8;
/// The largest buffer kept (a body read grows the upstream buffer to 64 KiB).
const KEPT_CAPACITY: usize = 64 * 1024;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer borrowed from this thread's; given back, emptied, when dropped.
pub(super) struct Buffer(Vec<u8>);

impl Buffer {
    /// An empty buffer with room for at least `capacity` bytes.
    pub(super) fn take(capacity: usize) -> Self {
        let mut buf = FREE.with_borrow_mut(Vec::pop).unwrap_or_default();
        buf.reserve(capacity);
        Self(buf)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() == 0 || buf.capacity() > KEPT_CAPACITY {
            return;
        }
        buf.clear();
        // `try_with`: a thread being torn down keeps nothing.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT {
                free.push(buf);
            }
        });
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_empty_and_a_grown_one_is_freed() {
        let first = {
            let mut buf = Buffer::take(100);
            buf.extend_from_slice(b"secret");
            buf.as_ptr()
        };
        let again = Buffer::take(10);
        assert!(again.is_empty(), "nothing of the last request is left in it");
        assert_eq!(again.as_ptr(), first, "the same memory, not a new allocation");
        drop(again);
        assert_eq!(FREE.with_borrow(Vec::len), 1);
        let mut big = Buffer::take(10);
        big.reserve(KEPT_CAPACITY + 1);
        drop(big);
        assert_eq!(FREE.with_borrow(Vec::len), 0, "a buffer that grew past the limit is not kept");
        // At most `KEPT` are kept, however many were out at once.
        let many: Vec<Buffer> = (0..KEPT + 4).map(|_| Buffer::take(16)).collect();
        drop(many);
        assert_eq!(FREE.with_borrow(Vec::len), KEPT);
    }
}
