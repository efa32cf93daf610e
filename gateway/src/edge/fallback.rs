//! Static fallback pages: what a route answers when its upstream cannot, or
//! when the degrade level switches it off. Pages are loaded into memory at
//! config load, so serving one touches no disk and no upstream.

use crate::config::{FallbackCause, RouteSpec};
use crate::proxy::respond::LocalResponse;

/// The route's fallback page for `cause`, if it has one that covers it.
pub fn page_for(route: &RouteSpec, cause: FallbackCause) -> Option<LocalResponse> {
    let fb = route.fallback.as_ref().filter(|fb| fb.covers(cause))?;
    let mut resp = LocalResponse {
        status: fb.page.status,
        content_type: fb.page.content_type,
        body: fb.page.body.clone(),
        headers: vec![("x-gateway-fallback", cause.as_str().to_string())],
    };
    if let Some(after) = fb.retry_after {
        resp.headers.push(("retry-after", after.as_secs().max(1).to_string()));
    }
    Some(resp)
}

/// True when the level in force switches this route to its page.
pub fn degraded(route: &RouteSpec, level: u8) -> bool {
    route.degrade_at.is_some_and(|at| level >= at)
}
