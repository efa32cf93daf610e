//! Route matching: host (when the route lists hosts), then the longest
//! `path_prefix`. Built once per config snapshot.

use crate::config::RouteSpec;

use super::bucket::CohortSeed;

/// A route ready for the request path: spec plus what was precomputed from it.
#[derive(Debug)]
pub struct CompiledRoute {
    /// Position in the config's `[[routes]]` list; indexes per-route tables in the snapshot.
    pub index: usize,
    pub spec: RouteSpec,
    pub seed: CohortSeed,
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Indexes into `routes`, most specific first: longer prefix, then host-specific.
    order: Vec<usize>,
}

impl Router {
    pub fn new(specs: &[RouteSpec]) -> Self {
        let routes: Vec<CompiledRoute> = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| CompiledRoute { index, seed: CohortSeed::new(&spec.salt), spec: spec.clone() })
            .collect();
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| {
            let s = &routes[i].spec;
            (std::cmp::Reverse(s.path_prefix.len()), s.hosts.is_empty(), i)
        });
        Self { routes, order }
    }

    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }

    pub fn by_name(&self, name: &str) -> Option<&CompiledRoute> {
        self.routes.iter().find(|r| r.spec.name == name)
    }

    /// The route for a request, or `None` (the caller answers 404).
    ///
    /// `host` may carry a port and any case; `path` excludes the query.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&CompiledRoute> {
        let host = host.map(normalise_host);
        self.order
            .iter()
            .map(|&i| &self.routes[i])
            .find(|r| prefix_matches(&r.spec.path_prefix, path) && host_matches(&r.spec.hosts, host.as_deref()))
    }
}

/// Segment-aware prefix match: `/cart` matches `/cart`, `/cart/x` and
/// `/cart?..`, but not `/cartoon` (a surprise nginx users know well).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

fn host_matches(hosts: &[String], host: Option<&str>) -> bool {
    if hosts.is_empty() {
        return true;
    }
    let Some(host) = host else { return false };
    hosts.iter().any(|h| match h.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => h == host,
    })
}

fn normalise_host(host: &str) -> String {
    let host = host.trim();
    // Strip a port, but not the colons of a bracketed IPv6 literal.
    let without_port = if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        &host[..end + 2]
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    // `shop.example.` (a fully qualified name) is `shop.example`.
    let name = without_port.strip_suffix('.').filter(|n| !n.is_empty()).unwrap_or(without_port);
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AnonymousPolicy, RouteSpec};

    fn route(name: &str, prefix: &str, hosts: &[&str]) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            path_prefix: prefix.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            stable: "s".into(),
            canary: None,
            canary_basis_points: 0,
            user_id: vec![],
            salt: name.into(),
            anonymous: AnonymousPolicy::Stable,
            whitelist_users: Default::default(),
            whitelist_ips: vec![],
            rate_limit: Default::default(),
            fallback: None,
            degrade_at: None,
            shadow: None,
            https_redirect: false,
        }
    }

    fn name_of(r: &Router, host: Option<&str>, path: &str) -> Option<String> {
        r.route(host, path).map(|r| r.spec.name.clone())
    }

    #[test]
    fn longest_prefix_wins() {
        let r = Router::new(&[
            route("root", "/", &[]),
            route("cart", "/cart", &[]),
            route("checkout", "/cart/checkout", &[]),
        ]);
        assert_eq!(name_of(&r, None, "/cart/checkout/pay").as_deref(), Some("checkout"));
        assert_eq!(name_of(&r, None, "/cart/items").as_deref(), Some("cart"));
        assert_eq!(name_of(&r, None, "/cart").as_deref(), Some("cart"));
        assert_eq!(name_of(&r, None, "/cartoon").as_deref(), Some("root"));
        assert_eq!(name_of(&r, None, "/").as_deref(), Some("root"));
    }

    #[test]
    fn no_route_is_none() {
        let r = Router::new(&[route("cart", "/cart", &[])]);
        assert_eq!(name_of(&r, None, "/search"), None);
    }

    #[test]
    fn hosts_restrict_and_take_precedence() {
        let r = Router::new(&[
            route("any", "/cart", &[]),
            route("shop", "/cart", &["shop.example.com"]),
            route("wild", "/w", &["*.example.com"]),
        ]);
        assert_eq!(name_of(&r, Some("Shop.Example.com:8080"), "/cart").as_deref(), Some("shop"));
        assert_eq!(name_of(&r, Some("other.test"), "/cart").as_deref(), Some("any"));
        assert_eq!(name_of(&r, None, "/cart").as_deref(), Some("any"));
        assert_eq!(name_of(&r, Some("a.example.com"), "/w").as_deref(), Some("wild"));
        assert_eq!(name_of(&r, Some("example.com"), "/w"), None);
        assert_eq!(name_of(&r, Some("badexample.com"), "/w"), None);
        // A fully qualified name with its trailing dot is the same host.
        assert_eq!(name_of(&r, Some("shop.example.com."), "/cart").as_deref(), Some("shop"));
        assert_eq!(name_of(&r, Some("a.example.com.:443"), "/w").as_deref(), Some("wild"));
    }

    #[test]
    fn ipv6_host_literals_keep_their_colons() {
        assert_eq!(normalise_host("[::1]:8080"), "[::1]");
        assert_eq!(normalise_host("Example.COM"), "example.com");
    }
}
