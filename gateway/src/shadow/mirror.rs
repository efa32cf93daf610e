//! One shadow: send the captured request to the other version (and, for the
//! `noise_check` share, again to the primary's own version), compare, count,
//! store. Runs on the shadow engine's runtime after the client has its answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;

use crate::config::ShadowSpec;
use crate::telemetry::metrics::ShadowMetrics;
use crate::upstream::Pool;

use super::engine::{Reservation, ShadowEngine};
use super::{body_text, diff, Answer, DiffRecord, FieldClass, FieldDiff, StoredDiff};

/// Everything a shadow needs, captured from the client's request and answer.
pub struct ShadowJob {
    pub route: String,
    pub spec: Arc<ShadowSpec>,
    pub request: RequestHeader,
    pub body: Bytes,
    /// Indexes into the route's versions: the one that answered the client,
    /// and the one the request is mirrored to.
    pub primary_version: usize,
    pub other_version: usize,
    /// The client's version is `against`: it is the record's `stable` side.
    pub primary_is_baseline: bool,
    pub primary_name: String,
    /// `server.version_request_header`, and its value for the other version
    /// and for the primary's own (the noise check). A lane's value is its
    /// version's name, which is how the record names the other side.
    pub lane_header: Option<http::HeaderName>,
    pub other_lane: HeaderValue,
    pub own_lane: HeaderValue,
    pub primary: Answer,
    /// The pool of the version not chosen for the client.
    pub other_pool: Arc<Pool>,
    /// The primary's own pool, for the noise check.
    pub own_pool: Arc<Pool>,
    pub noise_copy: bool,
    pub metrics: Arc<ShadowMetrics>,
    pub max_stored_body: usize,
}

#[derive(Debug)]
enum Failure {
    Timeout,
    Error(String),
}

/// Run one shadow. The route's `max_in_flight` slot (`reservation`) is given
/// back before the outcome is counted: once a shadow shows in
/// `gateway_shadow_requests_total`, its slot is free for the next request.
/// Counting first left a moment in which a shadow was counted as done while
/// the next one was still dropped for want of its slot.
pub async fn run_job(engine: &ShadowEngine, job: ShadowJob, reservation: Reservation) {
    let other_version = job.other_version;
    let other = send(engine, &job, &job.other_pool, &job.other_lane).await;
    if let Ok(a) = &other {
        job.metrics.latency(other_version, a.latency.as_secs_f64());
    }
    let second = if job.noise_copy { Some(send(engine, &job, &job.own_pool, &job.own_lane).await) } else { None };

    let (outcome, diffs, other_answer) = match other {
        Err(Failure::Timeout) => ("timeout", Vec::new(), Answer::default()),
        Err(Failure::Error(e)) => {
            tracing::debug!(route = %job.route, error = %e, "shadow request failed");
            ("error", Vec::new(), Answer::default())
        }
        Ok(answer) => {
            let (stable, canary) = match job.primary_is_baseline {
                true => (&job.primary, &answer),
                false => (&answer, &job.primary),
            };
            let cross = diff(stable, canary, &job.spec.diff);
            engine.noise.record_cross(&job.route, &cross);
            if let Some(Ok(again)) = &second {
                let same = diff(&job.primary, again, &job.spec.diff);
                engine.noise.record_same(&job.route, &same);
            }
            let stored = classify(engine, &job.route, cross);
            let outcome = if stored.is_empty() {
                "identical"
            } else if stored.iter().all(|d| d.noise) {
                "noise-only"
            } else {
                "different"
            };
            (outcome, stored, answer)
        }
    };
    drop(reservation);
    job.metrics.outcome(outcome);
    let record = record(&job, outcome, diffs, &other_answer);
    engine.save(record);
}

fn classify(engine: &ShadowEngine, route: &str, diffs: Vec<FieldDiff>) -> Vec<StoredDiff> {
    diffs
        .into_iter()
        .map(|d| {
            let noise = engine.noise.classify(route, &d.path) == FieldClass::Noise;
            StoredDiff { path: d.path, stable: d.stable, canary: d.canary, noise }
        })
        .collect()
}

fn record(job: &ShadowJob, outcome: &str, diffs: Vec<StoredDiff>, other: &Answer) -> DiffRecord {
    let (stable, canary) = match job.primary_is_baseline {
        true => (&job.primary, other),
        false => (other, &job.primary),
    };
    // Version names are ASCII letters, digits, '_' and '-' (checked at load).
    let other_name = job.other_lane.to_str().unwrap_or("?").to_string();
    let (stable_version, canary_version) = match job.primary_is_baseline {
        true => (job.primary_name.clone(), other_name),
        false => (other_name, job.primary_name.clone()),
    };
    let header = |name: &str| job.request.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let request_headers = job
        .request
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let path = job.request.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    DiffRecord {
        id: 0,
        at_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
        route: job.route.clone(),
        request_id: header("x-request-id"),
        method: job.request.method.as_str().to_string(),
        path,
        primary: job.primary_name.clone(),
        stable_version,
        canary_version,
        stable_status: stable.status,
        canary_status: canary.status,
        stable_latency_ms: stable.latency.as_secs_f64() * 1000.0,
        canary_latency_ms: canary.latency.as_secs_f64() * 1000.0,
        outcome: outcome.to_string(),
        weight: 1,
        diffs,
        request_headers,
        request_body: body_text(&job.body, job.max_stored_body),
        stable_body: body_text(&stable.body, job.max_stored_body),
        canary_body: body_text(&canary.body, job.max_stored_body),
    }
}

async fn send(engine: &ShadowEngine, job: &ShadowJob, pool: &Pool, lane: &HeaderValue) -> Result<Answer, Failure> {
    match tokio::time::timeout(job.spec.timeout, exchange(engine, job, pool, lane)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

/// One HTTP exchange with a backend of `pool`, over the engine's own pool of
/// upstream connections. The body is the exact bytes the client sent.
async fn exchange(engine: &ShadowEngine, job: &ShadowJob, pool: &Pool, lane: &HeaderValue) -> Result<Answer, Failure> {
    let backend =
        pool.select(|_| false).ok_or_else(|| Failure::Error(format!("no healthy backend in {}", pool.name)))?;
    let mut peer = HttpPeer::new(backend.addr, false, String::new());
    peer.options.connection_timeout = Some(pool.connect_timeout);
    peer.options.read_timeout = Some(job.spec.timeout);
    let started = Instant::now();
    let (mut session, _reused) =
        engine.connector.get_http_session(&peer).await.map_err(|e| Failure::Error(e.to_string()))?;

    let mut req = job.request.clone();
    let (marker_name, marker_value) = &job.spec.marker;
    let _ = req.insert_header(marker_name.clone(), marker_value.clone());
    if let Some(name) = &job.lane_header {
        // The copy travels in the lane of the version it is sent to.
        let _ = req.insert_header(name.clone(), lane.clone());
    }
    let _ = req.remove_header(&http::header::TRANSFER_ENCODING);
    if !job.body.is_empty() || req.headers.contains_key(http::header::CONTENT_LENGTH) {
        let _ = req.insert_header(http::header::CONTENT_LENGTH, job.body.len().to_string());
    }
    let err = |e: Box<pingora_error::Error>| Failure::Error(e.to_string());
    session.write_request_header(Box::new(req)).await.map_err(err)?;
    if !job.body.is_empty() {
        session.write_request_body(job.body.clone(), true).await.map_err(err)?;
    }
    session.finish_request_body().await.map_err(err)?;
    session.read_response_header().await.map_err(err)?;
    let (status, headers) = match session.response_header() {
        Some(h) => (
            h.status.as_u16(),
            h.headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect::<Vec<_>>(),
        ),
        None => return Err(Failure::Error("no response header".into())),
    };
    let cap = job.spec.diff.max_compare_body.saturating_add(1);
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = session.read_response_body().await.map_err(err)? {
        if body.len() < cap {
            let take = chunk.len().min(cap - body.len());
            body.extend_from_slice(&chunk[..take]);
            truncated |= take < chunk.len();
        } else {
            truncated = true;
        }
    }
    let latency = started.elapsed();
    engine.connector.release_http_session(session, &peer, Some(Duration::from_secs(60))).await;
    Ok(Answer { status, headers, body: Bytes::from(body), latency, body_truncated: truncated })
}
