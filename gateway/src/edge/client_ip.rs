//! The one client IP every feature uses (blacklist, rate limits, whitelists,
//! `ip-hash`, logs, explain).
//!
//! **The rule.** The client IP is the TCP peer, unless the peer is in
//! `client_ip.trusted_proxies`. Then `X-Forwarded-For` is walked from right to
//! left (the entries the trusted proxies appended, newest first) and the
//! first address that is not itself a trusted proxy is the client. If the walk
//! meets an entry that is not a usable address (junk bytes, `unknown`, an
//! unspecified, multicast or broadcast address, an empty entry) or runs out of
//! entries, it stops at the last trusted proxy it passed: that proxy is
//! accountable for the request. So the resolved address is always one that a
//! trusted party reported, or the peer itself. This is nginx's `realip` with
//! `real_ip_recursive on`, and Envoy's trusted hops counted by address.
//!
//! What a client cannot do:
//! - choose its IP when it connects directly: its header is never read;
//! - choose its IP behind trusted proxies: it can only write entries to the
//!   left of the one the first trusted proxy appended (its real address), and
//!   the walk stops there unless that address is itself trusted;
//! - void the trusted entries with junk: each entry is parsed on its own, as
//!   bytes, so an unparsable entry to the left changes nothing;
//! - look like nobody: an unspecified or multicast entry stops the walk at
//!   the proxy that passed it on.
//!
//! **One address per host.** IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as
//! a dual-stack `[::]` listener reports IPv4 peers) are the IPv4 address
//! everywhere: [`canonical`] is applied to the peer and to every entry here,
//! and [`canonical_net`] to every CIDR the config, list files, the state file
//! and the admin API accept. An IPv6 range never matches an IPv4 client (not
//! even `::/0`), as in nginx.

use std::net::{IpAddr, Ipv4Addr};

use http::HeaderMap;
use ipnet::{IpNet, Ipv4Net};

/// The client IP of a request from `peer` carrying `headers`. Allocates nothing.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several X-Forwarded-For headers are one list, in order: walk the last
    // header first, each from its last entry.
    let entries = headers.get_all("x-forwarded-for").iter().rev().flat_map(|v| v.as_bytes().rsplit(|b| *b == b','));
    let mut client = peer;
    for entry in entries {
        let Some(ip) = parse_entry(entry) else {
            // Not an address anyone is accountable for: stop at the proxy that passed it on.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The IPv4 address for an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`); any other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The IPv4 range for a range inside `::ffff:0:0/96`; any other range as it is.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map(IpNet::V4).unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
/// `[2001:db8::1]:443`, surrounded by optional spaces or tabs. None for
/// anything else, and for addresses no host has (unspecified, multicast,
/// broadcast).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| match text.strip_prefix('[') {
            Some(rest) => {
                rest.split_once(']').filter(|(_, port)| is_port_suffix(port)).and_then(|(ip, _)| ip.parse().ok())
            }
            None => text
                .rsplit_once(':')
                .filter(|(_, port)| is_port(port))
                .and_then(|(ip, _)| ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4)),
        })
        .map(canonical)?;
    is_host(ip).then_some(ip)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// What may follow `]`: nothing, or `:port`.
fn is_port_suffix(text: &str) -> bool {
    text.is_empty() || text.strip_prefix(':').is_some_and(is_port)
}

fn is_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
mod tests;
