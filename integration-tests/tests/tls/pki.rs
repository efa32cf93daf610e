//! Certificates made at run time, the TLS gateway config and TLS clients.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use integration_tests::{free_addr, temp_dir, Backend, Gateway};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reqwest::{Client, StatusCode, Version};
use serde_json::Value;

/// A test certificate authority.
pub(crate) struct Pki {
    pub(crate) pem: String,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM, plus the DER the client will see.
#[derive(Clone)]
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) der: Vec<u8>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "gateway test CA");
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("self-sign the CA").pem();
        Pki { pem, issuer: Issuer::new(params, key) }
    }

    pub(crate) fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    pub(crate) fn leaf_with(&self, names: &[&str], tweak: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        tweak(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    pub(crate) fn expired(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    pub(crate) fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("CA certificate for reqwest")
    }
}

/// Writes `<dir>/<stem>.pem` and `.key` the way renewal tools do: a temp file
/// renamed over the old one, so a reader never sees half a file.
pub(crate) fn install(dir: &Path, stem: &str, leaf: &Leaf) {
    std::fs::create_dir_all(dir).expect("create the certificate directory");
    for (ext, text) in [("key", &leaf.key_pem), ("pem", &leaf.cert_pem)] {
        let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
        std::fs::write(&tmp, text).expect("write the temp file");
        std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).expect("rename over the old file");
    }
}

pub(crate) fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A client that trusts the test CA, sends `names` to `addr`, and reports
/// the peer certificate of each response.
///
/// A client resumes TLS sessions it has seen, and a resumed handshake does not
/// send the certificate again (the client keeps reporting the one of the
/// original session), so a test that must see what a *new* handshake gets
/// uses a new client, as [`fresh_fetch`] does.
pub(crate) fn tls_client(pki: &Pki, names: &[&str], addr: SocketAddr) -> reqwest::ClientBuilder {
    tls_client_trusting(pki.root(), names, addr)
}

pub(crate) fn tls_client_trusting(
    root: reqwest::Certificate,
    names: &[&str],
    addr: SocketAddr,
) -> reqwest::ClientBuilder {
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

pub(crate) fn peer_cert(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// [`fetch`] over a new connection with a full handshake (a new client, so no session to resume).
pub(crate) async fn fresh_fetch(
    root: &reqwest::Certificate,
    names: &[&str],
    addr: SocketAddr,
    url: &str,
) -> Result<(StatusCode, Version, Vec<u8>, Value), reqwest::Error> {
    let client = tls_client_trusting(root.clone(), names, addr).http1_only().build().expect("client");
    fetch(&client, url).await
}

/// GET `url`: status, HTTP version, the peer certificate and the JSON body.
pub(crate) async fn fetch(client: &Client, url: &str) -> Result<(StatusCode, Version, Vec<u8>, Value), reqwest::Error> {
    let response = client.get(url).send().await?;
    let (status, version, cert) = (response.status(), response.version(), peer_cert(&response));
    let text = response.text().await?;
    Ok((status, version, cert, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// A gateway config with one route to `backend` and a TLS listener on `tls`
/// serving `certs/shop.*` (SNI) and `certs/default.*` (the default).
pub(crate) fn tls_config(backend: SocketAddr, tls: SocketAddr, route_extra: &str) -> String {
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
pub(crate) async fn start_tls_gateway(
    pki: &Pki,
    backend: &Backend,
    route_extra: &str,
) -> (Gateway, SocketAddr, Leaf, Leaf) {
    let dir = temp_dir();
    let tls = free_addr();
    let shop = pki.leaf(&["shop.test", "*.shop.test"]);
    let default = pki.leaf(&["default.test", &tls.ip().to_string()]);
    install(&dir.path().join("certs"), "shop", &shop);
    install(&dir.path().join("certs"), "default", &default);
    let gateway = Gateway::start_in(dir, "gateway.toml", &tls_config(backend.addr(), tls, route_extra)).await;
    (gateway, tls, shop, default)
}

/// A config with one certificate, whose `certs` entry is on line 9.
pub(crate) fn single_cert_config(tls: SocketAddr, backend: SocketAddr) -> String {
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
