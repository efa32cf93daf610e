//! The storage request heads arrive in, reused by the next heads a proxy
//! thread reads.
//!
//! Why: the connection's wait copied every head into a fresh `BytesMut`,
//! and the lean path's first slice of it (`request.rs`: the head's names,
//! values and target are slices) made the storage shared, a second
//! allocation: two of the 16 a proxied request cost (`benches/README.md`,
//! session 14). Here the storage is split: the request gets its bytes, as
//! a `Bytes` its head slices, and the thread gets back at once a handle on
//! the rest (`Storage`). The next head is copied into that rest, or into
//! the whole storage again once nothing points into it
//! (`BytesMut::try_reclaim`), or into new storage when neither has room.
//! The handle owns only what no slice covers, so bytes still in use (a
//! request in flight, a cached head, a mirrored request) are never written
//! over; heads in flight at once share a storage, as far as it goes.
//!
//! Only heads the lean path reads come here (`listener::head_wait`): a
//! head left to Pingora's session is kept by it for the connection's life
//! (an upgrade), and gets storage of its own size, as before.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// Handles kept per thread.
const KEPT: usize = 8;
/// The least storage made: a common head and a small body fit.
const LEAST: usize = 4 * 1024;
/// Storage larger than this (a head with a large body) is not kept, so a
/// request in flight keeps at most this much of it alive.
const KEPT_CAPACITY: usize = 16 * 1024;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// `read` copied into storage this thread reuses when it can.
pub fn copy(read: &[u8]) -> BytesMut {
    // A read larger than any storage kept leaves the thread's handles be.
    let mut reused = if read.len() <= KEPT_CAPACITY { FREE.with_borrow_mut(Vec::pop) } else { None };
    let mut bytes = match reused.as_mut().is_some_and(|handle| handle.try_reclaim(read.len())) {
        true => reused.unwrap_or_default(),
        // Still pointed into (or too small): a new one; the old handle goes.
        false => BytesMut::with_capacity(read.len().max(LEAST)),
    };
    bytes.extend_from_slice(read);
    bytes
}

/// The thread's handle on the rest of the storage of a request's bytes:
/// given back to the thread when dropped.
pub struct Storage {
    handle: BytesMut,
    /// The capacity the bytes were split from: the storage's size, or less
    /// for reused storage (which is never larger than `KEPT_CAPACITY`).
    /// Larger only for storage made for a large read, which is not kept.
    size: usize,
}

/// The bytes of `read`, for the request to slice, and the handle on the
/// rest of their storage.
pub(super) fn split(mut read: BytesMut) -> (Bytes, Storage) {
    let size = read.capacity();
    let bytes = read.split().freeze();
    (bytes, Storage { handle: read, size })
}

impl Storage {
    /// The handle and the bytes it was split from, together again: a
    /// `BytesMut` of exactly those bytes, without a copy unless other
    /// requests' bytes share the storage.
    pub(super) fn unsplit(mut self, bytes: Bytes) -> BytesMut {
        // The handle is let go of first, so the bytes are the storage's
        // only user and can be written to again.
        drop(std::mem::take(&mut self.handle));
        self.size = 0;
        bytes.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]))
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let handle = std::mem::take(&mut self.handle);
        // Size 0: given back with its bytes (`unsplit`), nothing to keep.
        if self.size == 0 || self.size > KEPT_CAPACITY {
            return;
        }
        // `try_with`: a thread being torn down keeps nothing.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT {
                free.push(handle);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `bytes` lie in the storage that starts at `start`.
    fn inside(bytes: &Bytes, start: *const u8) -> bool {
        let (at, start) = (bytes.as_ptr() as usize, start as usize);
        at >= start && at + bytes.len() <= start + LEAST
    }

    #[test]
    fn bytes_still_held_are_never_written_over() {
        FREE.with_borrow_mut(Vec::clear);
        // Every request's bytes kept (as a cached head or a mirrored request
        // would keep them) while the next ones arrive: each goes where no
        // held bytes are, in the rest of a storage or in a new one.
        let mut held: Vec<(Vec<u8>, Bytes)> = Vec::new();
        for n in 0..600 {
            let text = format!("GET /{n} HTTP/1.1\r\n\r\n").into_bytes();
            let (bytes, storage) = split(copy(&text));
            let slice = bytes.slice(4..6);
            drop((bytes, storage));
            held.push((text[4..6].to_vec(), slice));
        }
        for (n, (text, slice)) in held.iter().enumerate() {
            assert_eq!(&slice[..], &text[..], "request {n}'s bytes are as they arrived");
        }
    }

    #[test]
    fn the_same_storage_serves_request_after_request() {
        FREE.with_borrow_mut(Vec::clear);
        let (bytes, storage) = split(copy(b"one"));
        let start = bytes.as_ptr();
        drop((bytes, storage));
        // Each request's bytes follow the last one's, then start over at
        // the front when the rest is too short: 500 of them go round.
        let mut wrapped = false;
        for n in 0..500 {
            let text = format!("request number {n}");
            let (bytes, storage) = split(copy(text.as_bytes()));
            assert!(inside(&bytes, start), "request {n}: the storage of the last request, reclaimed");
            assert_eq!(&bytes[..], text.as_bytes());
            wrapped |= n > 0 && bytes.as_ptr() == start;
            drop((bytes, storage));
        }
        assert!(wrapped, "the storage was used again from its front");
    }

    #[test]
    fn unsplit_gives_the_bytes_back_without_a_copy() {
        let (bytes, storage) = split(copy(b"GET / HTTP/1.0\r\n\r\n"));
        let at = bytes.as_ptr();
        let back = storage.unsplit(bytes);
        // No other handle is left on it: nothing goes back to the thread.
        assert_eq!(&back[..], b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(back.as_ptr(), at);
    }

    #[test]
    fn large_storage_is_not_kept() {
        FREE.with_borrow_mut(Vec::clear);
        let big = vec![b'x'; KEPT_CAPACITY + 1];
        drop(split(copy(&big)));
        assert_eq!(FREE.with_borrow(Vec::len), 0);
        // Nor does a large read take a kept handle away.
        drop(split(copy(b"small")));
        drop(split(copy(&big)));
        assert_eq!(FREE.with_borrow(Vec::len), 1);
        FREE.with_borrow_mut(Vec::clear);
        let many: Vec<_> = (0..KEPT + 3).map(|_| split(copy(b"x"))).collect();
        drop(many);
        assert_eq!(FREE.with_borrow(Vec::len), KEPT);
    }
}
