//! Routes no request can reach. Route A shadows route B when the router
//! tries A first (`routing::router::precedence`: host-specific first, longer
//! prefix, more conditions, file order) and A covers B: every request B
//! matches, A matches too. `gateway check` reports each shadowed route.
//!
//! The cover test is sound but not complete: it never calls a reachable
//! route dead, and it misses some dead ones. Two different regexes are
//! compared as text, not as languages (deciding regex inclusion is costly
//! and rare in route configs), and a host list is covered host by host.

use super::model::{MatchRules, RouteSpec, ValueMatch};

/// What a route asks of a request, as the router sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct RouteMatch<'a> {
    /// Lower-case; empty means any host.
    pub hosts: &'a [String],
    pub prefix: &'a str,
    pub rules: &'a MatchRules,
}

impl<'a> RouteMatch<'a> {
    pub fn of(route: &'a RouteSpec) -> Self {
        RouteMatch { hosts: &route.hosts, prefix: &route.path_prefix, rules: &route.rules }
    }

    /// Whether every request `narrower` matches, `self` matches as well.
    pub fn covers(&self, narrower: &RouteMatch<'_>) -> bool {
        self.prefix == narrower.prefix
            && hosts_cover(self.hosts, narrower.hosts)
            && methods_cover(&self.rules.methods, &narrower.rules.methods)
            && conditions_cover(&self.rules.headers, &narrower.rules.headers)
            && conditions_cover(&self.rules.query, &narrower.rules.query)
            && conditions_cover(&self.rules.cookies, &narrower.rules.cookies)
    }
}

/// Empty is any host; a specific list never covers "any host".
fn hosts_cover(wide: &[String], narrow: &[String]) -> bool {
    wide.is_empty() || (!narrow.is_empty() && narrow.iter().all(|host| host_covered(wide, host)))
}

/// `host` (a name or `*.suffix`) is in `wide`, or under one of its wildcards:
/// `*.example.com` covers `a.example.com` and `*.a.example.com`, not `example.com`.
fn host_covered(wide: &[String], host: &str) -> bool {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    wide.iter().any(|w| {
        w == host
            || w.strip_prefix("*.").is_some_and(|suffix| {
                bare.len() > suffix.len() + 1
                    && bare.ends_with(suffix)
                    && bare.as_bytes()[bare.len() - suffix.len() - 1] == b'.'
            })
    })
}

/// Empty is any method; a method list never covers "any method".
fn methods_cover(wide: &[http::Method], narrow: &[http::Method]) -> bool {
    wide.is_empty() || (!narrow.is_empty() && narrow.iter().all(|m| wide.contains(m)))
}

/// Every condition of `wide` follows from a condition of `narrow` on the same key.
fn conditions_cover<K: PartialEq>(wide: &[(K, ValueMatch)], narrow: &[(K, ValueMatch)]) -> bool {
    wide.iter().all(|(key, want)| narrow.iter().any(|(k, has)| k == key && implies(has, want)))
}

/// Whether a value that meets `has` always meets `want`.
fn implies(has: &ValueMatch, want: &ValueMatch) -> bool {
    match (want, has) {
        (ValueMatch::Present, _) => true,
        (ValueMatch::Exact(w), ValueMatch::Exact(h)) => w == h,
        (ValueMatch::Regex(w), ValueMatch::Regex(h)) => w.as_str() == h.as_str(),
        (ValueMatch::Regex(w), ValueMatch::Exact(h)) => w.is_match(h),
        (ValueMatch::Exact(_) | ValueMatch::Regex(_), _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of a one-route config whose route ends with `keys`.
    fn rules(keys: &str) -> MatchRules {
        let text = format!(
            "[upstreams.s]\nbackends = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/cart\"\n\
             stable = \"s\"\n{keys}\n"
        );
        let loaded = crate::config::parse(std::path::Path::new("t.toml"), &text).expect("a valid route");
        loaded.config.routes[0].rules.clone()
    }

    fn on<'a>(hosts: &'a [String], prefix: &'a str, rules: &'a MatchRules) -> RouteMatch<'a> {
        RouteMatch { hosts, prefix, rules }
    }

    /// Whether a route with `wide` keys covers one with `narrow` keys, both on `/cart`, any host.
    fn covers(wide: &str, narrow: &str) -> bool {
        let (w, n) = (rules(wide), rules(narrow));
        on(&[], "/cart", &w).covers(&on(&[], "/cart", &n))
    }

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn a_route_covers_itself_and_no_rules_cover_any_rules() {
        assert!(covers("", ""));
        assert!(covers(r#"headers = { "x-app" = "ios" }"#, r#"headers = { "x-app" = "ios" }"#));
        assert!(covers("", r#"headers = { "x-app" = "ios" }"#));
        assert!(covers("", r#"methods = ["GET"]"#));
        assert!(!covers(r#"headers = { "x-app" = "ios" }"#, ""), "a condition narrows");
    }

    #[test]
    fn present_is_implied_by_any_condition_on_the_same_key() {
        for narrow in [r#""ios""#, r#""*""#, r#""~^i""#] {
            assert!(covers(r#"headers = { "x-app" = "*" }"#, &format!("headers = {{ \"x-app\" = {narrow} }}")));
        }
        assert!(!covers(r#"headers = { "x-app" = "*" }"#, r#"headers = { "x-beta" = "1" }"#), "another key");
        assert!(!covers(r#"headers = { "x-app" = "*" }"#, r#"query = { "x-app" = "1" }"#), "another kind");
        assert!(covers(r#"cookies = { "beta" = "*" }"#, r#"cookies = { "beta" = "1" }"#));
        assert!(covers(r#"query = { "app" = "*" }"#, r#"query = { "app" = "ios" }"#));
    }

    #[test]
    fn exact_is_implied_only_by_the_same_exact_value() {
        assert!(covers(r#"headers = { "x-app" = "ios" }"#, r#"headers = { "x-app" = "ios", "x-beta" = "1" }"#));
        assert!(!covers(r#"headers = { "x-app" = "ios" }"#, r#"headers = { "x-app" = "android" }"#));
        assert!(!covers(r#"headers = { "x-app" = "ios" }"#, r#"headers = { "x-app" = "*" }"#));
        assert!(!covers(r#"headers = { "x-app" = "ios" }"#, r#"headers = { "x-app" = "~^ios$" }"#));
    }

    #[test]
    fn a_regex_is_implied_by_the_same_regex_or_an_exact_value_it_matches() {
        let wide = r#"headers = { "x-app" = "~^(ios|ipad)$" }"#;
        assert!(covers(wide, wide));
        assert!(covers(wide, r#"headers = { "x-app" = "ipad" }"#));
        assert!(!covers(wide, r#"headers = { "x-app" = "android" }"#));
        assert!(!covers(wide, r#"headers = { "x-app" = "~^ios$" }"#), "regexes are compared as text");
        assert!(!covers(wide, r#"headers = { "x-app" = "*" }"#));
    }

    #[test]
    fn methods_cover_when_empty_or_a_superset() {
        assert!(covers(r#"methods = ["GET", "POST"]"#, r#"methods = ["GET"]"#));
        assert!(!covers(r#"methods = ["GET"]"#, r#"methods = ["GET", "POST"]"#));
        assert!(!covers(r#"methods = ["GET"]"#, ""), "a method list never covers any method");
    }

    #[test]
    fn hosts_cover_when_any_or_a_superset_with_wildcards() {
        let none = MatchRules::default();
        let covers_hosts = |wide: &[&str], narrow: &[&str]| {
            let (w, n) = (hosts(wide), hosts(narrow));
            on(&w, "/cart", &none).covers(&on(&n, "/cart", &none))
        };
        assert!(covers_hosts(&[], &["shop.example"]));
        assert!(covers_hosts(&["a.example", "b.example"], &["b.example"]));
        assert!(!covers_hosts(&["a.example"], &["a.example", "b.example"]));
        assert!(!covers_hosts(&["a.example"], &[]), "a host list never covers any host");
        assert!(covers_hosts(&["*.example.com"], &["shop.example.com", "*.eu.example.com"]));
        assert!(!covers_hosts(&["*.example.com"], &["example.com"]));
        assert!(!covers_hosts(&["*.example.com"], &["badexample.com"]));
    }

    #[test]
    fn only_the_same_prefix_covers() {
        let none = MatchRules::default();
        assert!(!on(&[], "/cart", &none).covers(&on(&[], "/cart/checkout", &none)));
        assert!(!on(&[], "/cart/checkout", &none).covers(&on(&[], "/cart", &none)));
    }
}
