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

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file this was loaded from; relative paths inside resolve against its directory.
    pub source: PathBuf,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub client_ip: ClientIpSettings,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    Json,
    Off,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub version_header: Option<HeaderName>,
    pub access_log: AccessLogFormat,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
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
    Stable,
    Canary,
    /// Bucket the client IP exactly like a user ID.
    IpHash,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub path_prefix: String,
    /// Lower-case host names; empty means any host. `*.example.com` matches subdomains.
    pub hosts: Vec<String>,
    pub stable: String,
    pub canary: Option<String>,
    /// `canary_percent` × 100, so 10.25% is 1025 of 10,000 buckets.
    pub canary_basis_points: u32,
    pub user_id: Vec<UserIdSource>,
    pub salt: String,
    pub anonymous: AnonymousPolicy,
    pub whitelist_users: HashSet<String>,
    pub whitelist_ips: Vec<IpNet>,
}

impl RouteSpec {
    pub fn canary_percent(&self) -> f64 {
        f64::from(self.canary_basis_points) / 100.0
    }
}
