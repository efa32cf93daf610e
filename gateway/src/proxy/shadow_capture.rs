//! Capturing what a shadow needs while the client's request is proxied:
//! the request as sent upstream, its body (up to `max_body`), and the
//! primary's answer (up to the diff's size cap). Nothing here waits; the
//! shadow itself starts after the client has its answer (`logging`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::ShadowSpec;
use crate::control::snapshot::Snapshot;
use crate::shadow::engine::ShadowEngine;
use crate::shadow::mirror::ShadowJob;
use crate::shadow::Answer;

use crate::pipeline::Routed;

pub struct ShadowCapture {
    spec: Arc<ShadowSpec>,
    request: Option<RequestHeader>,
    body: Vec<u8>,
    body_too_large: bool,
    sent_at: Option<Instant>,
    status: u16,
    headers: Vec<(String, String)>,
    response: Vec<u8>,
    response_truncated: bool,
    response_done: bool,
}

/// Whether this request is mirrored: the route shadows, the method is listed,
/// and the request falls in the sampled share. A slot of the route's
/// `max_in_flight` is taken only in [`ShadowCapture::finish`], once the
/// client's request has fully arrived and been answered, so slow clients
/// cannot hold the slots.
pub fn start(_snapshot: &Snapshot, routed: &Routed, method: &http::Method, request_id: &str) -> Option<ShadowCapture> {
    let route = &routed.route.spec;
    let spec = route.shadow.as_ref()?;
    if !spec.methods.contains(method) {
        return None;
    }
    // Sampled by request id: random ids give an unbiased share, and a retried
    // request (same id) is treated the same way.
    if (xxh3_64(request_id.as_bytes()) % 10_000) as u32 >= spec.basis_points {
        return None;
    }
    routed.route.metrics.shadow.as_ref()?;
    Some(ShadowCapture {
        spec: Arc::clone(spec),
        request: None,
        body: Vec::new(),
        body_too_large: false,
        sent_at: None,
        status: 0,
        headers: Vec::new(),
        response: Vec::new(),
        response_truncated: false,
        response_done: false,
    })
}

impl ShadowCapture {
    pub fn request_sent(&mut self, req: &RequestHeader) {
        self.request = Some(req.clone());
        self.sent_at = Some(Instant::now());
    }

    pub fn request_body(&mut self, chunk: &Option<Bytes>) {
        if self.body_too_large {
            return;
        }
        if let Some(c) = chunk {
            if self.body.len() + c.len() > self.spec.max_body {
                self.body_too_large = true;
                self.body = Vec::new();
            } else {
                self.body.extend_from_slice(c);
            }
        }
    }

    pub fn response_header(&mut self, resp: &ResponseHeader) {
        self.status = resp.status.as_u16();
        self.headers = resp
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
    }

    pub fn response_body(&mut self, chunk: &Option<Bytes>, end_of_stream: bool) {
        let cap = self.spec.diff.max_compare_body.saturating_add(1);
        if let Some(c) = chunk {
            let take = c.len().min(cap.saturating_sub(self.response.len()));
            self.response.extend_from_slice(&c[..take]);
            self.response_truncated |= take < c.len();
        }
        self.response_done |= end_of_stream;
    }

    /// Hand the capture to the engine once the client has its answer.
    /// A failed or partial primary exchange is not compared (counted `skipped`).
    pub fn finish(self, engine: &Arc<ShadowEngine>, snapshot: &Snapshot, routed: &Routed, failed: bool) {
        let route = &routed.route.spec;
        let Some(metrics) = routed.route.metrics.shadow.clone() else { return };
        if self.body_too_large {
            metrics.outcome("skipped_body_too_large");
            return;
        }
        let (Some(request), Some(sent_at)) = (self.request, self.sent_at) else {
            metrics.outcome("skipped");
            return;
        };
        if failed || self.status == 0 || !self.response_done {
            metrics.outcome("skipped");
            return;
        }
        // Everything is compared against one version (`against`); its own
        // requests are compared with the first other version.
        let primary_version = routed.decision.version;
        let against = route.shadow_against;
        let other_version = match primary_version == against {
            true => (0..route.versions.len()).find(|v| *v != against),
            false => Some(against),
        };
        let Some(other_version) = other_version else {
            metrics.outcome("skipped");
            return;
        };
        let own_pool = routed.route.pool(primary_version);
        let other_pool = routed.route.pool(other_version);
        let request_id = request.headers.get("x-request-id").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        let noise_copy = self.spec.noise_check > 0.0
            && (xxh3_64(&[request_id.as_slice(), b"noise"].concat()) % 10_000) as f64 / 10_000.0
                < self.spec.noise_check;
        let job = ShadowJob {
            route: route.name.clone(),
            spec: Arc::clone(&self.spec),
            request,
            body: Bytes::from(self.body),
            primary_version,
            other_version,
            primary_is_baseline: primary_version == against,
            primary_name: routed.version_name().to_string(),
            lane_header: snapshot.config.server.version_request_header.clone(),
            other_lane: routed.route.version_value(other_version).clone(),
            own_lane: routed.route.version_value(primary_version).clone(),
            primary: Answer {
                status: self.status,
                headers: self.headers,
                body: Bytes::from(self.response),
                latency: sent_at.elapsed(),
                body_truncated: self.response_truncated,
            },
            other_pool: Arc::clone(other_pool),
            own_pool: Arc::clone(own_pool),
            noise_copy,
            metrics: Arc::clone(&metrics),
            max_stored_body: snapshot.config.startup.shadow_store.max_stored_body,
        };
        let Some(reservation) = engine.reserve(&route.name, self.spec.max_in_flight) else {
            metrics.outcome("dropped");
            return;
        };
        if !engine.submit(job, reservation) {
            metrics.outcome("dropped");
        }
    }
}
