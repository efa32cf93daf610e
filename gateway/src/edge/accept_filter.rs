//! Blocking at connection accept: a blacklisted peer's TCP connection is
//! dropped before TLS or HTTP, the cheapest refusal there is.
//!
//! Opt-in (`[blacklist] at_accept = true`): by default a blocked client gets
//! the 403 page, which tells a wrongly blocked customer what happened.
//! Only the TCP peer is known here, so this applies to clients that connect
//! directly. A trusted proxy's connections are always accepted: the clients
//! behind it are judged per request, from `X-Forwarded-For`. Dry-run mode
//! never drops anything (the per-request check logs and counts instead).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::ConnectionFilter;

use crate::control::runtime::RuntimeState;
use crate::control::snapshot::SnapshotHandle;

pub struct BlockAtAccept {
    pub snapshots: SnapshotHandle,
    pub runtime: Arc<RuntimeState>,
}

impl fmt::Debug for BlockAtAccept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockAtAccept")
    }
}

#[async_trait]
impl ConnectionFilter for BlockAtAccept {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        // A listener without an inet peer (a Unix socket) has nothing to check.
        let Some(addr) = addr else { return true };
        let ip = super::client_ip::canonical(addr.ip());
        // A PROXY protocol peer's clients are judged once its header names them.
        if self.snapshots.load().config.server.proxy_protocol_from.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !self.refuses(ip)
    }
}

impl BlockAtAccept {
    /// True when `ip`'s connection is to be dropped now (`at_accept`, not dry
    /// run, not a trusted proxy, blocked); counted when so.
    pub fn refuses(&self, ip: std::net::IpAddr) -> bool {
        let snapshot = self.snapshots.load();
        let spec = &snapshot.config.blacklist;
        if !spec.at_accept || spec.dry_run || snapshot.config.client_ip.trusted_proxies.iter().any(|n| n.contains(&ip))
        {
            return false;
        }
        let source = match self.runtime.blacklist.lookup(ip) {
            Some(hit) => hit.source.label(),
            None => match snapshot.static_blacklist.lookup(ip) {
                Some(hit) => hit.source.label(),
                None => return false,
            },
        };
        snapshot.metrics.blocked(source, false);
        tracing::debug!(target: "blacklist", %ip, source, "connection refused at accept");
        true
    }
}
