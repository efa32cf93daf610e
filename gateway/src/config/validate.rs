//! File structs -> validated model, collecting every error on the way.
//!
//! Each top-level section (and each `[upstreams.X]` and `[[routes]]` entry)
//! is deserialized on its own, so a typo in one route does not hide a bad
//! CIDR in another: `gateway check` reports all of them at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::{ConfigError, ConfigWarning, Diagnostics};
use super::file::*;
use super::model::*;
use super::validate_edge;
use super::validate_server;
use super::validate_shadow;
use super::validate_tls;
use super::values;

/// A config that passed validation, with what `gateway check` should still mention.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: GatewayConfig,
    pub warnings: Vec<ConfigWarning>,
    /// Short SHA-256 of the file's bytes: shows in /api/status, tells reloads apart.
    pub hash: String,
}

const SECTIONS: &str = "server, admin, client_ip, upstreams, routes, blacklist, rate_limit, degrade, state, shadow";

/// Read and validate a config file.
pub fn load_file(path: &Path) -> Result<LoadedConfig, Vec<ConfigError>> {
    parse(path, &read_file(path)?)
}

/// The config file's text, or the error `load_file` would report.
pub fn read_file(path: &Path) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }]
    })
}

/// The short hash that identifies a config text (shown in /api/status).
pub fn text_hash(source: &str) -> String {
    Sha256::digest(source.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Validate config text that was read from `path` (used for messages and relative paths).
pub fn parse(path: &Path, source: &str) -> Result<LoadedConfig, Vec<ConfigError>> {
    let mut d = Diagnostics::new(path, source);
    let (root, syntax_errors) = DeTable::parse_recoverable(source);
    for e in &syntax_errors {
        d.toml_error("", e);
    }
    if !d.errors.is_empty() {
        return Err(d.errors);
    }

    let mut server = ServerFile::default();
    let mut admin = AdminFile::default();
    let mut client_ip = ClientIpFile::default();
    let mut upstreams: Vec<(String, Range<usize>, UpstreamFile)> = Vec::new();
    let mut routes: Vec<(usize, RouteFile)> = Vec::new();
    let mut blacklist = BlacklistFile::default();
    let mut state = StateSectionFile::default();
    let mut degrade = DegradeFile::default();
    let mut rate_limit = RateLimitFile::default();
    let mut shadow_store = ShadowStoreFile::default();

    for (key, value) in root.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "server" => server = section(&mut d, "server", value).unwrap_or_default(),
            "admin" => admin = section(&mut d, "admin", value).unwrap_or_default(),
            "client_ip" => client_ip = section(&mut d, "client_ip", value).unwrap_or_default(),
            "blacklist" => blacklist = section(&mut d, "blacklist", value).unwrap_or_default(),
            "state" => state = section(&mut d, "state", value).unwrap_or_default(),
            "degrade" => degrade = section(&mut d, "degrade", value).unwrap_or_default(),
            "rate_limit" => rate_limit = section(&mut d, "rate_limit", value).unwrap_or_default(),
            "shadow" => shadow_store = section(&mut d, "shadow", value).unwrap_or_default(),
            "upstreams" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Table(table) => {
                        for (name, v) in table {
                            let name_span = name.span();
                            let name = name.get_ref().to_string();
                            let key = format!("upstreams.{name}");
                            if let Some(u) = section(&mut d, &key, v) {
                                upstreams.push((name, name_span, u));
                            }
                        }
                    }
                    _ => d.error(Some(span), "upstreams", "must be a table of [upstreams.NAME] sections"),
                }
            }
            "routes" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Array(items) => {
                        for (i, v) in items.into_iter().enumerate() {
                            if let Some(r) = section(&mut d, &format!("routes[{i}]"), v) {
                                routes.push((i, r));
                            }
                        }
                    }
                    _ => d.error(Some(span), "routes", "must be an array of [[routes]] tables"),
                }
            }
            other => d.error(Some(key_span), other, format!("unknown section; expected one of {SECTIONS}")),
        }
    }

    let server = validate_server::server(&mut d, server);
    let admin = validate_server::admin(&mut d, admin);
    let client_ip =
        ClientIpSettings { trusted_proxies: cidrs(&mut d, "client_ip.trusted_proxies", &client_ip.trusted_proxies) };
    let upstreams = validate_upstreams(&mut d, upstreams);
    let routes = validate_routes(&mut d, routes, &upstreams, server.tls.is_some());
    let blacklist = validate_edge::blacklist(&mut d, &blacklist);
    let state_path = validate_edge::state_path(&d, &state);
    let degrade_level = validate_edge::degrade_level(&mut d, &degrade);
    let rate_limit = validate_edge::rate_limit(&mut d, "rate_limit", &rate_limit);
    let shadow_store = validate_shadow::store(&mut d, &shadow_store);
    if routes.is_empty() && d.errors.is_empty() {
        // Also what a half-written or truncated file looks like: never serve it.
        d.error(None, "routes", "the config defines no [[routes]]; every request would get a 404");
    }

    if !d.errors.is_empty() {
        d.errors.sort_by_key(|e| e.line);
        return Err(d.errors);
    }
    let hash = text_hash(source);
    Ok(LoadedConfig {
        config: GatewayConfig {
            source: path.to_path_buf(),
            server,
            admin,
            client_ip,
            upstreams,
            routes,
            blacklist,
            state_path,
            degrade_level,
            rate_limit,
            shadow_store,
        },
        warnings: d.warnings,
        hash,
    })
}

/// Deserialize one section on its own, recording (not returning) its errors.
///
/// An unknown key is reported and then removed so the rest of the section is
/// still checked: one typo must not hide the section's other mistakes.
fn section<T: DeserializeOwned>(d: &mut Diagnostics, key: &str, value: toml::Spanned<DeValue>) -> Option<T> {
    let mut value = value;
    for _ in 0..32 {
        let attempt = value.clone();
        match T::deserialize(ValueDeserializer::from(attempt)) {
            Ok(v) => return Some(v),
            Err(e) => {
                d.toml_error(key, &e);
                let unknown = e
                    .message()
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(field, _)| field.to_string());
                let removed = match (unknown, value.get_mut()) {
                    (Some(field), DeValue::Table(table)) => {
                        let found = table.keys().find(|k| k.get_ref().as_ref() == field.as_str()).cloned();
                        found.is_some_and(|k| table.remove(&k).is_some())
                    }
                    _ => false,
                };
                if !removed {
                    return None;
                }
            }
        }
    }
    None
}

pub(super) fn cidrs(d: &mut Diagnostics, key: &str, items: &[Sp<String>]) -> Vec<ipnet::IpNet> {
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| match values::cidr(item.get_ref()) {
            Ok(net) => Some(net),
            Err(e) => {
                d.error(Some(item.span()), format!("{key}[{i}]"), e);
                None
            }
        })
        .collect()
}

/// Resolve a path written in the config relative to the config file's directory.
pub fn resolve(config_file: &Path, path: &str) -> std::path::PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn validate_upstreams(
    d: &mut Diagnostics,
    files: Vec<(String, Range<usize>, UpstreamFile)>,
) -> BTreeMap<String, UpstreamSpec> {
    let mut out = BTreeMap::new();
    for (name, name_span, f) in files {
        let key = format!("upstreams.{name}");
        if f.backends.is_empty() {
            d.error(Some(name_span.clone()), format!("{key}.backends"), "needs at least one backend");
        }
        let mut backends: Vec<BackendSpec> = Vec::new();
        for (i, b) in f.backends.iter().enumerate() {
            let bkey = format!("{key}.backends[{i}]");
            let (addr, weight) = match b.get_ref() {
                BackendFile::Addr(a) => (a.as_str(), 1),
                BackendFile::Weighted(w) => (w.addr.as_str(), w.weight.unwrap_or(1)),
            };
            let Ok(weight) =
                u32::try_from(weight)
                    .map_err(|_| ())
                    .and_then(|w| if (1..=1000).contains(&w) { Ok(w) } else { Err(()) })
            else {
                d.error(Some(b.span()), format!("{bkey}.weight"), format!("{weight} is outside 1..=1000"));
                continue;
            };
            match values::socket_addr(addr) {
                Ok(addr) if backends.iter().any(|x| x.addr == addr) => {
                    d.error(Some(b.span()), bkey, format!("{addr} is listed twice; use weight instead"));
                }
                Ok(addr) => backends.push(BackendSpec { addr, weight }),
                Err(e) => d.error(Some(b.span()), bkey, e),
            }
        }
        let health_check = f.health_check.as_ref().and_then(|hc| health_check(d, &key, hc));
        let connect_timeout = validate_server::duration_or(
            d,
            &format!("{key}.connect_timeout"),
            &f.connect_timeout,
            Duration::from_secs(1),
        );
        let read_timeout =
            validate_server::duration_or(d, &format!("{key}.read_timeout"), &f.read_timeout, Duration::from_secs(30));
        let tls = validate_tls::upstream(d, &key, &f);
        out.insert(name.clone(), UpstreamSpec { name, backends, health_check, connect_timeout, read_timeout, tls });
    }
    out
}

fn health_check(d: &mut Diagnostics, upstream_key: &str, hc: &Sp<HealthCheckFile>) -> Option<HealthCheckSpec> {
    let key = format!("{upstream_key}.health_check");
    let span = hc.span();
    let f = hc.get_ref();
    let probe = match (&f.path, f.tcp) {
        (Some(p), None | Some(false)) if p.starts_with('/') => HealthProbe::Http { path: p.clone() },
        (Some(p), None | Some(false)) => {
            d.error(Some(span), format!("{key}.path"), format!("{p:?} must start with '/'"));
            return None;
        }
        (None, Some(true)) => HealthProbe::Tcp,
        (Some(_), Some(true)) => {
            d.error(Some(span), key, "set either path (HTTP probe) or tcp = true, not both");
            return None;
        }
        (None, _) => {
            d.error(Some(span), key, "needs path = \"/healthz\" or tcp = true");
            return None;
        }
    };
    let mut dur = |field: &str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(t) => values::duration(t).unwrap_or_else(|e| {
            d.error(Some(span.clone()), format!("{key}.{field}"), e);
            default
        }),
    };
    let interval = dur("interval", &f.interval, Duration::from_secs(2));
    let timeout = dur("timeout", &f.timeout, Duration::from_secs(1)).min(interval);
    let mut count = |field: &str, v: Option<i64>, default: u32| match v {
        None => default,
        Some(n) if (1..=100).contains(&n) => n as u32,
        Some(n) => {
            d.error(Some(span.clone()), format!("{key}.{field}"), format!("{n} is outside 1..=100"));
            default
        }
    };
    let healthy_after = count("healthy_after", f.healthy_after, 1);
    let unhealthy_after = count("unhealthy_after", f.unhealthy_after, 2);
    Some(HealthCheckSpec { probe, interval, timeout, healthy_after, unhealthy_after })
}

fn upstream_ref(d: &mut Diagnostics, key: String, name: &Sp<String>, upstreams: &BTreeMap<String, UpstreamSpec>) {
    if !upstreams.contains_key(name.get_ref()) {
        let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        d.error(
            Some(name.span()),
            key,
            format!("unknown upstream {:?} (defined: {})", name.get_ref(), known.join(", ")),
        );
    }
}

fn validate_routes(
    d: &mut Diagnostics,
    files: Vec<(usize, RouteFile)>,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    has_tls: bool,
) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut matches: HashMap<(Vec<String>, String), String> = HashMap::new();
    for (i, f) in files {
        let key = format!("routes[{i}]");
        let name = f.name.get_ref().trim().to_string();
        if name.is_empty() {
            d.error(Some(f.name.span()), format!("{key}.name"), "must not be empty");
        } else if let Some(first) = names.insert(name.clone(), i) {
            d.error(Some(f.name.span()), format!("{key}.name"), format!("{name:?} is already used by routes[{first}]"));
        }
        let prefix = f.path_prefix.get_ref().clone();
        if !prefix.starts_with('/') {
            d.error(
                Some(f.path_prefix.span()),
                format!("{key}.path_prefix"),
                format!("{prefix:?} must start with '/'"),
            );
        }
        let mut hosts: Vec<String> = Vec::new();
        for (h, host) in f.hosts.iter().enumerate() {
            let lower = host.get_ref().trim().to_ascii_lowercase();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            if bare.is_empty() || !bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                d.error(
                    Some(host.span()),
                    format!("{key}.hosts[{h}]"),
                    format!("{:?} is not a host name", host.get_ref()),
                );
            } else {
                hosts.push(lower);
            }
        }
        let mut sorted_hosts = hosts.clone();
        sorted_hosts.sort();
        if let Some(other) = matches.insert((sorted_hosts, prefix.clone()), name.clone()) {
            d.error(
                Some(f.path_prefix.span()),
                format!("{key}.path_prefix"),
                format!("route {other:?} already matches the same hosts and path_prefix {prefix:?}; one of them could never be chosen"),
            );
        }

        upstream_ref(d, format!("{key}.stable"), &f.stable, upstreams);
        if let Some(c) = &f.canary {
            upstream_ref(d, format!("{key}.canary"), c, upstreams);
            if c.get_ref() == f.stable.get_ref() {
                d.warn(Some(c.span()), format!("{key}.canary"), "is the same upstream as stable");
            }
        }
        let canary_basis_points = match &f.canary_percent {
            None => 0,
            Some(p) => values::percent_basis_points(*p.get_ref()).unwrap_or_else(|e| {
                d.error(Some(p.span()), format!("{key}.canary_percent"), e);
                0
            }),
        };
        let has_whitelist = !f.whitelist_users.is_empty() || !f.whitelist_ips.is_empty();
        if f.canary.is_none() && (canary_basis_points > 0 || has_whitelist) {
            d.error(
                Some(f.name.span()),
                format!("{key}.canary"),
                "canary_percent or a whitelist is set but the route names no canary upstream",
            );
        }
        let user_id = match &f.user_id {
            None => vec![UserIdSource::Header(HeaderName::from_static("x-user-id"))],
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(u, s)| {
                    values::user_id_source(s.get_ref())
                        .map_err(|e| d.error(Some(s.span()), format!("{key}.user_id[{u}]"), e))
                        .ok()
                })
                .collect(),
        };
        let anonymous = match f.anonymous.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
            None | Some(("stable", _)) => AnonymousPolicy::Stable,
            Some(("canary", _)) => AnonymousPolicy::Canary,
            Some(("ip-hash", _)) => AnonymousPolicy::IpHash,
            Some((other, span)) => {
                d.error(
                    Some(span),
                    format!("{key}.anonymous"),
                    format!("{other:?} must be \"stable\", \"canary\" or \"ip-hash\""),
                );
                AnonymousPolicy::Stable
            }
        };
        let salt = f.salt.as_ref().map(|s| s.get_ref().clone()).unwrap_or_else(|| name.clone());
        let whitelist_users: HashSet<String> =
            f.whitelist_users.iter().map(|u| u.get_ref().trim().to_string()).collect();
        let whitelist_ips = cidrs(d, &format!("{key}.whitelist_ips"), &f.whitelist_ips);
        let rate_limit = f
            .rate_limit
            .as_ref()
            .map(|r| validate_edge::rate_limit(d, &format!("{key}.rate_limit"), r))
            .unwrap_or_default();
        let fallback = f.fallback.as_ref().and_then(|fb| validate_edge::fallback(d, &format!("{key}.fallback"), fb));
        let degrade_at = validate_edge::degrade_at(d, &format!("{key}.degrade_at"), &f.degrade_at);
        let shadow = f.shadow.as_ref().and_then(|sh| validate_shadow::route_shadow(d, &format!("{key}.shadow"), sh));
        if let (Some(sh), None) = (&f.shadow, &f.canary) {
            d.error(
                Some(sh.span()),
                format!("{key}.shadow"),
                "shadowing compares stable with canary; the route names no canary",
            );
        }
        if let (Some(at), None) = (&f.degrade_at, &f.fallback) {
            d.error(
                Some(at.span()),
                format!("{key}.degrade_at"),
                "a degradable route needs a [routes.fallback] page to serve",
            );
        }
        let https_redirect = validate_tls::https_redirect(d, &key, &f.https_redirect, has_tls);
        out.push(RouteSpec {
            name,
            path_prefix: prefix,
            hosts,
            stable: f.stable.get_ref().clone(),
            canary: f.canary.as_ref().map(|c| c.get_ref().clone()),
            canary_basis_points,
            user_id,
            salt,
            anonymous,
            whitelist_users,
            whitelist_ips,
            rate_limit,
            fallback,
            degrade_at,
            shadow,
            https_redirect,
        });
    }
    out
}
