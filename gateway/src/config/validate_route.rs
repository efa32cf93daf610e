//! `[[routes]]`: match (hosts, prefix, rules), versions and their shares,
//! user ID, anonymous policy, tester overrides, and the per-route edge
//! settings. Every route's errors are collected; a route no request can
//! reach, because a route tried before it takes all its requests, is an
//! error too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use http::HeaderName;

use super::error::Diagnostics;
use super::file::*;
use super::model::*;
use super::route_cover::RouteMatch;
use super::validate::{cidrs, read_secret};
use super::{validate_cache, validate_edge, validate_rollout, validate_shadow, validate_tls, values};
use crate::routing::lanes::Lanes;
use crate::routing::router::precedence;

/// The most versions one route may have (the default and four more).
const MAX_VERSIONS: usize = 1 + crate::routing::lanes::MAX_NON_DEFAULT;

pub(super) fn routes(
    d: &mut Diagnostics,
    files: Vec<(usize, RouteFile)>,
    upstreams: &BTreeMap<String, UpstreamSpec>,
    has_tls: bool,
) -> (Vec<RouteSpec>, Vec<(String, Range<usize>)>) {
    let mut out = Vec::new();
    // Routes with `anonymous = "cookie"`, where: they need `[anonymous_cookie]`.
    let mut cookie_users = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    // Per route in `out`, for `unreachable`.
    let mut placed: Vec<Placed> = Vec::new();
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
        let errors_before = d.errors.len();
        let hosts = hosts(d, &key, &f.hosts);
        let rules = rules(d, &key, &f);
        // A route with an invalid host or rule lost it, and looks wider than
        // it is written: `unreachable` does not judge by it.
        let clean = d.errors.len() == errors_before;
        placed.push(Placed { key: key.clone(), prefix: f.path_prefix.span(), clean });
        let (versions, default_version) = versions(d, &key, &f, upstreams);
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
        let anonymous = anonymous(d, &key, &f.anonymous, &versions, default_version);
        if let (AnonymousPolicy::Cookie, Some(a)) = (anonymous, &f.anonymous) {
            cookie_users.push((format!("{key}.anonymous"), a.span()));
        }
        let salt = f.salt.as_ref().map(|s| s.get_ref().clone()).unwrap_or_else(|| name.clone());
        let override_ = f.override_.as_ref().and_then(|o| override_spec(d, &format!("{key}.override"), o));
        let rate_limit = f
            .rate_limit
            .as_ref()
            .map(|r| validate_edge::rate_limit(d, &format!("{key}.rate_limit"), r))
            .unwrap_or_default();
        let fallback = f.fallback.as_ref().and_then(|fb| validate_edge::fallback(d, &format!("{key}.fallback"), fb));
        let degrade_at = validate_edge::degrade_at(d, &format!("{key}.degrade_at"), &f.degrade_at);
        let shadow = f.shadow.as_ref().and_then(|sh| validate_shadow::route_shadow(d, &format!("{key}.shadow"), sh));
        let shadow_against = match f.shadow.as_ref() {
            None => default_version,
            Some(sh) => shadow_against(d, &key, sh, &versions, default_version),
        };
        if let (Some(at), None) = (&f.degrade_at, &f.fallback) {
            d.error(
                Some(at.span()),
                format!("{key}.degrade_at"),
                "a degradable route needs a [routes.fallback] page to serve",
            );
        }
        let https_redirect = validate_tls::https_redirect(d, &key, &f.https_redirect, has_tls);
        let rollout =
            f.rollout.as_ref().and_then(|r| validate_rollout::rollout(d, &key, r, &versions, default_version));
        let cache = f.cache.as_ref().and_then(|c| validate_cache::cache(d, &key, c));
        out.push(RouteSpec {
            name,
            path_prefix: prefix,
            hosts,
            rules,
            versions,
            default_version,
            user_id,
            salt,
            anonymous,
            override_,
            rate_limit,
            fallback,
            degrade_at,
            shadow,
            shadow_against,
            https_redirect,
            rollout,
            cache,
        });
    }
    unreachable(d, &out, &placed);
    (out, cookie_users)
}

/// Where a route's `path_prefix` is, and whether its hosts and rules were
/// read without an error.
struct Placed {
    key: String,
    prefix: Range<usize>,
    clean: bool,
}

/// Reports every route the router never picks: a route tried before it
/// covers it (`route_cover`). Each is reported once, naming the first
/// route in the router's order that takes its requests.
fn unreachable(d: &mut Diagnostics, routes: &[RouteSpec], placed: &[Placed]) {
    let clean = |i: usize| placed.get(i).is_some_and(|p| p.clean);
    let order = |i: usize| {
        let r = &routes[i];
        precedence(&r.hosts, &r.path_prefix, &r.rules, i)
    };
    let mut tried: Vec<usize> = (0..routes.len()).collect();
    tried.sort_by_key(|&i| order(i));
    for (b, route) in routes.iter().enumerate() {
        let Some(Placed { key, prefix: span, clean: true }) = placed.get(b) else { continue };
        let narrow = RouteMatch::of(route);
        let Some(&a) = tried
            .iter()
            .take_while(|&&a| order(a) < order(b))
            .find(|&&a| clean(a) && RouteMatch::of(&routes[a]).covers(&narrow))
        else {
            continue;
        };
        let wide = RouteMatch::of(&routes[a]);
        let (first, at) = (&routes[a].name, placed.get(a).map_or("", |p| p.key.as_str()));
        let message = match narrow.covers(&wide) {
            true => format!("route {first:?} already matches the same hosts, path_prefix and rules at {at}"),
            false => format!(
                "route {first:?} at {at} is tried first and takes every request this route matches: its hosts, \
                 path_prefix and rules ({}) are as wide or wider",
                routes[a].rules.canonical()
            ),
        };
        d.error(
            Some(span.clone()),
            format!("{key}.path_prefix"),
            format!("{message}; no request could reach {:?}", route.name),
        );
    }
}

fn hosts(d: &mut Diagnostics, key: &str, items: &[Sp<String>]) -> Vec<String> {
    let mut hosts = Vec::new();
    for (h, host) in items.iter().enumerate() {
        let lower = host.get_ref().trim().to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        if bare.is_empty() || !bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            d.error(Some(host.span()), format!("{key}.hosts[{h}]"), format!("{:?} is not a host name", host.get_ref()));
        } else {
            hosts.push(lower);
        }
    }
    hosts
}

fn rules(d: &mut Diagnostics, key: &str, f: &RouteFile) -> MatchRules {
    let mut rules = MatchRules::default();
    if let Some(methods) = &f.methods {
        for (m, text) in methods.get_ref().iter().enumerate() {
            let upper = text.trim().to_ascii_uppercase();
            match http::Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() => rules.methods.push(method),
                _ => d.error(Some(methods.span()), format!("{key}.methods[{m}]"), format!("{text:?} is not a method")),
            }
        }
        if methods.get_ref().is_empty() {
            d.error(Some(methods.span()), format!("{key}.methods"), "an empty list would match no request; remove it");
        }
    }
    for (name, value) in &f.headers {
        let Ok(header) = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()) else {
            d.error(Some(value.span()), format!("{key}.headers"), format!("{name:?} is not a header name"));
            continue;
        };
        if let Some(m) = value_match(d, &format!("{key}.headers.{name}"), value) {
            rules.headers.push((header, m));
        }
    }
    for (name, value) in &f.query {
        if let Some(m) = value_match(d, &format!("{key}.query.{name}"), value) {
            rules.query.push((name.clone(), m));
        }
    }
    for (name, value) in &f.cookies {
        if let Some(m) = value_match(d, &format!("{key}.cookies.{name}"), value) {
            rules.cookies.push((name.clone(), m));
        }
    }
    rules
}

fn value_match(d: &mut Diagnostics, key: &str, value: &Sp<String>) -> Option<ValueMatch> {
    let text = value.get_ref();
    if text == "*" {
        return Some(ValueMatch::Present);
    }
    let Some(pattern) = text.strip_prefix('~') else { return Some(ValueMatch::Exact(text.clone())) };
    // Bounded: a config author's regex, compiled once; the regex crate
    // matches in linear time, so no request can make it backtrack.
    match regex::RegexBuilder::new(pattern).size_limit(1 << 20).build() {
        Ok(r) => Some(ValueMatch::Regex(r)),
        Err(e) => {
            let message = e.to_string().lines().last().unwrap_or("invalid").trim().to_string();
            d.error(Some(value.span()), key, format!("{text:?} is not a valid regex: {message}"));
            None
        }
    }
}

fn version_name_ok(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The versions form or the two-version shorthand, as one list and the default's index.
fn versions(
    d: &mut Diagnostics,
    key: &str,
    f: &RouteFile,
    upstreams: &BTreeMap<String, UpstreamSpec>,
) -> (Vec<VersionSpec>, usize) {
    let upstream_ref = |d: &mut Diagnostics, k: String, name: &str, span: Range<usize>| {
        if !upstreams.contains_key(name) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            d.error(Some(span), k, format!("unknown upstream {name:?} (defined: {})", known.join(", ")));
        }
    };
    let (versions, default_version, span) = match (&f.versions, &f.stable) {
        (Some(list), None) => {
            if f.canary.is_some() || f.canary_percent.is_some() {
                d.error(Some(list.span()), format!("{key}.versions"), "use either versions or stable/canary, not both");
            }
            if !f.whitelist_users.is_empty() || !f.whitelist_ips.is_empty() {
                d.error(
                    Some(list.span()),
                    format!("{key}.versions"),
                    "with versions, whitelists belong to a version: versions = [{ ..., whitelist_users = [...] }]",
                );
            }
            let mut out: Vec<VersionSpec> = Vec::new();
            for (v, item) in list.get_ref().iter().enumerate() {
                let vkey = format!("{key}.versions[{v}]");
                let vf = item.get_ref();
                let name = vf.name.trim().to_string();
                if !version_name_ok(&name) {
                    d.error(
                        Some(item.span()),
                        format!("{vkey}.name"),
                        format!("{name:?} must be 1 to 32 letters, digits, '_' or '-'"),
                    );
                } else if out.iter().any(|o| o.name == name) {
                    d.error(Some(item.span()), format!("{vkey}.name"), format!("{name:?} is listed twice"));
                }
                upstream_ref(d, format!("{vkey}.upstream"), &vf.upstream, item.span());
                let basis_points = vf.percent.map_or(0, |p| {
                    values::percent_basis_points(p).unwrap_or_else(|e| {
                        d.error(Some(item.span()), format!("{vkey}.percent"), e);
                        0
                    })
                });
                let ips: Vec<Sp<String>> = vf.whitelist_ips.iter().map(|ip| Sp::new(item.span(), ip.clone())).collect();
                out.push(VersionSpec {
                    name,
                    upstream: vf.upstream.clone(),
                    basis_points,
                    whitelist_users: vf.whitelist_users.iter().map(|u| u.trim().to_string()).collect(),
                    whitelist_ips: cidrs(d, &format!("{vkey}.whitelist_ips"), &ips),
                });
            }
            if out.is_empty() {
                d.error(Some(list.span()), format!("{key}.versions"), "needs at least one version");
            }
            if out.len() > MAX_VERSIONS {
                d.error(
                    Some(list.span()),
                    format!("{key}.versions"),
                    format!("at most {MAX_VERSIONS} versions per route ({} given)", out.len()),
                );
            }
            let default_version = match &f.default {
                None => 0,
                Some(name) => out.iter().position(|v| &v.name == name.get_ref()).unwrap_or_else(|| {
                    d.error(
                        Some(name.span()),
                        format!("{key}.default"),
                        format!("{:?} is not one of the route's versions", name.get_ref()),
                    );
                    0
                }),
            };
            if let Some(v) = out.get(default_version) {
                if v.basis_points > 0 || !v.whitelist_users.is_empty() || !v.whitelist_ips.is_empty() {
                    d.error(
                        Some(list.span()),
                        format!("{key}.versions[{default_version}]"),
                        format!(
                            "{:?} is the default version: it holds every bucket no other version holds, \
                             so it takes no percent and no whitelist",
                            v.name
                        ),
                    );
                }
            }
            (out, default_version, list.span())
        }
        (None, Some(stable)) => {
            if let Some(def) = &f.default {
                d.error(Some(def.span()), format!("{key}.default"), "default belongs to the versions form");
            }
            upstream_ref(d, format!("{key}.stable"), stable.get_ref(), stable.span());
            let mut out = vec![VersionSpec {
                name: "stable".into(),
                upstream: stable.get_ref().clone(),
                basis_points: 0,
                whitelist_users: HashSet::new(),
                whitelist_ips: Vec::new(),
            }];
            let basis_points = match &f.canary_percent {
                None => 0,
                Some(p) => values::percent_basis_points(*p.get_ref()).unwrap_or_else(|e| {
                    d.error(Some(p.span()), format!("{key}.canary_percent"), e);
                    0
                }),
            };
            let whitelist_users: HashSet<String> =
                f.whitelist_users.iter().map(|u| u.get_ref().trim().to_string()).collect();
            let whitelist_ips = cidrs(d, &format!("{key}.whitelist_ips"), &f.whitelist_ips);
            match &f.canary {
                Some(canary) => {
                    upstream_ref(d, format!("{key}.canary"), canary.get_ref(), canary.span());
                    if canary.get_ref() == stable.get_ref() {
                        d.warn(Some(canary.span()), format!("{key}.canary"), "is the same upstream as stable");
                    }
                    out.push(VersionSpec {
                        name: "canary".into(),
                        upstream: canary.get_ref().clone(),
                        basis_points,
                        whitelist_users,
                        whitelist_ips,
                    });
                }
                None if basis_points > 0 || !whitelist_users.is_empty() || !whitelist_ips.is_empty() => {
                    d.error(
                        Some(f.name.span()),
                        format!("{key}.canary"),
                        "canary_percent or a whitelist is set but the route names no canary upstream",
                    );
                }
                None => {}
            }
            (out, 0, stable.span())
        }
        (Some(list), Some(_)) => {
            d.error(Some(list.span()), format!("{key}.versions"), "use either versions or stable/canary, not both");
            return (Vec::new(), 0);
        }
        (None, None) => {
            d.error(Some(f.name.span()), key, "needs versions = [...] (or the shorthand stable = \"UPSTREAM\")");
            return (Vec::new(), 0);
        }
    };
    let shares: Vec<(usize, u32)> =
        versions.iter().enumerate().filter(|(i, _)| *i != default_version).map(|(i, v)| (i, v.basis_points)).collect();
    // Too many versions is reported once, above, not again as a layout error.
    if let (true, Err(e)) = (versions.len() <= MAX_VERSIONS, Lanes::layout(&shares)) {
        let k = if f.versions.is_some() { format!("{key}.versions") } else { format!("{key}.canary_percent") };
        d.error(Some(span), k, e);
    }
    (versions, default_version)
}

fn anonymous(
    d: &mut Diagnostics,
    key: &str,
    value: &Option<Sp<String>>,
    versions: &[VersionSpec],
    default_version: usize,
) -> AnonymousPolicy {
    let Some(v) = value else { return AnonymousPolicy::Version(default_version) };
    match v.get_ref().as_str() {
        "default" => AnonymousPolicy::Version(default_version),
        "ip-hash" => AnonymousPolicy::IpHash,
        "cookie" => AnonymousPolicy::Cookie,
        other => match versions.iter().position(|x| x.name == other) {
            Some(i) => AnonymousPolicy::Version(i),
            // The shorthand's words on a route without a canary: the default.
            None if other == "canary" && versions.len() == 1 => AnonymousPolicy::Version(default_version),
            None => {
                let names: Vec<&str> = versions.iter().map(|x| x.name.as_str()).collect();
                d.error(
                    Some(v.span()),
                    format!("{key}.anonymous"),
                    format!(
                        "{other:?} must be \"default\", \"ip-hash\", \"cookie\" or a version name ({})",
                        names.join(", ")
                    ),
                );
                AnonymousPolicy::Version(default_version)
            }
        },
    }
}

fn override_spec(d: &mut Diagnostics, key: &str, o: &Sp<OverrideFile>) -> Option<OverrideSpec> {
    let f = o.get_ref();
    let header = f.header.as_ref().and_then(|h| {
        HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| d.error(Some(o.span()), format!("{key}.header"), format!("{h:?} is not a header name")))
            .ok()
    });
    let cookie = f.cookie.as_ref().map(|c| c.trim().to_string());
    if cookie.as_deref().is_some_and(|c| c.is_empty() || c.contains([';', '=', ' ', ','])) {
        d.error(Some(o.span()), format!("{key}.cookie"), "is not a cookie name");
    }
    if f.header.is_none() && f.cookie.is_none() {
        d.error(Some(o.span()), key, "needs header = \"NAME\" or cookie = \"NAME\" (or both)");
    }
    let ips: Vec<Sp<String>> = f.allow_from.iter().map(|ip| Sp::new(o.span(), ip.clone())).collect();
    let allow_from = cidrs(d, &format!("{key}.allow_from"), &ips);
    let key_file = f.secret_file.as_ref().map(|p| Sp::new(o.span(), p.clone()));
    let secret = key_file.as_ref().and_then(|p| read_secret(d, &format!("{key}.secret_file"), p));
    if allow_from.is_empty() && f.secret_file.is_none() {
        d.error(
            Some(o.span()),
            key,
            "nobody could use it: set allow_from = [CIDR, ...] and/or secret_file = \"KEY FILE\"",
        );
    }
    Some(OverrideSpec { header, cookie, allow_from, key: secret })
}

fn shadow_against(
    d: &mut Diagnostics,
    key: &str,
    sh: &Sp<ShadowFile>,
    versions: &[VersionSpec],
    default_version: usize,
) -> usize {
    if versions.len() < 2 {
        d.error(
            Some(sh.span()),
            format!("{key}.shadow"),
            "shadowing compares two versions; the route has one (name a canary, or list versions)",
        );
    }
    match &sh.get_ref().against {
        None => default_version,
        Some(name) => versions.iter().position(|v| &v.name == name).unwrap_or_else(|| {
            d.error(
                Some(sh.span()),
                format!("{key}.shadow.against"),
                format!("{name:?} is not one of the route's versions"),
            );
            default_version
        }),
    }
}
