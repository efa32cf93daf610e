//! The cached answers: an LRU in memory with a byte budget for the whole
//! gateway, in shards so proxy threads rarely meet on one lock.
//!
//! Pingora's own in-memory storage (`pingora_cache::MemCache`) says "for
//! testing only, not for production use" (no size bound of its own), so the
//! entries live here; `pingora_cache::cache_control` still parses the
//! answers' `Cache-Control`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use lru::LruCache;

const SHARDS: usize = 16;

/// One stored answer.
#[derive(Debug)]
pub struct CachedResponse {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub stored_at: SystemTime,
    /// How long it is fresh (from `Cache-Control`, else the route's `ttl`).
    pub fresh_for: Duration,
    /// For purges: the route and the request path it answered.
    pub route: Arc<str>,
    pub path: String,
}

impl CachedResponse {
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.stored_at).unwrap_or_default()
    }

    /// Bytes it holds, roughly: body, headers, and the entry's own overhead.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
        self.body.len() + headers + self.path.len() + 192
    }
}

struct Shard {
    entries: LruCache<u128, Arc<CachedResponse>>,
    bytes: usize,
}

pub struct Store {
    shards: [Mutex<Shard>; SHARDS],
    /// The whole cache's budget; each shard holds at most its share.
    max_bytes: AtomicUsize,
    bytes: AtomicUsize,
    entries: AtomicUsize,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            shards: std::array::from_fn(|_| Mutex::new(Shard { entries: LruCache::unbounded(), bytes: 0 })),
            max_bytes: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
        }
    }
}

impl Store {
    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(key % SHARDS as u128) as usize].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The budget (0: nothing is kept). Shrinking evicts at once.
    pub fn set_max_bytes(&self, max: usize) {
        self.max_bytes.store(max, Ordering::Relaxed);
        for i in 0..SHARDS {
            let mut shard = self.shards[i].lock().unwrap_or_else(PoisonError::into_inner);
            self.evict(&mut shard, max / SHARDS);
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// The entry for `key`; `touch` makes it the most recently used.
    pub fn get(&self, key: u128, touch: bool) -> Option<Arc<CachedResponse>> {
        let mut shard = self.shard(key);
        match touch {
            true => shard.entries.get(&key).cloned(),
            false => shard.entries.peek(&key).cloned(),
        }
    }

    /// Keep `entry` (replacing the previous one), evicting the least recently used past the budget.
    pub fn insert(&self, key: u128, entry: CachedResponse) {
        let budget = self.max_bytes() / SHARDS;
        let size = entry.size();
        if size > budget {
            return;
        }
        let mut shard = self.shard(key);
        if let Some(old) = shard.entries.put(key, Arc::new(entry)) {
            shard.bytes -= old.size().min(shard.bytes);
            self.bytes.fetch_sub(old.size(), Ordering::Relaxed);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        shard.bytes += size;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.evict(&mut shard, budget);
    }

    fn evict(&self, shard: &mut Shard, budget: usize) {
        while shard.bytes > budget {
            let Some((_, old)) = shard.entries.pop_lru() else { break };
            shard.bytes -= old.size().min(shard.bytes);
            self.bytes.fetch_sub(old.size(), Ordering::Relaxed);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drop every entry of `route` (all routes: `None`) whose path starts with `prefix`; how many.
    pub fn purge(&self, route: Option<&str>, prefix: &str) -> usize {
        let mut purged = 0;
        for i in 0..SHARDS {
            let mut shard = self.shards[i].lock().unwrap_or_else(PoisonError::into_inner);
            let doomed: Vec<u128> = shard
                .entries
                .iter()
                .filter(|(_, e)| route.is_none_or(|r| &*e.route == r) && e.path.starts_with(prefix))
                .map(|(k, _)| *k)
                .collect();
            for k in doomed {
                if let Some(old) = shard.entries.pop(&k) {
                    shard.bytes -= old.size().min(shard.bytes);
                    self.bytes.fetch_sub(old.size(), Ordering::Relaxed);
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                    purged += 1;
                }
            }
        }
        purged
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, body: usize) -> CachedResponse {
        CachedResponse {
            status: 200,
            headers: vec![(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body: Bytes::from(vec![b'x'; body]),
            stored_at: SystemTime::now(),
            fresh_for: Duration::from_secs(30),
            route: Arc::from("cart"),
            path: path.to_string(),
        }
    }

    #[test]
    fn a_million_distinct_urls_stay_under_the_budget() {
        let store = Store::default();
        store.set_max_bytes(4 << 20);
        for i in 0..1_000_000u128 {
            store.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), entry(&format!("/p/{i}"), 100));
        }
        assert!(store.bytes() <= 4 << 20, "{} bytes", store.bytes());
        assert!(store.len() > 10_000, "the budget is used: {} entries", store.len());
        let counted: usize = (0..SHARDS).map(|i| store.shards[i].lock().map_or(0, |s| s.entries.len())).sum();
        assert_eq!(counted, store.len());
    }

    #[test]
    fn least_recently_used_goes_first_and_purge_takes_a_prefix() {
        let store = Store::default();
        store.set_max_bytes(SHARDS * 2000);
        // Three entries of ~800 bytes in one shard (keys ≡ 0 mod 16): the third evicts the least recent.
        store.insert(0, entry("/a", 500));
        store.insert(16, entry("/b", 500));
        assert!(store.get(0, true).is_some());
        store.insert(32, entry("/c", 500));
        assert!(store.get(16, false).is_none(), "the least recently used went");
        assert!(store.get(0, false).is_some() && store.get(32, false).is_some());
        assert_eq!(store.purge(Some("cart"), "/c"), 1);
        assert_eq!(store.purge(Some("other"), "/"), 0);
        assert_eq!(store.len(), 1);
    }
}
