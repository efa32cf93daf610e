use super::*;
use http::HeaderValue;

fn xff(values: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append("x-forwarded-for", HeaderValue::from_bytes(v).expect("header value"));
    }
    h
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| canonical_net(n.parse().expect("net"))).collect()
}

const PROXY: &str = "10.0.0.2";

fn behind_proxy(values: &[&[u8]]) -> IpAddr {
    resolve(ip(PROXY), &xff(values), &nets(&["10.0.0.0/8"]))
}

#[test]
fn untrusted_peer_cannot_forge() {
    let got = resolve(ip("203.0.113.9"), &xff(&[b"192.0.2.1"]), &nets(&["10.0.0.0/8"]));
    assert_eq!(got, ip("203.0.113.9"));
}

#[test]
fn trusted_chain_is_walked_right_to_left() {
    // The client prepended a fake entry; the proxies appended the real one.
    assert_eq!(behind_proxy(&[b"192.0.2.1, 198.51.100.7, 10.0.0.1"]), ip("198.51.100.7"));
    // Several headers are one list, the last header holding the newest entries.
    assert_eq!(behind_proxy(&[b"192.0.2.1", b"198.51.100.7, 10.0.0.1"]), ip("198.51.100.7"));
}

#[test]
fn junk_left_of_the_trusted_entries_changes_nothing() {
    assert_eq!(behind_proxy(&[b"\xff, 203.0.113.66"]), ip("203.0.113.66"));
    assert_eq!(behind_proxy(&[b"\xff\xfe", b"203.0.113.66"]), ip("203.0.113.66"));
    assert_eq!(behind_proxy(&[b"unknown, 203.0.113.66, 10.0.0.1"]), ip("203.0.113.66"));
    assert_eq!(behind_proxy(&[b"1.2.3.4:99999999, 203.0.113.66"]), ip("203.0.113.66"));
}

#[test]
fn an_unusable_entry_stops_at_the_proxy_that_passed_it_on() {
    // The proxy at 10.0.0.1 passed on junk: it is the accountable party.
    assert_eq!(behind_proxy(&[b"junk, 10.0.0.1"]), ip("10.0.0.1"));
    assert_eq!(behind_proxy(&[b"203.0.113.5, 0.0.0.0"]), ip(PROXY));
    assert_eq!(behind_proxy(&[b"203.0.113.5, ::"]), ip(PROXY));
    assert_eq!(behind_proxy(&[b"203.0.113.5, 224.0.0.1"]), ip(PROXY));
    assert_eq!(behind_proxy(&[b"203.0.113.5, 255.255.255.255"]), ip(PROXY));
    assert_eq!(behind_proxy(&[b"203.0.113.5, "]), ip(PROXY));
    assert_eq!(behind_proxy(&[b"203.0.113.5,,"]), ip(PROXY));
    assert_eq!(behind_proxy(&[b"fe80::1%eth0"]), ip(PROXY));
    assert_eq!(resolve(ip(PROXY), &HeaderMap::new(), &nets(&["10.0.0.0/8"])), ip(PROXY));
}

#[test]
fn entries_may_carry_ports_and_brackets() {
    assert_eq!(behind_proxy(&[b"[2001:db8::1]:443"]), ip("2001:db8::1"));
    assert_eq!(behind_proxy(&[b"[2001:db8::1]"]), ip("2001:db8::1"));
    assert_eq!(behind_proxy(&[b" 198.51.100.7:5678\t"]), ip("198.51.100.7"));
    assert_eq!(behind_proxy(&[b"[2001:db8::1]x"]), ip(PROXY));
}

#[test]
fn ipv4_mapped_addresses_are_the_ipv4_address() {
    let trusted = nets(&["10.0.0.0/8"]);
    // A dual-stack listener reports an IPv4 proxy as ::ffff:10.0.0.2.
    let got = resolve(ip("::ffff:10.0.0.2"), &xff(&[b"203.0.113.66"]), &trusted);
    assert_eq!(got, ip("203.0.113.66"));
    assert_eq!(resolve(ip("::ffff:203.0.113.9"), &HeaderMap::new(), &trusted), ip("203.0.113.9"));
    assert_eq!(behind_proxy(&[b"::ffff:203.0.113.66"]), ip("203.0.113.66"));
    assert_eq!(behind_proxy(&[b"[::ffff:203.0.113.66]:80"]), ip("203.0.113.66"));
    // A mapped trusted range in the config is the IPv4 range.
    let mapped = nets(&["::ffff:10.0.0.0/104"]);
    assert_eq!(mapped, nets(&["10.0.0.0/8"]));
    assert_eq!(resolve(ip("10.0.0.2"), &xff(&[b"203.0.113.66"]), &mapped), ip("203.0.113.66"));
}

#[test]
fn canonical_net_keeps_other_ranges() {
    assert_eq!(canonical_net("2001:db8::/32".parse().expect("net")).to_string(), "2001:db8::/32");
    assert_eq!(canonical_net("::/0".parse().expect("net")).to_string(), "::/0");
    assert_eq!(canonical_net("::ffff:0:0/96".parse().expect("net")).to_string(), "0.0.0.0/0");
    assert_eq!(canonical_net("::ffff:192.0.2.1/128".parse().expect("net")).to_string(), "192.0.2.1/32");
}
