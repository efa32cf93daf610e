//! Route matching. Candidates are tried most specific first: host-specific
//! routes before any-host ones, then the longer `path_prefix`, then the
//! route with more match rules (methods, headers, query, cookies), then file
//! order. The first candidate whose host, prefix and rules all hold wins;
//! a request no candidate takes gets a 404. Built once per config snapshot.

use std::cmp::Reverse;

use crate::config::{MatchRules, RouteSpec};

use super::user_id::{cookie, query_param, RequestView};

/// What one route requires of a request.
#[derive(Debug)]
struct Matcher {
    route: usize,
    prefix: Box<str>,
    hosts: Vec<String>,
    rules: MatchRules,
}

#[derive(Debug, Default)]
pub struct Router {
    /// Most specific first.
    candidates: Vec<Matcher>,
}

impl Router {
    pub fn new(specs: &[RouteSpec]) -> Self {
        let mut candidates: Vec<Matcher> = specs
            .iter()
            .enumerate()
            .map(|(route, s)| Matcher {
                route,
                prefix: s.path_prefix.as_str().into(),
                hosts: s.hosts.clone(),
                rules: s.rules.clone(),
            })
            .collect();
        candidates.sort_by_key(|m| precedence(&m.hosts, &m.prefix, &m.rules, m.route));
        Self { candidates }
    }

    /// The index (in the config's `[[routes]]`) of the route for a request, or
    /// `None` (the caller answers 404). `host` may carry a port and any case;
    /// `req` holds the path without the query.
    pub fn route(&self, host: Option<&str>, path: &str, req: &RequestView<'_>) -> Option<usize> {
        let host = host.map(host_name);
        self.candidates
            .iter()
            .find(|m| prefix_matches(&m.prefix, path) && host_matches(&m.hosts, host) && rules_match(&m.rules, req))
            .map(|m| m.route)
    }
}

/// The order candidates are tried in, smallest first: host-specific routes,
/// then the longer prefix, then more conditions, then file order (`index`).
/// `gateway check` uses the same key to find routes an earlier candidate
/// always takes.
pub fn precedence(hosts: &[String], prefix: &str, rules: &MatchRules, index: usize) -> Precedence {
    (hosts.is_empty(), Reverse(prefix.len()), Reverse(rules.count()), index)
}

/// See [`precedence`].
pub type Precedence = (bool, Reverse<usize>, Reverse<usize>, usize);

fn rules_match(rules: &MatchRules, req: &RequestView<'_>) -> bool {
    if !rules.methods.is_empty() && !rules.methods.iter().any(|m| m == req.method) {
        return false;
    }
    let header = |name: &http::HeaderName| req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    rules.headers.iter().all(|(name, want)| header(name).any(|v| want.matches(v.trim())))
        && rules
            .query
            .iter()
            .all(|(name, want)| req.query.and_then(|q| query_param(q, name)).is_some_and(|v| want.matches(v)))
        && rules.cookies.iter().all(|(name, want)| cookie(req.headers, name).is_some_and(|v| want.matches(v)))
}

/// Segment-aware prefix match: `/cart` matches `/cart`, `/cart/x` and
/// `/cart?..`, but not `/cartoon` (a surprise nginx users know well).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// Compared without allocating: routes hold lower-case names, the request's
/// host is matched case-insensitively.
fn host_matches(hosts: &[String], host: Option<&str>) -> bool {
    if hosts.is_empty() {
        return true;
    }
    let Some(host) = host else { return false };
    hosts.iter().any(|h| match h.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => h.eq_ignore_ascii_case(host),
    })
}

/// The host name of a Host header: without port, without the trailing dot
/// of a fully qualified name (`shop.example.` is `shop.example`), in its
/// original case.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    // Strip a port, but not the colons of a bracketed IPv6 literal.
    let without_port = if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        &host[..end + 2]
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    without_port.strip_suffix('.').filter(|n| !n.is_empty()).unwrap_or(without_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(text: &str) -> (Router, Vec<String>) {
        let snap = crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid").config;
        (Router::new(&snap.routes), snap.routes.iter().map(|r| r.name.clone()).collect())
    }

    fn config(routes: &str) -> String {
        format!("[upstreams.s]\nbackends = [\"127.0.0.1:9\"]\n{routes}")
    }

    fn route(name: &str, prefix: &str, extra: &str) -> String {
        format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nstable = \"s\"\n{extra}\n")
    }

    fn name_of(r: &(Router, Vec<String>), host: Option<&str>, path: &str) -> Option<String> {
        name_with(r, host, path, &http::Method::GET, &[], None)
    }

    fn name_with(
        r: &(Router, Vec<String>),
        host: Option<&str>,
        path: &str,
        method: &http::Method,
        headers: &[(&'static str, &'static str)],
        query: Option<&str>,
    ) -> Option<String> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        let view = RequestView { method, headers: &h, query };
        r.0.route(host, path, &view).map(|i| r.1[i].clone())
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router(&config(
            &[route("root", "/", ""), route("cart", "/cart", ""), route("checkout", "/cart/checkout", "")].concat(),
        ));
        assert_eq!(name_of(&r, None, "/cart/checkout/pay").as_deref(), Some("checkout"));
        assert_eq!(name_of(&r, None, "/cart/items").as_deref(), Some("cart"));
        assert_eq!(name_of(&r, None, "/cart").as_deref(), Some("cart"));
        assert_eq!(name_of(&r, None, "/cartoon").as_deref(), Some("root"));
        assert_eq!(name_of(&r, None, "/").as_deref(), Some("root"));
    }

    #[test]
    fn no_route_is_none() {
        let r = router(&config(&route("cart", "/cart", "")));
        assert_eq!(name_of(&r, None, "/search"), None);
    }

    #[test]
    fn hosts_restrict_and_take_precedence() {
        let r = router(&config(
            &[
                route("any", "/cart", ""),
                route("shop", "/cart", "hosts = [\"shop.example.com\"]"),
                route("wild", "/w", "hosts = [\"*.example.com\"]"),
                route("shoproot", "/", "hosts = [\"shop.example.com\"]"),
            ]
            .concat(),
        ));
        assert_eq!(name_of(&r, Some("Shop.Example.com:8080"), "/cart").as_deref(), Some("shop"));
        assert_eq!(name_of(&r, Some("other.test"), "/cart").as_deref(), Some("any"));
        assert_eq!(name_of(&r, None, "/cart").as_deref(), Some("any"));
        assert_eq!(name_of(&r, Some("a.example.com"), "/w").as_deref(), Some("wild"));
        assert_eq!(name_of(&r, Some("A.EXAMPLE.COM"), "/w").as_deref(), Some("wild"));
        assert_eq!(name_of(&r, Some("example.com"), "/w"), None);
        assert_eq!(name_of(&r, Some("badexample.com"), "/w"), None);
        // Host first: the shop's `/` takes its `/search` over any-host routes.
        assert_eq!(name_of(&r, Some("shop.example.com"), "/search").as_deref(), Some("shoproot"));
        // A fully qualified name with its trailing dot is the same host.
        assert_eq!(name_of(&r, Some("shop.example.com."), "/cart").as_deref(), Some("shop"));
        assert_eq!(name_of(&r, Some("a.example.com.:443"), "/w").as_deref(), Some("wild"));
    }

    #[test]
    fn ipv6_host_literals_keep_their_colons() {
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("Example.COM."), "Example.COM");
    }

    #[test]
    fn rules_pick_among_routes_on_one_prefix() {
        let r = router(&config(
            &[
                route("web", "/cart", ""),
                route("ios", "/cart", "headers = { \"X-App\" = \"ios\" }"),
                route("beta", "/cart", "headers = { \"x-app\" = \"ios\", \"x-beta\" = \"*\" }"),
                route("writes", "/cart", "methods = [\"post\", \"PUT\"]"),
                route("de", "/cart", "query = { lang = \"de\" }"),
                route("re", "/cart", "headers = { \"x-client\" = \"~^web-[0-9]+$\" }"),
                route("cookie", "/cart", "cookies = { beta = \"*\" }"),
            ]
            .concat(),
        ));
        let get = http::Method::GET;
        assert_eq!(name_with(&r, None, "/cart", &get, &[("x-app", "ios")], None).as_deref(), Some("ios"));
        assert_eq!(
            name_with(&r, None, "/cart", &get, &[("x-app", "ios"), ("x-beta", "")], None).as_deref(),
            Some("beta"),
            "more conditions win"
        );
        assert_eq!(name_with(&r, None, "/cart", &get, &[("x-app", "android")], None).as_deref(), Some("web"));
        assert_eq!(name_with(&r, None, "/cart", &http::Method::PUT, &[], None).as_deref(), Some("writes"));
        assert_eq!(name_with(&r, None, "/cart", &get, &[], Some("a=1&lang=de")).as_deref(), Some("de"));
        assert_eq!(name_with(&r, None, "/cart", &get, &[], Some("lang=fr")).as_deref(), Some("web"));
        assert_eq!(name_with(&r, None, "/cart", &get, &[("x-client", "web-42")], None).as_deref(), Some("re"));
        assert_eq!(name_with(&r, None, "/cart", &get, &[("x-client", "web-42x")], None).as_deref(), Some("web"));
        assert_eq!(name_with(&r, None, "/cart", &get, &[("cookie", "a=1; beta=yes")], None).as_deref(), Some("cookie"));
    }

    #[test]
    fn a_request_no_rule_admits_falls_through_to_404() {
        let r = router(&config(&route("ios", "/cart", "headers = { \"x-app\" = \"ios\" }")));
        assert_eq!(name_of(&r, None, "/cart"), None);
    }
}
