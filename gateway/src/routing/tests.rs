//! The release engineer's properties of the decision, without a network.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::{AnonymousPolicy, RouteSpec, UserIdSource};

use super::*;

fn route(percent_bp: u32, salt: &str) -> RouteSpec {
    RouteSpec {
        name: "cart".into(),
        path_prefix: "/cart".into(),
        hosts: vec![],
        stable: "v1".into(),
        canary: Some("v2".into()),
        canary_basis_points: percent_bp,
        user_id: vec![UserIdSource::Header(http::HeaderName::from_static("x-user-id"))],
        salt: salt.into(),
        anonymous: AnonymousPolicy::Stable,
        whitelist_users: ["1001".to_string()].into_iter().collect(),
        whitelist_ips: vec!["192.0.2.0/24".parse().expect("net")],
        rate_limit: Default::default(),
        fallback: None,
        degrade_at: None,
        shadow: None,
        https_redirect: false,
    }
}

fn compiled(spec: RouteSpec) -> Router {
    Router::new(&[spec])
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn canary_users(router: &Router, n: usize) -> HashSet<usize> {
    let r = &router.routes()[0];
    (0..n).filter(|i| decide(r, Some(&format!("u{i}")), ip("203.0.113.1")).version == Version::Canary).collect()
}

#[test]
fn raising_the_percentage_only_moves_users_to_canary() {
    let mut previous = HashSet::new();
    for bp in [0, 100, 500, 1000, 2000, 5000, 10000] {
        let now = canary_users(&compiled(route(bp, "s")), 20_000);
        assert!(previous.is_subset(&now), "someone left canary when going to {bp} bp");
        previous = now;
    }
    assert_eq!(previous.len(), 20_000, "100% is everyone");
}

#[test]
fn whitelists_come_first() {
    let router = compiled(route(0, "s"));
    let r = &router.routes()[0];
    let d = decide(r, Some("1001"), ip("203.0.113.1"));
    assert_eq!((d.version, d.reason), (Version::Canary, Reason::WhitelistedUser));
    let d = decide(r, Some("55"), ip("192.0.2.77"));
    assert_eq!((d.version, d.reason), (Version::Canary, Reason::WhitelistedIp));
    let d = decide(r, None, ip("192.0.2.77"));
    assert_eq!(d.version, Version::Canary, "an office IP without a user ID is still whitelisted");
}

#[test]
fn anonymous_policies() {
    let mut spec = route(5000, "s");
    let router = compiled(spec.clone());
    assert_eq!(decide(&router.routes()[0], None, ip("203.0.113.1")).version, Version::Stable);

    spec.anonymous = AnonymousPolicy::Canary;
    let router = compiled(spec.clone());
    assert_eq!(decide(&router.routes()[0], None, ip("203.0.113.1")).version, Version::Canary);

    spec.anonymous = AnonymousPolicy::IpHash;
    let router = compiled(spec);
    let r = &router.routes()[0];
    let canary = (0..=255u8)
        .flat_map(|a| (0..=255u8).map(move |b| IpAddr::from([198, 51, a, b])))
        .filter(|ip| decide(r, None, *ip).version == Version::Canary)
        .count();
    let share = canary as f64 / 65536.0;
    assert!((0.48..0.52).contains(&share), "ip-hash share {share}");
    // The same IP always gets the same answer.
    let d1 = decide(r, None, ip("198.51.100.7"));
    let d2 = decide(r, None, ip("198.51.100.7"));
    assert_eq!(d1, d2);
}

#[test]
fn explanation_reads_like_the_issue() {
    let router = compiled(route(1000, "cart-2026-11"));
    let r = &router.routes()[0];
    let d = decide(r, Some("1001"), ip("127.0.0.1"));
    let text =
        Explanation { route: "cart", decision: &d, user_id: Some("1001"), client_ip: ip("127.0.0.1") }.to_string();
    assert_eq!(text, "route cart -> canary: whitelisted user 1001");

    let d = decide(r, Some("42"), ip("127.0.0.1"));
    let Reason::UserBucket { bucket, .. } = d.reason else { panic!("bucket reason expected") };
    let text = Explanation { route: "cart", decision: &d, user_id: Some("42"), client_ip: ip("127.0.0.1") }.to_string();
    let cmp = if bucket < 1000 { "<" } else { ">=" };
    assert_eq!(text, format!("route cart -> {}: bucket {bucket} {cmp} 1000 (10.00%)", d.version));
}
