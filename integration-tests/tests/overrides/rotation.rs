//! Rotated secrets: a key or token file rewritten in place, with the config
//! text untouched, reloads by itself (the load's record of the files it read
//! notices the change), and from then on only the new secret is honoured.

use super::*;

/// A second override key, as long as the first: only the file's time tells
/// the rewrite apart, the way `openssl rand -hex 16 > override.key` rotates.
const ROTATED_OVERRIDE_KEY: &str = "0b8e2d4f6a1c3e5b7d9f0a2c4e6b8d1f\n";

/// Rewrites `file` in `gateway`'s directory in place (same inode, new bytes)
/// and waits until a reload has applied it: the generation moves on.
async fn rotate(gateway: &Gateway, file: &str, contents: &str) {
    let generation = gateway.generation().await;
    std::fs::write(gateway.dir().join(file), contents).unwrap_or_else(|e| panic!("rewrite {file}: {e}"));
    gateway.wait_for_generation(generation + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_override_key_refuses_old_tokens_and_honours_new_ones() {
    assert_eq!(ROTATED_OVERRIDE_KEY.len(), OVERRIDE_KEY.len(), "the same size, so only the write time changes");
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", Some(SIGNED_OFFICE));
    let gateway = start(&v1, &v2, "", "", &[cart]).await;
    let client = http_client();
    let url = gateway.url("/cart/items");
    let on_v1 = user_on(&gateway, "/cart/items", "v1").await;
    let config_before = std::fs::read_to_string(gateway.config_path()).expect("read the config");

    let old_token = mint(gateway.config_path(), "cart", "v2", "8h").await;
    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &old_token)]).await;
    assert_eq!(got, on("v2"), "user {on_v1} with a token signed by the first key");
    expect_overrides(&gateway, "cart", 1, 0).await;

    rotate(&gateway, "override.key", ROTATED_OVERRIDE_KEY).await;
    let config_after = std::fs::read_to_string(gateway.config_path()).expect("read the config");
    assert_eq!(config_before, config_after, "only the key file changed");

    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &old_token)]).await;
    assert_eq!(got, on("v1"), "the token signed by the retired key is ignored");
    expect_overrides(&gateway, "cart", 1, 1).await;

    let new_token = mint(gateway.config_path(), "cart", "v2", "8h").await;
    assert_ne!(new_token, old_token, "minted with the new key");
    let got = served(&client, &url, &[("x-user-id", &on_v1), (OVERRIDE_HEADER, &new_token)]).await;
    assert_eq!(got, on("v2"), "a token signed by the new key");
    expect_overrides(&gateway, "cart", 2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_admin_token_file_refuses_the_old_token_and_accepts_the_new_one() {
    let (v1, v2) = backends().await;
    let cart = route("cart", "/cart", 10.0, "", None);
    let dir = dir_with_keys();
    std::fs::write(dir.path().join("admin.token"), "first-admin-token\n").expect("write admin.token");
    let text =
        config(v1.addr(), v2.addr(), "", "", &[cart]).replace("[admin]\n", "[admin]\ntoken_file = \"admin.token\"\n");
    assert!(text.contains("token_file"), "the admin table is where the config expects it");
    let mut gateway = Gateway::start_in(dir, "gateway.toml", &text).await;
    gateway.set_admin_token(Some("first-admin-token"));
    let generation = gateway.generation().await;

    std::fs::write(gateway.dir().join("admin.token"), "second-admin-token\n").expect("rewrite admin.token");
    let client = http_client();
    let status_with = |token: &'static str| {
        let request = client.get(gateway.admin_url("/api/status")).bearer_auth(token);
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    gateway
        .eventually("the new admin token is accepted", Duration::from_secs(10), || async {
            status_with("second-admin-token").await == 200
        })
        .await;
    assert_eq!(status_with("first-admin-token").await, 401, "the old admin token is refused");
    gateway.set_admin_token(Some("second-admin-token"));
    assert!(gateway.generation().await > generation, "it was a reload");
}
