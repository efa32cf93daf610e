//! TLS: termination on the proxy listener (certificates by SNI, renewal
//! without restart, HTTP/2 by ALPN) and TLS to upstream pools.
//!
//! - `certs`: reading and checking certificate/key files, the SNI index;
//! - `resolver`: the listener's rustls certificate resolver over an `ArcSwap`;
//! - `files`: noticing renewed certificate files (reload and watcher).
//!
//! The config side (`[server.tls]`, per-pool `tls`/`sni`/`verify`/`ca_file`,
//! per-route `https_redirect`) is validated in `config/validate_tls.rs` into
//! the types below.

pub mod certs;
pub mod resolver;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::protocols::ALPN;
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::{HttpPeer, PeerOptions};
use pingora_core::utils::tls::WrappedX509;

pub use certs::{CertEntry, CertSet};
pub use resolver::CertResolver;

/// `[server.tls]`, validated: where to listen and what to serve.
#[derive(Debug, Clone)]
pub struct TlsListenerSpec {
    pub listen: Vec<SocketAddr>,
    /// Offer HTTP/2 by ALPN (alongside HTTP/1.1).
    pub http2: bool,
    pub certs: Arc<CertSet>,
}

impl TlsListenerSpec {
    /// The port an `https_redirect` sends clients to: the first TLS listen address's.
    pub fn redirect_port(&self) -> u16 {
        self.listen.first().map(SocketAddr::port).unwrap_or(443)
    }
}

/// A pool's `tls = true` settings, validated.
#[derive(Debug, Clone)]
pub struct UpstreamTlsSpec {
    /// The name sent as SNI and checked against the backend's certificate;
    /// without it, the backend's IP address (which the certificate must then list).
    pub sni: Option<String>,
    /// Check the backend's certificate (chain and name). Off only by `verify = false`.
    pub verify: bool,
    /// The CAs from `ca_file`, trusted instead of the system roots.
    pub ca: Option<Arc<[WrappedX509]>>,
    pub ca_file: Option<PathBuf>,
    /// Hash of the CA certificates (0 without `ca_file`). Pingora's keep-alive
    /// pool keys connections by address, SNI and verify flags but not by CA,
    /// so without it a pool could reuse a connection another pool verified
    /// against a different CA.
    pub ca_key: u64,
}

impl UpstreamTlsSpec {
    /// The SNI and verified name for one backend.
    pub fn name_for(&self, addr: SocketAddr) -> String {
        self.sni.clone().unwrap_or_else(|| addr.ip().to_string())
    }

    /// Apply verification settings to a connection's options (proxy and health probes alike).
    pub fn apply(&self, options: &mut PeerOptions) {
        options.verify_cert = self.verify;
        options.verify_hostname = self.verify;
        if let Some(ca) = &self.ca {
            options.ca = Some(Arc::clone(ca));
        }
    }
}

/// The upstream peer for one backend: plain, or TLS with the pool's settings.
/// Runs per upstream attempt; cheap (the CA list is shared, not copied).
pub fn upstream_peer(addr: SocketAddr, tls: Option<&UpstreamTlsSpec>) -> HttpPeer {
    match tls {
        None => HttpPeer::new(addr, false, String::new()),
        Some(spec) => {
            let mut peer = HttpPeer::new(addr, true, spec.name_for(addr));
            spec.apply(&mut peer.options);
            peer.group_key = spec.ca_key;
            peer
        }
    }
}

/// Add the TLS listeners to the proxy service, all sharing `resolver`. Runs
/// once at start: the addresses and ALPN are bound then (a change needs a
/// restart), the certificates follow reloads through the resolver.
pub fn add_listeners<A>(
    service: &mut Service<A>,
    spec: &TlsListenerSpec,
    resolver: &Arc<CertResolver>,
    buffers: L4BufferSettings,
) -> Result<(), String> {
    for addr in &spec.listen {
        // Empty paths: the resolver provides every certificate.
        let mut settings = TlsSettings::intermediate("", "").map_err(|e| format!("TLS listener {addr}: {e}"))?;
        settings.set_cert_resolver(Arc::clone(resolver) as Arc<dyn rustls::server::ResolvesServerCert>);
        if spec.http2 {
            settings.enable_h2();
        } else {
            settings.set_alpn(ALPN::H1);
        }
        // `server.read_buffer` here too: Pingora's own default is a 64 KiB
        // buffer that every TLS connection would keep while idle. rustls
        // reads 4 KiB at a time without one.
        service.add_listener(ListenerConfig::tcp(addr.to_string()).tls(settings).l4_buffer(buffers));
    }
    Ok(())
}

/// `Location` for a plain-HTTP request on an `https_redirect` route:
/// `https://host[:port]/path?query`, the port left out when it is 443.
/// `None` when the Host is not a plain host name or address (nothing safe to
/// redirect to).
pub fn https_location(host: &str, port: u16, path_and_query: &str) -> Option<String> {
    let host = strip_port(host)?;
    let port = if port == 443 { String::new() } else { format!(":{port}") };
    let path = if path_and_query.starts_with('/') { path_and_query } else { "/" };
    Some(format!("https://{host}{port}{path}"))
}

/// The host part of a Host header (`example.com:8080` → `example.com`,
/// `[::1]:80` → `[::1]`), if it is made of host-name characters only.
fn strip_port(host: &str) -> Option<&str> {
    let bare = if host.starts_with('[') {
        let end = host.find(']')?;
        let (v6, rest) = host.split_at(end + 1);
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))) {
            return None;
        }
        if !v6[1..v6.len() - 1].bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        v6
    } else {
        let name = host
            .split_once(':')
            .map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { "" });
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return None;
        }
        name
    };
    Some(bare)
}

#[cfg(test)]
mod tests;
