//! Per-request state, grouped by concern.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::config::FallbackCause;
use crate::control::snapshot::Snapshot;
use crate::routing::Decision;
use crate::telemetry::metrics::UpstreamErrorKind;
use crate::upstream::Pool;

/// What the gateway knows about one request; created in `new_ctx`.
pub struct RequestCtx {
    /// The config this request is served under, from start to end.
    pub snapshot: Arc<Snapshot>,
    pub started: Instant,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub routed: Option<Routed>,
    pub upstream: UpstreamState,
    /// Present when this request is mirrored to the other version.
    pub shadow: Option<super::shadow_capture::ShadowCapture>,
    _in_flight: InFlight,
}

/// The outcome of routing: which route, which version and why, which pool.
pub struct Routed {
    pub route_index: usize,
    pub decision: Decision,
    pub pool: Arc<Pool>,
    pub user_id: Option<String>,
}

#[derive(Default)]
pub struct UpstreamState {
    /// Backends tried for this request, in order; the last one is current.
    pub tried: Vec<SocketAddr>,
    pub error: Option<UpstreamErrorKind>,
    /// The canary could not be reached and the request went to stable instead.
    pub failed_over: bool,
    /// A fallback page answered (or will replace the upstream's 5xx answer).
    pub fallback: Option<FallbackCause>,
}

impl RequestCtx {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        let in_flight = InFlight::new(&snapshot);
        Self {
            snapshot,
            started: Instant::now(),
            request_id: String::new(),
            client_ip: None,
            routed: None,
            upstream: UpstreamState::default(),
            shadow: None,
            _in_flight: in_flight,
        }
    }
}

/// Counts the request in `gateway_requests_in_flight` for exactly its lifetime;
/// the drain on shutdown waits for this gauge to reach zero.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(snapshot: &Snapshot) -> Self {
        let g = snapshot.metrics.in_flight.clone();
        g.inc();
        Self(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
