//! Sticky anonymous users: a signed cookie holding a random ID, bucketed like
//! a user ID, so a percentage change keeps its promise for people who never
//! log in. The cookie holds no version: which version an ID gets follows the
//! percentages in force, exactly as for a user ID.

use http::{HeaderMap, HeaderValue};

use crate::config::AnonymousCookieSpec;

use super::signed;
use super::user_id::cookie;

/// The ID of the request's genuine anonymous cookie; a forged or damaged one is absent.
pub fn read<'a>(spec: &AnonymousCookieSpec, headers: &'a HeaderMap) -> Option<&'a str> {
    cookie(headers, &spec.name).and_then(|value| signed::verify_anon_cookie(&spec.key.0, value))
}

/// A fresh random ID (16 hex digits) and the `Set-Cookie` value that hands it out.
pub fn issue(spec: &AnonymousCookieSpec, tls: bool) -> (String, HeaderValue) {
    let id = uuid::Uuid::new_v4().as_u64_pair().0;
    let value = signed::anon_cookie_value(&spec.key.0, id);
    let mut cookie = format!("{}={value}; Path=/; Max-Age={}", spec.name, spec.max_age.as_secs());
    if spec.http_only {
        cookie.push_str("; HttpOnly");
    }
    cookie.push_str("; SameSite=");
    cookie.push_str(spec.same_site.as_str());
    // A cookie that says `SameSite=None` must be `Secure` too, or browsers drop it.
    if tls || spec.same_site == crate::config::SameSite::None {
        cookie.push_str("; Secure");
    }
    let id_text = value.split_once('.').map_or(String::new(), |(id, _)| id.to_string());
    // Built from a cookie name checked at load and hex digits: always a valid value.
    let header = HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""));
    (id_text, header)
}
