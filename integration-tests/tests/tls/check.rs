//! `gateway check` lists the certificates.

use super::pki::*;
use integration_tests::{dead_addr, free_addr, run_cli, temp_dir};
use rcgen::CertificateParams;

/// `gateway check` is what ops run before a deploy: it lists each
/// certificate with the names it serves, its expiry and which is the default.
#[test]
fn gateway_check_lists_each_certificate_with_its_names_and_expiry() {
    let pki = Pki::new();
    let dir = temp_dir();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    // March 15th five years on and June 1st four years on: always valid, and
    // two different dates the output must tell apart.
    let year = civil_year(now);
    let (shop_expiry, default_expiry) = ((year + 5, 3, 15), (year + 4, 6, 1));
    let at = |(y, m, d): (i32, u8, u8)| move |p: &mut CertificateParams| p.not_after = rcgen::date_time_ymd(y, m, d);
    let shop = pki.leaf_with(&["shop.test", "*.shop.test"], at(shop_expiry));
    let default = pki.leaf_with(&["default.test"], at(default_expiry));
    install(&dir.path().join("certs"), "shop", &shop);
    install(&dir.path().join("certs"), "default", &default);
    let config = dir.path().join("gateway.toml");
    let text =
        tls_config(dead_addr(), free_addr(), "").replace("{listen}", "127.0.0.1:1").replace("{admin}", "127.0.0.1:2");
    write_file(&config, &text);

    let out = run_cli(&["check", "-c", &config.to_string_lossy()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line =
        |file: &str| stdout.lines().find(|l| l.contains(file)).unwrap_or_else(|| panic!("{file} listed: {stdout}"));
    let days = |unix: i64| [(unix - now).div_euclid(86_400), (unix - now).div_euclid(86_400) - 1];
    let listed = |line: &str, names: &str, (y, m, d): (i32, u8, u8)| {
        let date = format!("{names}  expires {y}-{m:02}-{d:02}T00:00:00Z");
        assert!(line.contains(&date), "wanted {date}: {line}");
        let in_days = days(unix_of(y, m, d));
        assert!(in_days.iter().any(|n| line.contains(&format!("(in {n} days)"))), "wanted {in_days:?} days: {line}");
    };

    let shop_line = line("shop.pem");
    listed(shop_line, "shop.test, *.shop.test", shop_expiry);
    assert!(!shop_line.ends_with("default"), "{shop_line}");
    let default_line = line("default.pem");
    listed(default_line, "default.test", default_expiry);
    assert!(default_line.ends_with("default"), "the default certificate is marked: {default_line}");
    assert!(stdout.contains("tls listen "), "{stdout}");
}

/// The UTC calendar year of a Unix time.
fn civil_year(unix: i64) -> i32 {
    let mut year = 1970;
    while unix_of(year + 1, 1, 1) <= unix {
        year += 1;
    }
    year
}

/// Unix seconds at midnight UTC of a date (days from civil, proleptic Gregorian).
fn unix_of(y: i32, m: u8, d: u8) -> i64 {
    let (y, m, d) = (i64::from(y) - i64::from(m <= 2), i64::from(m), i64::from(d));
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400
}
