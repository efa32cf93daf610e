//! What may be kept and served (see the module above for the rules).

use std::time::Duration;

use http::HeaderMap;
use pingora_cache::cache_control::CacheControl;

use crate::config::CacheSpec;

/// Never stored with an answer.
pub const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"];

/// Whether a request may be answered from (and fill) the cache.
pub fn request_cacheable(spec: &CacheSpec, method: &http::Method, headers: &HeaderMap) -> bool {
    // A range request's answer is a part (206), never the whole to share.
    if !super::cacheable_method(method) || headers.contains_key(http::header::RANGE) {
        return false;
    }
    if !spec.allow_authorization && headers.contains_key(http::header::AUTHORIZATION) {
        return false;
    }
    if spec.bypass_cookies.is_empty() {
        return true;
    }
    !headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).any(|line| {
        line.split(';')
            .filter_map(|pair| pair.split_once('='))
            .any(|(name, _)| spec.bypass_cookies.iter().any(|b| b == name.trim()))
    })
}

/// How long an answer is fresh, or `None` when it must not be kept. An
/// answer that varies (`Vary`) on a request header the route's key does not
/// hold (`vary`) is not kept: another client could get it.
pub fn storable(
    status: u16,
    headers: &HeaderMap,
    statuses: &[u16],
    vary: &[http::HeaderName],
    default_ttl: Duration,
) -> Option<Duration> {
    if !statuses.contains(&status) || headers.contains_key(http::header::SET_COOKIE) {
        return None;
    }
    for value in headers.get_all(http::header::VARY) {
        let text = value.to_str().ok()?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" || !vary.iter().any(|v| v.as_str().eq_ignore_ascii_case(name)) {
                return None;
            }
        }
    }
    let mut ttl = default_ttl;
    let mut head = pingora_http::ResponseHeader::build(status, None).ok()?;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        head.append_header(http::header::CACHE_CONTROL, value.clone()).ok()?;
    }
    if let Some(cc) = CacheControl::from_resp_headers(&head) {
        if cc.private() || cc.no_store() || cc.no_cache() {
            return None;
        }
        if let Some(secs) = cc.s_maxage().ok().flatten().or_else(|| cc.max_age().ok().flatten()) {
            ttl = Duration::from_secs(u64::from(secs));
        }
    }
    (!ttl.is_zero()).then_some(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CacheSpec {
        CacheSpec {
            ttl: Duration::from_secs(30),
            max_size: 1 << 20,
            vary: Vec::new(),
            stale_if_error: None,
            degrade_ttl: Vec::new(),
            statuses: vec![200, 203, 301, 404],
            bypass_cookies: vec!["session".into()],
            allow_authorization: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn every_rule_of_what_is_kept() {
        let ttl = Duration::from_secs(30);
        let st = &spec().statuses;
        let storable =
            |status, h: &HeaderMap, st: &[u16], ttl| storable(status, h, st, &[http::header::ACCEPT_ENCODING], ttl);
        assert_eq!(storable(200, &headers(&[("vary", "Accept-Encoding")]), st, ttl), Some(ttl));
        assert_eq!(
            storable(200, &headers(&[("vary", "Accept-Encoding, Cookie")]), st, ttl),
            None,
            "varies on a cookie"
        );
        assert_eq!(storable(200, &headers(&[("vary", "*")]), st, ttl), None);
        assert!(
            !request_cacheable(&spec(), &http::Method::GET, &headers(&[("range", "bytes=0-9")])),
            "a range is a part"
        );
        assert_eq!(storable(200, &headers(&[]), st, ttl), Some(ttl));
        assert_eq!(
            storable(200, &headers(&[("cache-control", "public, max-age=5")]), st, ttl),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            storable(200, &headers(&[("cache-control", "max-age=5, s-maxage=60")]), st, ttl),
            Some(Duration::from_secs(60))
        );
        assert_eq!(storable(200, &headers(&[("cache-control", "max-age=0")]), st, ttl), None);
        for cc in ["private", "no-store", "no-cache"] {
            assert_eq!(storable(200, &headers(&[("cache-control", cc)]), st, ttl), None, "{cc}");
        }
        assert_eq!(storable(200, &headers(&[("set-cookie", "a=b")]), st, ttl), None);
        assert_eq!(storable(500, &headers(&[]), st, ttl), None);
        assert_eq!(storable(404, &headers(&[]), st, ttl), Some(ttl));
    }

    #[test]
    fn every_rule_of_which_requests_use_it() {
        let s = spec();
        assert!(request_cacheable(&s, &http::Method::GET, &headers(&[])));
        assert!(request_cacheable(&s, &http::Method::HEAD, &headers(&[("cookie", "theme=dark")])));
        assert!(!request_cacheable(&s, &http::Method::POST, &headers(&[])));
        assert!(!request_cacheable(&s, &http::Method::GET, &headers(&[("authorization", "Bearer x")])));
        assert!(!request_cacheable(&s, &http::Method::GET, &headers(&[("cookie", "theme=dark; session=abc")])));
        let opted = CacheSpec { allow_authorization: true, ..spec() };
        assert!(request_cacheable(&opted, &http::Method::GET, &headers(&[("authorization", "Bearer x")])));
    }
}
