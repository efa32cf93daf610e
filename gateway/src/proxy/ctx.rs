//! Per-request state, grouped by concern.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::control::snapshot::Snapshot;
use crate::pipeline::failure::UpstreamState;
use crate::pipeline::{AnswerReason, Routed};

/// What the gateway knows about one request; created in `new_ctx`.
pub struct RequestCtx {
    /// The config this request is served under, from start to end.
    pub snapshot: Arc<Snapshot>,
    pub started: Instant,
    pub request_id: super::request_id::RequestId,
    pub client_ip: Option<IpAddr>,
    pub routed: Option<Routed>,
    /// Why the gateway answered itself, when it did.
    pub answered: Option<AnswerReason>,
    pub upstream: UpstreamState,
    /// Present when this request is mirrored to the other version. Boxed:
    /// the capture is most of the context's size, and most requests are not
    /// mirrored, so the context Pingora moves around stays small.
    pub shadow: Option<Box<super::shadow_capture::ShadowCapture>>,
    /// Present for a request the route caches. Boxed, like the shadow capture.
    pub cache: Option<Box<super::cached::CacheCtx>>,
    _in_flight: InFlight,
}

impl RequestCtx {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        let in_flight = InFlight::new(&snapshot);
        Self {
            snapshot,
            started: Instant::now(),
            request_id: super::request_id::RequestId::default(),
            client_ip: None,
            routed: None,
            answered: None,
            upstream: UpstreamState::default(),
            shadow: None,
            cache: None,
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
