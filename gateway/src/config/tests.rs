//! Config errors as `gateway check` shows them: every one, with file, line and key.

use std::path::Path;

use super::*;

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[upstreams.v1]
backends = ["127.0.0.1:9001"]

[upstreams.v2]
backends = ["127.0.0.1:9002", { addr = "127.0.0.1:9003", weight = 2 }]
health_check = { tcp = true, interval = "1s" }

[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "v1"
canary = "v2"
canary_percent = 12.5
whitelist_users = ["1001"]
whitelist_ips = ["192.0.2.0/24", "2001:db8::1"]
"#;

fn errors(text: &str) -> Vec<String> {
    match parse(Path::new("/etc/gw/gateway.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_good_config_becomes_the_model() {
    let loaded = parse(Path::new("gateway.toml"), GOOD).expect("valid");
    let c = &loaded.config;
    assert_eq!(c.routes[0].versions[1].basis_points, 1250);
    assert_eq!(c.routes[0].salt, "cart", "salt defaults to the route name");
    assert_eq!(c.upstreams["v2"].backends[1].weight, 2);
    assert_eq!(c.upstreams["v2"].health_check.as_ref().map(|h| h.probe.clone()), Some(HealthProbe::Tcp));
    assert_eq!(c.routes[0].versions[1].whitelist_ips[1].to_string(), "2001:db8::1/128");
    assert_eq!(c.startup.admin_listen.to_string(), "127.0.0.1:9900");
}

#[test]
fn the_issue_example_error_is_reported_exactly() {
    let text = GOOD.replace("canary_percent = 12.5", "canary_percent = 120");
    let line = text.lines().position(|l| l.starts_with("canary_percent")).expect("line") + 1;
    assert_eq!(errors(&text), vec![format!("gateway.toml:{line}: routes[0].canary_percent: 120 is outside 0..=100")]);
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"
[server]
threads = 0
bogus = 1

[upstreams.a]
backends = ["nope"]

[[routes]]
name = "r"
path_prefix = "r"
stable = "missing"
typo = 1
"#;
    let errs = errors(text);
    let expect = [
        "gateway.toml:3: server.threads: 0 is outside 1..=256",
        "gateway.toml:4: server.bogus: unknown field `bogus`",
        "gateway.toml:7: upstreams.a.backends[0]: \"nope\" is not an address",
        "gateway.toml:11: routes[0].path_prefix: \"r\" must start with '/'",
        "gateway.toml:12: routes[0].stable: unknown upstream \"missing\"",
        "gateway.toml:13: routes[0].typo: unknown field `typo`",
    ];
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    for (got, want) in errs.iter().zip(expect) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
}

#[test]
fn duplicate_names_and_identical_matches_are_errors() {
    let text = format!("{GOOD}\n[[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\nstable = \"v1\"\n");
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.contains("routes[1].name: \"cart\" is already used by routes[0]")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.contains("routes[1].path_prefix: route \"cart\" already matches")), "{errs:#?}");
}

#[test]
fn a_route_that_lost_a_bad_rule_does_not_make_another_look_unreachable() {
    // Without its broken `x-app` rule, "any" would look as if it took every
    // request "b1" matches; as written it does not.
    let text = format!(
        "{GOOD}\n[[routes]]\nname = \"any\"\npath_prefix = \"/list\"\nstable = \"v1\"\n\
         headers = {{ \"x-app\" = \"~(\", \"x-b\" = \"*\" }}\n\
         [[routes]]\nname = \"b1\"\npath_prefix = \"/list\"\nstable = \"v1\"\nheaders = {{ \"x-b\" = \"1\" }}\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("routes[1].headers"), "{errs:#?}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "canary_percent = 12.5",
            "canary_percent = 1.234",
            "routes[0].canary_percent: 1.234 has more than two decimals",
        ),
        ("whitelist_ips = [\"192.0.2.0/24\"", "whitelist_ips = [\"192.0.2.0/33\"", "routes[0].whitelist_ips[0]"),
        ("interval = \"1s\"", "interval = \"soon\"", "upstreams.v2.health_check.interval"),
        ("weight = 2", "weight = 0", "upstreams.v2.backends[1].weight: 0 is outside 1..=1000"),
        ("canary = \"v2\"", "canary = \"v3\"", "routes[0].canary: unknown upstream \"v3\""),
    ];
    for (from, to, want) in cases {
        let errs = errors(&GOOD.replace(from, to));
        assert!(errs.iter().any(|e| e.contains(want)), "{to}: {errs:#?}");
    }
}

#[test]
fn work_stealing_is_off_unless_asked_and_a_wrong_type_names_the_key() {
    let off = parse(Path::new("gateway.toml"), GOOD).expect("valid");
    assert!(!off.config.startup.server.work_stealing);
    let text = GOOD.replace("[server]\n", "[server]\nwork_stealing = true\n");
    assert!(parse(Path::new("gateway.toml"), &text).expect("valid").config.startup.server.work_stealing);
    for wrong in ["\"yes\"", "1"] {
        let errs = errors(&GOOD.replace("[server]\n", &format!("[server]\nwork_stealing = {wrong}\n")));
        assert!(errs.iter().any(|e| e.starts_with("gateway.toml:3: server.work_stealing:")), "{errs:#?}");
    }
    let errs = errors(&GOOD.replace("[server]\n", "[server]\nthreads = true\n"));
    assert!(errs.iter().any(|e| e.starts_with("gateway.toml:3: server.threads:")), "{errs:#?}");
}

#[test]
fn syntax_errors_have_a_line() {
    let errs = errors("[server]\nlisten = [\n");
    assert!(!errs.is_empty());
    assert!(errs[0].starts_with("gateway.toml:"), "{errs:?}");
}

#[test]
fn an_empty_or_truncated_file_is_rejected() {
    // An editor's truncate-then-write must never be served as "no routes".
    let errs = errors("");
    assert!(errs.iter().any(|e| e.contains("defines no [[routes]]")), "{errs:?}");
}

#[test]
fn a_whitelist_without_canary_is_an_error() {
    let text = GOOD.replace("canary = \"v2\"\n", "");
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.contains("routes[0].canary: canary_percent or a whitelist is set")), "{errs:#?}");
}

#[test]
fn token_file_is_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("gw-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("admin.token"), "s3cret\n").expect("write");
    let text = format!("[admin]\ntoken_file = \"admin.token\"\n{GOOD}");
    let loaded = parse(&dir.join("gateway.toml"), &text).expect("valid");
    assert_eq!(loaded.config.admin.token.as_deref(), Some("s3cret"));
    let errs = match parse(&dir.join("gateway.toml"), &text.replace("admin.token", "missing.token")) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(ToString::to_string).collect(),
    };
    assert!(errs.iter().any(|e| e.contains("admin.token_file: cannot read")), "{errs:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_sample_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let loaded = load_file(&path).expect("config/gateway.toml must stay valid");
    assert!(!loaded.config.routes.is_empty());
}

#[test]
fn read_buffer_is_none_by_default_and_takes_zero_or_one_kib_to_one_mib() {
    let default = parse(Path::new("gateway.toml"), GOOD).expect("valid");
    assert_eq!(default.config.startup.server.read_buffer, 0);
    for (value, bytes) in [("\"0\"", 0), ("\"1KiB\"", 1024), ("\"64KiB\"", 65_536)] {
        let text = GOOD.replace("[server]\n", &format!("[server]\nread_buffer = {value}\n"));
        assert_eq!(parse(Path::new("gateway.toml"), &text).expect("valid").config.startup.server.read_buffer, bytes);
    }
    for wrong in ["\"512\"", "\"2MiB\"", "\"lots\""] {
        let errs = errors(&GOOD.replace("[server]\n", &format!("[server]\nread_buffer = {wrong}\n")));
        assert!(errs.iter().any(|e| e.starts_with("gateway.toml:3: server.read_buffer:")), "{wrong}: {errs:#?}");
    }
}

#[test]
fn six_versions_are_one_error_naming_the_limit() {
    let versions: Vec<String> = (1..=6)
        .map(|i| format!("{{ name = \"v{i}\", upstream = \"v1\", percent = {} }}", if i == 1 { 0 } else { 1 }))
        .collect();
    let text = format!(
        "[upstreams.v1]\nbackends = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\n\
         versions = [{}]\n",
        versions.join(", ")
    );
    assert_eq!(errors(&text), vec!["gateway.toml:6: routes[0].versions: at most 5 versions per route (6 given)"]);
}

#[test]
fn cluster_section_and_cluster_limits_are_checked_together() {
    let limit = "\n[routes.rate_limit]\nper_ip = { rate = \"100/s\", scope = \"cluster\" }\n";
    // A cluster limit without [cluster]: the limit's own line and key.
    let shown = errors(&format!("{GOOD}{limit}"));
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0]
            .starts_with("gateway.toml:22: routes[0].rate_limit.per_ip.scope: scope = \"cluster\" needs a [cluster]"),
        "{shown:?}"
    );

    // Every mistake of the section at once.
    let bad = format!(
        "{GOOD}{limit}\n[cluster]\nredis = \"http://127.0.0.1:6379\"\nkey_prefix = \"a b\"\ntimeout = \"0s\"\n\
         password_file = \"/nonexistent/redis.pass\"\nca_file = \"ca.pem\"\n"
    );
    let shown = errors(&bad);
    for key in ["cluster.redis", "cluster.key_prefix", "cluster.timeout", "cluster.password_file", "cluster.ca_file"] {
        assert!(shown.iter().any(|e| e.contains(&format!(": {key}: "))), "{key} in {shown:?}");
    }
    assert!(!shown.iter().any(|e| e.contains("scope")), "{shown:?}");

    let good = format!(
        "{GOOD}\n[routes.rate_limit]\nper_ip = {{ rate = \"100/s\", scope = \"cluster\", on_store_error = \"deny\" }}\n\
         \n[cluster]\nredis = \"redis://:secret@127.0.0.1:6379/0\"\n"
    );
    let loaded = parse(Path::new("gateway.toml"), &good).expect("valid");
    let spec = loaded.config.startup.cluster.as_ref().expect("cluster");
    assert_eq!(spec.redis_display(), "redis://***@127.0.0.1:6379/0", "the password is never shown");
    assert_eq!((spec.key_prefix.as_str(), spec.timeout), ("gw:", std::time::Duration::from_millis(200)));
    let per_ip = loaded.config.routes[0].rate_limit.per_ip.expect("limit");
    assert_eq!(per_ip.scope, LimitScope::Cluster(OnStoreError::Deny));

    // on_store_error means nothing for a replica limit.
    let shown =
        errors(&format!("{GOOD}\n[routes.rate_limit]\nper_ip = {{ rate = \"1/s\", on_store_error = \"allow\" }}\n"));
    assert!(shown.iter().any(|e| e.contains("per_ip.on_store_error: applies only to scope")), "{shown:?}");
}

#[test]
fn a_rollout_is_checked_key_by_key() {
    let good = format!(
        "{GOOD}\n[routes.rollout]\nsteps = [25, 50, 100]\nhold = \"5m\"\ninterval = \"10s\"\n\
         gates = {{ max_error_rate = 2.0, max_p99_ratio = 1.3 }}\n"
    );
    let loaded = parse(Path::new("gateway.toml"), &good).expect("valid");
    let r = loaded.config.routes[0].rollout.as_ref().expect("rollout");
    assert_eq!((r.version, r.steps.as_slice(), r.failure_limit, r.min_requests), (1, &[2500, 5000, 10000][..], 2, 200));
    assert_eq!((r.gates.max_error_rate, r.gates.max_diff_rate), (Some(2.0), None));

    let bad = format!(
        "{GOOD}\n[routes.rollout]\nversion = \"v9\"\nsteps = [50, 25, 0]\ninterval = \"0s\"\nfailure_limit = 0\n\
         gates = {{ max_error_rate = -1.0 }}\non_abort = \"keep\"\n"
    );
    let shown = errors(&bad);
    for key in [
        "routes[0].rollout.version",
        "routes[0].rollout.steps[1]",
        "routes[0].rollout.steps[2]",
        "routes[0].rollout.interval",
        "routes[0].rollout.failure_limit",
        "routes[0].rollout.gates.max_error_rate",
        "routes[0].rollout.on_abort",
    ] {
        assert!(shown.iter().any(|e| e.contains(&format!(": {key}: "))), "{key} in {shown:?}");
    }
    // Each names the file and the line of the [routes.rollout] table.
    assert!(shown.iter().all(|e| e.starts_with("gateway.toml:21: ")), "{shown:?}");
}
