//! Validation of `[routes.shadow]` and `[shadow]`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::error::Diagnostics;
use super::file::{ShadowFile, ShadowStoreFile, Sp};
use super::model::ShadowSpec;
use super::startup::ShadowStoreSpec;
use super::validate::resolve;
use super::values;
use crate::shadow::{DiffOptions, Retention};

/// Per route and outcome: enough examples for QA, and a disk write rate that
/// stays small under a 100% shadow on a busy route. At 5,000 stored records a
/// second the SQLite writes stalled the whole (virtual) machine for
/// milliseconds; see benches/README.md, variant c.
const DEFAULT_STORE_PER_SECOND: u32 = 100;

/// Methods that change state: mirroring them repeats the side effect on the other version.
const UNSAFE: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

pub fn route_shadow(d: &mut Diagnostics, key: &str, f: &Sp<ShadowFile>) -> Option<Arc<ShadowSpec>> {
    let span = f.span();
    let f = f.get_ref();
    let mut ok = true;
    let mut err = |d: &mut Diagnostics, field: &str, msg: String| {
        d.error(Some(span.clone()), format!("{key}.{field}"), msg);
        ok = false;
    };
    let percent = f.percent.unwrap_or(100.0);
    let basis_points = values::percent_basis_points(percent).unwrap_or_else(|e| {
        err(d, "percent", e);
        0
    });
    let mut methods = Vec::new();
    for m in f.methods.clone().unwrap_or_else(|| vec!["GET".into(), "HEAD".into()]) {
        let upper = m.trim().to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(method) => {
                if UNSAFE.contains(&upper.as_str()) {
                    d.warn(
                        Some(span.clone()),
                        format!("{key}.methods"),
                        format!("{upper} is mirrored: the other version will see every such request a second time (a second order, a second payment) unless its backends honour the shadow marker header"),
                    );
                }
                methods.push(method);
            }
            Err(_) => err(d, "methods", format!("{m:?} is not an HTTP method")),
        }
    }
    let size = |d: &mut Diagnostics, field: &str, v: &Option<String>, default: usize| match v {
        None => default,
        Some(t) => values::size(t).unwrap_or_else(|e| {
            d.error(Some(span.clone()), format!("{key}.{field}"), e);
            default
        }),
    };
    let max_body = size(d, "max_body", &f.max_body, 1 << 20);
    let max_compare_body =
        size(d, "max_compare_body", &f.max_compare_body, crate::shadow::answer::DEFAULT_MAX_COMPARE_BODY);
    let timeout = match &f.timeout {
        None => Duration::from_secs(2),
        Some(t) => values::duration(t).unwrap_or_else(|e| {
            err(d, "timeout", e);
            Duration::from_secs(2)
        }),
    };
    let max_in_flight = match f.max_in_flight {
        None => 256,
        Some(n) if (1..=100_000).contains(&n) => n as usize,
        Some(n) => {
            err(d, "max_in_flight", format!("{n} is outside 1..=100000"));
            256
        }
    };
    let noise_check = match f.noise_check {
        None => 0.0,
        Some(x) if (0.0..=1.0).contains(&x) => x,
        Some(x) => {
            err(d, "noise_check", format!("{x} is outside 0.0..=1.0 (a share of shadowed requests)"));
            0.0
        }
    };
    let marker_text = f.marker.clone().unwrap_or_else(|| "x-shadow: 1".into());
    let marker = match marker_text.split_once(':') {
        Some((name, value)) => match (
            HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            (Ok(n), Ok(v)) => Some((n, v)),
            _ => None,
        },
        None => None,
    };
    let marker = marker.unwrap_or_else(|| {
        err(d, "marker", format!("{marker_text:?} must be \"header-name: value\""));
        (HeaderName::from_static("x-shadow"), HeaderValue::from_static("1"))
    });
    let mut ignore_headers: Vec<String> =
        crate::shadow::answer::DEFAULT_IGNORE_HEADERS.iter().map(|h| h.to_string()).collect();
    ignore_headers.extend(f.ignore_headers.iter().cloned());
    let diff = DiffOptions::from_config(
        &ignore_headers,
        &f.ignore_fields,
        f.numeric_tolerance,
        &f.array_sets,
        max_compare_body,
    )
    .map_err(|e| err(d, "ignore_fields", e))
    .ok();
    let diff = diff?;
    ok.then(|| {
        Arc::new(ShadowSpec { basis_points, methods, max_body, timeout, max_in_flight, noise_check, marker, diff })
    })
}

pub fn store(d: &mut Diagnostics, f: &ShadowStoreFile) -> ShadowStoreSpec {
    let path = resolve(d.file(), f.store.as_ref().map(|s| s.get_ref().as_str()).unwrap_or("state/diffs.sqlite"));
    let mut retention = Retention::default();
    if let Some(a) = &f.max_age {
        match values::duration(a.get_ref()) {
            Ok(age) => retention.max_age = age,
            Err(e) => d.error(Some(a.span()), "shadow.max_age", e),
        }
    }
    if let Some(n) = &f.max_records {
        match u64::try_from(*n.get_ref()) {
            Ok(v) if v > 0 => retention.max_records = v,
            _ => d.error(Some(n.span()), "shadow.max_records", format!("{} must be at least 1", n.get_ref())),
        }
    }
    let queue = match &f.queue {
        None => 4096,
        Some(q) if (1..=1_000_000).contains(q.get_ref()) => *q.get_ref() as usize,
        Some(q) => {
            d.error(Some(q.span()), "shadow.queue", format!("{} is outside 1..=1000000", q.get_ref()));
            4096
        }
    };
    let store_per_second = match &f.store_per_second {
        None => DEFAULT_STORE_PER_SECOND,
        Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            let msg = format!("{} is outside 1..=1000000", n.get_ref());
            d.error(Some(n.span()), "shadow.store_per_second", msg);
            DEFAULT_STORE_PER_SECOND
        }
    };
    let max_stored_body = match &f.max_stored_body {
        None => 64 * 1024,
        Some(s) => values::size(s.get_ref()).unwrap_or_else(|e| {
            d.error(Some(s.span()), "shadow.max_stored_body", e);
            64 * 1024
        }),
    };
    let redact_headers = f
        .redact_headers
        .clone()
        .unwrap_or_else(|| crate::shadow::store::DEFAULT_REDACTED_HEADERS.iter().map(|h| h.to_string()).collect())
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    ShadowStoreSpec { path, retention, queue, store_per_second, max_stored_body, redact_headers }
}
