//! `gateway check` on override tables and the anonymous cookie.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_check_wants_the_anonymous_secret_and_sound_override_tables() {
    let (a, b) = (dead_addr(), dead_addr());
    let good = config(
        a,
        b,
        "",
        &anonymous_cookie(""),
        &[
            route("cart", "/cart", 10.0, "anonymous = \"cookie\"", Some(SIGNED_OFFICE)),
            route("plain", "/plain", 10.0, "", Some(ALLOW_OFFICE_HEADER)),
        ],
    );
    let (code, out) = check(&good, &[]).await;
    assert_eq!(code, Some(0), "the good config passes:\n{out}");

    let no_anon_secret = config(a, b, "", "", &[route("cart", "/cart", 10.0, "anonymous = \"cookie\"", None)]);
    let (code, out) = check(&no_anon_secret, &[]).await;
    assert_eq!(code, Some(1), "anonymous = \"cookie\" without [anonymous_cookie]:\n{out}");
    assert!(out.contains("anonymous"), "the error names the setting:\n{out}");

    let short_key = config(
        a,
        b,
        "",
        "",
        &[route("cart", "/cart", 10.0, "", Some("header = \"x-gateway-version\"\nsecret_file = \"short.key\""))],
    );
    let (code, out) = check(&short_key, &[("short.key", "0123456789\n")]).await;
    assert_eq!(code, Some(1), "an override key under 16 bytes:\n{out}");
    assert!(out.contains("secret_file"), "the error names secret_file:\n{out}");

    let nowhere = config(a, b, "", "", &[route("cart", "/cart", 10.0, "", Some("allow_from = [\"10.0.0.0/8\"]"))]);
    let (code, out) = check(&nowhere, &[]).await;
    assert_eq!(code, Some(1), "an override with neither header nor cookie:\n{out}");
    assert!(out.contains("override"), "the error names the override table:\n{out}");
}
