//! Answers the gateway writes itself (no route, no healthy backend, errors).

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;

/// A complete small response decided by a phase.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl LocalResponse {
    /// A small HTML page: browsers show it, scripts read the status.
    pub fn page(status: u16, title: &str, detail: &str) -> Self {
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head>\
             <body><h1>{status} {title}</h1><p>{detail}</p></body></html>\n"
        );
        Self { status, content_type: "text/html; charset=utf-8", body: Bytes::from(body), headers: Vec::new() }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Write `resp` to the client. `request_id` is echoed so a user's report can be
/// matched to the access log.
pub async fn write(session: &mut ServerSession, resp: &LocalResponse, request_id: &str) -> pingora_error::Result<()> {
    write_with(session, resp, request_id, None).await
}

/// [`write`], plus a `Retry-After` decided with the request (rate limits).
pub async fn write_with(
    session: &mut ServerSession,
    resp: &LocalResponse,
    request_id: &str,
    retry_after: Option<u64>,
) -> pingora_error::Result<()> {
    let header = super::exchange::local_header(resp, request_id, retry_after)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(header)).await?;
    if !head_only {
        session.write_response_body(resp.body.clone(), true).await?;
    }
    Ok(())
}

/// Write the answer `exchange::begin` chose instead of proxying: a page
/// (without keep-alive for a malformed request) or a cached copy. Both
/// request paths answer through here.
pub async fn local_answer(
    session: &mut ServerSession,
    answer: super::exchange::Begin,
    ctx: &super::RequestCtx,
) -> pingora_error::Result<()> {
    use super::exchange::Begin;
    match answer {
        Begin::Proxy => Ok(()),
        Begin::Page { page, retry_after, close } => {
            if close {
                session.set_keepalive(None);
            }
            write_with(session, &page, &ctx.request_id, retry_after).await
        }
        Begin::Copy { copy, outcome } => match &ctx.routed {
            Some(r) => {
                let version = ctx.snapshot.config.server.version_header.as_ref();
                super::cached::write(session, &copy, outcome, &ctx.request_id, r, version).await
            }
            None => Ok(()),
        },
    }
}

/// Answer a request that could not be proxied, on either request path: a
/// stale copy, the fallback page or the gateway's error page, when no final
/// answer has started; never with keep-alive (neither path reuses the
/// connection). The status written, 0 for none.
pub async fn failure(session: &mut ServerSession, e: &pingora_error::Error, ctx: &mut super::RequestCtx) -> u16 {
    use super::exchange::{self, Failed};
    session.set_keepalive(None);
    let started = exchange::answer_started(session.response_written());
    let (status, written) = match exchange::failed(e, ctx, started) {
        Failed::Stale(copy) => {
            let version = ctx.snapshot.config.server.version_header.as_ref();
            let outcome = crate::cache::CacheOutcome::Stale;
            let written = match &ctx.routed {
                Some(r) => super::cached::write(session, &copy, outcome, &ctx.request_id, r, version).await,
                None => Ok(()),
            };
            (copy.status, written)
        }
        Failed::Page(Some(page)) => (page.status, write(session, &page, &ctx.request_id).await),
        Failed::Page(None) => (0, Ok(())),
    };
    if let Err(err) = written {
        tracing::debug!(error = %err, "cannot send the answer to a failed request");
    }
    status
}
