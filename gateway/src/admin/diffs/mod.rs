//! QA's view of the shadow diffs: a JSON API and server-rendered pages on the
//! admin listener (same auth as every admin call).
//!
//! `GET /api/diffs/summary?route=&since=` — per route: outcome counts from the
//! store (over the window), `dropped` and `skipped` from the
//! `gateway_shadow_requests_total` counters (since the process started), and
//! per field path: count, rate, noise flag, one example record.
//! `GET /api/diffs?route=&path=&since=&limit=` — record headers, newest first
//! (limit 50 by default, at most 1000).
//! `GET /api/diffs/{id}` — one whole record.
//! `GET /diffs` and `GET /diffs/{id}` — the same as HTML pages (minijinja
//! templates from `gateway/templates/`, embedded in the binary; no JavaScript).
//!
//! `since` is a humantime duration meaning "that long ago" (`1h`, `30m`,
//! `2d 4h`) or an RFC 3339 time (`2026-05-01T10:00:00Z`, `...+02:00`).
//!
//! A path is **noise** when the live
//! [`NoiseTracker`](crate::shadow::NoiseTracker) classifies it so; when the
//! tracker has no verdict yet (a restart, too few same-version samples), the
//! flag recorded with most of the path's stored diffs decides. Noise paths are
//! listed apart and are not counted as regressions.
//!
//! Highlighting on the record page: see [`highlight`].
//!
//! This file routes the requests and reads their inputs; [`api`] answers the
//! JSON calls, [`page`] renders the HTML pages, [`since`] parses `since`.

mod api;
mod highlight;
pub(super) mod page;
mod since;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, StatusCode};
use serde_json::json;

use crate::control::reload::Reloader;
use crate::shadow::{DiffRecord, DiffStore};

use super::{json_reply, Reply};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

const NO_STORE: &str = "no shadow diff store is open: no route of this gateway has [routes.shadow], \
                        so nothing is mirrored or recorded";

/// Whether `path` belongs to this module (any method: the others get 405 here).
pub fn handles(path: &str) -> bool {
    let under = |p: &str, base: &str| p == base || p.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'));
    under(path, "/api/diffs") || under(path, "/diffs")
}

/// Answers a request for one of [`handles`]'s paths. The store is read on a
/// blocking thread: a summary over a large window takes a few SQLite queries.
pub async fn serve(reloader: Arc<Reloader>, method: Method, path: String, query: HashMap<String, String>) -> Reply {
    if method != Method::GET {
        return json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": format!("{method} is not allowed on {path}")}),
        );
    }
    let html = !path.starts_with("/api/");
    let answer = tokio::task::spawn_blocking(move || dispatch(&reloader, &path, &query)).await;
    match answer {
        Ok(reply) => reply,
        Err(e) => failure(html, Failure::new(StatusCode::INTERNAL_SERVER_ERROR, format!("diff query failed: {e}"))),
    }
}

/// An error answer: JSON `{"error": ...}` for the API, a small page for the HTML routes.
#[derive(Debug)]
pub(in crate::admin) struct Failure {
    pub(in crate::admin) status: StatusCode,
    pub(in crate::admin) message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A store failure: 500, with the store's own words.
    fn internal(e: crate::shadow::StoreError) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn dispatch(reloader: &Reloader, path: &str, query: &HashMap<String, String>) -> Reply {
    let trimmed = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let html = !trimmed.starts_with("/api/");
    let result = match trimmed {
        "/api/diffs/summary" => api::api_summary(reloader, query),
        "/api/diffs" => api::api_list(reloader, query),
        "/diffs" => page::page_summary(reloader, query),
        p => match p.strip_prefix("/api/diffs/").or_else(|| p.strip_prefix("/diffs/")) {
            Some(id) if html => page::page_record(reloader, id),
            Some(id) => api::api_get(reloader, id),
            None => Err(Failure::new(StatusCode::NOT_FOUND, format!("no admin endpoint {path}"))),
        },
    };
    result.unwrap_or_else(|f| failure(html, f))
}

fn failure(html: bool, f: Failure) -> Reply {
    if !html {
        return json_reply(f.status, &json!({"error": f.message}));
    }
    let ctx =
        json!({"status": f.status.as_u16(), "reason": f.status.canonical_reason().unwrap_or(""), "message": f.message});
    match page::render("diff_error.html", &ctx) {
        Ok(body) => page::html_reply(f.status, body),
        Err(e) => json_reply(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.message})),
    }
}

// ---- inputs ----------------------------------------------------------------

/// `route` and `since` from the query; empty values (a submitted empty form field) mean unset.
struct Filter {
    route: Option<String>,
    since_text: Option<String>,
    since_ms: Option<i64>,
}

fn param<'q>(query: &'q HashMap<String, String>, key: &str) -> Option<&'q str> {
    query.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn filter(query: &HashMap<String, String>) -> Result<Filter, Failure> {
    let since_text = param(query, "since").map(str::to_string);
    let since_ms = match &since_text {
        Some(s) => Some(since::parse_since(s, SystemTime::now()).map_err(Failure::bad)?),
        None => None,
    };
    Ok(Filter { route: param(query, "route").map(str::to_string), since_text, since_ms })
}

fn store(reloader: &Reloader) -> Result<Arc<DiffStore>, Failure> {
    reloader.shadow.store().ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, NO_STORE))
}

fn record_id(text: &str) -> Result<i64, Failure> {
    text.parse::<i64>().map_err(|_| Failure::bad(format!("{text:?} is not a record id (a number)")))
}

fn load_record(reloader: &Reloader, id: &str) -> Result<DiffRecord, Failure> {
    let id = record_id(id)?;
    let store = store(reloader)?;
    store
        .get(id)
        .map_err(Failure::internal)?
        .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, format!("no diff record {id} (unknown, or past retention)")))
}
