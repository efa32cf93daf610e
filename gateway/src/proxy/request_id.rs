//! Request IDs: 32 lowercase hex digits, like a UUID without dashes, made
//! without a system call.
//!
//! Why not `Uuid::new_v4`: it asks the kernel for 16 random bytes on every
//! request (`getrandom`, measured at ~0.3 µs of kernel time per request on the
//! load benchmark). An ID only has to be unique, not unpredictable: each
//! thread draws a random 64-bit prefix once, and the low half is a bijective
//! mix of a per-thread counter, so IDs never repeat within a thread and two
//! threads (or replicas) collide only if their random prefixes do.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

thread_local! {
    /// (random prefix, counter) of this thread.
    static STATE: Cell<(u64, u64)> = Cell::new(seed());
}

fn seed() -> (u64, u64) {
    // RandomState's keys come from the OS once per thread; hashing two
    // different values gives two independent 64-bit draws.
    let keys = RandomState::new();
    (keys.hash_one(0x5eed_u64), keys.hash_one(0xc0de_u64))
}

/// SplitMix64's finaliser: a bijection on u64, so distinct counters give
/// distinct outputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fresh request ID.
/// A request's id: the client's `X-Request-Id` when it is a usable one,
/// else one the gateway made. Printable ASCII, at most 128 bytes; kept
/// inline up to 32 (the gateway's own are 32 hex digits), so most requests
/// need no allocation for it.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestId(smallvec::SmallVec<[u8; 32]>);

impl RequestId {
    /// `value` when it may be a request id: 1 to 128 printable ASCII bytes.
    pub fn usable(value: &[u8]) -> Option<Self> {
        let ok = !value.is_empty() && value.len() <= 128 && value.iter().all(u8::is_ascii_graphic);
        ok.then(|| Self(smallvec::SmallVec::from_slice(value)))
    }

    pub fn as_str(&self) -> &str {
        // Printable ASCII only (`usable`, `new_request_id`): always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

pub fn new_request_id() -> RequestId {
    let (prefix, counter) = STATE.with(|s| {
        let (prefix, counter) = s.get();
        s.set((prefix, counter.wrapping_add(1)));
        (prefix, counter)
    });
    let value = (u128::from(prefix) << 64) | u128::from(mix(counter));
    // By hand: `format!("{value:032x}")` costs a tenth of the gateway's own
    // work per request on the lean path.
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((value >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Inline: no allocation (hex digits are printable ASCII).
    RequestId(smallvec::SmallVec::from_buf(hex))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_32_hex_digits_and_never_repeat() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = new_request_id();
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
            assert!(seen.insert(id), "a repeated id");
        }
    }

    #[test]
    fn a_client_id_is_kept_only_when_it_is_printable_and_short() {
        assert_eq!(RequestId::usable(b"order-42").as_deref(), Some("order-42"));
        let longest = "x".repeat(128);
        assert_eq!(RequestId::usable(longest.as_bytes()).as_deref(), Some(longest.as_str()));
        for refused in [&b""[..], b"a b", b"a\tb", b"caf\xc3\xa9", &[b'x'; 129]] {
            assert!(RequestId::usable(refused).is_none(), "{refused:?}");
        }
    }

    #[test]
    fn threads_draw_different_prefixes() {
        let here = new_request_id();
        let there = std::thread::spawn(new_request_id).join().expect("thread");
        assert_ne!(here[..16], there[..16], "each thread has its own random prefix");
    }
}
