//! The proxy's side of `[routes.cache]`: writing a copy, filling the cache
//! from the upstream's answer, and finding a stale copy when the upstream
//! fails (before the fallback page).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;

use crate::cache::{self, CacheFill, CacheOutcome, CachedResponse};
use crate::control::snapshot::Snapshot;
use crate::pipeline::Routed;

/// A cacheable request on its way to the upstream.
pub struct CacheCtx {
    pub key: u128,
    /// Becomes the stored answer if the upstream's answer may be kept.
    pub fill: Option<CacheFill>,
    /// How far past its freshness a copy may answer after a failure.
    pub stale_if_error: Option<Duration>,
    /// The copy answering instead of the upstream's 5xx.
    pub stale: Option<Arc<CachedResponse>>,
}

impl CacheCtx {
    /// For a request the route caches, on its way to the upstream. Built
    /// from the request as the pipeline saw it (before the gateway's own
    /// headers are removed), so its key is the one the lookup used.
    pub fn start(
        snapshot: &Snapshot,
        routed: &Routed,
        req: &pingora_http::RequestHeader,
        tls: bool,
    ) -> Option<CacheCtx> {
        let spec = routed.route.spec.cache.as_ref()?;
        if !cache::policy::request_cacheable(spec, &req.method, &req.headers) {
            return None;
        }
        let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri.host());
        let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let name = &routed.route.spec.name;
        let parts = cache::KeyParts { route: name, version: routed.version_name(), tls, host, path_and_query };
        let key = cache::key(&parts, &req.headers, spec);
        let limit = cache::entry_limit(snapshot.cache.store.max_bytes());
        let fill = (req.method == http::Method::GET).then(|| CacheFill::start(key, name, req.uri.path(), spec, limit));
        Some(CacheCtx { key, fill, stale_if_error: spec.stale_if_error, stale: None })
    }

    /// A copy that may answer after an upstream failure: fresh, or stale by at most `stale_if_error`.
    pub fn stale_copy(&self, snapshot: &Snapshot) -> Option<Arc<CachedResponse>> {
        let window = self.stale_if_error?;
        let copy = snapshot.cache.store.get(self.key, false)?;
        (copy.age(SystemTime::now()) <= copy.fresh_for.saturating_add(window)).then_some(copy)
    }
}

/// The copy's head as the client gets it: the stored headers, its age, and how it was served.
pub fn copy_header(
    copy: &CachedResponse,
    outcome: CacheOutcome,
    request_id: &str,
) -> pingora_error::Result<ResponseHeader> {
    let mut header = ResponseHeader::build(copy.status, Some(copy.headers.len() + 4))?;
    for (name, value) in &copy.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, copy.body.len().to_string())?;
    header.insert_header(http::header::AGE, copy.age(SystemTime::now()).as_secs().to_string())?;
    header.insert_header("x-gateway-cache", outcome.as_str())?;
    if !request_id.is_empty() {
        header.insert_header("x-request-id", request_id)?;
    }
    Ok(header)
}

/// Write a copy as the whole answer.
pub async fn write(
    session: &mut ServerSession,
    copy: &CachedResponse,
    outcome: CacheOutcome,
    request_id: &str,
    routed: &Routed,
    version_header: Option<&http::HeaderName>,
) -> pingora_error::Result<()> {
    let mut header = copy_header(copy, outcome, request_id)?;
    if let Some(name) = version_header {
        header.insert_header(name.clone(), routed.route.version_value(routed.decision.version).clone())?;
    }
    // A new anonymous visitor gets its cookie with this answer (never stored with the copy).
    if let Some(cookie) = &routed.set_cookie {
        header.append_header(http::header::SET_COOKIE, cookie.clone())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(header)).await?;
    if !head_only {
        session.write_response_body(copy.body.clone(), true).await?;
    }
    Ok(())
}

/// At the end of an upstream answer: keep it if it may be kept.
pub fn finish_fill(snapshot: &Snapshot, fill: CacheFill) {
    if let Some((key, entry)) = fill.finish() {
        snapshot.cache.store.insert(key, entry);
        snapshot.cache.update_gauges();
    }
}
