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
