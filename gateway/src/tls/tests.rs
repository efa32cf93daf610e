//! Certificates made at run time with rcgen: loading and its refusals, SNI
//! choice, the config errors they become, and renewal detection.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::certs::{load_pair, unix_now, PairFile};
use super::*;
use crate::config;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("ca key");
    let pem = params.self_signed(&key).expect("self-signed CA").pem();
    Ca { pem, issuer: Issuer::new(params, key) }
}

/// A leaf for `names` signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str], expired: bool) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &ca.issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

fn pair(dir: &Path, stem: &str, pem: &(String, String)) -> (PathBuf, PathBuf) {
    (write(dir, &format!("{stem}.pem"), &pem.0), write(dir, &format!("{stem}.key"), &pem.1))
}

#[test]
fn a_good_pair_loads_with_its_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (cert, key) = pair(dir.path(), "shop", &leaf(&ca, &["Shop.Test", "*.shop.test", "127.0.0.1"], false));
    let entry = load_pair(&cert, &key, unix_now()).expect("loads");
    assert_eq!(entry.names, vec!["shop.test".to_string(), "*.shop.test".to_string()]);
    assert!(entry.not_after > unix_now());
    assert!(!entry.serial.is_empty());
}

#[test]
fn bad_pairs_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let good = leaf(&ca, &["shop.test"], false);
    let other = leaf(&ca, &["shop.test"], false);
    let (cert, key) = pair(dir.path(), "good", &good);

    let (expired_cert, expired_key) = pair(dir.path(), "expired", &leaf(&ca, &["shop.test"], true));
    let e = load_pair(&expired_cert, &expired_key, unix_now()).expect_err("expired");
    assert_eq!(e.file, PairFile::Cert);
    assert!(e.message.contains("expired.pem") && e.message.contains("expired on"), "{}", e.message);

    let other_key = write(dir.path(), "other.key", &other.1);
    let e = load_pair(&cert, &other_key, unix_now()).expect_err("mismatch");
    assert_eq!(e.file, PairFile::Key);
    assert!(e.message.contains("other.key") && e.message.contains("does not belong"), "{}", e.message);

    let garbage = write(dir.path(), "garbage.pem", "hello, I am not a certificate\n");
    let e = load_pair(&garbage, &key, unix_now()).expect_err("garbage cert");
    assert_eq!(e.file, PairFile::Cert);
    assert!(e.message.contains("garbage.pem") && e.message.contains("no PEM certificate"), "{}", e.message);

    let e = load_pair(&cert, &garbage, unix_now()).expect_err("garbage key");
    assert_eq!(e.file, PairFile::Key);
    assert!(e.message.contains("no PEM private key"), "{}", e.message);

    let broken = write(dir.path(), "broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let e = load_pair(&broken, &key, unix_now()).expect_err("not X.509");
    assert!(e.message.contains("not valid X.509"), "{}", e.message);

    let e = load_pair(&dir.path().join("missing.pem"), &key, unix_now()).expect_err("missing");
    assert!(e.message.contains("missing.pem") && e.message.contains("cannot read"), "{}", e.message);

    // The same good pair, seen from a clock past its expiry.
    let e = load_pair(&cert, &key, i64::MAX / 2).expect_err("expired by clock");
    assert!(e.message.contains("expired"), "{}", e.message);
}

#[test]
fn sni_picks_exact_then_wildcard_then_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let load = |stem: &str, names: &[&str]| {
        let (c, k) = pair(dir.path(), stem, &leaf(&ca, names, false));
        load_pair(&c, &k, unix_now()).expect("loads")
    };
    let set = CertSet::new(
        vec![
            load("shop", &["shop.test", "*.shop.test"]),
            load("api", &["api.shop.test"]),
            load("default", &["x.test"]),
        ],
        2,
    );
    let stem = |sni: Option<&str>| {
        let e = set.pick(sni).expect("a certificate");
        e.cert_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    };
    assert_eq!(stem(Some("shop.test")), "shop");
    assert_eq!(stem(Some("SHOP.test.")), "shop");
    assert_eq!(stem(Some("www.shop.test")), "shop");
    assert_eq!(stem(Some("api.shop.test")), "api", "an exact name beats a wildcard");
    assert_eq!(stem(Some("a.b.shop.test")), "default", "a wildcard covers one label only");
    assert_eq!(stem(Some("unknown.test")), "default");
    assert_eq!(stem(None), "default");
    assert!(CertSet::default().pick(Some("shop.test")).is_none());
}

#[test]
fn https_location_keeps_path_and_query() {
    assert_eq!(
        https_location("shop.test:8080", 8443, "/cart/x?a=1").as_deref(),
        Some("https://shop.test:8443/cart/x?a=1")
    );
    assert_eq!(https_location("shop.test", 443, "/").as_deref(), Some("https://shop.test/"));
    assert_eq!(https_location("[::1]:8080", 8443, "/a").as_deref(), Some("https://[::1]:8443/a"));
    assert_eq!(https_location("evil.test/x", 443, "/"), None);
    assert_eq!(https_location("a b", 443, "/"), None);
    assert_eq!(https_location("", 443, "/"), None);
}

const UPSTREAM_AND_ROUTE: &str = r#"
[upstreams.app]
backends = ["127.0.0.1:9001"]

[[routes]]
name = "app"
path_prefix = "/"
stable = "app"
"#;

fn parse_in(dir: &Path, text: &str) -> Result<config::LoadedConfig, Vec<config::ConfigError>> {
    let path = write(dir, "gateway.toml", text);
    config::load_file(&path)
}

#[test]
fn server_tls_loads_and_reports_bad_files_with_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    pair(dir.path(), "shop", &leaf(&ca, &["shop.test"], false));
    pair(dir.path(), "default", &leaf(&ca, &["default.test"], false));
    let good = format!(
        r#"[server.tls]
listen = ["127.0.0.1:8443"]
certs = [
  {{ cert = "shop.pem", key = "shop.key" }},
  {{ cert = "default.pem", key = "default.key", default = true }},
]
http2 = true
{UPSTREAM_AND_ROUTE}"#
    );
    let loaded = parse_in(dir.path(), &good).expect("valid");
    let tls = loaded.config.server.tls.as_ref().expect("tls");
    assert!(tls.http2);
    assert_eq!(tls.certs.pick(None).map(|e| e.names.clone()), Some(vec!["default.test".to_string()]));
    assert_eq!(tls.certs.pick(Some("shop.test")).map(|e| e.names.clone()), Some(vec!["shop.test".to_string()]));

    // Renewal detection: the load recorded the certificate files; a rewritten one is a change.
    assert!(loaded.files.is_current());
    assert!(
        loaded.files.paths().any(|p| p.ends_with("shop.pem"))
            && loaded.files.paths().any(|p| p.ends_with("default.key"))
    );
    pair(dir.path(), "shop", &leaf(&ca, &["shop.test"], false));
    assert!(!loaded.files.is_current());

    pair(dir.path(), "default", &leaf(&ca, &["default.test"], true));
    let errors = parse_in(dir.path(), &good).expect_err("expired default");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].starts_with("gateway.toml:5: server.tls.certs[1].cert: "), "{shown:?}");
    assert!(shown[0].contains("default.pem: the certificate expired on"), "{shown:?}");
}

#[test]
fn tls_keys_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"[server]
listen = ["127.0.0.1:8080"]

[server.tls]
listen = ["127.0.0.1:8080"]
certs = [{ cert = "nope.pem", key = "nope.key" }]

[upstreams.app]
backends = ["127.0.0.1:9001"]
sni = "api.internal"

[upstreams.secure]
backends = ["127.0.0.1:9002"]
tls = true
sni = "bad name"
ca_file = "missing-ca.pem"

[[routes]]
name = "app"
path_prefix = "/"
stable = "app"
"#;
    let errors = parse_in(dir.path(), text).expect_err("invalid");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let has = |needle: &str| shown.iter().any(|e| e.contains(needle));
    assert!(has("gateway.toml:5: server.tls.listen[0]: 127.0.0.1:8080 is also in server.listen"), "{shown:#?}");
    assert!(has("gateway.toml:6: server.tls.certs[0].cert: ") && has("nope.pem: cannot read"), "{shown:#?}");
    assert!(has("gateway.toml:10: upstreams.app.sni: only applies with tls = true"), "{shown:#?}");
    assert!(has("gateway.toml:15: upstreams.secure.sni: \"bad name\" is not a host name"), "{shown:#?}");
    assert!(has("gateway.toml:16: upstreams.secure.ca_file: ") && has("missing-ca.pem: cannot read"), "{shown:#?}");

    let redirect_without_tls = r#"
[upstreams.app]
backends = ["127.0.0.1:9001"]

[[routes]]
name = "app"
path_prefix = "/"
stable = "app"
https_redirect = true
"#;
    let errors = parse_in(dir.path(), redirect_without_tls).expect_err("no tls listener");
    assert_eq!(
        errors[0].to_string(),
        "gateway.toml:9: routes[0].https_redirect: needs a [server.tls] listener to redirect to"
    );
}

#[test]
fn upstream_tls_settings_reach_the_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "ca.pem", &ca().pem);
    let text = r#"
[upstreams.app]
backends = ["127.0.0.1:9001"]
tls = true
sni = "API.internal"
ca_file = "ca.pem"

[upstreams.lax]
backends = ["127.0.0.1:9002"]
tls = true
verify = false

[[routes]]
name = "app"
path_prefix = "/"
stable = "app"
canary = "lax"
"#;
    let loaded = parse_in(dir.path(), text).expect("valid");
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(warnings.iter().any(|w| w.contains("upstreams.lax.verify: false")), "{warnings:?}");

    let app = loaded.config.upstreams["app"].tls.as_ref().expect("tls");
    let peer = upstream_peer("127.0.0.1:9001".parse().expect("addr"), Some(app));
    assert_eq!(peer.sni, "api.internal");
    assert!(peer.options.verify_cert && peer.options.verify_hostname);
    assert_eq!(peer.options.ca.as_ref().map(|c| c.len()), Some(1));
    assert_ne!(peer.group_key, 0, "connections verified against this CA are pooled apart");

    let lax = loaded.config.upstreams["lax"].tls.as_ref().expect("tls");
    let peer = upstream_peer("127.0.0.1:9002".parse().expect("addr"), Some(lax));
    assert_eq!(peer.sni, "127.0.0.1", "without sni the backend's address is the name");
    assert!(!peer.options.verify_cert && !peer.options.verify_hostname);

    let plain = upstream_peer("127.0.0.1:9003".parse().expect("addr"), None);
    assert!(plain.sni.is_empty());
}

#[test]
fn listener_changes_need_a_restart_certificates_do_not() {
    // From the startup settings' types, as a reload reports them.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    pair(dir.path(), "shop", &leaf(&ca, &["shop.test"], false));
    pair(dir.path(), "other", &leaf(&ca, &["other.test"], false));
    let tls = |port: u16, http2: bool, stem: &str| {
        let text = format!(
            "[server.tls]\nlisten = [\"127.0.0.1:{port}\"]\nhttp2 = {http2}\n\
             certs = [{{ cert = \"{stem}.pem\", key = \"{stem}.key\" }}]\n{UPSTREAM_AND_ROUTE}"
        );
        parse_in(dir.path(), &text).expect("valid").config.startup
    };
    let plain = parse_in(dir.path(), UPSTREAM_AND_ROUTE).expect("valid").config.startup;
    let started = tls(8443, true, "shop");
    assert!(started.changed(&tls(8443, true, "other")).is_empty(), "a certificate applies live");
    assert_eq!(started.changed(&tls(9443, false, "shop")), vec!["server.tls.listen", "server.tls.http2"]);
    // A listener added is reported as the section, once.
    assert_eq!(plain.changed(&started), vec!["server.tls"]);
}
