//! Parsers for the small value languages used in the config: durations,
//! addresses, CIDRs and user-ID sources. Each returns a message fit for a
//! `file:line: key: message` error.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::model::UserIdSource;

/// `"30s"`, `"1m"`, `"250ms"`, `"1h 30m"` (humantime syntax).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"30s\" or \"250ms\" ({e})"))
}

/// A listen or backend address: `ip:port`, or `localhost:port`.
pub fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // Allow host names that resolve locally (e.g. "localhost:9001") but
    // resolve them once, at load time, never on the request path.
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(_) => Err(format!("{text:?} is not an address like \"127.0.0.1:9001\"")),
    }
}

/// A CIDR (`192.0.2.0/24`, `2001:db8::/32`) or a bare address (taken as /32 or /128).
pub fn cidr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    // IPv4-mapped ranges are the IPv4 range (see `edge::client_ip`).
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(crate::edge::client_ip::canonical_net(net.trunc()));
    }
    t.parse::<IpAddr>()
        .map(|ip| IpNet::from(crate::edge::client_ip::canonical(ip)))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

/// `header:x-user-id`, `cookie:uid` or `query:uid`.
pub fn user_id_source(text: &str) -> Result<UserIdSource, String> {
    let (kind, name) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} must be \"header:NAME\", \"cookie:NAME\" or \"query:NAME\""))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{text:?} names no {kind}"));
    }
    match kind.trim() {
        "header" => HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map(UserIdSource::Header)
            .map_err(|_| format!("{name:?} is not a valid header name")),
        "cookie" => Ok(UserIdSource::Cookie(name.to_string())),
        "query" => Ok(UserIdSource::Query(name.to_string())),
        other => Err(format!("unknown source {other:?}: use \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"")),
    }
}

/// A percentage with at most two decimals, as basis points (0..=10000).
pub fn percent_basis_points(value: f64) -> Result<u32, String> {
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        return Err(format!("{value} is outside 0..=100"));
    }
    let scaled = value * 100.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 {
        return Err(format!("{value} has more than two decimals; buckets are 0.01% wide"));
    }
    // In range 0..=10000 by the check above.
    Ok(rounded as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("30 parsecs").is_err());
    }

    #[test]
    fn cidrs_accept_bare_addresses_and_normalise() {
        assert_eq!(cidr("192.0.2.7"), Ok("192.0.2.7/32".parse().expect("net")));
        assert_eq!(cidr("192.0.2.7/24"), Ok("192.0.2.0/24".parse().expect("net")));
        assert_eq!(cidr("2001:db8::1/32"), Ok("2001:db8::/32".parse().expect("net")));
        assert!(cidr("192.0.2.0/33").is_err());
        assert!(cidr("not-an-ip").is_err());
    }

    #[test]
    fn user_id_sources() {
        assert_eq!(user_id_source("header:X-User-Id"), Ok(UserIdSource::Header(HeaderName::from_static("x-user-id"))));
        assert_eq!(user_id_source("cookie:uid"), Ok(UserIdSource::Cookie("uid".into())));
        assert_eq!(user_id_source("query:uid"), Ok(UserIdSource::Query("uid".into())));
        assert!(user_id_source("body:uid").is_err());
        assert!(user_id_source("header:").is_err());
        assert!(user_id_source("uid").is_err());
    }

    #[test]
    fn percentages_keep_two_decimals() {
        assert_eq!(percent_basis_points(10.0), Ok(1000));
        assert_eq!(percent_basis_points(0.01), Ok(1));
        assert_eq!(percent_basis_points(12.34), Ok(1234));
        assert_eq!(percent_basis_points(100.0), Ok(10000));
        assert!(percent_basis_points(120.0).is_err());
        assert!(percent_basis_points(-1.0).is_err());
        assert!(percent_basis_points(1.234).is_err());
    }
}

/// `"200/s"`, `"6000/m"`, `"100000/h"`: a count and the window it is counted over.
pub fn rate(text: &str) -> Result<(u32, Duration), String> {
    let bad = || format!("{text:?} is not a rate like \"100/s\" or \"6000/m\"");
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("{text:?}: the rate must be at least 1"));
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok((count, per))
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(rate("200/s"), Ok((200, Duration::from_secs(1))));
        assert_eq!(rate("6000/m"), Ok((6000, Duration::from_secs(60))));
        assert!(rate("0/s").is_err());
        assert!(rate("fast").is_err());
        assert!(rate("10/fortnight").is_err());
    }
}

/// `"1MiB"`, `"64KiB"`, `"10MB"`, `"512"` (bytes).
pub fn size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{text:?} is not a size like \"1MiB\" or \"64KiB\""))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("{text:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("1MiB"), Ok(1 << 20));
        assert_eq!(size("64KiB"), Ok(65536));
        assert_eq!(size("10MB"), Ok(10_000_000));
        assert_eq!(size("512"), Ok(512));
        assert!(size("lots").is_err());
        assert!(size("1PB").is_err());
    }
}
