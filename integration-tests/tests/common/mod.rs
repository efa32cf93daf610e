//! Config texts shared by the end-to-end tests. `{listen}` and `{admin}` are
//! filled in by the harness with free loopback ports.
#![allow(dead_code)]

pub mod shop;

use std::net::SocketAddr;

use integration_tests::Backend;

/// `["127.0.0.1:1", "127.0.0.1:2"]` for a TOML array.
pub fn addrs(backends: &[&Backend]) -> String {
    list(&backends.iter().map(|b| b.addr()).collect::<Vec<_>>())
}

pub fn list(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// The sample's shape: one `cart` route, stable and canary pools.
pub fn cart_config(stable: &[&Backend], canary: &[&Backend], percent: f64) -> String {
    cart_config_with(stable, canary, percent, "")
}

/// [`cart_config`] plus extra lines inside the route.
pub fn cart_config_with(stable: &[&Backend], canary: &[&Backend], percent: f64, route_extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
shutdown_grace = "10s"
version_header = "x-gateway-version"

[admin]
listen = "{{admin}}"

[upstreams.cart-v1]
backends = {stable}
connect_timeout = "1s"
read_timeout = "10s"

[upstreams.cart-v2]
backends = {canary}

[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "cart-v1"
canary = "cart-v2"
canary_percent = {percent:.2}
user_id = ["header:x-user-id", "cookie:uid", "query:uid"]
salt = "cart-2026-11"
whitelist_users = ["1001", "1002"]
{route_extra}
"#,
        stable = addrs(stable),
        canary = addrs(canary),
    )
}

/// The version the gateway says answered (`x-gateway-version`).
pub fn version_of(headers: &reqwest::header::HeaderMap) -> String {
    headers.get("x-gateway-version").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}
