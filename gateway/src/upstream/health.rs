//! Active health checks: probe every backend of every pool that asks for it,
//! on the pool's interval, and flip its [`HealthState`](super::HealthState).
//!
//! One loop for the whole process. It reads the *current* snapshot on every
//! tick, so pools added, changed or removed by a reload are picked up without
//! restarting anything. The probes themselves are Pingora's
//! `HttpHealthCheck` / `TcpHealthCheck`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend as LbBackend;

use crate::config::{HealthCheckSpec, HealthProbe};
use crate::control::snapshot::SnapshotHandle;

use super::pool::HealthState;

const TICK: Duration = Duration::from_millis(100);

type ProbeKey = (String, SocketAddr);

/// A backend's probe, kept between rounds: building one loads the system's
/// CA certificates (Pingora's connector), which cost more CPU than the probe.
struct CachedCheck {
    /// The spec and TLS settings it was built from, as text: rebuilt when a
    /// reload changes them.
    built_from: String,
    check: Arc<dyn HealthCheck + Send + Sync>,
}

pub async fn run(snapshots: SnapshotHandle, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut next_due: HashMap<ProbeKey, Instant> = HashMap::new();
    let mut checks: HashMap<ProbeKey, CachedCheck> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let snapshot = snapshots.load_full();
        let now = Instant::now();
        let mut live = Vec::new();
        for pool in snapshot.pools.values() {
            let Some(spec) = &pool.health_check else { continue };
            for backend in &pool.backends {
                let key = (pool.name.clone(), backend.addr);
                live.push(key.clone());
                let due = next_due.entry(key.clone()).or_insert(now);
                if *due > now {
                    continue;
                }
                *due = now + spec.interval;
                let check = cached_check(&mut checks, key, spec, pool.tls.as_ref());
                let (spec, state, pool_name, addr) =
                    (spec.clone(), backend.health.clone(), pool.name.clone(), backend.addr);
                let metrics = snapshot.metrics.clone();
                tokio::spawn(async move {
                    let ok = match check {
                        Some(check) => probe(check.as_ref(), &spec, addr).await,
                        None => false,
                    };
                    report(&pool_name, addr, ok, &spec, &state);
                    metrics.set_backend_health(&pool_name, addr, state.is_healthy());
                });
            }
        }
        next_due.retain(|k, _| live.contains(k));
        checks.retain(|k, _| live.contains(k));
    }
}

fn report(pool: &str, addr: SocketAddr, ok: bool, spec: &HealthCheckSpec, state: &Arc<HealthState>) {
    match state.observe(ok, spec) {
        Some(true) => tracing::info!(pool, %addr, "backend is healthy again"),
        Some(false) => tracing::warn!(pool, %addr, "backend failed its health check; taken out of the pool"),
        None => {}
    }
}

/// The backend's probe from `checks`, built (again) when missing or when a
/// reload changed its spec or TLS settings.
fn cached_check(
    checks: &mut HashMap<ProbeKey, CachedCheck>,
    key: ProbeKey,
    spec: &HealthCheckSpec,
    tls: Option<&crate::tls::UpstreamTlsSpec>,
) -> Option<Arc<dyn HealthCheck + Send + Sync>> {
    // The CA bundle enters by its hash, not its (large) Debug text.
    let built_from = format!("{spec:?} {:?}", tls.map(|t| (&t.sni, t.verify, t.ca_key)));
    if let Some(cached) = checks.get(&key).filter(|c| c.built_from == built_from) {
        return Some(Arc::clone(&cached.check));
    }
    let check = build_check(spec, key.1, tls)?;
    checks.insert(key, CachedCheck { built_from, check: Arc::clone(&check) });
    Some(check)
}

/// One probe; `true` when the backend answered as required.
async fn probe(check: &(dyn HealthCheck + Send + Sync), spec: &HealthCheckSpec, addr: SocketAddr) -> bool {
    let Ok(target) = LbBackend::new(&addr.to_string()) else {
        return false;
    };
    // The probe's own timeouts bound each step; this one bounds the whole exchange.
    matches!(tokio::time::timeout(spec.timeout * 2, check.check(&target)).await, Ok(Ok(())))
}

/// The probe for one backend; `None` when the spec cannot make one (an
/// unparsable path, refused earlier by validation). A TLS pool's backends
/// are probed over TLS, verified like proxied connections.
fn build_check(
    spec: &HealthCheckSpec,
    addr: SocketAddr,
    tls: Option<&crate::tls::UpstreamTlsSpec>,
) -> Option<Arc<dyn HealthCheck + Send + Sync>> {
    let check: Arc<dyn HealthCheck + Send + Sync> = match &spec.probe {
        HealthProbe::Tcp => {
            let mut check = tls.map_or_else(TcpHealthCheck::new, |t| TcpHealthCheck::new_tls(&t.name_for(addr)));
            if let Some(t) = tls {
                t.apply(&mut check.peer_template.options);
            }
            check.peer_template.options.connection_timeout = Some(spec.timeout);
            Arc::new(*check)
        }
        HealthProbe::Http { path } => {
            let host = tls.map_or_else(|| addr.ip().to_string(), |t| t.name_for(addr));
            let mut check = HttpHealthCheck::new(&host, tls.is_some());
            if let Some(t) = tls {
                t.apply(&mut check.peer_template.options);
            }
            let uri = path.parse::<http::Uri>().ok()?;
            check.req.set_uri(uri);
            check.peer_template.options.connection_timeout = Some(spec.timeout);
            check.peer_template.options.read_timeout = Some(spec.timeout);
            check.peer_template.options.total_connection_timeout = Some(spec.timeout);
            Arc::new(check)
        }
    };
    Some(check)
}
