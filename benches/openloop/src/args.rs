//! Command line, parsed by hand.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub const USAGE: &str = "\
usage: openloop --url http://IP:PORT/PATH --rate R --duration SECS --connections C
                [--timeout-ms MS] [--users N] [--header 'Name: value']...

Open-loop HTTP/1.1 load: request i is due at start + i/R seconds and goes to
connection i % C; latency is counted from that due time (no coordinated omission).

  --url URL          http:// only; the host is an IP literal (127.0.0.1, [::1])
  --rate R           requests per second, the whole run (> 0)
  --duration SECS    seconds of scheduled requests (> 0)
  --connections C    keep-alive connections, one request in flight on each
  --timeout-ms MS    per-request timeout, and the wait for the last answers (default 2000)
  --users N          X-User-Id is random in 2000..=N (default 1000000)
  --header 'N: v'    extra request header (repeatable)

stdout: one BENCH_RESULT line (the format of benches/load/bench.lua); stderr: a summary.";

/// Upper bound on scheduled requests: 4 bytes of latency each.
const MAX_REQUESTS: f64 = 50_000_000.0;

#[derive(Debug, Clone)]
pub struct Args {
    pub addr: SocketAddr,
    pub path: String,
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub timeout: Duration,
    pub users: u64,
    /// Extra header lines, each ending in CRLF.
    pub headers: String,
}

impl Args {
    /// Requests on the schedule: those due before the end of the duration.
    pub fn total(&self) -> u64 {
        // Validated in parse(): finite, positive, at most MAX_REQUESTS.
        (self.rate * self.duration.as_secs_f64()).ceil() as u64
    }
}

pub enum Parsed {
    Run(Args),
    Help,
}

pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Parsed, String> {
    let mut it = argv.into_iter();
    let (mut url, mut rate, mut duration, mut conns) = (None, None, None, None);
    let (mut timeout_ms, mut users, mut headers) = (2000u64, 1_000_000u64, String::new());
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(Parsed::Help);
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(parse_url(&value()?)?),
            "--rate" => rate = Some(positive(&flag, &value()?)?),
            "--duration" => duration = Some(positive(&flag, &value()?)?),
            "--connections" => conns = Some(whole(&flag, &value()?)?),
            "--timeout-ms" => timeout_ms = whole(&flag, &value()?)?,
            "--users" => users = whole(&flag, &value()?)?,
            "--header" => headers.push_str(&parse_header(&value()?)?),
            _ => return Err(format!("unknown option: {flag}")),
        }
    }
    let (addr, path) = url.ok_or("--url is required")?;
    let rate = rate.ok_or("--rate is required")?;
    let duration = duration.ok_or("--duration is required")?;
    let connections = conns.ok_or("--connections is required")?;
    if !(1..=100_000).contains(&connections) {
        return Err("--connections must be in 1..=100000".into());
    }
    if timeout_ms == 0 {
        return Err("--timeout-ms must be > 0".into());
    }
    if users < 2000 {
        return Err("--users must be at least 2000 (user IDs are drawn from 2000..=N)".into());
    }
    let total = rate * duration;
    if total > MAX_REQUESTS {
        return Err(format!("--rate x --duration is {total:.0} requests; at most {MAX_REQUESTS:.0}"));
    }
    Ok(Parsed::Run(Args {
        addr,
        path,
        rate,
        duration: Duration::from_secs_f64(duration),
        connections: connections as usize,
        timeout: Duration::from_millis(timeout_ms),
        users,
        headers,
    }))
}

fn positive(flag: &str, v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x < 1e9 => Ok(x),
        _ => Err(format!("{flag} must be a positive number, got '{v}'")),
    }
}

fn whole(flag: &str, v: &str) -> Result<u64, String> {
    v.parse::<u64>().map_err(|_| format!("{flag} must be a whole number, got '{v}'"))
}

fn parse_header(v: &str) -> Result<String, String> {
    let bad = || format!("--header must be 'Name: value', got '{v}'");
    let (name, value) = v.split_once(':').ok_or_else(bad)?;
    let name_ok =
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !name_ok || value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(bad());
    }
    Ok(format!("{name}: {}\r\n", value.trim()))
}

/// `http://IP[:PORT][/path]` -> (address, path). The host must be an IP literal.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must start with http:// (plain HTTP only), got '{url}'"))?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = match path.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_string(),
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("the path of --url has a space or control character: '{path}'"));
    }
    let bad_host = || {
        format!(
            "--url: the host must be an IP literal with a port, e.g. 127.0.0.1:8080 or [::1]:8080, got '{authority}'"
        )
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad_host)?;
        match after {
            "" => (host, "80"),
            _ => (host, after.strip_prefix(':').ok_or_else(bad_host)?),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, port),
            None => (authority, "80"),
        }
    };
    let ip: IpAddr = host.parse().map_err(|_| bad_host())?;
    if ip.is_ipv6() && !authority.starts_with('[') {
        return Err(bad_host());
    }
    let port: u16 = port.parse().map_err(|_| bad_host())?;
    Ok((SocketAddr::new(ip, port), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Parsed, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn urls() {
        let (a, p) = parse_url("http://127.0.0.1:8080/cart?x=1").expect("v4");
        assert_eq!((a.to_string().as_str(), p.as_str()), ("127.0.0.1:8080", "/cart?x=1"));
        let (a, p) = parse_url("http://[::1]:9000").expect("v6");
        assert_eq!((a.to_string().as_str(), p.as_str()), ("[::1]:9000", "/"));
        assert!(parse_url("https://127.0.0.1:1/").is_err());
        assert!(parse_url("http://localhost:80/").is_err());
        assert!(parse_url("http://127.0.0.1:99999/").is_err());
        assert!(parse_url("http://::1:80/").is_err());
    }

    #[test]
    fn flags() {
        let ok = args("--url http://127.0.0.1:1/a --rate 500 --duration 3 --connections 8 --header X-A:b");
        match ok {
            Ok(Parsed::Run(a)) => {
                assert_eq!(a.total(), 1500);
                assert_eq!(a.headers, "X-A: b\r\n");
                assert_eq!(a.users, 1_000_000);
            }
            _ => panic!("expected a run"),
        }
        assert!(args("--url http://127.0.0.1:1/ --rate 0 --duration 3 --connections 8").is_err());
        assert!(args("--url http://127.0.0.1:1/ --rate 10 --duration 3").is_err());
        assert!(args("--url http://127.0.0.1:1/ --rate 10 --duration 3 --connections 1 --bogus").is_err());
        assert!(args("--url http://127.0.0.1:1/ --rate 10 --duration 3 --connections 1 --users").is_err());
        assert!(matches!(args("--help"), Ok(Parsed::Help)));
    }
}
