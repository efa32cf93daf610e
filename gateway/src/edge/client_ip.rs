//! The one client IP every feature uses (whitelists, `ip-hash`, logs, and the
//! edge protections built on top).
//!
//! The TCP peer address, unless the peer is a trusted proxy; then
//! `X-Forwarded-For` is walked from right to left and the first address that
//! is not itself trusted is the client. A client connecting directly cannot
//! choose its IP by sending `X-Forwarded-For`: its header is never read.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several X-Forwarded-For headers are one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            // An unparsable hop was written by someone we cannot vouch for;
            // stop at the last address a trusted proxy gave us.
            None => break,
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    hop.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(v));
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn untrusted_peer_cannot_forge() {
        let got = resolve(ip("203.0.113.9"), &xff("192.0.2.1"), &nets(&["10.0.0.0/8"]));
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_chain_is_walked_right_to_left() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client prepended a fake entry; the proxies appended the real one.
        let got = resolve(ip("10.0.0.2"), &xff("192.0.2.1, 198.51.100.7, 10.0.0.1"), &trusted);
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn missing_or_garbage_header_falls_back_sanely() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(resolve(ip("10.0.0.2"), &HeaderMap::new(), &trusted), ip("10.0.0.2"));
        assert_eq!(resolve(ip("10.0.0.2"), &xff("junk, 10.0.0.1"), &trusted), ip("10.0.0.1"));
        assert_eq!(resolve(ip("10.0.0.2"), &xff("[2001:db8::1]:443"), &trusted), ip("2001:db8::1"));
    }
}
