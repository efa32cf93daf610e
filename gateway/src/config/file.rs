//! The config file as written: serde structs that mirror `gateway.toml`.
//!
//! Nothing here is used at request time. Values whose meaning needs checking
//! (durations, addresses, CIDRs, percentages) stay `Spanned` strings or
//! numbers so that validation can point at their line; `validate.rs` turns
//! them into the runtime model in `model.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type Sp<T> = Spanned<T>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<Vec<Sp<String>>>,
    pub threads: Option<Sp<i64>>,
    /// Let idle threads take tasks from busy ones (Pingora's default); off by default.
    pub work_stealing: Option<Sp<bool>>,
    pub shutdown_grace: Option<Sp<String>>,
    pub version_header: Option<Sp<String>>,
    /// A request header set on every proxied request to the version's name, so
    /// services behind the route keep the request in its lane.
    pub version_request_header: Option<Sp<String>>,
    /// "text" (default), "json" or "off".
    pub access_log: Option<Sp<String>>,
    /// Per-connection read buffer, e.g. "64KiB" (Pingora's default).
    pub read_buffer: Option<Sp<String>>,
    /// Normalize request paths (RFC 3986 dot segments, unreserved escapes, repeated slashes) before routing.
    pub normalize_path: Option<Sp<bool>>,
    pub lean_http1: Option<Sp<bool>>,
    /// The whole request head must arrive within this, e.g. "10s".
    pub header_timeout: Option<Sp<String>>,
    /// The longest gap between two reads of a request body, e.g. "30s".
    pub body_timeout: Option<Sp<String>>,
    pub tls: Option<Sp<TlsFile>>,
    /// `{ from = ["10.0.0.0/8"] }`: these peers send (and must send) a PROXY protocol header.
    pub proxy_protocol: Option<Sp<ProxyProtocolFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolFile {
    pub from: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<Sp<String>>,
    pub token_file: Option<Sp<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpFile {
    #[serde(default)]
    pub trusted_proxies: Vec<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub backends: Vec<Sp<BackendFile>>,
    pub health_check: Option<Sp<HealthCheckFile>>,
    pub connect_timeout: Option<Sp<String>>,
    pub read_timeout: Option<Sp<String>>,
    /// Connect to the backends with TLS; `sni`, `verify` and `ca_file` refine it.
    pub tls: Option<Sp<bool>>,
    pub sni: Option<Sp<String>>,
    pub verify: Option<Sp<bool>>,
    pub ca_file: Option<Sp<String>>,
}

/// `"127.0.0.1:9001"` or `{ addr = "127.0.0.1:9003", weight = 2 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BackendFile {
    Addr(String),
    Weighted(WeightedBackendFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackendFile {
    pub addr: String,
    pub weight: Option<i64>,
}

/// `{ path = "/healthz", interval = "2s" }` or `{ tcp = true, interval = "1s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    pub tcp: Option<bool>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    /// Consecutive successes before a down backend takes traffic again.
    pub healthy_after: Option<i64>,
    /// Consecutive failures before a backend is taken out.
    pub unhealthy_after: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Sp<String>,
    pub path_prefix: Sp<String>,
    #[serde(default)]
    pub hosts: Vec<Sp<String>>,
    /// Match rules: all that are set must hold.
    pub methods: Option<Sp<Vec<String>>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Sp<String>>,
    #[serde(default)]
    pub query: BTreeMap<String, Sp<String>>,
    #[serde(default)]
    pub cookies: BTreeMap<String, Sp<String>>,
    /// The versions form: `versions = [{ name, upstream, percent }]` and `default`.
    pub versions: Option<Sp<Vec<Sp<VersionFile>>>>,
    pub default: Option<Sp<String>>,
    /// The two-version shorthand: `stable`, `canary`, `canary_percent` and the whitelists.
    pub stable: Option<Sp<String>>,
    pub canary: Option<Sp<String>>,
    pub canary_percent: Option<Sp<f64>>,
    pub user_id: Option<Vec<Sp<String>>>,
    pub salt: Option<Sp<String>>,
    pub anonymous: Option<Sp<String>>,
    #[serde(default)]
    pub whitelist_users: Vec<Sp<String>>,
    #[serde(default)]
    pub whitelist_ips: Vec<Sp<String>>,
    /// `[routes.override]`: testers force a version by header or cookie.
    #[serde(rename = "override")]
    pub override_: Option<Sp<OverrideFile>>,
    pub rate_limit: Option<RateLimitFile>,
    pub fallback: Option<FallbackFile>,
    /// Serve the fallback page, without contacting the upstream, from this degrade level on.
    pub degrade_at: Option<Sp<i64>>,
    pub shadow: Option<Sp<ShadowFile>>,
    /// Answer plain-HTTP requests with 308 to the same URL on the TLS listener.
    pub https_redirect: Option<Sp<bool>>,
    /// The release guard: widen a version step by step, roll it back when it misbehaves.
    pub rollout: Option<Sp<RolloutFile>>,
    /// Answers kept in memory: served while fresh, when the upstream fails, and under degrade levels.
    pub cache: Option<Sp<CacheFile>>,
}

/// `[routes.cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub ttl: Option<String>,
    pub max_size: Option<String>,
    #[serde(default)]
    pub vary: Vec<String>,
    pub stale_if_error: Option<String>,
    #[serde(default)]
    pub degrade_ttl: BTreeMap<String, String>,
    pub statuses: Option<Vec<i64>>,
    #[serde(default)]
    pub bypass_cookies: Vec<String>,
    /// Serve and store answers to requests with `Authorization` (shared by every caller).
    #[serde(default)]
    pub allow_authorization: bool,
}

fn yes() -> bool {
    true
}

/// `[routes.rollout]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    /// The version rolled out; default: the canary of the two-version shorthand, or the only non-default version.
    pub version: Option<String>,
    pub steps: Vec<f64>,
    pub hold: Option<String>,
    pub interval: Option<String>,
    pub min_requests: Option<i64>,
    pub failure_limit: Option<i64>,
    #[serde(default)]
    pub gates: GatesFile,
    pub on_abort: Option<String>,
}

/// `gates = { max_error_rate_delta = 0.5, max_error_rate = 2.0, max_p99_ratio = 1.3, max_diff_rate = 1.0 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesFile {
    pub max_error_rate_delta: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub max_diff_rate: Option<f64>,
}

/// One entry of `versions = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionFile {
    pub name: String,
    pub upstream: String,
    pub percent: Option<f64>,
    #[serde(default)]
    pub whitelist_users: Vec<String>,
    #[serde(default)]
    pub whitelist_ips: Vec<String>,
}

/// `[routes.override]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideFile {
    pub header: Option<String>,
    pub cookie: Option<String>,
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// A key file, relative to the config file: signed values are honoured from any client.
    pub secret_file: Option<String>,
}

/// `[anonymous_cookie]`: the signed cookie that keeps anonymous users on one version.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousCookieFile {
    pub secret_file: Option<Sp<String>>,
    pub name: Option<Sp<String>>,
    pub max_age: Option<Sp<String>>,
    pub http_only: Option<Sp<bool>>,
    pub same_site: Option<Sp<String>>,
}

/// `[routes.shadow]`: mirror this route's requests to the other version and compare.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowFile {
    /// The version every other version is compared against (default: the route's default).
    pub against: Option<String>,
    pub percent: Option<f64>,
    pub methods: Option<Vec<String>>,
    pub max_body: Option<String>,
    pub timeout: Option<String>,
    pub max_in_flight: Option<i64>,
    #[serde(default)]
    pub ignore_headers: Vec<String>,
    #[serde(default)]
    pub ignore_fields: Vec<String>,
    pub noise_check: Option<f64>,
    /// `"x-shadow: 1"`: the header that marks a shadow request for backends.
    pub marker: Option<String>,
    pub numeric_tolerance: Option<f64>,
    #[serde(default)]
    pub array_sets: Vec<String>,
    pub max_compare_body: Option<String>,
}

/// `[shadow]`: where diff records go and how long they stay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowStoreFile {
    pub store: Option<Sp<String>>,
    pub max_age: Option<Sp<String>>,
    pub max_records: Option<Sp<i64>>,
    pub queue: Option<Sp<i64>>,
    /// Records stored per second per route and outcome; the
    /// rest are counted into the next stored record's weight.
    pub store_per_second: Option<Sp<i64>>,
    pub max_stored_body: Option<Sp<String>>,
    pub redact_headers: Option<Vec<String>>,
}

/// `[blacklist]`: addresses and ranges that get 403 before routing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistFile {
    #[serde(default)]
    pub cidrs: Vec<Sp<String>>,
    /// List files, relative to the config file: one address or CIDR per line.
    #[serde(default)]
    pub files: Vec<Sp<String>>,
    /// Log and count would-be blocks without blocking.
    #[serde(default)]
    pub dry_run: bool,
    /// Close a directly connected blocked client's TCP connection at accept
    /// (cheapest under attack) instead of answering the 403 page.
    #[serde(default)]
    pub at_accept: bool,
    /// An HTML page for blocked clients, relative to the config file.
    pub page: Option<Sp<String>>,
    pub status: Option<Sp<i64>>,
    /// The largest list file accepted, e.g. "256MiB".
    pub max_file_size: Option<Sp<String>>,
}

/// `[state]`: where run-time changes (blocks, degrade level) are kept across restarts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSectionFile {
    pub path: Option<Sp<String>>,
}

/// `[degrade]`: the emergency level; routes with `degrade_at <= level` serve their fallback page.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradeFile {
    pub level: Option<Sp<i64>>,
}

/// `[rate_limit]` (global) and `[routes.rate_limit]` (per route).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub per_ip: Option<Sp<LimitFile>>,
    pub per_user: Option<Sp<LimitFile>>,
    pub per_route: Option<Sp<LimitFile>>,
}

/// `{ rate = "200/s", burst = 400, scope = "cluster", on_store_error = "local" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    pub rate: String,
    pub burst: Option<i64>,
    /// `"replica"` (default): each gateway counts alone; `"cluster"`: the fleet shares one budget.
    pub scope: Option<String>,
    /// For a cluster limit while the store is unreachable: `"local"` (default), `"allow"` or `"deny"`.
    pub on_store_error: Option<String>,
}

/// `[cluster]`: the fleet's shared store (Redis). Absent: a single gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub redis: Option<Sp<String>>,
    pub key_prefix: Option<Sp<String>>,
    /// Relative to the config file; overrides a password in the URL.
    pub password_file: Option<Sp<String>>,
    /// With `rediss://`: the CA (PEM) to verify the store's certificate with, instead of the system's roots.
    pub ca_file: Option<Sp<String>>,
    /// Per Redis call.
    pub timeout: Option<Sp<String>>,
    /// How often the whole shared state is read back (pub/sub carries changes at once).
    pub reconcile: Option<Sp<String>>,
    /// How often cluster rate-limit counts are exchanged.
    pub rate_limit_sync: Option<Sp<String>>,
    /// This replica's name in the shared store (default: host name and process ID).
    pub replica_name: Option<Sp<String>>,
}

/// `[routes.fallback]`: the static page served when the upstream cannot answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackFile {
    pub page: Sp<String>,
    pub status: Option<Sp<i64>>,
    pub retry_after: Option<Sp<String>>,
    pub on: Option<Vec<Sp<String>>>,
    #[serde(default)]
    pub canary_failover: bool,
}

/// `[server.tls]`: the TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    #[serde(default)]
    pub listen: Vec<Sp<String>>,
    #[serde(default)]
    pub certs: Vec<Sp<CertFile>>,
    /// Offer HTTP/2 by ALPN alongside HTTP/1.1 (default false).
    pub http2: Option<bool>,
}

/// `{ cert = "shop.pem", key = "shop.key", default = true }`, relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub default: bool,
}
