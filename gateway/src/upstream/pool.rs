//! An upstream pool: weighted round robin over the backends that are up.
//!
//! The pool itself is immutable and lives in a config snapshot. Health is the
//! one mutable part: each backend holds a shared [`HealthState`] that the
//! health checker updates and that carries over to the next snapshot when a
//! reload keeps the same pool and address (see [`HealthBook`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use crate::config::{HealthCheckSpec, UpstreamSpec};

/// Up/down state of one backend, shared across snapshots.
#[derive(Debug)]
pub struct HealthState {
    healthy: AtomicBool,
    /// Consecutive probe results against the current state.
    streak: AtomicU32,
}

impl Default for HealthState {
    /// New backends start up: traffic flows at once, and a dead one is caught
    /// by the connect retry until the first probe takes it out.
    fn default() -> Self {
        Self { healthy: AtomicBool::new(true), streak: AtomicU32::new(0) }
    }
}

impl HealthState {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Record one probe result; returns `Some(new_state)` when it flips.
    pub fn observe(&self, ok: bool, spec: &HealthCheckSpec) -> Option<bool> {
        let healthy = self.is_healthy();
        if ok == healthy {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok { spec.healthy_after } else { spec.unhealthy_after };
        if streak >= needed {
            self.healthy.store(ok, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            Some(ok)
        } else {
            None
        }
    }
}

#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: Arc<HealthState>,
    /// How to reach it, with the pool's timeouts: built once per snapshot,
    /// not per request (it was a clone and a box for every request).
    pub peer: Arc<HttpPeer>,
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<Backend>,
    pub health_check: Option<HealthCheckSpec>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `tls = true`: how to connect to the backends with TLS.
    pub tls: Option<crate::tls::UpstreamTlsSpec>,
    /// Smooth weighted round-robin order: weights 1 and 2 give `[b, a, b]`,
    /// spreading a heavy backend's turns instead of bunching them.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

impl Pool {
    pub fn new(spec: &UpstreamSpec, book: &HealthBook) -> Self {
        let backends: Vec<Backend> = spec
            .backends
            .iter()
            .map(|b| Backend {
                addr: b.addr,
                weight: b.weight,
                health: book.state(&spec.name, b.addr, spec.health_check.as_ref()),
                peer: Arc::new(peer(b.addr, spec)),
            })
            .collect();
        let schedule = smooth_wrr(&backends.iter().map(|b| b.weight).collect::<Vec<_>>());
        Self {
            name: spec.name.clone(),
            backends,
            health_check: spec.health_check.clone(),
            connect_timeout: spec.connect_timeout,
            read_timeout: spec.read_timeout,
            tls: spec.tls.clone(),
            schedule,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next healthy backend that `exclude` does not reject (backends already
    /// tried for this request), or `None` when there is none.
    pub fn select(&self, exclude: impl Fn(SocketAddr) -> bool) -> Option<&Backend> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.backends[self.schedule[(start + i) % n]])
            .find(|b| b.health.is_healthy() && !exclude(b.addr))
    }

    pub fn healthy_count(&self) -> usize {
        self.backends.iter().filter(|b| b.health.is_healthy()).count()
    }
}

/// How long an idle upstream connection is kept for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The peer a request to `addr` goes to, with the pool's TLS and timeouts.
fn peer(addr: SocketAddr, spec: &UpstreamSpec) -> HttpPeer {
    let mut peer = crate::tls::upstream_peer(addr, spec.tls.as_ref());
    peer.options.connection_timeout = Some(spec.connect_timeout);
    peer.options.read_timeout = Some(spec.read_timeout);
    // A write to an upstream that stopped reading waits as long as a read.
    peer.options.write_timeout = Some(spec.read_timeout);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
    peer
}

/// Nginx's smooth weighted round robin, unrolled into one full cycle.
fn smooth_wrr(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = current.iter().enumerate().max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i))) else {
            break;
        };
        current[best] -= total;
        out.push(best);
    }
    out
}

/// Health states by (pool, address, probe), kept across reloads so a reload
/// neither resurrects a dead backend nor forgets a live one. A changed probe
/// starts fresh, since the old verdict no longer answers the new question.
#[derive(Default)]
pub struct HealthBook {
    states: Mutex<HashMap<HealthKey, Arc<HealthState>>>,
}

/// Pool name, backend address, and the probe that judged it.
type HealthKey = (String, SocketAddr, Option<HealthCheckSpec>);

impl HealthBook {
    fn state(&self, pool: &str, addr: SocketAddr, probe: Option<&HealthCheckSpec>) -> Arc<HealthState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.entry((pool.to_string(), addr, probe.cloned())).or_default().clone()
    }

    /// Forget backends no longer in any live pool (called after a swap).
    pub fn retain_only(&self, pools: &HashMap<String, Arc<Pool>>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|(pool, addr, _), _| pools.get(pool).is_some_and(|p| p.backends.iter().any(|b| b.addr == *addr)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, HealthProbe};

    fn spec(backends: &[(&str, u32)]) -> UpstreamSpec {
        UpstreamSpec {
            name: "p".into(),
            backends: backends
                .iter()
                .map(|(a, w)| BackendSpec { addr: a.parse().expect("addr"), weight: *w })
                .collect(),
            health_check: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            tls: None,
        }
    }

    #[test]
    fn weights_are_honoured_and_interleaved() {
        assert_eq!(smooth_wrr(&[1, 2]), vec![1, 0, 1]);
        let pool = Pool::new(&spec(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 3)]), &HealthBook::default());
        let mut counts = HashMap::new();
        for _ in 0..400 {
            let b = pool.select(|_| false).expect("backend");
            *counts.entry(b.addr.port()).or_insert(0) += 1;
        }
        assert_eq!(counts[&1], 100);
        assert_eq!(counts[&2], 300);
    }

    #[test]
    fn unhealthy_and_excluded_backends_are_skipped() {
        let book = HealthBook::default();
        let pool = Pool::new(&spec(&[("127.0.0.1:1", 1), ("127.0.0.1:2", 1)]), &book);
        pool.backends[0].health.healthy.store(false, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(pool.select(|_| false).map(|b| b.addr.port()), Some(2));
        }
        assert!(pool.select(|a| a.port() == 2).is_none());
    }

    #[test]
    fn health_survives_a_rebuild_of_the_same_pool() {
        let book = HealthBook::default();
        let first = Pool::new(&spec(&[("127.0.0.1:1", 1)]), &book);
        first.backends[0].health.healthy.store(false, Ordering::Relaxed);
        let second = Pool::new(&spec(&[("127.0.0.1:1", 5)]), &book);
        assert!(!second.backends[0].health.is_healthy());
    }

    #[test]
    fn thresholds_delay_flips() {
        let hc = HealthCheckSpec {
            probe: HealthProbe::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after: 1,
            unhealthy_after: 2,
        };
        let s = HealthState::default();
        assert_eq!(s.observe(false, &hc), None);
        assert_eq!(s.observe(false, &hc), Some(false));
        assert_eq!(s.observe(true, &hc), Some(true));
    }
}
