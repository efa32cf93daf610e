//! Values the gateway signs and later trusts: tester override tokens and the
//! anonymous user's cookie. HMAC-SHA256 (the `hmac` crate), each kind of
//! value under its own label so one can never pass for the other, compared
//! in constant time.
//!
//! - override token: `VERSION.EXPIRY.HEX64`, HMAC over
//!   `"gw-override" 0 ROUTE 0 VERSION 0 EXPIRY`; bound to one route and one
//!   version, honoured until the Unix second EXPIRY;
//! - anonymous cookie: `ID.HEX32`, ID 16 hex digits of randomness, the MAC
//!   over `"gw-anon" 0 ID` cut to 128 bits (ample for a value the client can
//!   only guess at online, one request per try).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HMAC takes a key of any length, so this is always `Some`; an `Option`
/// rather than a panic all the same: a value that cannot be checked is refused.
fn mac(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).ok()?;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            m.update(&[0]);
        }
        m.update(part);
    }
    Some(m)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// Why a signed value was not honoured (counted, shown by explain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

impl TokenError {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "not a signed value",
            TokenError::BadSignature => "bad signature",
            TokenError::Expired => "expired",
        }
    }
}

/// A token that forces `version` on `route` until `expires` (Unix seconds).
pub fn override_token(key: &[u8], route: &str, version: &str, expires: u64) -> String {
    let expiry = expires.to_string();
    let tag = mac(key, &[b"gw-override", route.as_bytes(), version.as_bytes(), expiry.as_bytes()])
        .map(|m| hex(&m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("{version}.{expiry}.{tag}")
}

/// Whether `value` looks like a token (three dot-separated parts) rather than a plain version name.
pub fn is_token(value: &str) -> bool {
    value.contains('.')
}

/// The version a valid, unexpired token names, with its expiry.
pub fn verify_override<'a>(key: &[u8], route: &str, value: &'a str, now: u64) -> Result<(&'a str, u64), TokenError> {
    let mut parts = value.split('.');
    let (Some(version), Some(expiry), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let expires: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
    let sig = unhex(sig).filter(|s| s.len() == 32).ok_or(TokenError::Malformed)?;
    mac(key, &[b"gw-override", route.as_bytes(), version.as_bytes(), expiry.as_bytes()])
        .ok_or(TokenError::BadSignature)?
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    if expires <= now {
        return Err(TokenError::Expired);
    }
    Ok((version, expires))
}

/// A fresh anonymous cookie value for the random `id`.
pub fn anon_cookie_value(key: &[u8], id: u64) -> String {
    let id = format!("{id:016x}");
    let tag = mac(key, &[b"gw-anon", id.as_bytes()]).map(|m| hex(&m.finalize().into_bytes()[..16])).unwrap_or_default();
    format!("{id}.{tag}")
}

/// The ID part of a genuine anonymous cookie; `None` for anything forged or damaged.
pub fn verify_anon_cookie<'a>(key: &[u8], value: &'a str) -> Option<&'a str> {
    let (id, sig) = value.split_once('.')?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return None;
    }
    let sig = unhex(sig).filter(|s| s.len() == 16)?;
    mac(key, &[b"gw-anon", id.as_bytes()])?.verify_truncated_left(&sig).ok()?;
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef-test-key";

    #[test]
    fn an_override_token_is_bound_to_route_version_and_time() {
        let t = override_token(KEY, "cart", "v2", 2_000);
        assert_eq!(verify_override(KEY, "cart", &t, 1_999), Ok(("v2", 2_000)));
        assert_eq!(verify_override(KEY, "cart", &t, 2_000), Err(TokenError::Expired));
        assert_eq!(verify_override(KEY, "search", &t, 1_000), Err(TokenError::BadSignature));
        assert_eq!(verify_override(b"another key of 16+ b", "cart", &t, 1_000), Err(TokenError::BadSignature));
        let forged = t.replacen("v2.", "v3.", 1);
        assert_eq!(verify_override(KEY, "cart", &forged, 1_000), Err(TokenError::BadSignature));
        let later = t.replacen(".2000.", ".9000.", 1);
        assert_eq!(verify_override(KEY, "cart", &later, 1_000), Err(TokenError::BadSignature));
        for junk in ["v2", "v2.1.2.3", "v2.x.00", "v2.2000.zz", "..", ""] {
            assert_eq!(verify_override(KEY, "cart", junk, 1_000), Err(TokenError::Malformed), "{junk:?}");
        }
    }

    /// The format is a contract with testers' tooling: pin one value.
    #[test]
    fn the_token_format_is_stable() {
        let t = override_token(b"k-k-k-k-k-k-k-k-k", "cart", "v2", 1_767_225_600);
        assert!(t.starts_with("v2.1767225600."), "{t}");
        assert_eq!(t.len(), "v2.1767225600.".len() + 64);
    }

    #[test]
    fn an_anonymous_cookie_survives_only_untouched() {
        let v = anon_cookie_value(KEY, 0x1234_5678_9abc_def0);
        assert_eq!(verify_anon_cookie(KEY, &v), Some("123456789abcdef0"));
        let mut tampered = v.clone().into_bytes();
        tampered[0] = if tampered[0] == b'1' { b'2' } else { b'1' };
        assert_eq!(verify_anon_cookie(KEY, &String::from_utf8(tampered).expect("ascii")), None);
        assert_eq!(verify_anon_cookie(b"other-key-other-key", &v), None);
        for junk in ["", ".", "123456789abcdef0", "123456789ABCDEF0.00", "zz.zz"] {
            assert_eq!(verify_anon_cookie(KEY, junk), None, "{junk:?}");
        }
        // An override token is not a cookie, nor the other way round.
        assert!(verify_override(KEY, "cart", &v, 0).is_err());
    }
}
