//! File structs -> validated model, collecting every error on the way.
//!
//! Each top-level section (and each `[upstreams.X]` and `[[routes]]` entry)
//! is deserialized on its own, so a typo in one route does not hide a bad
//! CIDR in another: `gateway check` reports all of them at once.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::{ConfigError, ConfigWarning, Diagnostics};
use super::file::*;
use super::model::*;
use super::startup::StartupSettings;
use super::validate_cluster;
use super::validate_edge;
use super::validate_route;
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
    /// Every other file the load read, as it was then.
    pub files: super::files::FileRecord,
}

const SECTIONS: &str =
    "server, admin, client_ip, upstreams, routes, blacklist, rate_limit, degrade, state, shadow, anonymous_cookie, cluster";

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
    let mut anonymous_cookie = AnonymousCookieFile::default();
    let mut cluster: Option<ClusterFile> = None;

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
            "anonymous_cookie" => anonymous_cookie = section(&mut d, "anonymous_cookie", value).unwrap_or_default(),
            "cluster" => cluster = Some(section(&mut d, "cluster", value).unwrap_or_default()),
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

    let (server, server_startup) = validate_server::server(&mut d, server);
    let (admin, admin_listen) = validate_server::admin(&mut d, admin);
    let client_ip =
        ClientIpSettings { trusted_proxies: cidrs(&mut d, "client_ip.trusted_proxies", &client_ip.trusted_proxies) };
    let upstreams = validate_upstreams(&mut d, upstreams);
    let (routes, cookie_users) = validate_route::routes(&mut d, routes, &upstreams, server.tls.is_some());
    let anonymous_cookie = validate_edge::anonymous_cookie(&mut d, &anonymous_cookie, &cookie_users);
    let blacklist = validate_edge::blacklist(&mut d, &blacklist);
    let state_path = validate_edge::state_path(&d, &state);
    let degrade_level = validate_edge::degrade_level(&mut d, &degrade);
    let rate_limit = validate_edge::rate_limit(&mut d, "rate_limit", &rate_limit);
    let shadow_store = validate_shadow::store(&mut d, &shadow_store);
    let cluster = validate_cluster::cluster(&mut d, cluster);
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
            startup: StartupSettings { admin_listen, state_path, server: server_startup, cluster, shadow_store },
            server,
            admin,
            client_ip,
            upstreams,
            routes,
            blacklist,
            degrade_level,
            rate_limit,
            anonymous_cookie,
        },
        warnings: d.warnings,
        files: d.files,
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

/// Read a key file named in the config (relative to it): at least 16 bytes
/// once surrounding whitespace is trimmed, so a short or empty file cannot
/// make signatures guessable.
pub(super) fn read_secret(d: &mut Diagnostics, key: &str, path: &Sp<String>) -> Option<SecretKey> {
    let file = resolve(d.file(), path.get_ref());
    d.files.note(&file);
    match std::fs::read(&file) {
        Ok(bytes) if bytes.trim_ascii().len() >= 16 => Some(SecretKey(bytes.trim_ascii().into())),
        Ok(_) => {
            d.error(Some(path.span()), key, format!("{} holds fewer than 16 bytes of key", file.display()));
            None
        }
        Err(e) => {
            d.error(Some(path.span()), key, format!("cannot read {}: {e}", file.display()));
            None
        }
    }
}
