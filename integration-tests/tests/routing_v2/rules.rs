//! Match rules: headers, methods, query and cookies pick the route; unmet rules fall through.

use super::*;

// ---------------------------------------------------------------------------
// Match rules
// ---------------------------------------------------------------------------

/// A request (method, path, headers) and what it must get (status, backend).
type RuleCase = (Method, &'static str, Vec<(&'static str, &'static str)>, u16, &'static str);

const RULE_BACKENDS: [&str; 6] = ["plain", "ios", "web", "post", "de", "beta"];

fn rules_config(backends: &HashMap<&str, Backend>) -> String {
    let upstreams: String = RULE_BACKENDS
        .iter()
        .map(|name| format!("[upstreams.{name}]\nbackends = [\"{}\"]\n\n", backends[name].addr()))
        .collect();
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
shutdown_grace = "5s"
version_header = "{VERSION_HEADER}"

[admin]
listen = "{{admin}}"

{upstreams}

# The plain route comes first in the file: the one with a rule must win anyway.
[[routes]]
name = "cart"
path_prefix = "/cart"
stable = "plain"

[[routes]]
name = "cart-ios"
path_prefix = "/cart"
headers = {{ "X-App" = "ios" }}
stable = "ios"

# A longer prefix whose rule does not hold falls through to the /cart routes.
[[routes]]
name = "cart-items-web"
path_prefix = "/cart/items"
headers = {{ "x-client" = "~^web-[0-9]+$" }}
stable = "web"

[[routes]]
name = "orders"
path_prefix = "/orders"
stable = "plain"

[[routes]]
name = "orders-post"
path_prefix = "/orders"
methods = ["POST"]
stable = "post"

[[routes]]
name = "shop"
path_prefix = "/shop"
stable = "plain"

[[routes]]
name = "shop-de"
path_prefix = "/shop"
query = {{ "lang" = "de" }}
stable = "de"

[[routes]]
name = "app-beta"
path_prefix = "/app"
cookies = {{ "beta" = "*" }}
stable = "beta"

[[routes]]
name = "app"
path_prefix = "/app"
stable = "plain"

# Nothing else serves /ios-only.
[[routes]]
name = "ios-only"
path_prefix = "/ios-only"
headers = {{ "x-app" = "ios" }}
stable = "ios"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_rules_on_headers_methods_query_and_cookies_pick_the_route_and_fall_through_when_unmet() {
    let mut backends = HashMap::new();
    for name in RULE_BACKENDS {
        backends.insert(name, Backend::start(name).await);
    }
    let gateway = Gateway::start(&rules_config(&backends)).await;
    let client = http_client();

    // (method, path, headers, expected status, expected backend)
    let cases: Vec<RuleCase> = vec![
        // Header rule; the name is case-insensitive, the value exact text.
        (Method::GET, "/cart/x", vec![("x-app", "ios")], 200, "ios"),
        (Method::GET, "/cart/x", vec![("x-app", "android")], 200, "plain"),
        (Method::GET, "/cart/x", vec![("x-app", "iOS")], 200, "plain"),
        (Method::GET, "/cart/x", vec![], 200, "plain"),
        // Regex on a longer prefix; unmet, the request falls through to /cart.
        (Method::GET, "/cart/items/1", vec![("x-client", "web-42")], 200, "web"),
        (Method::GET, "/cart/items/1", vec![("x-client", "web-42"), ("x-app", "ios")], 200, "web"),
        (Method::GET, "/cart/items/1", vec![("x-client", "web-abc"), ("x-app", "ios")], 200, "ios"),
        (Method::GET, "/cart/items/1", vec![("x-client", "xweb-42")], 200, "plain"),
        (Method::GET, "/cart/items/1", vec![("x-client", "web-42x")], 200, "plain"),
        (Method::GET, "/cart/items/1", vec![], 200, "plain"),
        // Methods.
        (Method::POST, "/orders", vec![], 200, "post"),
        (Method::GET, "/orders", vec![], 200, "plain"),
        (Method::PUT, "/orders/7", vec![], 200, "plain"),
        // Query: exact value, exact key.
        (Method::GET, "/shop?lang=de", vec![], 200, "de"),
        (Method::GET, "/shop/list?page=2&lang=de", vec![], 200, "de"),
        (Method::GET, "/shop?lang=en", vec![], 200, "plain"),
        (Method::GET, "/shop?LANG=de", vec![], 200, "plain"),
        (Method::GET, "/shop", vec![], 200, "plain"),
        // Cookie present with any value; the name is exact.
        (Method::GET, "/app", vec![("cookie", "beta=1")], 200, "beta"),
        (Method::GET, "/app/home", vec![("cookie", "theme=dark; beta=yes")], 200, "beta"),
        (Method::GET, "/app", vec![("cookie", "Beta=1")], 200, "plain"),
        (Method::GET, "/app", vec![("cookie", "theme=dark")], 200, "plain"),
        (Method::GET, "/app", vec![], 200, "plain"),
        // Rules unmet and no other candidate: 404.
        (Method::GET, "/ios-only/x", vec![("x-app", "ios")], 200, "ios"),
        (Method::GET, "/ios-only/x", vec![], 404, ""),
        (Method::GET, "/ios-only/x", vec![("x-app", "android")], 404, ""),
    ];
    let forwarded = cases.iter().filter(|case| case.3 == 200).count();
    let mut wrong = Vec::new();
    for (method, path, headers, status, backend) in cases {
        let served = send(&client, method.clone(), &gateway.url(path), &headers).await;
        if (served.status, served.backend.as_str()) != (status, backend) {
            wrong.push(format!(
                "{method} {path} {headers:?}: expected {status} from {backend:?}, got {} from {:?}",
                served.status, served.backend
            ));
        }
    }
    assert!(wrong.is_empty(), "{} requests routed wrongly:\n{}", wrong.len(), wrong.join("\n"));
    // The 404s reached no backend.
    let reached: usize = backends.values().map(Backend::requests).sum();
    assert_eq!(reached, forwarded, "requests that reached a backend");
}
