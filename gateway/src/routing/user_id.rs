//! Finding the user ID in a request: header, cookie or query parameter, in
//! the order the route lists them. The first non-empty one wins.

use http::HeaderMap;

use crate::config::UserIdSource;

/// The request parts user-ID extraction looks at; borrowed, nothing copied.
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
}

pub fn find_user_id<'a>(sources: &[UserIdSource], req: &RequestView<'a>) -> Option<&'a str> {
    sources.iter().find_map(|source| match source {
        UserIdSource::Header(name) => {
            req.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
        }
        UserIdSource::Cookie(name) => cookie(req.headers, name),
        UserIdSource::Query(name) => req.query.and_then(|q| query_param(q, name)),
    })
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// The raw (not percent-decoded) value of a query parameter. User IDs are
/// compared as sent; decoding would let `a%31` and `a1` share a bucket only
/// sometimes, depending on the client.
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn sources() -> Vec<UserIdSource> {
        vec![
            UserIdSource::Header(HeaderName::from_static("x-user-id")),
            UserIdSource::Cookie("uid".into()),
            UserIdSource::Query("uid".into()),
        ]
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn first_present_source_wins() {
        let h = headers(&[("x-user-id", "7"), ("cookie", "uid=8")]);
        let req = RequestView { method: &http::Method::GET, headers: &h, query: Some("uid=9") };
        assert_eq!(find_user_id(&sources(), &req), Some("7"));

        let h = headers(&[("cookie", "a=1; uid=8; b=2")]);
        let req = RequestView { method: &http::Method::GET, headers: &h, query: Some("uid=9") };
        assert_eq!(find_user_id(&sources(), &req), Some("8"));

        let h = headers(&[]);
        let req = RequestView { method: &http::Method::GET, headers: &h, query: Some("x=1&uid=9") };
        assert_eq!(find_user_id(&sources(), &req), Some("9"));
    }

    #[test]
    fn empty_values_count_as_absent() {
        let h = headers(&[("x-user-id", " "), ("cookie", "uid=")]);
        let req = RequestView { method: &http::Method::GET, headers: &h, query: Some("uid=") };
        assert_eq!(find_user_id(&sources(), &req), None);
    }

    #[test]
    fn cookie_names_match_exactly() {
        let h = headers(&[("cookie", "xuid=1; uidx=2")]);
        let req = RequestView { method: &http::Method::GET, headers: &h, query: None };
        assert_eq!(find_user_id(&sources(), &req), None);
    }
}
