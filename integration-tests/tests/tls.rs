//! TLS with real clients: certificates chosen by SNI, HTTP/2 and HTTP/1.1 by
//! ALPN, a certificate renewed on disk under load with zero failed requests,
//! bad certificates refused at check, start and reload, the plain-HTTP
//! redirect, and TLS to upstreams (a second gateway serves as the TLS
//! backend). Certificates are made at run time with rcgen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::raw_http::{echoed, read_one_response, send_a_body_with_its_head_and_a_long_head};
use integration_tests::{dead_addr, free_addr, http_client, run_cli, temp_dir, Backend, Gateway};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reqwest::{Client, StatusCode, Version};
use serde_json::Value;

/// A test certificate authority.
struct Pki {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM, plus the DER the client will see.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "gateway test CA");
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("self-sign the CA").pem();
        Pki { pem, issuer: Issuer::new(params, key) }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    fn leaf_with(&self, names: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        tweak(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    fn expired(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("CA certificate for reqwest")
    }
}

/// Writes `<dir>/<stem>.pem` and `.key` the way renewal tools do: a temp file
/// renamed over the old one, so a reader never sees half a file.
fn install(dir: &Path, stem: &str, leaf: &Leaf) {
    std::fs::create_dir_all(dir).expect("create the certificate directory");
    for (ext, text) in [("key", &leaf.key_pem), ("pem", &leaf.cert_pem)] {
        let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
        std::fs::write(&tmp, text).expect("write the temp file");
        std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).expect("rename over the old file");
    }
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A client that trusts the test CA, sends `names` to `addr`, and reports
/// the peer certificate of each response.
///
/// A client resumes TLS sessions it has seen, and a resumed handshake does not
/// send the certificate again (the client keeps reporting the one of the
/// original session), so a test that must see what a *new* handshake gets
/// uses a new client, as [`fresh_fetch`] does.
fn tls_client(pki: &Pki, names: &[&str], addr: SocketAddr) -> reqwest::ClientBuilder {
    tls_client_trusting(pki.root(), names, addr)
}

fn tls_client_trusting(root: reqwest::Certificate, names: &[&str], addr: SocketAddr) -> reqwest::ClientBuilder {
    let mut builder = Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .add_root_certificate(root)
        .tls_built_in_root_certs(false)
        .tls_info(true);
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder
}

fn peer_cert(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// [`fetch`] over a new connection with a full handshake (a new client, so no session to resume).
async fn fresh_fetch(
    root: &reqwest::Certificate,
    names: &[&str],
    addr: SocketAddr,
    url: &str,
) -> Result<(StatusCode, Version, Vec<u8>, Value), reqwest::Error> {
    let client = tls_client_trusting(root.clone(), names, addr).http1_only().build().expect("client");
    fetch(&client, url).await
}

/// GET `url`: status, HTTP version, the peer certificate and the JSON body.
async fn fetch(client: &Client, url: &str) -> Result<(StatusCode, Version, Vec<u8>, Value), reqwest::Error> {
    let response = client.get(url).send().await?;
    let (status, version, cert) = (response.status(), response.version(), peer_cert(&response));
    let text = response.text().await?;
    Ok((status, version, cert, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// A gateway config with one route to `backend` and a TLS listener on `tls`
/// serving `certs/shop.*` (SNI) and `certs/default.*` (the default).
fn tls_config(backend: SocketAddr, tls: SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
threads = 2
shutdown_grace = "5s"

[server.tls]
listen = ["{tls}"]
certs = [
  {{ cert = "certs/shop.pem", key = "certs/shop.key" }},
  {{ cert = "certs/default.pem", key = "certs/default.key", default = true }},
]
http2 = true

[admin]
listen = "{{admin}}"

[upstreams.app]
backends = ["{backend}"]

[[routes]]
name = "app"
path_prefix = "/"
stable = "app"
{route_extra}
"#
    )
}

/// A gateway serving `shop` (shop.test, *.shop.test) and `default`
/// (default.test and the TLS listener's own IP address).
async fn start_tls_gateway(pki: &Pki, backend: &Backend, route_extra: &str) -> (Gateway, SocketAddr, Leaf, Leaf) {
    let dir = temp_dir();
    let tls = free_addr();
    let shop = pki.leaf(&["shop.test", "*.shop.test"]);
    let default = pki.leaf(&["default.test", &tls.ip().to_string()]);
    install(&dir.path().join("certs"), "shop", &shop);
    install(&dir.path().join("certs"), "default", &default);
    let gateway = Gateway::start_in(dir, "gateway.toml", &tls_config(backend.addr(), tls, route_extra)).await;
    (gateway, tls, shop, default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_h2_and_http1_both_work() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (gateway, tls, shop, default) = start_tls_gateway(&pki, &backend, "").await;
    let port = tls.port();
    let names = ["shop.test", "www.shop.test", "a.b.shop.test", "other.test"];

    let h2 = tls_client(&pki, &names, tls).build().expect("h2 client");
    let (status, version, cert, body) = fetch(&h2, &format!("https://shop.test:{port}/cart")).await.expect("shop.test");
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert!(cert == shop.der, "shop.test must get the shop certificate");
    assert_eq!(body["backend"], "app");
    assert_eq!(body["path"], "/cart");

    let (_, _, cert, _) = fetch(&h2, &format!("https://www.shop.test:{port}/")).await.expect("wildcard");
    assert!(cert == shop.der, "*.shop.test covers www.shop.test");

    // An address sends no SNI: the default certificate (which lists it).
    let (status, _, cert, _) = fetch(&h2, &format!("https://{tls}/")).await.expect("no SNI");
    assert_eq!(status, StatusCode::OK);
    assert!(cert == default.der, "a client without SNI gets the default certificate");

    // Names no certificate covers get the default one too (which the client then rejects).
    let err = fetch(&h2, &format!("https://other.test:{port}/")).await.expect_err("unknown name is not verified");
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    let lax = tls_client(&pki, &names, tls).danger_accept_invalid_certs(true).build().expect("lax client");
    for name in ["other.test", "a.b.shop.test"] {
        let (status, _, cert, _) = fetch(&lax, &format!("https://{name}:{port}/")).await.expect("unknown name");
        assert_eq!(status, StatusCode::OK);
        assert!(cert == default.der, "{name} must get the default certificate");
    }

    let h1 = tls_client(&pki, &names, tls).http1_only().build().expect("h1 client");
    let (status, version, cert, _) = fetch(&h1, &format!("https://shop.test:{port}/cart")).await.expect("h1");
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));
    assert!(cert == shop.der);

    // Many streams at once over the one h2 connection.
    let url = format!("https://shop.test:{port}/cart/many");
    let answers = futures::future::join_all((0..32).map(|_| fetch(&h2, &url))).await;
    for a in answers {
        let (status, version, _, _) = a.expect("concurrent h2 request");
        assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    }

    // The upstream is told how the client came in.
    let plain = http_client().get(gateway.url("/plain")).send().await.expect("plain request");
    assert_eq!(plain.status(), StatusCode::OK);
    let received = backend.received();
    let proto = |path: &str| {
        received.iter().find(|r| r.path == path).and_then(|r| r.header("x-forwarded-proto")).unwrap_or_default()
    };
    assert_eq!(proto("/cart"), "https");
    assert_eq!(proto("/plain"), "http");
}

/// Between requests an HTTP/1 TLS connection waits without a session: what
/// arrives is read on the stack and handed to the parser by a wrapper around
/// the TLS stream. Whatever lies past that first read, or comes with it,
/// must reach the backend intact, on the one kept-alive connection: a body
/// in the same write as the head, a head longer than the read, a request
/// whose first byte comes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_reused_tls_connection_arrive_whole() {
    use tokio::io::AsyncWriteExt;
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (_gateway, tls, _, _) = start_tls_gateway(&pki, &backend, "").await;
    let mut conn = raw_tls_connection(&pki, tls, "shop.test").await;

    conn.write_all(b"GET /cart HTTP/1.1\r\nHost: shop.test\r\n\r\n").await.expect("write");
    assert_eq!(echoed(&read_one_response(&mut conn).await)["path"], "/cart");
    tokio::time::sleep(Duration::from_millis(300)).await;

    send_a_body_with_its_head_and_a_long_head(&mut conn, "shop.test").await;

    let request = b"GET /cart/last HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    conn.write_all(&request[..1]).await.expect("write the first byte");
    conn.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_all(&request[1..]).await.expect("write the rest");
    assert_eq!(echoed(&read_one_response(&mut conn).await)["path"], "/cart/last");
    assert_eq!(backend.requests(), 4, "all four requests were served on the one connection");
}

/// A TLS connection to `addr` for `name`, trusting `pki`'s CA, offering HTTP/1.1.
async fn raw_tls_connection(
    pki: &Pki,
    addr: SocketAddr,
    name: &'static str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.pem.as_bytes()).expect("CA PEM")).expect("trust the CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(name).expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_on_redirect_routes() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (gateway, tls, _, _) = start_tls_gateway(&pki, &backend, "https_redirect = true").await;
    let plain_port = gateway.listen_addr().port();

    let no_follow = Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let response = no_follow
        .post(gateway.url("/cart/x?a=1&b=2"))
        .header("host", format!("shop.test:{plain_port}"))
        .body("payload")
        .send()
        .await
        .expect("plain request");
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(location, format!("https://shop.test:{}/cart/x?a=1&b=2", tls.port()));
    assert_eq!(backend.requests(), 0, "a redirected request never reaches the upstream");

    // A browser-like client follows it to the TLS listener, where it is served.
    let follow = tls_client(&pki, &["shop.test"], tls).build().expect("client");
    let response = follow.get(format!("http://shop.test:{plain_port}/cart/y")).send().await.expect("followed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.url().as_str(), format!("https://shop.test:{}/cart/y", tls.port()));
    assert_eq!(backend.requests(), 1);
}

/// Outcome counters of one load loop.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
    /// The peer certificate of each answer, in order.
    certs: Mutex<Vec<Vec<u8>>>,
}

/// Requests `url` until `stop`: over `client`'s kept-alive connection, or,
/// with `fresh_via = Some(..)`, each over a new connection and handshake.
fn hammer(
    client: Client,
    fresh_via: Option<(reqwest::Certificate, SocketAddr)>,
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let answer = match &fresh_via {
                Some((root, addr)) => fresh_fetch(root, &["shop.test"], *addr, &url).await,
                None => fetch(&client, &url).await,
            };
            match answer {
                Ok((StatusCode::OK, _, cert, _)) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    tally.certs.lock().expect("lock").push(cert);
                }
                Ok((status, _, _, body)) => tally.failed.lock().expect("lock").push(format!("{status}: {body}")),
                Err(e) => tally.failed.lock().expect("lock").push(format!("{e:?}")),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_on_disk_under_load_fails_no_request() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let (gateway, tls, old, _) = start_tls_gateway(&pki, &backend, "").await;
    let url = format!("https://shop.test:{}/load", tls.port());
    let stop = Arc::new(AtomicBool::new(false));

    // Two keep-alive clients (one h2 connection, one HTTP/1.1 connection) and
    // two that open a new connection, so a new handshake, for every request.
    let keepalive_h2 = Arc::new(Tally::default());
    let keepalive_h1 = Arc::new(Tally::default());
    let fresh = Arc::new(Tally::default());
    let client = |b: reqwest::ClientBuilder| b.build().expect("client");
    let h2 = client(tls_client(&pki, &["shop.test"], tls));
    let h1 = client(tls_client(&pki, &["shop.test"], tls).http1_only());
    let via = Some((pki.root(), tls));
    let tasks = vec![
        hammer(h2.clone(), None, url.clone(), stop.clone(), keepalive_h2.clone()),
        hammer(h1, None, url.clone(), stop.clone(), keepalive_h1.clone()),
        hammer(h2.clone(), via.clone(), url.clone(), stop.clone(), fresh.clone()),
        hammer(h2, via, url.clone(), stop.clone(), fresh.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(keepalive_h2.ok.load(Ordering::Relaxed) > 0 && fresh.ok.load(Ordering::Relaxed) > 0, "load is running");

    // Renew: a new key and certificate for the same names, written over the
    // old files in a directory of their own (not the config's).
    let renewed = pki.leaf(&["shop.test", "*.shop.test"]);
    let generation = gateway.generation().await;
    install(&gateway.dir().join("certs"), "shop", &renewed);
    let fresh_seen_before = fresh.certs.lock().expect("lock").len();
    gateway
        .eventually("new handshakes get the renewed certificate", Duration::from_secs(10), || {
            let fresh = fresh.clone();
            let renewed = renewed.der.clone();
            async move { fresh.certs.lock().expect("lock").iter().skip(fresh_seen_before).any(|c| *c == renewed) }
        })
        .await;
    let keepalive_at_switch = (keepalive_h2.ok.load(Ordering::Relaxed), keepalive_h1.ok.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }

    for (name, tally) in [("keep-alive h2", &keepalive_h2), ("keep-alive h1", &keepalive_h1), ("fresh", &fresh)] {
        let failed = tally.failed.lock().expect("lock");
        assert!(failed.is_empty(), "{name}: {} failed requests, first: {:?}", failed.len(), failed.first());
    }
    // New handshakes switched for good once the new certificate was served
    // (two loops: one may have started its handshake just before the switch).
    {
        let fresh_certs = fresh.certs.lock().expect("lock");
        let first_new = fresh_certs.iter().position(|c| *c == renewed.der).expect("renewed certificate seen");
        let late_old = fresh_certs[first_new..].iter().filter(|c| **c != renewed.der).count();
        assert!(late_old <= 1, "{late_old} new handshakes got the old certificate after the switch");
        assert!(fresh_certs[..first_new].iter().all(|c| *c == old.der));
    }
    // The connections opened before the renewal carried on, on their old session.
    for (name, tally, at_switch) in
        [("h2", &keepalive_h2, keepalive_at_switch.0), ("h1", &keepalive_h1, keepalive_at_switch.1)]
    {
        let certs = tally.certs.lock().expect("lock");
        assert!(certs.len() > at_switch, "{name}: the keep-alive connection kept serving after the renewal");
        assert!(certs.iter().all(|c| *c == old.der), "{name}: the keep-alive connection was replaced");
    }
    assert!(gateway.generation().await > generation, "the renewal was applied as a reload");
    let metrics = http_client().get(gateway.admin_url("/metrics")).send().await.expect("metrics");
    let text = metrics.text().await.expect("metrics body");
    assert!(text.contains("gateway_tls_certificate_expiry_timestamp_seconds{name="), "{text}");
}

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

/// A config with one certificate, whose `certs` entry is on line 9.
fn single_cert_config(tls: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"[server]
listen = ["{{listen}}"]

[admin]
listen = "{{admin}}"

[server.tls]
listen = ["{tls}"]
certs = [{{ cert = "certs/shop.pem", key = "certs/shop.key" }}]

[upstreams.app]
backends = ["{backend}"]

[[routes]]
name = "app"
path_prefix = "/"
stable = "app"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_config_errors_and_never_replace_good_ones() {
    let pki = Pki::new();
    let backend = Backend::start("app").await;
    let good = pki.leaf(&["shop.test"]);
    let other = pki.leaf(&["shop.test"]);
    let expired = pki.expired(&["shop.test"]);
    let mismatched = Leaf { key_pem: other.key_pem.clone(), ..good.clone() };
    let garbage = Leaf { cert_pem: "this is not a certificate\n".into(), ..good.clone() };
    let cases: [(&str, &Leaf, &str, &str); 3] = [
        ("expired", &expired, "cert", "shop.pem: the certificate expired on"),
        ("mismatched", &mismatched, "key", "shop.key: this key does not belong to the certificate"),
        ("garbage", &garbage, "cert", "shop.pem: no PEM certificate"),
    ];

    // `gateway check` and start-up: an error naming the file, line and key; no panic.
    let dir = temp_dir();
    let config = dir.path().join("gateway.toml");
    let tls = free_addr();
    write_file(
        &config,
        &single_cert_config(tls, backend.addr()).replace("{listen}", "127.0.0.1:1").replace("{admin}", "127.0.0.1:2"),
    );
    for (name, leaf, field, message) in cases {
        install(&dir.path().join("certs"), "shop", leaf);
        let out = run_cli(&["check", "-c", &config.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let expected = format!("error: gateway.toml:9: server.tls.certs[0].{field}: ");
        assert!(
            stderr.contains(&expected) && stderr.contains(message),
            "{name}: wanted {expected}..{message}, got {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    std::fs::remove_file(dir.path().join("certs/shop.pem")).expect("remove the certificate");
    let out = run_cli(&["check", "-c", &config.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.tls.certs[0].cert: ") && stderr.contains("shop.pem: cannot read"), "{stderr}");

    let start_dir = temp_dir();
    install(&start_dir.path().join("certs"), "shop", &expired);
    let mut refused = Gateway::spawn_in(start_dir, "gateway.toml", &single_cert_config(free_addr(), backend.addr()));
    let status = refused.wait_exit(Duration::from_secs(20)).await.expect("a bad certificate stops the start");
    assert!(!status.success());
    assert!(refused.log().contains("server.tls.certs[0].cert: "), "{}", refused.log());

    // At run time: every bad certificate is rejected and the good one keeps serving.
    let run_dir = temp_dir();
    install(&run_dir.path().join("certs"), "shop", &good);
    let tls = free_addr();
    let gateway = Gateway::start_in(run_dir, "gateway.toml", &single_cert_config(tls, backend.addr())).await;
    let root = pki.root();
    let url = format!("https://shop.test:{}/x", tls.port());
    let generation = gateway.generation().await;
    for (name, leaf, _, message) in cases {
        install(&gateway.dir().join("certs"), "shop", leaf);
        let (code, body) = gateway.reload().await;
        assert_eq!(code, 422, "{name}: {body}");
        assert!(body.to_string().contains(message), "{name}: {body}");
        let (status, _, cert, _) = fresh_fetch(&root, &["shop.test"], tls, &url).await.expect("still serving");
        assert_eq!(status, StatusCode::OK);
        assert!(cert == good.der, "{name}: the old certificate must keep serving");
    }
    // The file watcher sees the bad file too, and rejects it the same way.
    let status = gateway.status().await;
    assert!(status["last_reload_error"].is_array(), "{status}");
    assert_eq!(gateway.generation().await, generation);

    // A good certificate then applies.
    let renewed = pki.leaf(&["shop.test"]);
    install(&gateway.dir().join("certs"), "shop", &renewed);
    gateway
        .eventually("the renewed certificate is served", Duration::from_secs(10), || {
            let (root, url, renewed) = (root.clone(), url.clone(), renewed.der.clone());
            async move { fresh_fetch(&root, &["shop.test"], tls, &url).await.is_ok_and(|(_, _, cert, _)| cert == renewed) }
        })
        .await;
}

/// A gateway that serves `backend` over TLS as `backend.test`: the TLS upstream.
async fn tls_upstream(pki: &Pki, backend: &Backend) -> (Gateway, SocketAddr) {
    let dir = temp_dir();
    install(&dir.path().join("certs"), "shop", &pki.leaf(&["backend.test"]));
    let tls = free_addr();
    (Gateway::start_in(dir, "gateway.toml", &single_cert_config(tls, backend.addr())).await, tls)
}

fn pool(name: &str, addr: SocketAddr, tls_keys: &str) -> String {
    format!("[upstreams.{name}]\nbackends = [\"{addr}\"]\ntls = true\n{tls_keys}\n\n")
}

fn route(name: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nstable = \"{name}\"\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_with_ca_file_and_refuses_untrusted_backends() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let backend = Backend::start("app").await;
    let (_upstream, upstream_tls) = tls_upstream(&pki, &backend).await;

    let dir = temp_dir();
    write_file(&dir.path().join("ca.pem"), &pki.pem);
    write_file(&dir.path().join("other-ca.pem"), &stranger.pem);
    let hc = "health_check = { path = \"/healthz\", interval = \"300ms\", timeout = \"1s\" }";
    let mut config = "[server]\nlisten = [\"{listen}\"]\n\n[admin]\nlisten = \"{admin}\"\n\n".to_string();
    for (name, keys) in [
        ("trusted", format!("sni = \"backend.test\"\nca_file = \"ca.pem\"\n{hc}")),
        ("untrusted", "sni = \"backend.test\"\nca_file = \"other-ca.pem\"".to_string()),
        ("lax", "sni = \"backend.test\"\nca_file = \"other-ca.pem\"\nverify = false".to_string()),
        ("wrongname", "sni = \"elsewhere.test\"\nca_file = \"ca.pem\"".to_string()),
        ("probed", format!("sni = \"backend.test\"\nca_file = \"other-ca.pem\"\n{hc}")),
    ] {
        config.push_str(&pool(name, upstream_tls, &keys));
    }
    for name in ["trusted", "untrusted", "lax", "wrongname", "probed"] {
        config.push_str(&route(name));
    }
    let check = dir.path().join("check.toml");
    write_file(&check, &config.replace("{listen}", "127.0.0.1:1").replace("{admin}", "127.0.0.1:2"));
    let out = run_cli(&["check", "-c", &check.to_string_lossy()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("upstreams.lax.verify: false"), "gateway check warns about verify = false: {stdout}");

    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;
    let client = http_client();
    let get = |path: &str| {
        let (client, url) = (client.clone(), gateway.url(path));
        async move { client.get(url).send().await.expect("request").status() }
    };
    assert_eq!(get("/trusted/x").await, StatusCode::OK);
    let seen = backend.received();
    let last = seen.iter().rev().find(|r| r.path == "/trusted/x").expect("the backend got the request");
    assert_eq!(last.header("x-forwarded-proto").as_deref(), Some("https"), "it came through the TLS upstream");
    assert_eq!(get("/untrusted/x").await, StatusCode::BAD_GATEWAY, "a certificate from an unknown CA is refused");
    assert_eq!(get("/wrongname/x").await, StatusCode::BAD_GATEWAY, "a certificate for another name is refused");
    assert_eq!(get("/lax/x").await, StatusCode::OK, "verify = false accepts it");

    // Health probes go over TLS and verify like requests do.
    gateway
        .eventually("the probe of the untrusted backend fails", Duration::from_secs(10), || async {
            let status = gateway.status().await;
            let pool = status["upstreams"].as_array().and_then(|u| u.iter().find(|p| p["name"] == "probed")).cloned();
            pool.is_some_and(|p| p["healthy_backends"] == 0)
        })
        .await;
    assert_eq!(get("/probed/x").await, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = gateway.status().await;
    let trusted = status["upstreams"].as_array().and_then(|u| u.iter().find(|p| p["name"] == "trusted")).cloned();
    assert_eq!(trusted.map(|p| p["healthy_backends"].clone()), Some(Value::from(1)), "{status}");
    assert_eq!(get("/trusted/y").await, StatusCode::OK);
}
