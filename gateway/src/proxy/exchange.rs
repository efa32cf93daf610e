//! What happens to a proxied request apart from reading and writing it:
//! the pipeline's verdict, the headers the upstream and the client get, the
//! failure handling, metrics and the access log. Both request paths call
//! these functions: Pingora's (`GatewayProxy`, the `ProxyHttp` hooks) and
//! the lean HTTP/1 path (`lean/`), so a request is judged, rewritten,
//! counted and logged the same way whichever path serves it.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use super::request_id::RequestId;
use super::{cached, request_head, shadow_capture, RequestCtx};
use crate::cache::{CacheOutcome, CachedResponse};
use crate::control::runtime::RuntimeState;
use crate::edge::client_ip;
use crate::pipeline::failure::PooledLoss;
use crate::pipeline::{self, failure, LocalAnswer, Mode, RequestFacts, Verdict};
use crate::proxy::respond::LocalResponse;
use crate::shadow::engine::ShadowEngine;

/// What the gateway does with a request once its head is read.
pub enum Begin {
    /// Proxy it: `ctx.routed` holds the route and version.
    Proxy,
    /// Answer with a page; `close`: without keep-alive (a malformed request).
    Page { page: Arc<LocalResponse>, retry_after: Option<u64>, close: bool },
    /// Answer with a cached copy.
    Copy { copy: Arc<CachedResponse>, outcome: CacheOutcome },
}

/// Judge a request: its client, its id, its head, then the pipeline
/// (blacklist, route, version, redirect, degrade, rate limits, cache).
/// `req` is the client's head; what a client may not control is removed
/// from it when the request is to be proxied.
pub fn begin(runtime: &RuntimeState, req: &mut RequestHeader, peer: IpAddr, tls: bool, ctx: &mut RequestCtx) -> Begin {
    let snapshot = Arc::clone(&ctx.snapshot);
    let server = &snapshot.config.server;
    let ip = client_ip::resolve(peer, &req.headers, &snapshot.config.client_ip.trusted_proxies);
    ctx.client_ip = Some(ip);
    ctx.request_id = request_id_of(req);
    if let Err(page) = request_head::check(req, server.normalize_path) {
        ctx.answered = Some(pipeline::AnswerReason::BadRequest);
        return Begin::Page { page: Arc::new(page), retry_after: None, close: true };
    }
    let host = req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri.host());
    let facts = RequestFacts {
        method: &req.method,
        host,
        path: req.uri.path(),
        query: req.uri.query(),
        path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &req.headers,
        client_ip: ip,
        tls,
        now: unix_now(),
    };
    match pipeline::run(&snapshot, runtime, &facts, Mode::Serve) {
        Verdict::Continue(routed) => {
            // Keyed on the request as the pipeline saw it, before the gateway's own headers go.
            ctx.cache = cached::CacheCtx::start(&snapshot, &routed, req, tls).map(Box::new);
            strip_client_controls(req, &snapshot, &routed);
            ctx.shadow = shadow_capture::start(&snapshot, &routed, &req.method, &ctx.request_id).map(Box::new);
            ctx.routed = Some(routed);
            Begin::Proxy
        }
        Verdict::Respond(LocalAnswer { reason, page, retry_after, routed, copy }) => {
            if reason == pipeline::AnswerReason::Degraded {
                ctx.upstream.fallback = Some(crate::config::FallbackCause::Degraded);
            }
            ctx.routed = routed;
            if let (Some(copy), pipeline::AnswerReason::Cache(outcome), Some(r)) = (copy, &reason, &ctx.routed) {
                snapshot.cache.count(&r.route.spec.name, r.version_name(), *outcome);
                let outcome = *outcome;
                ctx.answered = Some(reason);
                return Begin::Copy { copy, outcome };
            }
            ctx.answered = Some(reason);
            Begin::Page { page, retry_after, close: false }
        }
    }
}

/// The next backend to try for the routed version.
pub fn next_peer(ctx: &mut RequestCtx) -> Result<Arc<HttpPeer>> {
    let Some(routed) = &ctx.routed else {
        return Err(Error::explain(ErrorType::InternalError, "upstream_peer without a route"));
    };
    let pool = routed.pool();
    // After a dead pooled connection, any backend may take the request again.
    let any = ctx.upstream.pooled_loss == PooledLoss::Retrying;
    if any {
        ctx.upstream.pooled_loss = PooledLoss::Retried;
    }
    let tried = &ctx.upstream.tried;
    let Some(backend) = pool.select(|addr| !any && tried.contains(&addr)) else {
        return Err(failure::no_backend(&ctx.snapshot.metrics, routed, &mut ctx.upstream));
    };
    ctx.upstream.tried.push(backend.addr);
    Ok(Arc::clone(&backend.peer))
}

/// A connection to a backend failed: counted; marked for a retry when
/// another backend (or the default version) may take the request.
pub fn connect_failed(ctx: &mut RequestCtx, idempotent: bool, peer: &HttpPeer, mut e: Box<Error>) -> Box<Error> {
    let Some(routed) = ctx.routed.as_mut() else { return e };
    if failure::connect_failed(&ctx.snapshot.metrics, routed, &mut ctx.upstream, e.etype(), idempotent) {
        tracing::debug!(peer = %peer, "connect failed; retrying");
        e.set_retry(true);
    }
    e
}

/// The fields the gateway sets on a request on its way upstream, decided
/// once for both ways of writing them: inserted into the head
/// ([`upstream_request`]) or spliced in as the head is written (`lean/`).
pub struct UpstreamFields {
    /// The client's `X-Forwarded-For` entries with the peer appended: kept
    /// inline when short (a client that sent none: the peer alone), since
    /// the lean path splices the bytes and needs no `HeaderValue`.
    pub forwarded_for: ForwardedFor,
    pub proto: HeaderValue,
    /// `server.version_request_header` (as written) and the routed version.
    pub lane: Option<(Bytes, HeaderValue)>,
}

impl UpstreamFields {
    pub fn new(req: &RequestHeader, peer: IpAddr, tls: bool, ctx: &RequestCtx) -> Self {
        let forwarded_for = forwarded_for(req.headers.get_all(&X_FORWARDED_FOR), peer);
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        let lane = match (&ctx.snapshot.header_names.lane, &ctx.routed) {
            // The client's own value was removed in `strip_client_controls`.
            (Some(name), Some(routed)) => {
                Some((name.clone(), routed.route.version_value(routed.decision.version).clone()))
            }
            _ => None,
        };
        Self { forwarded_for, proto, lane }
    }
}

/// The request head as the upstream gets it: the request id,
/// `X-Forwarded-For` and `-Proto`, the version lane header.
pub fn upstream_request(req: &mut RequestHeader, peer: IpAddr, tls: bool, ctx: &mut RequestCtx) -> Result<()> {
    if request_id_to_set(req, ctx).is_some() {
        // Printable ASCII (`RequestId`): always a valid header value.
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
    }
    let fields = UpstreamFields::new(req, peer, tls, ctx);
    // Names go in as `&'static str`, or as `Bytes` made at load for the
    // configured ones: given a `HeaderName`, Pingora would title-case a
    // copy of it on every request.
    let forwarded_for = HeaderValue::from_bytes(&fields.forwarded_for)
        // Unreachable: the client's entries were already header values.
        .or_err(ErrorType::InvalidHTTPHeader, "X-Forwarded-For is not a header value")?;
    req.insert_header("x-forwarded-for", forwarded_for)?;
    req.insert_header("x-forwarded-proto", fields.proto)?;
    if let Some((name, value)) = fields.lane {
        req.insert_header(name, value)?;
    }
    if let Some(capture) = ctx.shadow.as_mut() {
        capture.request_sent(req);
    }
    Ok(())
}

/// A chunk of the client's body on its way upstream.
pub fn request_body(body: &Option<Bytes>, ctx: &mut RequestCtx) {
    if let Some(capture) = ctx.shadow.as_mut() {
        capture.request_body(body);
    }
}

/// The upstream's answer head, before anything is changed in it: counted,
/// captured, offered to the cache. An `Err` means a cached copy stands in
/// for this 5xx (see [`failed`]).
pub fn upstream_response(resp: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    if let Some(capture) = ctx.shadow.as_mut() {
        capture.response_header(resp);
    }
    upstream_status(resp.status.as_u16(), ctx);
    if let Some(c) = ctx.cache.as_mut() {
        let status = resp.status.as_u16();
        if let Some(fill) = c.fill.as_mut() {
            match ctx.upstream.failed_over {
                // The default version answered for the one routed to: not that version's copy.
                true => fill.cancel(),
                false => fill.head(status, &resp.headers),
            }
        }
        // A 5xx with a copy to stand in: the copy goes out instead, with its own framing.
        if status >= 500 {
            c.stale = c.stale_copy(&ctx.snapshot);
            if c.stale.is_some() {
                return Error::e_explain(ErrorType::HTTPStatus(status), "the upstream failed; a cached copy stands in");
            }
        }
    }
    Ok(())
}

/// The upstream's answer status, counted: all that [`upstream_response`]
/// does for an answer the lean path reads itself (no capture, no cache).
pub fn upstream_status(status: u16, ctx: &mut RequestCtx) {
    if let Some(routed) = &ctx.routed {
        failure::upstream_status(&ctx.snapshot.metrics, routed, &mut ctx.upstream, status);
    }
}

/// The fields the gateway adds to an upstream's answer, decided once for
/// both ways of writing them: inserted into the head ([`response`]) or
/// spliced in as the head is written (`lean/`).
pub struct AnswerFields<'a> {
    /// `X-Gateway-Cache: miss`: the route caches, and this answer is the upstream's.
    pub cache_miss: bool,
    /// `server.version_header` (as written) and the version that answered.
    pub version: Option<(&'a Bytes, &'a HeaderValue)>,
    /// A new anonymous visitor's cookie.
    pub cookie: Option<&'a HeaderValue>,
}

impl<'a> AnswerFields<'a> {
    pub fn new(ctx: &'a RequestCtx) -> Self {
        let routed = ctx.routed.as_ref();
        let version = match (&ctx.snapshot.header_names.version, routed) {
            (Some(name), Some(r)) => Some((name, r.route.version_value(r.decision.version))),
            _ => None,
        };
        Self {
            cache_miss: ctx.cache.as_ref().is_some_and(|c| c.stale.is_none()),
            version,
            cookie: routed.and_then(|r| r.set_cookie.as_ref()),
        }
    }
}

/// Whether the route's fallback page replaces the upstream's answer (a 5xx).
pub fn answer_replaced(ctx: &RequestCtx) -> bool {
    failure::replacement(ctx.routed.as_ref(), &ctx.upstream).is_some()
}

/// The answer head as the client gets it: the fallback page's head instead
/// of a 5xx the route replaces, the cache outcome, the version header, a new
/// anonymous visitor's cookie.
pub fn response(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(page) = failure::replacement(ctx.routed.as_ref(), &ctx.upstream) {
        // The upstream's 5xx is swapped for the route's page; its body is dropped in `response_body`.
        *resp = local_header(page, "", None)?;
    }
    let fields = AnswerFields::new(ctx);
    if fields.cache_miss {
        resp.insert_header("x-gateway-cache", CacheOutcome::Miss.as_str())?;
    }
    if let Some((name, value)) = fields.version {
        resp.insert_header(name.clone(), value.clone())?;
    }
    if let Some(cookie) = fields.cookie {
        resp.append_header(http::header::SET_COOKIE, cookie.clone())?;
    }
    Ok(())
}

/// A chunk of the upstream's body on its way to the client.
pub fn response_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
    if let Some(capture) = ctx.shadow.as_mut() {
        capture.response_body(body, end_of_stream);
    }
    if let Some(fill) = ctx.cache.as_mut().and_then(|c| c.fill.as_mut()) {
        fill.body(body);
    }
    if let Some(page) = failure::replacement(ctx.routed.as_ref(), &ctx.upstream) {
        *body = end_of_stream.then(|| page.body.clone());
    }
}

/// What answers a request that could not be proxied.
pub enum Failed {
    /// The last good copy (the upstream failed, not the client).
    Stale(Arc<CachedResponse>),
    /// The route's fallback page or the gateway's error page; `None` when
    /// nothing can be said (the client is gone).
    Page(Option<Arc<LocalResponse>>),
}

/// Whether the final answer has started (an interim 1xx answer does not
/// count: a failure after one still gets its page).
pub fn answer_started(written: Option<&ResponseHeader>) -> bool {
    written.is_some_and(|r| !r.status.is_informational())
}

/// The request failed with `e`: accounted for once, and what to answer.
pub fn failed(e: &Error, ctx: &mut RequestCtx, response_started: bool) -> Failed {
    let stale = match e.esource() {
        ErrorSource::Downstream => None,
        _ => ctx.cache.as_mut().and_then(|c| c.stale.take().or_else(|| c.stale_copy(&ctx.snapshot))),
    };
    if let (Some(copy), false, Some(r)) = (stale, response_started, &ctx.routed) {
        failure::upstream_failed(&ctx.snapshot.metrics, r, &mut ctx.upstream, e);
        ctx.snapshot.cache.count(&r.route.spec.name, r.version_name(), CacheOutcome::Stale);
        ctx.answered = Some(pipeline::AnswerReason::Cache(CacheOutcome::Stale));
        return Failed::Stale(copy);
    }
    let framing = crate::listener::connections::framing_was_refused();
    let page = failure::proxy_failed(&ctx.snapshot.metrics, ctx.routed.as_ref(), &mut ctx.upstream, e, framing);
    // A response already started cannot be replaced; the connection is dropped instead.
    Failed::Page(page.filter(|_| !response_started))
}

/// Failures answered with a fallback page, and clients that hung up, are
/// normal operation: the access log has them; the error log stays for faults.
pub fn quiet_error(ctx: &RequestCtx, error: &Error) -> bool {
    ctx.upstream.fallback.is_some()
        || (error.esource() == &ErrorSource::Downstream
            && matches!(error.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError))
}

/// At the end of a request: metrics, the cache fill, the access log line, the shadow.
pub fn finish(shadow: &Arc<ShadowEngine>, req: &RequestHeader, status: u16, e: Option<&Error>, ctx: &mut RequestCtx) {
    let elapsed = ctx.started.elapsed();
    let snapshot = &ctx.snapshot;
    match &ctx.routed {
        Some(r) => match r.route.metrics.versions.get(r.decision.version) {
            Some(m) => m.observe(status, elapsed.as_secs_f64()),
            None => snapshot.unrouted_metrics.observe(status, elapsed.as_secs_f64()),
        },
        None => snapshot.unrouted_metrics.observe(status, elapsed.as_secs_f64()),
    }
    failure::finish(ctx.routed.as_ref(), &ctx.upstream);
    if let (Some(c), Some(r)) = (ctx.cache.as_mut(), &ctx.routed) {
        // Proxied (not answered from the cache): a miss; a complete answer fills the cache.
        if ctx.answered.is_none() {
            ctx.snapshot.cache.count(&r.route.spec.name, r.version_name(), CacheOutcome::Miss);
        }
        if let (None, Some(fill)) = (e, c.fill.take()) {
            cached::finish_fill(&ctx.snapshot, fill);
        }
    }
    crate::telemetry::access_log::write(req, ctx, status, elapsed, e);
    if let (Some(capture), Some(routed)) = (ctx.shadow.take(), &ctx.routed) {
        capture.finish(shadow, &ctx.snapshot, routed, e.is_some());
    }
}

/// The head of a local answer.
pub fn local_header(page: &LocalResponse, request_id: &str, retry_after: Option<u64>) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build(page.status, Some(4 + page.headers.len()))?;
    header.insert_header(http::header::CONTENT_TYPE, page.content_type)?;
    header.insert_header(http::header::CONTENT_LENGTH, page.body.len().to_string())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if !request_id.is_empty() {
        header.insert_header("x-request-id", request_id)?;
    }
    for (name, value) in &page.headers {
        header.insert_header(*name, value.as_str())?;
    }
    if let Some(secs) = retry_after {
        header.insert_header("retry-after", secs.to_string())?;
    }
    Ok(header)
}

/// The client's TCP peer (or the one its PROXY protocol header named), an
/// IPv4-mapped IPv6 address as its IPv4 address.
pub fn peer_ip(session: &ServerSession) -> IpAddr {
    peer_ip_of(session.client_addr())
}

/// The same, from the connection's peer address (the lean path's stream).
pub fn peer_ip_of(addr: Option<&pingora_core::protocols::l4::socket::SocketAddr>) -> IpAddr {
    addr.and_then(|a| a.as_inet())
        .map(|a| client_ip::canonical(a.ip()))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Whether the request arrived over TLS (the connection has a TLS digest).
pub fn is_tls(session: &ServerSession) -> bool {
    session.digest().and_then(|d| d.ssl_digest.as_ref()).is_some()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The marker of mirrored requests when a route sets none.
static DEFAULT_SHADOW_MARKER: HeaderName = HeaderName::from_static("x-shadow");

/// Remove what a client may not control on the way upstream: `Connection`
/// tokens naming a header the gateway sets, shadow markers, the version
/// lane header and the route's override header (judged already; a backend
/// must never see a forced version the gateway did not apply).
fn strip_client_controls(
    req: &mut RequestHeader,
    snapshot: &crate::control::snapshot::Snapshot,
    routed: &pipeline::Routed,
) {
    // Absent settings repeat an entry already in the list: no allocation on
    // the request path either way.
    let server = &snapshot.config.server;
    let version = server.version_header.as_ref().unwrap_or(&X_REQUEST_ID);
    let lane = server.version_request_header.as_ref().unwrap_or(&DEFAULT_SHADOW_MARKER);
    let owned = [&X_REQUEST_ID, &X_FORWARDED_FOR, &X_FORWARDED_PROTO, version, lane];
    let route = &routed.route.spec;
    let marker = route.shadow.as_ref().map(|s| &s.marker.0).unwrap_or(&DEFAULT_SHADOW_MARKER);
    let forced = route.override_.as_ref().and_then(|o| o.header.as_ref()).unwrap_or(&DEFAULT_SHADOW_MARKER);
    request_head::strip_client_controls(req, &owned, &[&DEFAULT_SHADOW_MARKER, marker, lane, forced]);
    if let Some(cookie) = route.override_.as_ref().and_then(|o| o.cookie.as_deref()) {
        request_head::remove_cookie(req, cookie);
    }
}

/// The `X-Forwarded-For` the upstream gets: the client's entries (all its
/// headers, as bytes: an entry that is not text is kept, not dropped) with
/// the peer appended.
pub(super) fn forwarded_for(previous: http::header::GetAll<'_, HeaderValue>, peer: IpAddr) -> ForwardedFor {
    let entries = || previous.iter().map(|v| v.as_bytes().trim_ascii()).filter(|v| !v.is_empty());
    let mut xff = ForwardedFor::new();
    // Room for the longest address too (45: six groups and a dotted quad).
    xff.reserve(entries().map(|v| v.len() + 2).sum::<usize>() + 45);
    for entry in entries() {
        xff.extend_from_slice(entry);
        xff.extend_from_slice(b", ");
    }
    push_ip(&mut xff, peer);
    xff
}

/// An `X-Forwarded-For` value; 64 bytes inline: the longest textual IPv6
/// address (39) behind a short chain of proxies.
pub type ForwardedFor = smallvec::SmallVec<[u8; 64]>;

/// An address as text: IPv4 by hand (`Display` goes through the formatting
/// machinery, 2k instructions per request), IPv6 through `Display`.
fn push_ip(out: &mut ForwardedFor, ip: IpAddr) {
    use std::io::Write;
    let IpAddr::V4(v4) = ip else {
        // Room for the longest form (45: six groups and a dotted quad).
        let mut text = std::io::Cursor::new([0u8; 64]);
        let _ = write!(text, "{ip}");
        let len = usize::try_from(text.position()).unwrap_or(0);
        out.extend_from_slice(&text.get_ref()[..len]);
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// Keep the client's `X-Request-Id` when it is short and printable (1 to 128
/// visible ASCII characters, so it cannot break a log line or a header);
/// otherwise make one.
fn request_id_of(req: &RequestHeader) -> RequestId {
    let existing = req.headers.get(&X_REQUEST_ID).and_then(|v| RequestId::usable(v.as_bytes()));
    existing.unwrap_or_else(super::request_id::new_request_id)
}

/// The request id to set on the request on its way upstream: `None` when
/// the client's head already carries it, once. Set there, with the other
/// fields the gateway sets, and not when the request arrives: the lean
/// path then splices it in as it writes the head, where an insert into the
/// head cost three allocations (its name, that name's copy for the case
/// map, its value; `benches/README.md`, session 14). One id upstream, like
/// the one logged: further copies the client sent are dropped.
pub fn request_id_to_set<'c>(req: &RequestHeader, ctx: &'c RequestCtx) -> Option<&'c [u8]> {
    let mut sent = req.headers.get_all(&X_REQUEST_ID).iter();
    let once = sent.next().is_some_and(|v| v.as_bytes() == ctx.request_id.as_bytes()) && sent.next().is_none();
    (!once).then(|| ctx.request_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_peer_written_as_display_writes_it() {
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        for ip in ["0.0.0.0", "9.10.99.100", "255.255.255.255", "127.0.0.1", "::1", "2001:db8::7", longest] {
            let ip: IpAddr = ip.parse().expect("address");
            let mut text = smallvec::SmallVec::new();
            push_ip(&mut text, ip);
            assert_eq!(String::from_utf8(text.to_vec()).expect("text"), ip.to_string());
        }
        let mut req = RequestHeader::build("GET", b"/", None).expect("head");
        req.append_header("x-forwarded-for", " 10.0.0.1 ").expect("append");
        req.append_header("x-forwarded-for", "").expect("append");
        req.append_header("x-forwarded-for", "10.0.0.2").expect("append");
        let xff = forwarded_for(req.headers.get_all("x-forwarded-for"), "192.168.1.20".parse().expect("ip"));
        assert_eq!(&xff[..], b"10.0.0.1, 10.0.0.2, 192.168.1.20");
    }
}
