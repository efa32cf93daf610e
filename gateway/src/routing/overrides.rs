//! Tester overrides: a header or cookie that forces a version. A plain
//! version name is honoured from the route's `allow_from` ranges; a signed
//! value (`signed.rs`) from anyone while it is valid. Anything else is
//! refused: the request is decided as if it carried nothing, and counted.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::{OverrideSpec, RouteSpec};

use super::decision::OverrideHow;
use super::signed::{self, TokenError};
use super::user_id::cookie;

/// What a request's override came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideOutcome {
    /// The request carries no override.
    Absent,
    Applied(usize, OverrideHow),
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A plain version name from a client outside `allow_from`.
    IpNotAllowed,
    UnknownVersion,
    /// A signed value on a route without `secret_file`.
    NoKey,
    Token(TokenError),
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::IpNotAllowed => "client ip not in allow_from",
            Refusal::UnknownVersion => "no such version",
            Refusal::NoKey => "the route takes no signed values",
            Refusal::Token(e) => e.as_str(),
        }
    }
}

/// The override of one request on `route`, judged at Unix second `now`.
pub fn find(spec: &OverrideSpec, route: &RouteSpec, headers: &HeaderMap, ip: IpAddr, now: u64) -> OverrideOutcome {
    let from_header = spec.header.as_ref().and_then(|h| headers.get(h)).and_then(|v| v.to_str().ok());
    let value = from_header.or_else(|| spec.cookie.as_deref().and_then(|c| cookie(headers, c)));
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else { return OverrideOutcome::Absent };
    let version_index = |name: &str| route.version_index(name);
    if !signed::is_token(value) {
        return match version_index(value) {
            None => OverrideOutcome::Refused(Refusal::UnknownVersion),
            Some(_) if !spec.allow_from.iter().any(|n| n.contains(&ip)) => {
                OverrideOutcome::Refused(Refusal::IpNotAllowed)
            }
            Some(v) => OverrideOutcome::Applied(v, OverrideHow::AllowedIp),
        };
    }
    let Some(key) = &spec.key else { return OverrideOutcome::Refused(Refusal::NoKey) };
    match signed::verify_override(&key.0, &route.name, value, now) {
        Err(e) => OverrideOutcome::Refused(Refusal::Token(e)),
        Ok((name, expires)) => match version_index(name) {
            Some(v) => OverrideOutcome::Applied(v, OverrideHow::Signed { expires }),
            None => OverrideOutcome::Refused(Refusal::UnknownVersion),
        },
    }
}
