//! PROXY protocol v1 and v2 (`[server] proxy_protocol = { from = [...] }`):
//! behind a TCP balancer, the client's address arrives in a header before
//! the first request. Only the listed peers may send one, and they must:
//! a listed peer's connection without a valid header is closed, and an
//! unlisted peer's header is just bytes that are not HTTP (400 from the
//! request parser). The header is parsed by the `ppp` crate; its source
//! address replaces the TCP peer in the connection's socket digest, so
//! client-IP resolution, the blacklist, rate limits and logs all see it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::listeners::PreTlsProcess;

use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::l4::stream::Stream as TcpStream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

use crate::control::snapshot::SnapshotHandle;
use crate::edge::accept_filter::BlockAtAccept;

/// The longest header read: a v1 line is at most 107 bytes; a v2 header is
/// 16 bytes plus its addresses and TLVs, which balancers keep small.
const MAX_HEADER: usize = 1024;

/// Why a listed peer's connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY header before the deadline")]
    Late,
    #[error("the peer closed before sending a PROXY header")]
    Closed,
    #[error("not a valid PROXY protocol v1 or v2 header")]
    Invalid,
}

impl ProxyHeaderError {
    /// The `reason` label of `gateway_proxy_protocol_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            ProxyHeaderError::Late => "late",
            ProxyHeaderError::Closed => "closed",
            ProxyHeaderError::Invalid => "invalid",
        }
    }
}

/// What a valid header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    /// The client's address and port.
    Client(SocketAddr),
    /// v2 `LOCAL` (the balancer's own health check) or v1 `UNKNOWN`: the
    /// connection is the balancer's, the TCP peer stays.
    Balancer,
}

/// Read and parse the header at the start of `tcp`, within `deadline`.
/// Bytes after it (the first request) are given back to the stream.
pub async fn read_header(tcp: &mut TcpStream, deadline: Duration) -> Result<ProxySource, ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        let mut chunk = [0u8; 256];
        loop {
            let n = tcp.read(&mut chunk).await.map_err(|_| ProxyHeaderError::Closed)?;
            if n == 0 {
                return Err(ProxyHeaderError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            let parsed = HeaderResult::parse(&buf);
            if parsed.is_incomplete() && buf.len() < MAX_HEADER {
                continue;
            }
            return source_of(&parsed).ok_or(ProxyHeaderError::Invalid);
        }
    };
    let (source, used) = match tokio::time::timeout(deadline, read).await {
        Ok(result) => result?,
        Err(_) => return Err(ProxyHeaderError::Late),
    };
    if used < buf.len() {
        tcp.rewind(&buf[used..]);
    }
    Ok(source)
}

/// The source and the header's length, for a complete valid header.
fn source_of(parsed: &HeaderResult<'_>) -> Option<(ProxySource, usize)> {
    match parsed {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    ProxySource::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    ProxySource::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Unknown => ProxySource::Balancer,
            };
            Some((source, h.header.len()))
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => ProxySource::Balancer,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    ProxySource::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    ProxySource::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                // A PROXY command needs an address the gateway can use.
                (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => return None,
            };
            Some((source, h.header.len()))
        }
        _ => None,
    }
}

/// Make `client` the connection's peer for everything that asks the socket
/// digest (client IP, logs). An IPv4-mapped address is its IPv4 address.
pub fn set_peer(tcp: &mut TcpStream, client: SocketAddr) {
    use std::os::unix::io::AsRawFd;
    let ip: IpAddr = crate::edge::client_ip::canonical(client.ip());
    let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(SocketAddr::new(ip, client.port()))));
    tcp.set_socket_digest(digest);
}

/// Judge a new connection before anything else reads it: a peer listed in
/// `server.proxy_protocol` must send a valid header, whose client becomes
/// the connection's peer and is checked against the accept-time blacklist.
/// False: close the connection (counted in `gateway_proxy_protocol_refused_total`
/// or, for a blocked client, in the blacklist's counter).
pub async fn admit(snapshots: &SnapshotHandle, block: &BlockAtAccept, tcp: &mut TcpStream) -> bool {
    let snapshot = snapshots.load_full();
    let from = &snapshot.config.server.proxy_protocol_from;
    if from.is_empty() {
        return true;
    }
    let peer = tcp
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| crate::edge::client_ip::canonical(a.ip())));
    let Some(peer) = peer.filter(|p| from.iter().any(|n| n.contains(p))) else { return true };
    match read_header(tcp, snapshot.config.server.header_timeout).await {
        Ok(ProxySource::Client(client)) => {
            set_peer(tcp, client);
            !block.refuses(crate::edge::client_ip::canonical(client.ip()))
        }
        Ok(ProxySource::Balancer) => true,
        Err(e) => {
            snapshot.metrics.proxy_protocol_refused(e.label());
            tracing::info!(%peer, why = e.label(), "connection closed: no valid PROXY protocol header");
            false
        }
    }
}

/// The TLS listener's hook: the header comes before the handshake
/// (Pingora's `PreTlsProcess`), judged as on the plain listener.
pub struct BeforeTls {
    pub snapshots: SnapshotHandle,
    pub block: Arc<BlockAtAccept>,
}

#[async_trait::async_trait]
impl PreTlsProcess for BeforeTls {
    async fn process(&self, stream: &mut TcpStream) -> pingora_error::Result<()> {
        match admit(&self.snapshots, &self.block, stream).await {
            true => Ok(()),
            false => {
                Err(pingora_error::Error::explain(pingora_error::ErrorType::AcceptError, "PROXY protocol: refused"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_give_their_source_and_length() {
        let v1 = b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\nGET / HTTP/1.1\r\n";
        let parsed = HeaderResult::parse(v1);
        let (source, len) = source_of(&parsed).expect("v1");
        assert_eq!(source, ProxySource::Client("198.51.100.7:40000".parse().expect("addr")));
        assert_eq!(&v1[len..len + 3], b"GET");

        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:5000".parse::<SocketAddr>().expect("a"),
                "[2001:db8::1]:443".parse::<SocketAddr>().expect("b"),
            ),
        )
        .build()
        .expect("v2 header");
        let parsed = HeaderResult::parse(&header);
        let (source, len) = source_of(&parsed).expect("v2");
        assert_eq!(source, ProxySource::Client("[2001:db8::7]:5000".parse().expect("addr")));
        assert_eq!(len, header.len());

        let local = ppp::v2::Builder::new(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
        )
        .build()
        .expect("local");
        assert_eq!(source_of(&HeaderResult::parse(&local)).map(|s| s.0), Some(ProxySource::Balancer));
        assert_eq!(source_of(&HeaderResult::parse(b"GET / HTTP/1.1\r\n\r\n")), None);
        assert_eq!(source_of(&HeaderResult::parse(b"PROXY TCP4 junk\r\n")), None);
    }
}
