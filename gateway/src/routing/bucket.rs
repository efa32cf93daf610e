//! Stable cohort buckets: the same user lands in the same bucket on every
//! replica, after every restart and in every gateway version.
//!
//! `bucket = XXH3-64(key, seed = XXH3-64(salt)) mod 10000`
//!
//! XXH3 is a published, seedless-by-default, platform-independent hash (the
//! `xxhash-rust` crate implements the reference algorithm); Rust's own
//! `DefaultHasher` is randomised per process and must never be used here.
//! The salt is hashed once per config snapshot, not per request. The test
//! vectors below pin the function: if they ever change, every user would
//! switch versions, so they must not.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of buckets: one bucket is 0.01%.
pub const BUCKETS: u32 = 10_000;

/// A route's salt, hashed once when the config is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CohortSeed(u64);

impl CohortSeed {
    pub fn new(salt: &str) -> Self {
        Self(xxh3_64(salt.as_bytes()))
    }

    /// The bucket, 0..10000, of a user ID (or of a client IP for `ip-hash`).
    #[inline]
    pub fn bucket(self, key: &[u8]) -> u32 {
        (xxh3_64_with_seed(key, self.0) % u64::from(BUCKETS)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Pinned values, computed independently with the reference C
    /// implementation (Python's `xxhash` package):
    /// `xxh3_64_intdigest(user, seed=xxh3_64_intdigest(salt)) % 10000`.
    /// Changing the hash would move users between versions.
    #[test]
    fn test_vectors() {
        let cart = CohortSeed::new("cart-2026-11");
        let vectors: &[(&str, u32)] =
            &[("1001", VECTOR_1001), ("42", VECTOR_42), ("alice@example.com", VECTOR_ALICE), ("", VECTOR_EMPTY)];
        for (user, expected) in vectors {
            assert_eq!(cart.bucket(user.as_bytes()), *expected, "user {user:?}");
        }
        assert_eq!(CohortSeed::new("other-salt").bucket(b"42"), VECTOR_42_OTHER);
    }

    const VECTOR_1001: u32 = 5636;
    const VECTOR_42: u32 = 593;
    const VECTOR_ALICE: u32 = 405;
    const VECTOR_EMPTY: u32 = 7281;
    const VECTOR_42_OTHER: u32 = 3033;

    /// The published XXH3-64 value of the empty input.
    #[test]
    fn underlying_hash_is_reference_xxh3() {
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn share_of_users_matches_the_percentage() {
        let seed = CohortSeed::new("share-test");
        for percent_bp in [100u32, 1000, 2500, 5000] {
            let n = 100_000;
            let canary = (0..n).filter(|i| seed.bucket(format!("user-{i}").as_bytes()) < percent_bp).count();
            let share = canary as f64 * 100.0 / n as f64;
            let want = f64::from(percent_bp) / 100.0;
            assert!((share - want).abs() <= 0.5, "{share}% for {want}%");
        }
    }

    #[test]
    fn different_salts_draw_independent_cohorts() {
        let a = CohortSeed::new("cart-2026-11");
        let b = CohortSeed::new("cart-2026-12");
        let n = 100_000;
        let in_a: HashSet<u32> = (0..n).filter(|i| a.bucket(format!("{i}").as_bytes()) < 1000).collect();
        let in_both = in_a.iter().filter(|i| b.bucket(format!("{i}").as_bytes()) < 1000).count();
        // Independent 10% cohorts overlap on ~10% of the first one.
        let overlap = in_both as f64 / in_a.len() as f64;
        assert!((0.08..0.12).contains(&overlap), "overlap {overlap}");
    }
}
