//! The version decision for one request, in the order:
//! whitelist (user, then IP) -> user-ID bucket -> anonymous policy.

use std::fmt;
use std::net::IpAddr;

use crate::config::AnonymousPolicy;

use super::bucket::BUCKETS;
use super::router::CompiledRoute;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Stable,
    Canary,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Canary => "canary",
        }
    }

    pub fn other(self) -> Version {
        match self {
            Version::Stable => Version::Canary,
            Version::Canary => Version::Stable,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request got its version; logged per request and printed by `gateway explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    WhitelistedUser,
    WhitelistedIp,
    /// The user ID's bucket against the route's threshold (both out of 10,000).
    UserBucket {
        bucket: u32,
        threshold: u32,
    },
    /// No user ID; the client IP's bucket (`anonymous = "ip-hash"`).
    IpBucket {
        bucket: u32,
        threshold: u32,
    },
    /// No user ID; `anonymous = "stable"` or `"canary"`.
    Anonymous,
    /// The route has no canary upstream.
    NoCanary,
}

impl Reason {
    /// A short fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::WhitelistedUser => "whitelist-user",
            Reason::WhitelistedIp => "whitelist-ip",
            Reason::UserBucket { .. } => "user-bucket",
            Reason::IpBucket { .. } => "ip-bucket",
            Reason::Anonymous => "anonymous",
            Reason::NoCanary => "no-canary",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub version: Version,
    pub reason: Reason,
}

/// Decide stable or canary for a request on `route`.
pub fn decide(route: &CompiledRoute, user_id: Option<&str>, client_ip: IpAddr) -> Decision {
    let spec = &route.spec;
    if spec.canary.is_none() {
        return Decision { version: Version::Stable, reason: Reason::NoCanary };
    }
    if let Some(user) = user_id {
        if spec.whitelist_users.contains(user) {
            return Decision { version: Version::Canary, reason: Reason::WhitelistedUser };
        }
    }
    if spec.whitelist_ips.iter().any(|net| net.contains(&client_ip)) {
        return Decision { version: Version::Canary, reason: Reason::WhitelistedIp };
    }
    let threshold = spec.canary_basis_points;
    let by_bucket = |bucket: u32| if bucket < threshold { Version::Canary } else { Version::Stable };
    match (user_id, spec.anonymous) {
        (Some(user), _) => {
            let bucket = route.seed.bucket(user.as_bytes());
            Decision { version: by_bucket(bucket), reason: Reason::UserBucket { bucket, threshold } }
        }
        (None, AnonymousPolicy::IpHash) => {
            let bucket = match client_ip {
                IpAddr::V4(v4) => route.seed.bucket(&v4.octets()),
                IpAddr::V6(v6) => route.seed.bucket(&v6.octets()),
            };
            Decision { version: by_bucket(bucket), reason: Reason::IpBucket { bucket, threshold } }
        }
        (None, AnonymousPolicy::Stable) => Decision { version: Version::Stable, reason: Reason::Anonymous },
        (None, AnonymousPolicy::Canary) => Decision { version: Version::Canary, reason: Reason::Anonymous },
    }
}

/// `route cart -> canary: bucket 731 < 1000 (10.00%)`, as `gateway explain` prints it.
pub struct Explanation<'a> {
    pub route: &'a str,
    pub decision: &'a Decision,
    pub user_id: Option<&'a str>,
    pub client_ip: IpAddr,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.decision;
        write!(f, "route {} -> {}: ", self.route, d.version)?;
        let pct = |t: u32| f64::from(t) * 100.0 / f64::from(BUCKETS);
        let cmp = |v: Version| if v == Version::Canary { "<" } else { ">=" };
        match &d.reason {
            Reason::WhitelistedUser => write!(f, "whitelisted user {}", self.user_id.unwrap_or("")),
            Reason::WhitelistedIp => write!(f, "whitelisted ip {}", self.client_ip),
            Reason::UserBucket { bucket, threshold } => {
                write!(f, "bucket {bucket} {} {threshold} ({:.2}%)", cmp(d.version), pct(*threshold))
            }
            Reason::IpBucket { bucket, threshold } => write!(
                f,
                "no user id; ip {} in bucket {bucket} {} {threshold} ({:.2}%)",
                self.client_ip,
                cmp(d.version),
                pct(*threshold)
            ),
            Reason::Anonymous => write!(f, "no user id; anonymous policy sends it to {}", d.version),
            Reason::NoCanary => write!(f, "the route has no canary"),
        }
    }
}
