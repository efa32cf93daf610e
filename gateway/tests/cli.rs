//! The command line as a release engineer uses it: `gateway check` and
//! `gateway explain` on real files, through the built binary.

use std::path::PathBuf;
use std::process::{Command, Output};

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway")).args(args).output().expect("run gateway")
}

fn sample() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml").display().to_string()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn check_summarises_a_good_config() {
    let out = gateway(&["check", "-c", &sample()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("OK"), "{t}");
    assert!(t.contains("version stable     -> cart-v1        default, 90.00% (every other bucket)"), "{t}");
    assert!(t.contains("version canary     -> cart-v2        10.00%, buckets [0, 1000)"), "{t}");
    assert!(t.contains("whitelist users [1001, 1002]"), "{t}");
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let dir = tempdir();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        "[upstreams.a]\nbackends = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/r\"\nstable = \"a\"\ncanary = \"b\"\ncanary_percent = 120\n",
    )
    .expect("write");
    let out = gateway(&["check", "-c", &path.display().to_string()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("gateway.toml:8: routes[0].canary: unknown upstream \"b\""), "{t}");
    assert!(t.contains("gateway.toml:9: routes[0].canary_percent: 120 is outside 0..=100"), "{t}");
    assert!(t.contains("2 error(s)"), "{t}");
}

#[test]
fn check_reports_an_unreadable_file() {
    let out = gateway(&["check", "-c", "/nonexistent/gateway.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot read config file"), "{}", text(&out));
}

#[test]
fn explain_names_route_version_and_reason() {
    let out = gateway(&["explain", "-c", &sample(), "--path", "/cart/x", "--user", "1001"]);
    assert!(text(&out).contains("route cart -> canary: whitelisted user 1001"), "{}", text(&out));

    // Bucket 593 for user 42 under salt cart-2026-11 (see the test vectors).
    let out = gateway(&["explain", "-c", &sample(), "--path", "/cart/x", "--user", "42"]);
    assert!(
        text(&out).contains("route cart -> canary: bucket 593 in canary's range [0, 1000) (10.00%)"),
        "{}",
        text(&out)
    );

    let out = gateway(&["explain", "-c", &sample(), "--path", "/cart/x", "--header", "x-user-id:1001"]);
    assert!(text(&out).contains("whitelisted user 1001"), "{}", text(&out));

    let out = gateway(&["explain", "-c", &sample(), "--path", "/cart", "--ip", "192.0.2.9"]);
    assert!(text(&out).contains("route cart -> canary: whitelisted ip 192.0.2.9"), "{}", text(&out));

    // The proxy's own pipeline: a request no route takes is answered 404.
    let out = gateway(&["explain", "-c", &sample(), "--path", "/nowhere"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("404: no route matches /nowhere"), "{}", text(&out));
    assert!(text(&out).contains("verdict respond 404 (no-route)"), "{}", text(&out));
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gw-cli-{}-{}", std::process::id(), line!()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}
