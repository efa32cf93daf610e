//! The version decision for one request, in this order: tester override ->
//! whitelisted user (any version, file order) -> whitelisted IP -> the
//! bucket of the user ID -> the anonymous policy (a fixed version, the
//! client IP's bucket, or the bucket of the signed anonymous cookie's ID).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{AnonymousPolicy, RouteSpec};

use super::bucket::{CohortSeed, BUCKETS};
use super::lanes::Lanes;

/// Everything the decision needs from a route, compiled once per snapshot.
#[derive(Debug)]
pub struct VersionPlan {
    pub seed: CohortSeed,
    pub lanes: Lanes,
    pub default: usize,
    pub anonymous: AnonymousPolicy,
    /// (version, users, IP ranges) of the versions that have a whitelist.
    whitelists: Vec<(usize, HashSet<String>, Vec<IpNet>)>,
}

impl VersionPlan {
    pub fn compile(spec: &RouteSpec) -> Self {
        let shares: Vec<(usize, u32)> = spec
            .versions
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != spec.default_version)
            .map(|(i, v)| (i, v.basis_points))
            .collect();
        // Validation already laid these out; an impossible layout gives the default everything.
        let lanes = Lanes::layout(&shares).unwrap_or_default();
        let whitelists = spec
            .versions
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.whitelist_users.is_empty() || !v.whitelist_ips.is_empty())
            .map(|(i, v)| (i, v.whitelist_users.clone(), v.whitelist_ips.clone()))
            .collect();
        Self {
            seed: CohortSeed::new(&spec.salt),
            lanes,
            default: spec.default_version,
            anonymous: spec.anonymous,
            whitelists,
        }
    }

    /// The version of a bucket: a non-default version's lane, else the default.
    #[inline]
    pub fn version_of_bucket(&self, bucket: u32) -> usize {
        self.lanes.version_of(bucket).unwrap_or(self.default)
    }

    pub fn decide(&self, input: &DecisionInput<'_>) -> Decision {
        if let Some((version, how)) = input.forced {
            return Decision { version, reason: Reason::Override(how) };
        }
        if let Some(user) = input.user_id {
            if let Some((v, ..)) = self.whitelists.iter().find(|(_, users, _)| users.contains(user)) {
                return Decision { version: *v, reason: Reason::WhitelistedUser };
            }
        }
        let ip = input.client_ip;
        if let Some((v, ..)) = self.whitelists.iter().find(|(_, _, nets)| nets.iter().any(|n| n.contains(&ip))) {
            return Decision { version: *v, reason: Reason::WhitelistedIp };
        }
        let by_bucket = |bucket: u32, reason: Reason| Decision { version: self.version_of_bucket(bucket), reason };
        if let Some(user) = input.user_id {
            let bucket = self.seed.bucket(user.as_bytes());
            return by_bucket(bucket, Reason::UserBucket { bucket });
        }
        match self.anonymous {
            AnonymousPolicy::Version(v) => Decision { version: v, reason: Reason::Anonymous },
            AnonymousPolicy::IpHash => {
                let bucket = match ip {
                    IpAddr::V4(v4) => self.seed.bucket(&v4.octets()),
                    IpAddr::V6(v6) => self.seed.bucket(&v6.octets()),
                };
                by_bucket(bucket, Reason::IpBucket { bucket })
            }
            AnonymousPolicy::Cookie => match input.anonymous_id {
                Some((id, issued)) => {
                    let bucket = self.seed.bucket(id.as_bytes());
                    by_bucket(bucket, Reason::CookieBucket { bucket, issued })
                }
                // Only when the gateway has no cookie key (not a validated config).
                None => Decision { version: self.default, reason: Reason::Anonymous },
            },
        }
    }
}

/// What the decision is given about one request.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    pub user_id: Option<&'a str>,
    pub client_ip: IpAddr,
    /// A tester override that was honoured.
    pub forced: Option<(usize, OverrideHow)>,
    /// The anonymous cookie's ID, and whether it was issued with this request.
    pub anonymous_id: Option<(&'a str, bool)>,
}

/// Why an override was honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideHow {
    /// A plain version name from a client in `allow_from`.
    AllowedIp,
    /// A signed value, valid until this Unix second.
    Signed { expires: u64 },
}

/// Why a request got its version; logged per request and printed by `gateway explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Override(OverrideHow),
    WhitelistedUser,
    WhitelistedIp,
    /// The user ID's bucket, 0..10000.
    UserBucket {
        bucket: u32,
    },
    /// No user ID; the client IP's bucket (`anonymous = "ip-hash"`).
    IpBucket {
        bucket: u32,
    },
    /// No user ID; the signed anonymous cookie's bucket (`anonymous = "cookie"`).
    CookieBucket {
        bucket: u32,
        issued: bool,
    },
    /// No user ID; `anonymous` names a version (or `"default"`).
    Anonymous,
}

impl Reason {
    /// A short fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Override(_) => "override",
            Reason::WhitelistedUser => "whitelist-user",
            Reason::WhitelistedIp => "whitelist-ip",
            Reason::UserBucket { .. } => "user-bucket",
            Reason::IpBucket { .. } => "ip-bucket",
            Reason::CookieBucket { .. } => "anonymous-cookie",
            Reason::Anonymous => "anonymous",
        }
    }

    pub fn bucket(&self) -> Option<u32> {
        match *self {
            Reason::UserBucket { bucket } | Reason::IpBucket { bucket } | Reason::CookieBucket { bucket, .. } => {
                Some(bucket)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into the route's versions.
    pub version: usize,
    pub reason: Reason,
}

/// `route cart -> v2: bucket 731 in v2's range [0, 1000) (10.00%)`, as `gateway explain` prints it.
pub struct Explanation<'a> {
    pub route: &'a RouteSpec,
    pub plan: &'a VersionPlan,
    pub decision: &'a Decision,
    pub user_id: Option<&'a str>,
    pub client_ip: IpAddr,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.decision;
        let name = |v: usize| self.route.versions.get(v).map_or("?", |x| x.name.as_str());
        write!(f, "route {} -> {}: ", self.route.name, name(d.version))?;
        let bucket_text = |f: &mut fmt::Formatter<'_>, bucket: u32| match self.plan.lanes.range_of(d.version) {
            Some(r) => write!(
                f,
                "bucket {bucket} in {}'s range [{}, {}) ({:.2}%)",
                name(d.version),
                r.start,
                r.end,
                f64::from(r.len()) * 100.0 / f64::from(BUCKETS)
            ),
            None => write!(f, "bucket {bucket} in no other version's range: the default"),
        };
        match &d.reason {
            Reason::Override(OverrideHow::AllowedIp) => {
                write!(f, "tester override from allowed ip {}", self.client_ip)
            }
            Reason::Override(OverrideHow::Signed { expires }) => {
                write!(f, "tester override, signed, valid until unix {expires}")
            }
            Reason::WhitelistedUser => write!(f, "whitelisted user {}", self.user_id.unwrap_or("")),
            Reason::WhitelistedIp => write!(f, "whitelisted ip {}", self.client_ip),
            Reason::UserBucket { bucket } => bucket_text(f, *bucket),
            Reason::IpBucket { bucket } => {
                write!(f, "no user id; ip {} in ", self.client_ip)?;
                bucket_text(f, *bucket)
            }
            Reason::CookieBucket { bucket, issued } => {
                let cookie = if *issued { "a new anonymous cookie" } else { "its anonymous cookie" };
                write!(f, "no user id; {cookie}, ")?;
                bucket_text(f, *bucket)
            }
            Reason::Anonymous => write!(f, "no user id; the anonymous policy sends it to {}", name(d.version)),
        }
    }
}
