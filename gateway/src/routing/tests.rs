//! The release engineer's properties of the decision, without a network,
//! from config text.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::RouteSpec;

use super::*;

fn spec(route_body: &str) -> RouteSpec {
    let text = format!(
        "[upstreams.a]\nbackends = [\"127.0.0.1:9001\"]\n[upstreams.b]\nbackends = [\"127.0.0.1:9002\"]\n\
         [upstreams.c]\nbackends = [\"127.0.0.1:9003\"]\n\
         [[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\n{route_body}\n"
    );
    match crate::config::parse(std::path::Path::new("t.toml"), &text) {
        Ok(loaded) => loaded.config.routes[0].clone(),
        Err(e) => panic!("{e:?}"),
    }
}

/// The two-version shorthand; `extra` lines go before any `[table]` in it.
fn two(percent: f64, extra: &str) -> RouteSpec {
    let (keys, tables) = extra.split_once("\n[").map_or((extra, String::new()), |(k, t)| (k, format!("[{t}")));
    spec(&format!(
        "stable = \"a\"\ncanary = \"b\"\ncanary_percent = {percent}\nsalt = \"s\"\n\
         whitelist_users = [\"1001\"]\nwhitelist_ips = [\"192.0.2.0/24\"]\n{keys}\n{tables}"
    ))
}

fn three(p2: f64, p3: f64) -> RouteSpec {
    spec(&format!(
        "default = \"v1\"\nversions = [\n  {{ name = \"v1\", upstream = \"a\" }},\n  \
         {{ name = \"v2\", upstream = \"b\", percent = {p2} }},\n  {{ name = \"v3\", upstream = \"c\", percent = {p3} }},\n]\n"
    ))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn user(plan: &VersionPlan, user: &str) -> Decision {
    plan.decide(&DecisionInput { user_id: Some(user), client_ip: ip("203.0.113.1"), forced: None, anonymous_id: None })
}

fn versions_of(spec: &RouteSpec, n: usize) -> Vec<usize> {
    let plan = VersionPlan::compile(spec);
    (0..n).map(|i| user(&plan, &format!("u{i}")).version).collect()
}

#[test]
fn raising_the_percentage_only_moves_users_to_canary() {
    let mut previous = versions_of(&two(0.0, ""), 20_000);
    for percent in [1.0, 5.0, 10.0, 20.0, 50.0, 100.0] {
        let now = versions_of(&two(percent, ""), 20_000);
        for (before, after) in previous.iter().zip(&now) {
            assert!(before == after || (*before == 0 && *after == 1), "someone left canary at {percent}%");
        }
        previous = now;
    }
    assert!(previous.iter().all(|v| *v == 1), "100% is everyone");
}

/// The issue's proof: 100k users, three versions, every percent change of
/// one version moves users only between it and the default.
#[test]
fn with_three_versions_a_percent_change_only_trades_with_the_default() {
    let n = 100_000;
    let steps = [
        (10.0, 0.0),
        (10.0, 2.5),
        (25.0, 2.5),
        (25.0, 10.0),
        (5.0, 10.0),
        (5.0, 0.0),
        (60.0, 0.0),
        (60.0, 40.0),
        (0.0, 40.0),
    ];
    let mut previous = versions_of(&three(0.0, 0.0), n);
    let mut last = (0.0, 0.0);
    for (p2, p3) in steps {
        let now = versions_of(&three(p2, p3), n);
        let moved_version = if p2 != last.0 { 1 } else { 2 };
        let mut counts = HashMap::new();
        for (before, after) in previous.iter().zip(&now) {
            if before != after {
                let pair = (*before, *after);
                assert!(pair == (0, moved_version) || pair == (moved_version, 0), "{pair:?} moving to {p2}/{p3}");
            }
            *counts.entry(*after).or_insert(0usize) += 1;
        }
        for (v, want) in [(1, p2), (2, p3)] {
            let share = *counts.get(&v).unwrap_or(&0) as f64 * 100.0 / n as f64;
            assert!((share - want).abs() < 0.5, "v{} holds {share}% for {want}%", v + 1);
        }
        previous = now;
        last = (p2, p3);
    }
}

#[test]
fn whitelists_come_first() {
    let plan = VersionPlan::compile(&two(0.0, ""));
    assert_eq!(user(&plan, "1001"), Decision { version: 1, reason: Reason::WhitelistedUser });
    let by_ip = |user_id| {
        plan.decide(&DecisionInput { user_id, client_ip: ip("192.0.2.77"), forced: None, anonymous_id: None })
    };
    assert_eq!(by_ip(Some("55")), Decision { version: 1, reason: Reason::WhitelistedIp });
    assert_eq!(by_ip(None).version, 1, "an office IP without a user ID is still whitelisted");
}

#[test]
fn an_override_beats_every_other_rule() {
    let plan = VersionPlan::compile(&two(100.0, ""));
    let how = OverrideHow::AllowedIp;
    let d = plan.decide(&DecisionInput {
        user_id: Some("1001"),
        client_ip: ip("192.0.2.77"),
        forced: Some((0, how)),
        anonymous_id: None,
    });
    assert_eq!(d, Decision { version: 0, reason: Reason::Override(how) });
}

#[test]
fn anonymous_policies() {
    let anon = |spec: &RouteSpec, client: &str, id: Option<(&str, bool)>| {
        VersionPlan::compile(spec).decide(&DecisionInput {
            user_id: None,
            client_ip: ip(client),
            forced: None,
            anonymous_id: id,
        })
    };
    assert_eq!(anon(&two(50.0, ""), "203.0.113.1", None).version, 0, "default: the default version");
    assert_eq!(anon(&two(50.0, "anonymous = \"canary\""), "203.0.113.1", None).version, 1);

    let spec = two(50.0, "anonymous = \"ip-hash\"");
    let plan = VersionPlan::compile(&spec);
    let canary = (0..=255u8)
        .flat_map(|a| (0..=255u8).map(move |b| IpAddr::from([198, 51, a, b])))
        .filter(|ip| {
            plan.decide(&DecisionInput { user_id: None, client_ip: *ip, forced: None, anonymous_id: None }).version == 1
        })
        .count();
    let share = canary as f64 / 65536.0;
    assert!((0.48..0.52).contains(&share), "ip-hash share {share}");
    assert_eq!(anon(&spec, "198.51.100.7", None), anon(&spec, "198.51.100.7", None), "the same IP, the same answer");

    // A cookie's ID is bucketed exactly like a user ID with the same text.
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("anon.key");
    std::fs::write(&key, "0123456789abcdef0123").expect("key");
    let spec = two(50.0, &format!("anonymous = \"cookie\"\n[anonymous_cookie]\nsecret_file = {:?}", key));
    let d = anon(&spec, "203.0.113.1", Some(("0123456789abcdef", false)));
    let as_user = user(&VersionPlan::compile(&spec), "0123456789abcdef");
    assert_eq!(d.version, as_user.version);
    assert_eq!(d.reason.bucket(), as_user.reason.bucket());
}

#[test]
fn explanation_reads_like_the_issue() {
    let spec = spec(
        "stable = \"a\"\ncanary = \"b\"\ncanary_percent = 10.0\nsalt = \"cart-2026-11\"\nwhitelist_users = [\"1001\"]",
    );
    let plan = VersionPlan::compile(&spec);
    let line = |d: &Decision, user_id| {
        Explanation { route: &spec, plan: &plan, decision: d, user_id, client_ip: ip("127.0.0.1") }.to_string()
    };
    let d = user(&plan, "1001");
    assert_eq!(line(&d, Some("1001")), "route cart -> canary: whitelisted user 1001");

    let d = user(&plan, "42");
    let Reason::UserBucket { bucket } = d.reason else { panic!("bucket reason expected") };
    let want = match bucket < 1000 {
        true => format!("route cart -> canary: bucket {bucket} in canary's range [0, 1000) (10.00%)"),
        false => format!("route cart -> stable: bucket {bucket} in no other version's range: the default"),
    };
    assert_eq!(line(&d, Some("42")), want);
}
