//! The validated config: what the gateway actually runs on.
//!
//! Built only by `validate.rs` from the file structs; never deserialized
//! directly, so every value here has already been checked.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

/// The highest degrade level, in the config, the state file and the admin API.
pub const MAX_DEGRADE_LEVEL: u8 = 10;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file this was loaded from; relative paths inside resolve against its directory.
    pub source: PathBuf,
    /// Bound when the process starts; a reload keeps the values in force.
    pub startup: super::startup::StartupSettings,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub client_ip: ClientIpSettings,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    pub blacklist: BlacklistSpec,
    /// The degrade level set in the file; a run-time override may replace it.
    pub degrade_level: u8,
    pub rate_limit: RateLimitSpec,
    /// `[anonymous_cookie]`, when a route uses `anonymous = "cookie"`.
    pub anonymous_cookie: Option<AnonymousCookieSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct BlacklistSpec {
    pub cidrs: Vec<IpNet>,
    /// (path, key) of each list file; the files are read when the snapshot is built.
    pub files: Vec<(PathBuf, String)>,
    pub dry_run: bool,
    pub at_accept: bool,
    pub page: StaticPage,
    /// The largest list file accepted, in bytes.
    pub max_file_size: u64,
}

/// A page held in memory, served without touching the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPage {
    pub status: u16,
    pub body: bytes::Bytes,
    pub content_type: &'static str,
}

impl Default for StaticPage {
    fn default() -> Self {
        StaticPage {
            status: 403,
            body: bytes::Bytes::from_static(
                b"<!doctype html><html><head><meta charset=\"utf-8\"><title>403 Forbidden</title></head>\
<body><h1>403 Forbidden</h1><p>Your address is blocked.</p></body></html>\n",
            ),
            content_type: "text/html; charset=utf-8",
        }
    }
}

/// Limits by client IP, by user ID and for the route as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RateLimitSpec {
    pub per_ip: Option<LimitSpec>,
    pub per_user: Option<LimitSpec>,
    pub per_route: Option<LimitSpec>,
}

impl RateLimitSpec {
    pub fn is_empty(&self) -> bool {
        self.per_ip.is_none() && self.per_user.is_none() && self.per_route.is_none()
    }
}

/// A token bucket: `rate` requests per `per`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
    pub scope: LimitScope,
}

/// `[cluster]`: the store a fleet shares run-time state and cluster limits through.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// `redis://` or `rediss://` URL as written (a password in it is never shown).
    pub redis_url: String,
    /// From `password_file`; wins over one in the URL.
    pub password: Option<Secret>,
    /// From `ca_file` (PEM): the roots for `rediss://`; `None`: the system's.
    pub ca_pem: Option<Vec<u8>>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub reconcile: Duration,
    pub rate_limit_sync: Duration,
    /// Names this replica's changes in the store; `None`: host name and process ID.
    pub replica_name: Option<String>,
}

impl ClusterSpec {
    /// The URL without its password, for logs and `/api/status`.
    pub fn redis_display(&self) -> String {
        match self.redis_url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => self.redis_url.clone(),
            },
            None => self.redis_url.clone(),
        }
    }
}

/// A secret read from a file; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Who shares a limit's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LimitScope {
    /// Each gateway counts on its own (a fleet of N admits N × rate).
    #[default]
    Replica,
    /// The fleet shares one budget through the `[cluster]` store.
    Cluster(OnStoreError),
}

/// What a cluster limit does while the shared store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnStoreError {
    /// Enforce the limit on each replica alone.
    #[default]
    Local,
    /// Admit every request the limit would judge.
    Allow,
    /// Refuse every request the limit would judge (429).
    Deny,
}

/// Why a fallback page is served instead of an upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackCause {
    NoHealthyBackend,
    ConnectError,
    Timeout,
    Status5xx,
    /// The degrade level reached the route's `degrade_at`.
    Degraded,
}

impl FallbackCause {
    pub const ALL: [FallbackCause; 5] =
        [Self::NoHealthyBackend, Self::ConnectError, Self::Timeout, Self::Status5xx, Self::Degraded];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoHealthyBackend => "no-healthy-backend",
            Self::ConnectError => "connect-error",
            Self::Timeout => "timeout",
            Self::Status5xx => "5xx",
            Self::Degraded => "degraded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::NoHealthyBackend, Self::ConnectError, Self::Timeout, Self::Status5xx]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackSpec {
    pub page: StaticPage,
    pub retry_after: Option<Duration>,
    pub on: Vec<FallbackCause>,
    pub canary_failover: bool,
}

impl FallbackSpec {
    pub fn covers(&self, cause: FallbackCause) -> bool {
        cause == FallbackCause::Degraded || self.on.contains(&cause)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    Json,
    Off,
}

/// The part of `[server]` that applies live (see `startup.rs` for the rest).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub version_header: Option<HeaderName>,
    /// Set upstream to the version's name; a client's own value is removed.
    pub version_request_header: Option<HeaderName>,
    /// Normalize request paths before routing and forward the normalized path.
    pub normalize_path: bool,
    /// Serve plain HTTP/1.1 requests on the lean path (`proxy::lean`)
    /// rather than through `pingora-proxy`; applies live.
    pub lean_http1: bool,
    /// The whole request head must arrive within this (then 408).
    pub header_timeout: Duration,
    /// The longest gap between two reads of a request body (then 408).
    pub body_timeout: Duration,
    /// Peers that send a PROXY protocol header first (a TCP balancer); empty: none.
    pub proxy_protocol_from: Vec<IpNet>,
    /// `[server.tls]`: the TLS listener and its certificates.
    pub tls: Option<crate::tls::TlsListenerSpec>,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// The bearer token read from `token_file` at load time.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ClientIpSettings {
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HealthProbe {
    Http { path: String },
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckSpec {
    pub probe: HealthProbe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub backends: Vec<BackendSpec>,
    pub health_check: Option<HealthCheckSpec>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `tls = true`: connect to the backends with TLS.
    pub tls: Option<crate::tls::UpstreamTlsSpec>,
}

/// Where a route looks for the user ID, in order; the first one present wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserIdSource {
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

/// What a request without a user ID gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousPolicy {
    /// Always this version (an index into the route's `versions`).
    Version(usize),
    /// Bucket the client IP exactly like a user ID.
    IpHash,
    /// Bucket a random ID kept in a signed cookie (`[anonymous_cookie]`).
    Cookie,
}

/// One version of a route: its upstream and its share of the buckets.
#[derive(Debug, Clone)]
pub struct VersionSpec {
    pub name: String,
    pub upstream: String,
    /// Buckets out of 10,000 (`percent` × 100); 0 for the default version,
    /// which holds every bucket the others do not.
    pub basis_points: u32,
    pub whitelist_users: HashSet<String>,
    pub whitelist_ips: Vec<IpNet>,
}

/// A match rule's expected value.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// `"*"`: present, any value.
    Present,
    Exact(String),
    /// `"~REGEX"`.
    Regex(regex::Regex),
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Present => true,
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }

    /// As written in the config, for `check`, explain and duplicate detection.
    pub fn as_written(&self) -> std::borrow::Cow<'_, str> {
        match self {
            ValueMatch::Present => "*".into(),
            ValueMatch::Exact(v) => v.as_str().into(),
            ValueMatch::Regex(r) => format!("~{}", r.as_str()).into(),
        }
    }
}

/// The conditions a request must meet, besides host and path prefix.
#[derive(Debug, Clone, Default)]
pub struct MatchRules {
    /// Empty: any method.
    pub methods: Vec<http::Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub cookies: Vec<(String, ValueMatch)>,
}

impl MatchRules {
    /// How many conditions: a route with more is more specific.
    pub fn count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len() + self.cookies.len()
    }

    /// A canonical text of the rules: two routes with the same text cannot be told apart.
    pub fn canonical(&self) -> String {
        let mut methods: Vec<&str> = self.methods.iter().map(http::Method::as_str).collect();
        methods.sort_unstable();
        let pairs = |list: &mut dyn Iterator<Item = (&str, String)>| {
            let mut v: Vec<String> = list.map(|(k, m)| format!("{k}={m}")).collect();
            v.sort();
            v.join(",")
        };
        format!(
            "methods[{}] headers[{}] query[{}] cookies[{}]",
            methods.join(","),
            pairs(&mut self.headers.iter().map(|(k, m)| (k.as_str(), m.as_written().into_owned()))),
            pairs(&mut self.query.iter().map(|(k, m)| (k.as_str(), m.as_written().into_owned()))),
            pairs(&mut self.cookies.iter().map(|(k, m)| (k.as_str(), m.as_written().into_owned()))),
        )
    }
}

/// `[routes.override]`: how testers force a version.
#[derive(Debug, Clone)]
pub struct OverrideSpec {
    pub header: Option<HeaderName>,
    pub cookie: Option<String>,
    /// Client IPs that may send a plain version name.
    pub allow_from: Vec<IpNet>,
    /// The key of signed values, read from `secret_file` at load.
    pub key: Option<SecretKey>,
}

/// Key bytes read from a secret file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub std::sync::Arc<[u8]>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// `[anonymous_cookie]`.
#[derive(Debug, Clone)]
pub struct AnonymousCookieSpec {
    pub name: String,
    pub max_age: Duration,
    pub http_only: bool,
    pub same_site: SameSite,
    pub key: SecretKey,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub path_prefix: String,
    /// Lower-case host names; empty means any host. `*.example.com` matches subdomains.
    pub hosts: Vec<String>,
    pub rules: MatchRules,
    /// In file order; the shorthand gives `stable` then `canary`.
    pub versions: Vec<VersionSpec>,
    /// Index into `versions` of the version that holds every bucket no other holds.
    pub default_version: usize,
    pub user_id: Vec<UserIdSource>,
    pub salt: String,
    pub anonymous: AnonymousPolicy,
    pub override_: Option<OverrideSpec>,
    pub rate_limit: RateLimitSpec,
    pub fallback: Option<FallbackSpec>,
    pub degrade_at: Option<u8>,
    pub shadow: Option<std::sync::Arc<ShadowSpec>>,
    /// Index into `versions` that shadowed requests are compared against.
    pub shadow_against: usize,
    /// Plain-HTTP requests get 308 to the TLS listener.
    pub https_redirect: bool,
    pub rollout: Option<RolloutSpec>,
    pub cache: Option<CacheSpec>,
}

/// `[routes.cache]`: which answers are kept, how long, and when a copy stands in for the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSpec {
    /// Freshness when the answer carries no `Cache-Control` `s-maxage`/`max-age`.
    pub ttl: Duration,
    /// Memory for the whole cache (the largest of the routes' values), evicted LRU.
    pub max_size: usize,
    /// Request headers that are part of the key, lower-case.
    pub vary: Vec<http::HeaderName>,
    /// After an upstream failure, a copy up to this much past its freshness is answered.
    pub stale_if_error: Option<Duration>,
    /// (level, age): from this degrade level on, a copy up to this age is answered without asking the upstream.
    pub degrade_ttl: Vec<(u8, Duration)>,
    pub statuses: Vec<u16>,
    pub bypass_cookies: Vec<String>,
    pub allow_authorization: bool,
}

impl CacheSpec {
    /// The age up to which a copy is answered at `level` without asking the upstream.
    pub fn degrade_age(&self, level: u8) -> Option<Duration> {
        self.degrade_ttl.iter().filter(|(l, _)| *l <= level).max_by_key(|(l, _)| *l).map(|(_, d)| *d)
    }
}

/// `[routes.rollout]`: the release guard's plan for one version of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// Index into the route's `versions`; never the default version.
    pub version: usize,
    /// Each step's share, in basis points (percent × 100), strictly increasing.
    pub steps: Vec<u32>,
    pub hold: Duration,
    pub interval: Duration,
    /// Per interval, for the rolled-out version; fewer requests make the check inconclusive.
    pub min_requests: u64,
    /// Consecutive failed checks that abort.
    pub failure_limit: u32,
    pub gates: Gates,
}

/// The thresholds a check compares with; `None`: that gate is not checked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Gates {
    /// Percent points: the version's error rate minus the default version's.
    pub max_error_rate_delta: Option<f64>,
    /// Percent.
    pub max_error_rate: Option<f64>,
    /// The version's p99 over the default version's.
    pub max_p99_ratio: Option<f64>,
    /// Percent of shadowed requests with a real (non-noise) differing field.
    pub max_diff_rate: Option<f64>,
}

/// How one route's requests are mirrored to the other version and compared.
#[derive(Debug, Clone)]
pub struct ShadowSpec {
    /// Share of eligible requests mirrored, out of 10,000.
    pub basis_points: u32,
    pub methods: Vec<http::Method>,
    /// Requests with larger bodies are not mirrored (counted as skipped).
    pub max_body: usize,
    pub timeout: Duration,
    pub max_in_flight: usize,
    /// Share of shadowed requests also sent again to the primary's own version (0.0..=1.0).
    pub noise_check: f64,
    pub marker: (HeaderName, http::HeaderValue),
    pub diff: crate::shadow::DiffOptions,
}

impl RouteSpec {
    /// The share of the non-default versions together, in percent.
    pub fn canary_percent(&self) -> f64 {
        f64::from(self.versions.iter().map(|v| v.basis_points).sum::<u32>()) / 100.0
    }

    pub fn version_index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v.name == name)
    }
}
