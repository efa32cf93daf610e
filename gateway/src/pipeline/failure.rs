//! Everything that happens when an upstream fails, in one place: retries on
//! another backend, canary failover to the default version, the fallback
//! page that replaces a failure, and the error accounting (each failure
//! counted once, in `gateway_upstream_errors_total` and, when a page
//! answered, in `gateway_fallback_responses_total`).

use std::net::SocketAddr;
use std::sync::Arc;

use pingora_error::{Error, ErrorSource, ErrorType};

use crate::config::FallbackCause;
use crate::proxy::respond::LocalResponse;
use crate::telemetry::metrics::{Metrics, UpstreamErrorKind};

use super::verdict::Routed;

/// Backends tried per request: the first plus one retry on connect failure
/// (one more when a canary failure moved the request to the default version).
const MAX_ATTEMPTS: usize = 2;

/// The upstream side of one request.
#[derive(Default)]
pub struct UpstreamState {
    /// Backends tried for this request, in order; the last one is current.
    /// Inline: at most [`MAX_ATTEMPTS`] and a failover, and no allocation per request.
    pub tried: smallvec::SmallVec<[SocketAddr; 3]>,
    pub error: Option<UpstreamErrorKind>,
    /// The canary could not be reached and the request went to the default version instead.
    pub failed_over: bool,
    /// A fallback page answered (or will replace the upstream's 5xx answer).
    pub fallback: Option<FallbackCause>,
    /// Where the request stands with the one retry a dead pooled connection
    /// allows ([`pooled_connection_lost`]).
    pub pooled_loss: PooledLoss,
}

/// A pooled upstream connection died with the request on it, before any
/// answer: see [`pooled_connection_lost`].
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub enum PooledLoss {
    #[default]
    None,
    /// The request goes again; the next backend chosen may be one tried.
    Retrying,
    /// It went again: no further retry for a dead pooled connection.
    Retried,
}

/// An idempotent request was lost with a pooled connection before any
/// answer (the backend closed it as it was reused). The connection failed,
/// not the backend, so the request may go again, once, to any backend of
/// the pool, the one tried included (`exchange::next_peer`). Once only: a
/// backend that reads requests and drops their connections must not get
/// the same request on each of its pooled connections. Both request paths
/// ask here; the caller decides idempotency first.
pub fn pooled_connection_lost(state: &mut UpstreamState) -> bool {
    if state.pooled_loss != PooledLoss::None {
        return false;
    }
    state.pooled_loss = PooledLoss::Retrying;
    true
}

/// No backend of the pool is left to try: counted, and the error Pingora gets.
pub fn no_backend(metrics: &Metrics, routed: &Routed, state: &mut UpstreamState) -> Box<Error> {
    let kind = if state.tried.is_empty() { UpstreamErrorKind::NoHealthyBackend } else { UpstreamErrorKind::Connect };
    state.error = Some(kind);
    let pool = routed.pool();
    metrics.upstream_error(&pool.name, UpstreamErrorKind::NoHealthyBackend);
    Error::explain(ErrorType::HTTPStatus(503), format!("no healthy backend left in pool {}", pool.name))
}

/// A connection to a backend failed: count it, and say whether to try again
/// (another backend of the pool, or the default version for a canary).
pub fn connect_failed(
    metrics: &Metrics,
    routed: &mut Routed,
    state: &mut UpstreamState,
    etype: &ErrorType,
    idempotent: bool,
) -> bool {
    let kind = match etype {
        ErrorType::ConnectTimedout => UpstreamErrorKind::Timeout,
        _ => UpstreamErrorKind::Connect,
    };
    state.error = Some(kind);
    metrics.upstream_error(&routed.pool().name, kind);
    let route = &routed.route;
    let default = route.plan.default;
    let failover = route.spec.fallback.as_ref().is_some_and(|f| f.canary_failover);
    if failover && idempotent && routed.decision.version != default && !state.failed_over {
        // The canary is the experiment; the default is known to work. Nothing was sent yet.
        tracing::info!(route = %route.spec.name, version = routed.version_name(), "canary unreachable; retrying on the default version");
        routed.decision.version = default;
        state.failed_over = true;
        return true;
    }
    // Nothing reached the backend, so any method may go to another one.
    let limit = MAX_ATTEMPTS + usize::from(state.failed_over);
    let another = routed.pool().backends.iter().any(|b| !state.tried.contains(&b.addr));
    state.tried.len() < limit && another
}

/// The upstream answered with `status`: a 5xx is counted, and marked for
/// replacement when the route's fallback covers it.
pub fn upstream_status(metrics: &Metrics, routed: &Routed, state: &mut UpstreamState, status: u16) {
    if !(500..600).contains(&status) {
        return;
    }
    metrics.upstream_error(&routed.pool().name, UpstreamErrorKind::Status5xx);
    if routed.route.fallback_page(FallbackCause::Status5xx).is_some() {
        state.fallback = Some(FallbackCause::Status5xx);
    }
}

/// The page that replaces an upstream 5xx answer, when the route asks for it.
pub fn replacement<'a>(routed: Option<&'a Routed>, state: &UpstreamState) -> Option<&'a Arc<LocalResponse>> {
    if state.fallback != Some(FallbackCause::Status5xx) {
        return None;
    }
    routed?.route.fallback_page(FallbackCause::Status5xx)
}

/// The request could not be proxied: the route's fallback page for the
/// cause, or the gateway's own error page. Counted here, once.
pub fn proxy_failed(
    metrics: &Metrics,
    routed: Option<&Routed>,
    state: &mut UpstreamState,
    e: &Error,
    framing_refused: bool,
) -> Option<Arc<LocalResponse>> {
    let cause = failure_cause(e, state);
    if cause == Some(FallbackCause::Timeout) && state.error.is_none() {
        state.error = Some(UpstreamErrorKind::Timeout);
        if let Some(r) = routed {
            metrics.upstream_error(&r.pool().name, UpstreamErrorKind::Timeout);
        }
    }
    let fallback = cause.and_then(|cause| {
        let routed = routed?;
        let page = routed.route.fallback_page(cause)?;
        routed.route.metrics.fallback(cause);
        state.fallback = Some(cause);
        Some(Arc::clone(page))
    });
    fallback.or_else(|| error_page(e, framing_refused).map(Arc::new))
}

/// An upstream failure answered without a fallback page (a cached copy
/// stood in): the error is still accounted for once.
pub fn upstream_failed(metrics: &Metrics, routed: &Routed, state: &mut UpstreamState, e: &Error) {
    if failure_cause(e, state) == Some(FallbackCause::Timeout) && state.error.is_none() {
        state.error = Some(UpstreamErrorKind::Timeout);
        metrics.upstream_error(&routed.pool().name, UpstreamErrorKind::Timeout);
    }
}

/// At the end of a request: a 5xx replaced by the fallback page is counted
/// once the replacement went out.
pub fn finish(routed: Option<&Routed>, state: &UpstreamState) {
    if let (Some(FallbackCause::Status5xx), Some(r)) = (state.fallback, routed) {
        r.route.metrics.fallback(FallbackCause::Status5xx);
    }
}

/// What went wrong, in the words of `fallback.on`.
fn failure_cause(e: &Error, state: &UpstreamState) -> Option<FallbackCause> {
    // The client's own failures (a late body, a reset) are not the backend's.
    if e.esource() == &ErrorSource::Downstream {
        return None;
    }
    match e.etype() {
        ErrorType::HTTPStatus(503) if state.error == Some(UpstreamErrorKind::NoHealthyBackend) => {
            Some(FallbackCause::NoHealthyBackend)
        }
        // Retries ran out on connect failures: no backend could be reached.
        ErrorType::HTTPStatus(503) => Some(FallbackCause::ConnectError),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(FallbackCause::Timeout),
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure => Some(FallbackCause::ConnectError),
        // The backend went away mid-exchange (killed, reset): no answer came.
        _ if e.esource() == &ErrorSource::Upstream => Some(FallbackCause::ConnectError),
        _ => None,
    }
}

/// The gateway's own small page for a failure no fallback covers.
fn error_page(e: &Error, framing_refused: bool) -> Option<LocalResponse> {
    let (code, title, detail) = match e.etype() {
        // `server.body_timeout` passed between two reads of the client's body.
        ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => {
            (408, "Request Timeout", "The request body did not arrive in time.")
        }
        ErrorType::HTTPStatus(503) => {
            (503, "Service Unavailable", "No healthy backend can take this request right now.")
        }
        ErrorType::HTTPStatus(code) => (*code, "Error", "The request could not be served."),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            (504, "Gateway Timeout", "The backend did not answer in time.")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "Bad Gateway", "The backend could not be reached."),
            ErrorSource::Downstream => match e.etype() {
                // The body's chunked framing was refused as it was read.
                ErrorType::ReadError if framing_refused => {
                    (400, "Bad Request", "The request body's chunked framing is invalid.")
                }
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => return None,
                _ => (400, "Bad Request", "The request could not be read."),
            },
            _ => (500, "Internal Server Error", "The gateway failed to serve this request."),
        },
    };
    Some(LocalResponse::page(code, title, detail))
}
