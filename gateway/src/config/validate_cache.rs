//! `[routes.cache]`: every error, each with its line and key.

use std::time::Duration;

use super::error::Diagnostics;
use super::file::{CacheFile, Sp};
use super::model::{CacheSpec, MAX_DEGRADE_LEVEL};
use super::values;

const DEFAULT_TTL: Duration = Duration::from_secs(30);
const DEFAULT_MAX_SIZE: usize = 256 << 20;
/// Statuses cacheable by default (RFC 9110's heuristically cacheable ones that shops serve).
const DEFAULT_STATUSES: [u16; 4] = [200, 203, 301, 404];

pub(super) fn cache(d: &mut Diagnostics, route_key: &str, f: &Sp<CacheFile>) -> Option<CacheSpec> {
    let key = format!("{route_key}.cache");
    let span = f.span();
    let f = f.get_ref();
    if !f.enabled {
        return None;
    }
    let before = d.errors.len();
    let mut duration = |name: &str, v: &Option<String>, default: Option<Duration>| -> Option<Duration> {
        match v {
            None => default,
            Some(text) => match values::duration(text) {
                Ok(dur) => Some(dur),
                Err(e) => {
                    d.error(Some(span.clone()), format!("{key}.{name}"), e);
                    default
                }
            },
        }
    };
    let ttl = duration("ttl", &f.ttl, Some(DEFAULT_TTL)).unwrap_or(DEFAULT_TTL);
    let stale_if_error = duration("stale_if_error", &f.stale_if_error, None);
    let mut degrade_ttl = Vec::new();
    for (level, age) in &f.degrade_ttl {
        match (level.parse::<u8>(), values::duration(age)) {
            (Ok(l), Ok(a)) if (1..=MAX_DEGRADE_LEVEL).contains(&l) => degrade_ttl.push((l, a)),
            (Ok(_) | Err(_), Ok(_)) => d.error(
                Some(span.clone()),
                format!("{key}.degrade_ttl.{level}"),
                format!("{level:?} is not a degrade level 1..={MAX_DEGRADE_LEVEL}"),
            ),
            (_, Err(e)) => d.error(Some(span.clone()), format!("{key}.degrade_ttl.{level}"), e),
        }
    }
    let max_size = match &f.max_size {
        None => DEFAULT_MAX_SIZE,
        Some(text) => match values::size(text) {
            Ok(n) if n >= 1 << 16 => n,
            Ok(_) => {
                d.error(Some(span.clone()), format!("{key}.max_size"), "must be at least 64KiB");
                DEFAULT_MAX_SIZE
            }
            Err(e) => {
                d.error(Some(span.clone()), format!("{key}.max_size"), e);
                DEFAULT_MAX_SIZE
            }
        },
    };
    let mut vary = Vec::new();
    for (i, name) in f.vary.iter().enumerate() {
        match http::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()) {
            Ok(h) => vary.push(h),
            Err(_) => d.error(Some(span.clone()), format!("{key}.vary[{i}]"), format!("{name:?} is not a header name")),
        }
    }
    let statuses = match &f.statuses {
        None => DEFAULT_STATUSES.to_vec(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match u16::try_from(*s) {
                // 206 is a part, 304 has no body, 5xx is what stale copies stand in for.
                Ok(s) if (200..500).contains(&s) && s != 206 && s != 304 => Some(s),
                _ => {
                    d.error(
                        Some(span.clone()),
                        format!("{key}.statuses[{i}]"),
                        format!("{s} cannot be kept: use final statuses 200..=499 other than 206 and 304"),
                    );
                    None
                }
            })
            .collect(),
    };
    let bypass_cookies: Vec<String> = f.bypass_cookies.iter().map(|c| c.trim().to_string()).collect();
    if let Some(i) = bypass_cookies.iter().position(|c| c.is_empty() || c.contains(['=', ';', ' '])) {
        d.error(Some(span.clone()), format!("{key}.bypass_cookies[{i}]"), "is not a cookie name");
    }
    if d.errors.len() != before {
        return None;
    }
    Some(CacheSpec {
        ttl,
        max_size,
        vary,
        stale_if_error,
        degrade_ttl,
        statuses,
        bypass_cookies,
        allow_authorization: f.allow_authorization,
    })
}
