//! Validation of `[cluster]`, the fleet's shared store, and of the limits
//! that need it. Same rules as `validate.rs`: collect every error, each with
//! its line and key. Nothing here connects: `check` must pass exactly when
//! `run` would start, and `run` starts while Redis is down (it serves what
//! the state file last saw).

use std::time::Duration;

use super::error::Diagnostics;
use super::file::ClusterFile;
use super::model::{ClusterSpec, Secret};
use super::validate::resolve;
use super::validate_server::duration_or;
use super::validate_tls;

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// Pub/sub carries each change at once; the reconcile repairs what a
/// dropped subscription missed, so a few seconds bound any divergence.
const DEFAULT_RECONCILE: Duration = Duration::from_secs(5);
/// Cluster rate-limit counts are exchanged this often: the fleet may admit
/// up to about (replicas − 1) × rate × this interval above the limit.
const DEFAULT_RATE_LIMIT_SYNC: Duration = Duration::from_millis(100);

/// `None` when the file has no `[cluster]` (a single gateway).
pub fn cluster(d: &mut Diagnostics, f: Option<ClusterFile>) -> Option<ClusterSpec> {
    let Some(f) = f else {
        for (key, span) in std::mem::take(&mut d.cluster_limits) {
            d.error(
                Some(span),
                format!("{key}.scope"),
                "scope = \"cluster\" needs a [cluster] section (the shared store that counts for the fleet)",
            );
        }
        return None;
    };
    let redis_url = match &f.redis {
        None => {
            d.error(None, "cluster.redis", "is required: the store's URL, e.g. \"redis://127.0.0.1:6379/0\"");
            String::new()
        }
        Some(url) => {
            let text = url.get_ref().trim();
            if let Err(e) = check_url(text) {
                d.error(Some(url.span()), "cluster.redis", e);
            }
            text.to_string()
        }
    };
    let key_prefix = match &f.key_prefix {
        None => "gw:".to_string(),
        Some(p) if p.get_ref().is_empty() || p.get_ref().chars().any(|c| c.is_whitespace() || c.is_control()) => {
            d.error(Some(p.span()), "cluster.key_prefix", "must be non-empty, without spaces or control characters");
            String::new()
        }
        Some(p) => p.get_ref().clone(),
    };
    let password = f.password_file.as_ref().and_then(|pf| {
        let path = resolve(d.file(), pf.get_ref());
        d.files.note(&path);
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => Some(Secret(t.trim().to_string())),
            Ok(_) => {
                d.error(Some(pf.span()), "cluster.password_file", format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                d.error(Some(pf.span()), "cluster.password_file", format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    });
    let ca_pem = f.ca_file.as_ref().and_then(|cf| {
        let path = resolve(d.file(), cf.get_ref());
        d.files.note(&path);
        if !redis_url.starts_with("rediss://") {
            d.error(Some(cf.span()), "cluster.ca_file", "applies only to a rediss:// (TLS) store");
            return None;
        }
        validate_tls::read_ca_pem(&path)
            .map_err(|e| d.error(Some(cf.span()), "cluster.ca_file", format!("{}: {e}", path.display())))
            .ok()
    });
    let timeout = bounded(d, "cluster.timeout", &f.timeout, DEFAULT_TIMEOUT, Duration::from_secs(10));
    let reconcile = bounded(d, "cluster.reconcile", &f.reconcile, DEFAULT_RECONCILE, Duration::from_secs(300));
    let rate_limit_sync =
        bounded(d, "cluster.rate_limit_sync", &f.rate_limit_sync, DEFAULT_RATE_LIMIT_SYNC, Duration::from_secs(10));
    let replica_name = f.replica_name.as_ref().and_then(|n| {
        let name = n.get_ref().trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            d.error(Some(n.span()), "cluster.replica_name", "must be 1 to 128 printable characters");
            None
        } else {
            Some(name.to_string())
        }
    });
    d.cluster_limits.clear();
    Some(ClusterSpec { redis_url, password, ca_pem, key_prefix, timeout, reconcile, rate_limit_sync, replica_name })
}

/// A duration in `(0, max]`.
fn bounded(
    d: &mut Diagnostics,
    key: &str,
    value: &Option<super::file::Sp<String>>,
    default: Duration,
    max: Duration,
) -> Duration {
    let got = duration_or(d, key, value, default);
    if got.is_zero() || got > max {
        let span = value.as_ref().map(|v| v.span());
        d.error(span, key, format!("must be above 0 and at most {}", humantime::format_duration(max)));
        return default;
    }
    got
}

/// `redis://` or `rediss://`, with a host the client can parse.
fn check_url(text: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    let scheme = text.split_once("://").map(|(s, _)| s).unwrap_or("");
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!("{text:?} must start with redis:// or rediss://"));
    }
    // The parser's message may quote the URL; never echo a password.
    text.into_connection_info().map(|_| ()).map_err(|e| format!("is not a usable Redis URL: {}", e.category()))
}
