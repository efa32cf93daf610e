//! Rate limits by client IP, user ID and route: token buckets (GCRA) in a
//! fixed-size table, so memory stays the same whether ten or ten million
//! distinct keys arrive.
//!
//! Each key hashes to two slots; the request is judged by the less loaded
//! slot and both are updated conservatively (count-min style). Two keys
//! only share a budget when both of their slots collide with busy keys,
//! and a collision can only make a limit stricter, never let traffic past it.
//! A slot absorbs `rate` one-off keys per window before it saturates, so 64 Ki
//! slots at a per-IP limit of 200/s take about 13 million distinct addresses
//! per second before innocent clients start to share a budget.
//!
//! GCRA keeps one number per slot, the "theoretical arrival time" (TAT): a
//! request is allowed when `TAT - now <= (burst - 1) × interval`, and then
//! pushes TAT one interval further. It is the same model as nginx's
//! `limit_req` with `burst` and `nodelay`.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::cluster::limits::{Judge, SharedBudget};
use crate::config::LimitSpec;

/// Slots per limiter: 64 Ki × 8 bytes = 512 KiB, fixed at creation.
pub const DEFAULT_SLOTS: usize = 1 << 16;

pub struct RateLimiter {
    spec: LimitSpec,
    /// Set for a `scope = "cluster"` limit in a fleet.
    shared: Option<SharedBudget>,
    /// Nanoseconds between two requests at the sustained rate.
    interval_ns: u64,
    /// How far TAT may run ahead of now: (burst - 1) intervals.
    tolerance_ns: u64,
    slots: Box<[AtomicU64]>,
    epoch: Instant,
}

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit; the client may retry after this long.
    Limit {
        retry_after: Duration,
    },
}

impl RateLimiter {
    pub fn new(spec: LimitSpec) -> Self {
        Self::with_slots(spec, DEFAULT_SLOTS)
    }

    pub fn with_slots(spec: LimitSpec, slots: usize) -> Self {
        let interval_ns = (spec.per.as_nanos() / u128::from(spec.rate.max(1))).max(1) as u64;
        let tolerance_ns = interval_ns.saturating_mul(u64::from(spec.burst.max(1) - 1));
        Self {
            spec,
            shared: None,
            interval_ns,
            tolerance_ns,
            slots: (0..slots.max(2)).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    /// A limit whose budget the fleet shares (`cluster::limits`).
    pub fn shared(spec: LimitSpec, budget: SharedBudget) -> Self {
        Self { shared: Some(budget), ..Self::new(spec) }
    }

    pub fn spec(&self) -> LimitSpec {
        self.spec
    }

    pub fn shared_budget(&self) -> Option<&SharedBudget> {
        self.shared.as_ref()
    }

    /// Count one request for `key` and say whether it may pass.
    pub fn check(&self, key: &[u8]) -> Verdict {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let Some(shared) = &self.shared else { return self.check_at(key, now) };
        match shared.judge() {
            Judge::Allow => Verdict::Allow,
            Judge::Deny => Verdict::Limit { retry_after: Duration::from_secs(1) },
            Judge::Local { count } => {
                let verdict = self.check_at(key, now);
                if count && verdict == Verdict::Allow {
                    shared.count(key);
                }
                verdict
            }
        }
    }

    /// Take in the fleet's view of `key`: its arrival time is `ahead` past
    /// now. Never lowers what this replica counted itself.
    pub fn adopt(&self, key: &[u8], ahead: Duration) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let tat = now.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX)).saturating_add(1);
        let n = self.slots.len() as u64;
        self.slots[(xxh3_64_with_seed(key, 0x5eed_0001) % n) as usize].fetch_max(tat, Ordering::Relaxed);
        self.slots[(xxh3_64_with_seed(key, 0x5eed_0002) % n) as usize].fetch_max(tat, Ordering::Relaxed);
    }

    /// Nanoseconds per request at the sustained rate.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// What `check` would say, without counting the request (explain's dry run).
    pub fn peek(&self, key: &[u8]) -> Verdict {
        match self.shared.as_ref().map(SharedBudget::judge) {
            Some(Judge::Allow) => return Verdict::Allow,
            Some(Judge::Deny) => return Verdict::Limit { retry_after: Duration::from_secs(1) },
            _ => {}
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let n = self.slots.len() as u64;
        let a = &self.slots[(xxh3_64_with_seed(key, 0x5eed_0001) % n) as usize];
        let b = &self.slots[(xxh3_64_with_seed(key, 0x5eed_0002) % n) as usize];
        let tat = a.load(Ordering::Relaxed).min(b.load(Ordering::Relaxed)).saturating_sub(1).max(now);
        match tat - now > self.tolerance_ns {
            true => Verdict::Limit { retry_after: Duration::from_nanos(tat - now - self.tolerance_ns) },
            false => Verdict::Allow,
        }
    }

    fn check_at(&self, key: &[u8], now: u64) -> Verdict {
        let n = self.slots.len() as u64;
        let a = &self.slots[(xxh3_64_with_seed(key, 0x5eed_0001) % n) as usize];
        let b = &self.slots[(xxh3_64_with_seed(key, 0x5eed_0002) % n) as usize];
        // Times are stored +1 so that 0 means "never used".
        let tat = a.load(Ordering::Relaxed).min(b.load(Ordering::Relaxed)).saturating_sub(1).max(now);
        if tat - now > self.tolerance_ns {
            let wait = tat - now - self.tolerance_ns;
            return Verdict::Limit { retry_after: Duration::from_nanos(wait) };
        }
        let new_tat = tat + self.interval_ns + 1;
        // Conservative update: never lower a slot another key has pushed further.
        a.fetch_max(new_tat, Ordering::Relaxed);
        b.fetch_max(new_tat, Ordering::Relaxed);
        Verdict::Allow
    }

    /// Bytes held by the table: constant for the limiter's lifetime.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<AtomicU64>()
    }
}

/// Which key a limit counts by; the `key` label of `gateway_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Ip,
    User,
    Route,
}

impl LimitKey {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKey::Ip => "ip",
            LimitKey::User => "user",
            LimitKey::Route => "route",
        }
    }
}

/// Rounds a wait up to whole seconds for `Retry-After`, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.as_secs() == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rate: u32, per_secs: u64, burst: u32) -> LimitSpec {
        LimitSpec { rate, per: Duration::from_secs(per_secs), burst, scope: Default::default() }
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        let l = RateLimiter::new(spec(10, 1, 5));
        let allowed = (0..20).filter(|_| l.check_at(b"1.2.3.4", SEC) == Verdict::Allow).count();
        assert_eq!(allowed, 5, "the burst passes at once, then the limit holds");
        // A tenth of a second later, one more token has accrued.
        assert_eq!(l.check_at(b"1.2.3.4", SEC + SEC / 10), Verdict::Allow);
        assert!(matches!(l.check_at(b"1.2.3.4", SEC + SEC / 10), Verdict::Limit { .. }));
    }

    #[test]
    fn keys_are_independent() {
        let l = RateLimiter::new(spec(1, 1, 1));
        assert_eq!(l.check_at(b"a", SEC), Verdict::Allow);
        assert!(matches!(l.check_at(b"a", SEC), Verdict::Limit { .. }));
        assert_eq!(l.check_at(b"b", SEC), Verdict::Allow);
    }

    #[test]
    fn retry_after_says_when_a_token_returns() {
        let l = RateLimiter::new(spec(60, 60, 1));
        assert_eq!(l.check_at(b"u", SEC), Verdict::Allow);
        let Verdict::Limit { retry_after } = l.check_at(b"u", SEC) else { panic!("limited") };
        assert_eq!(retry_after, Duration::from_secs(1));
        assert_eq!(retry_after_secs(retry_after), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
    }

    #[test]
    fn millions_of_keys_do_not_grow_memory_or_starve_a_quiet_user() {
        // A per-IP limit of 200/s while two million distinct addresses arrive within one second.
        let l = RateLimiter::new(spec(200, 1, 400));
        let before = l.memory_bytes();
        let n = 2_000_000u64;
        for i in 0..n {
            l.check_at(&i.to_le_bytes(), SEC + i * SEC / n);
        }
        assert_eq!(l.memory_bytes(), before, "the table never grows");
        // After the flood, fresh users still pass (a few may collide on both slots; most must not).
        let passed =
            (0..1000u32).filter(|i| l.check_at(format!("fresh-{i}").as_bytes(), 2 * SEC) == Verdict::Allow).count();
        assert!(passed > 900, "{passed} of 1000 fresh users passed");
    }
}
