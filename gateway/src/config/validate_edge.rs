//! Validation of the edge-protection sections: blacklist, rate limits,
//! fallback pages, degrade level, state file. Same rules as `validate.rs`:
//! collect every error, each with its line and key.

use std::path::PathBuf;
use std::time::Duration;

use super::error::Diagnostics;
use super::file::*;
use super::model::*;
use super::validate::{cidrs, resolve};
use super::values;

/// 256 MiB: a million IPv6 CIDRs with comments fit several times over; a
/// larger file is more likely a mistake (a log instead of a list).
const DEFAULT_MAX_LIST_FILE: u64 = 256 << 20;

pub fn blacklist(d: &mut Diagnostics, f: &BlacklistFile) -> BlacklistSpec {
    let cidrs = cidrs(d, "blacklist.cidrs", &f.cidrs);
    let files = f
        .files
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let path = resolve(d.file(), p.get_ref());
            let key = format!("blacklist.files[{i}]");
            // Read when the snapshot is built; an edit reloads like a config edit.
            d.files.note(&path);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Some((path, key)),
                Ok(_) => {
                    d.error(Some(p.span()), key, format!("{} is not a file", path.display()));
                    None
                }
                Err(e) => {
                    d.error(Some(p.span()), key, format!("cannot read {}: {e}", path.display()));
                    None
                }
            }
        })
        .collect();
    let mut page = StaticPage::default();
    if let Some(p) = &f.page {
        if let Some(body) = read_page(d, "blacklist.page", p) {
            page.body = body;
        }
    }
    if let Some(s) = &f.status {
        page.status = status(d, "blacklist.status", s, 400..=499).unwrap_or(403);
    }
    let max_file_size = match &f.max_file_size {
        None => DEFAULT_MAX_LIST_FILE,
        Some(v) => match values::size(v.get_ref()) {
            Ok(0) => {
                d.error(Some(v.span()), "blacklist.max_file_size", "must be above 0");
                DEFAULT_MAX_LIST_FILE
            }
            Ok(n) => n as u64,
            Err(e) => {
                d.error(Some(v.span()), "blacklist.max_file_size", e);
                DEFAULT_MAX_LIST_FILE
            }
        },
    };
    BlacklistSpec { cidrs, files, dry_run: f.dry_run, at_accept: f.at_accept, page, max_file_size }
}

pub fn state_path(d: &Diagnostics, f: &StateSectionFile) -> PathBuf {
    let path = f.path.as_ref().map(|p| p.get_ref().as_str()).unwrap_or("state/gateway-state.json");
    resolve(d.file(), path)
}

pub fn degrade_level(d: &mut Diagnostics, f: &DegradeFile) -> u8 {
    match &f.level {
        None => 0,
        Some(l) => level(d, "degrade.level", l).unwrap_or(0),
    }
}

fn level(d: &mut Diagnostics, key: &str, l: &Sp<i64>) -> Option<u8> {
    match u8::try_from(*l.get_ref()) {
        Ok(v) if v <= MAX_DEGRADE_LEVEL => Some(v),
        _ => {
            d.error(Some(l.span()), key, format!("{} is outside 0..={MAX_DEGRADE_LEVEL}", l.get_ref()));
            None
        }
    }
}

pub fn degrade_at(d: &mut Diagnostics, key: &str, l: &Option<Sp<i64>>) -> Option<u8> {
    let l = l.as_ref()?;
    match level(d, key, l) {
        Some(0) => {
            d.error(Some(l.span()), key, "0 would degrade the route always; use 1..=10");
            None
        }
        other => other,
    }
}

pub fn rate_limit(d: &mut Diagnostics, key: &str, f: &RateLimitFile) -> RateLimitSpec {
    let mut one = |name: &str, l: &Option<Sp<LimitFile>>| {
        let l = l.as_ref()?;
        let key = format!("{key}.{name}");
        match values::rate(&l.get_ref().rate) {
            Err(e) => {
                d.error(Some(l.span()), format!("{key}.rate"), e);
                None
            }
            Ok((rate, per)) => {
                let burst = match l.get_ref().burst {
                    None => rate,
                    Some(b) if (1..=i64::from(u32::MAX)).contains(&b) => b as u32,
                    Some(b) => {
                        d.error(Some(l.span()), format!("{key}.burst"), format!("{b} must be at least 1"));
                        rate
                    }
                };
                let scope = limit_scope(d, &key, l);
                Some(LimitSpec { rate, per, burst, scope })
            }
        }
    };
    RateLimitSpec {
        per_ip: one("per_ip", &f.per_ip),
        per_user: one("per_user", &f.per_user),
        per_route: one("per_route", &f.per_route),
    }
}

/// `scope` and `on_store_error` of one limit.
fn limit_scope(d: &mut Diagnostics, key: &str, l: &Sp<LimitFile>) -> LimitScope {
    let f = l.get_ref();
    let on_error = match f.on_store_error.as_deref() {
        None | Some("local") => OnStoreError::Local,
        Some("allow") => OnStoreError::Allow,
        Some("deny") => OnStoreError::Deny,
        Some(other) => {
            d.error(
                Some(l.span()),
                format!("{key}.on_store_error"),
                format!("{other:?} is not one of \"local\", \"allow\", \"deny\""),
            );
            OnStoreError::Local
        }
    };
    match f.scope.as_deref() {
        None | Some("replica") => {
            if f.on_store_error.is_some() {
                d.error(
                    Some(l.span()),
                    format!("{key}.on_store_error"),
                    "applies only to scope = \"cluster\"; a replica limit never asks the store",
                );
            }
            LimitScope::Replica
        }
        Some("cluster") => {
            d.cluster_limits.push((key.to_string(), l.span()));
            LimitScope::Cluster(on_error)
        }
        Some(other) => {
            d.error(Some(l.span()), format!("{key}.scope"), format!("{other:?} is not \"replica\" or \"cluster\""));
            LimitScope::Replica
        }
    }
}

pub fn fallback(d: &mut Diagnostics, key: &str, f: &FallbackFile) -> Option<FallbackSpec> {
    let body = read_page(d, &format!("{key}.page"), &f.page);
    let status = match &f.status {
        None => 503,
        Some(s) => status(d, &format!("{key}.status"), s, 200..=599).unwrap_or(503),
    };
    let retry_after: Option<Duration> = f.retry_after.as_ref().and_then(|r| {
        values::duration(r.get_ref()).map_err(|e| d.error(Some(r.span()), format!("{key}.retry_after"), e)).ok()
    });
    let on = match &f.on {
        None => vec![FallbackCause::NoHealthyBackend, FallbackCause::ConnectError, FallbackCause::Timeout],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let parsed = FallbackCause::parse(c.get_ref());
                if parsed.is_none() {
                    d.error(
                        Some(c.span()),
                        format!("{key}.on[{i}]"),
                        format!(
                            "{:?} must be one of \"no-healthy-backend\", \"connect-error\", \"timeout\", \"5xx\"",
                            c.get_ref()
                        ),
                    );
                }
                parsed
            })
            .collect(),
    };
    Some(FallbackSpec {
        page: StaticPage { status, body: body?, content_type: content_type(f.page.get_ref()) },
        retry_after,
        on,
        canary_failover: f.canary_failover,
    })
}

fn status(d: &mut Diagnostics, key: &str, s: &Sp<i64>, range: std::ops::RangeInclusive<i64>) -> Option<u16> {
    if range.contains(s.get_ref()) {
        Some(*s.get_ref() as u16)
    } else {
        d.error(Some(s.span()), key, format!("{} is outside {}..={}", s.get_ref(), range.start(), range.end()));
        None
    }
}

/// Pages are small and served from memory; a missing one is a config error now,
/// not a 500 on the day it is needed.
fn read_page(d: &mut Diagnostics, key: &str, p: &Sp<String>) -> Option<bytes::Bytes> {
    const MAX_PAGE: u64 = 1024 * 1024;
    let path = resolve(d.file(), p.get_ref());
    d.files.note(&path);
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_PAGE => {
            d.error(Some(p.span()), key, format!("{} is larger than 1 MiB", path.display()));
            None
        }
        Ok(_) => match std::fs::read(&path) {
            Ok(b) => Some(bytes::Bytes::from(b)),
            Err(e) => {
                d.error(Some(p.span()), key, format!("cannot read {}: {e}", path.display()));
                None
            }
        },
        Err(e) => {
            d.error(Some(p.span()), key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => "text/html; charset=utf-8",
    }
}

/// `[anonymous_cookie]`: needed (for its key) when a route uses `anonymous = "cookie"`.
/// `users`: the `anonymous = "cookie"` settings (key, where) that need it.
pub fn anonymous_cookie(
    d: &mut Diagnostics,
    f: &AnonymousCookieFile,
    users: &[(String, std::ops::Range<usize>)],
) -> Option<AnonymousCookieSpec> {
    let Some(secret_file) = &f.secret_file else {
        for (key, span) in users {
            d.error(
                Some(span.clone()),
                key.as_str(),
                "\"cookie\" needs [anonymous_cookie] secret_file = \"KEY FILE\": the cookie is signed with it",
            );
        }
        return None;
    };
    let key = super::validate::read_secret(d, "anonymous_cookie.secret_file", secret_file);
    let name = f.name.as_ref().map_or("gw_anon".to_string(), |n| n.get_ref().trim().to_string());
    let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token_char) {
        let span = f.name.as_ref().map(|n| n.span());
        d.error(span, "anonymous_cookie.name", format!("{name:?} is not a cookie name"));
    }
    let max_age = f.max_age.as_ref().map_or(Duration::from_secs(90 * 86_400), |m| {
        values::duration(m.get_ref()).unwrap_or_else(|e| {
            d.error(Some(m.span()), "anonymous_cookie.max_age", e);
            Duration::from_secs(90 * 86_400)
        })
    });
    let same_site = match f.same_site.as_ref().map(|s| (s.get_ref().to_ascii_lowercase(), s.span())) {
        None => SameSite::Lax,
        Some((s, _)) if s == "lax" => SameSite::Lax,
        Some((s, _)) if s == "strict" => SameSite::Strict,
        Some((s, _)) if s == "none" => SameSite::None,
        Some((s, span)) => {
            d.error(Some(span), "anonymous_cookie.same_site", format!("{s:?} must be \"Strict\", \"Lax\" or \"None\""));
            SameSite::Lax
        }
    };
    let http_only = f.http_only.as_ref().is_none_or(|h| *h.get_ref());
    Some(AnonymousCookieSpec { name, max_age, http_only, same_site, key: key? })
}
