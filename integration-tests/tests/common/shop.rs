//! A JSON shop backend for the shadow and QA tests: answers QA can predict.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::any;
use axum::Router;
use serde_json::json;

/// One request as the backend saw it: method, headers, body.
pub type Seen = (String, HeaderMap, Vec<u8>);

/// A JSON backend whose answers QA can predict: `$.items[2].price` is
/// `price`, `$.ts` is random when `random_ts`, and shadow requests (marked
/// `x-shadow: 1`) can be slowed down.
#[derive(Clone)]
pub struct Shop {
    pub price: u32,
    pub random_ts: bool,
    pub shadow_delay: Duration,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub shadow_done: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
}

impl Shop {
    pub fn new(price: u32) -> Self {
        Shop {
            price,
            random_ts: false,
            shadow_delay: Duration::ZERO,
            seen: Arc::default(),
            shadow_done: Arc::default(),
            hits: Arc::default(),
        }
    }

    pub async fn start(self) -> (SocketAddr, Shop) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shop = self.clone();
        let app = Router::new().fallback(any(move |method: axum::http::Method, headers: HeaderMap, body: Bytes| {
            let shop = shop.clone();
            async move {
                shop.hits.fetch_add(1, Ordering::SeqCst);
                shop.seen.lock().expect("lock").push((method.to_string(), headers.clone(), body.to_vec()));
                let shadow = headers.get("x-shadow").is_some();
                if shadow && !shop.shadow_delay.is_zero() {
                    tokio::time::sleep(shop.shadow_delay).await;
                    shop.shadow_done.store(true, Ordering::SeqCst);
                }
                // Always 18 digits when random, so the body length (content-length) never differs.
                let ts: u64 =
                    if shop.random_ts { 100_000_000_000_000_000 + rand_u64() % 900_000_000_000_000_000 } else { 0 };
                let body = json!({
                    "items": [{"id": 1, "price": 5}, {"id": 2, "price": 7}, {"id": 3, "price": shop.price}],
                    "ts": ts,
                    "meta": {"currency": "EUR"},
                });
                axum::Json(body)
            }
        }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (addr, self)
    }

    pub fn shadow_requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").iter().filter(|(_, h, _)| h.get("x-shadow").is_some()).cloned().collect()
    }
}

pub fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t >> 64) as u64
}

/// A gateway config with one shadowed route `cart` (stable `v1`, canary `v2`,
/// canary at 0%): `store` is the diff store's path, `shadow` the lines of
/// `[routes.shadow]`. `{listen}`, `{admin}` and `{dir}` are left for the harness.
pub fn shadow_config(stable: SocketAddr, canary: SocketAddr, store: &str, shadow: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
[admin]
listen = "{{admin}}"
[shadow]
store = "{store}"
max_stored_body = "4KiB"
[upstreams.v1]
backends = ["{stable}"]
[upstreams.v2]
backends = ["{canary}"]
[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "v1"
canary = "v2"
canary_percent = 0
[routes.shadow]
{shadow}
"#
    )
}
