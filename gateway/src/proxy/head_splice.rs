//! A head as Pingora's header model holds it, written to the wire with the
//! gateway's own fields spliced in as it goes, instead of changing a copy of
//! the head and serialising the copy.
//!
//! Why: on the lean path a request head was cloned (both of Pingora's
//! `HeaderMap`s: values and the original case of every name), then three
//! inserts grew the clone's full maps, then it was serialised into a fresh
//! buffer; the answer head the same way, plus `Date` and `Connection`.
//! Without that, a request costs a sixth fewer instructions and a third
//! fewer allocations (`benches/README.md`, session 11).
//!
//! The bytes are exactly those of the copy-and-change way, so both request
//! paths stay byte-identical (`integration-tests/tests/lean_path.rs`): a
//! `HeaderMap` keeps each name where it first appeared, with all its values
//! together; an insert replaces a name's values in place (with the case it
//! was given) or adds the name at the end; an append adds a value after the
//! name's last one; a removal drops the name and moves the last name into
//! its place. The unit tests below compare both ways on heads with
//! repeated, separated, replaced, removed and absent names.

use bytes::BufMut;
use http::{HeaderName, Version};
use pingora_http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;

/// One change to a head's fields, in the order the inserts would be made.
pub struct Edit<'a> {
    /// The name as `HeaderMap` compares it (lowercase).
    pub name: &'a HeaderName,
    /// The name as it is written.
    pub wire: &'a [u8],
    pub value: &'a [u8],
    pub kind: EditKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    /// `insert_header`: the name's values replaced, or the name added.
    Insert,
    /// `append_header`: a value added after the name's others.
    Append,
    /// `remove_header`.
    Remove,
}

impl<'a> Edit<'a> {
    pub fn insert(name: &'a HeaderName, wire: &'a [u8], value: &'a [u8]) -> Self {
        Self { name, wire, value, kind: EditKind::Insert }
    }

    pub fn append(name: &'a HeaderName, wire: &'a [u8], value: &'a [u8]) -> Self {
        Self { name, wire, value, kind: EditKind::Append }
    }

    pub fn remove(name: &'a HeaderName) -> Self {
        Self { name, wire: b"", value: b"", kind: EditKind::Remove }
    }
}

/// `METHOD target HTTP/1.x\r\n`, then the fields with `edits`, then the
/// blank line. `false` (nothing usable written) when the head cannot be
/// written this way: no original case kept, or a target or version Pingora
/// would refuse to send (`http_req_header_to_wire`).
pub fn request_head(out: &mut Vec<u8>, req: &RequestHeader, edits: &[Edit<'_>]) -> bool {
    let path = req.raw_path();
    if !req.has_case() || path.iter().any(|&b| matches!(b, 0x00 | b'\n' | b'\r' | b' ')) {
        return false;
    }
    let version: &[u8] = match req.version {
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_11 => b"HTTP/1.1",
        _ => return false,
    };
    out.put_slice(req.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path);
    out.put_u8(b' ');
    out.put_slice(version);
    out.put_slice(b"\r\n");
    let entries = req
        .headers
        .iter()
        .zip(req.case_header_iter())
        .map(|((n, v), (c, _))| (n.as_str().as_bytes(), c.as_slice(), v.as_bytes()));
    fields(out, entries, Grouping::ByMap, edits);
    out.put_slice(b"\r\n");
    true
}

/// `HTTP/1.x status reason\r\n`, the fields with `edits`, the blank line, as
/// Pingora's server session writes an answer head; `version` is the
/// answer's, or the one the gateway sets. `false` as for [`request_head`].
pub fn response_head(out: &mut Vec<u8>, resp: &ResponseHeader, version: Version, edits: &[Edit<'_>]) -> bool {
    if !resp.has_case() {
        return false;
    }
    let reason = resp.get_reason_phrase().unwrap_or("").as_bytes();
    let entries = resp
        .headers
        .iter()
        .zip(resp.case_header_iter())
        .map(|((n, v), (c, _))| (n.as_str().as_bytes(), c.as_slice(), v.as_bytes()));
    answer_head(out, resp.status.as_str().as_bytes(), reason, version, entries, Grouping::ByMap, edits)
}

/// The same for an answer head as it came off the wire (`lean/upstream.rs`):
/// its status code, its reason and its fields in the order they came,
/// each `(name, value)` as the parser gave them. Written as Pingora's
/// client would have read them into a `ResponseHeader` (the same slices,
/// repeated names grouped) and its server session written that.
pub fn raw_response_head<'h>(
    out: &mut Vec<u8>,
    status: &[u8],
    reason: &[u8],
    version: Version,
    entries: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    edits: &[Edit<'_>],
) -> bool {
    let entries = entries.map(|(name, value)| (name, name, value));
    answer_head(out, status, reason, version, entries, Grouping::AsArrived, edits)
}

fn answer_head<'h>(
    out: &mut Vec<u8>,
    status: &[u8],
    reason: &[u8],
    version: Version,
    entries: impl Iterator<Item = (&'h [u8], &'h [u8], &'h [u8])>,
    grouping: Grouping,
    edits: &[Edit<'_>],
) -> bool {
    let version: &[u8] = match version {
        Version::HTTP_10 => b"HTTP/1.0 ",
        Version::HTTP_11 => b"HTTP/1.1 ",
        _ => return false,
    };
    out.put_slice(version);
    out.put_slice(status);
    out.put_u8(b' ');
    out.put_slice(reason);
    out.put_slice(b"\r\n");
    fields(out, entries, grouping, edits);
    out.put_slice(b"\r\n");
    true
}

/// The fields as the edits, made in turn on a `HeaderMap`, would leave
/// them: each name once, where it first appeared, its values together; an
/// insert replaces a name's values in place or adds the name at the end;
/// an append adds a value after the name's others; a removal takes the
/// name out and moves the *last* name into its place (`HeaderMap::remove`
/// swaps, as the unit tests show).
///
/// `entries` are `(name as compared, name as written, value)`; names are
/// compared without regard to case.
fn fields<'h>(
    out: &mut Vec<u8>,
    entries: impl Iterator<Item = (&'h [u8], &'h [u8], &'h [u8])>,
    grouping: Grouping,
    edits: &[Edit<'_>],
) {
    // The head's fields in order, and its names in order of first
    // appearance, each with the indexes of its values.
    let mut values: SmallVec<[(&[u8], &[u8]); 24]> = SmallVec::new();
    let mut names: SmallVec<[Name<'_>; 24]> = SmallVec::new();
    for (name, wire, value) in entries {
        let index = values.len();
        values.push((wire, value));
        let known = match grouping {
            Grouping::ByMap => names.last_mut().filter(|n| n.name == name),
            Grouping::AsArrived => names.iter_mut().rev().find(|n| n.name.eq_ignore_ascii_case(name)),
        };
        match known {
            Some(known) => known.own.push(index),
            None => {
                names.push(Name { name, own: smallvec::smallvec![index], with: With::Own, appended: SmallVec::new() })
            }
        }
    }
    for (i, edit) in edits.iter().enumerate() {
        let key = edit.name.as_str().as_bytes();
        let at = names.iter().position(|n| n.name.eq_ignore_ascii_case(key));
        match (edit.kind, at) {
            (EditKind::Remove, Some(at)) => {
                names.swap_remove(at);
            }
            (EditKind::Remove, None) => {}
            (EditKind::Insert, Some(at)) => {
                names[at].with = With::Edit(i);
                names[at].appended.clear();
            }
            (EditKind::Append, Some(at)) => names[at].appended.push(i),
            (EditKind::Insert | EditKind::Append, None) => {
                names.push(Name { name: key, own: SmallVec::new(), with: With::Edit(i), appended: SmallVec::new() });
            }
        }
    }
    for name in &names {
        match name.with {
            With::Own => {
                for &i in &name.own {
                    let (wire, value) = values[i];
                    field(out, wire, value);
                }
            }
            With::Edit(i) => field(out, edits[i].wire, edits[i].value),
        }
        for &i in &name.appended {
            field(out, edits[i].wire, edits[i].value);
        }
    }
}

/// How a head's fields come.
#[derive(Clone, Copy)]
enum Grouping {
    /// From a `HeaderMap`: each name once, in lowercase, its values
    /// together. A name is new unless it is the one before, where a head as
    /// it arrived needs a search of the earlier names for each field.
    ByMap,
    /// As they arrived: a name's values may be apart, in any case.
    AsArrived,
}

/// One name of a head being spliced.
struct Name<'n> {
    name: &'n [u8],
    /// Its own values: indexes into `values`.
    own: SmallVec<[usize; 2]>,
    /// Whether its own values are written, or an edit's value instead.
    with: With,
    /// Edits whose values follow.
    appended: SmallVec<[usize; 1]>,
}

#[derive(Clone, Copy)]
enum With {
    Own,
    Edit(usize),
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONNECTION, DATE, SET_COOKIE, TRANSFER_ENCODING};
    use http::HeaderValue;

    /// Pingora's own way: the edits made on a copy, then serialised.
    fn by_copy_request(req: &RequestHeader, edits: &[Edit<'_>]) -> Vec<u8> {
        let mut copy = req.clone();
        for e in edits {
            let wire = bytes::Bytes::copy_from_slice(e.wire);
            let value = HeaderValue::from_bytes(e.value).expect("value");
            match e.kind {
                EditKind::Insert => copy.insert_header(wire, value).expect("insert"),
                EditKind::Append => {
                    copy.append_header(wire, value).expect("append");
                }
                EditKind::Remove => {
                    copy.remove_header(e.name);
                }
            }
        }
        pingora_core::protocols::http::v1::client::http_req_header_to_wire(&copy).expect("wire").to_vec()
    }

    fn by_copy_response(resp: &ResponseHeader, edits: &[Edit<'_>]) -> Vec<u8> {
        let mut copy = resp.clone();
        for e in edits {
            let wire = bytes::Bytes::copy_from_slice(e.wire);
            let value = HeaderValue::from_bytes(e.value).expect("value");
            match e.kind {
                EditKind::Insert => copy.insert_header(wire, value).expect("insert"),
                EditKind::Append => {
                    copy.append_header(wire, value).expect("append");
                }
                EditKind::Remove => {
                    copy.remove_header(e.name);
                }
            }
        }
        let mut out = b"HTTP/1.1 ".to_vec();
        out.extend_from_slice(copy.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(copy.get_reason_phrase().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        copy.header_to_h1_wire(&mut out);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn request(fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/cart?x=1", Some(fields.len())).expect("head");
        for (n, v) in fields {
            req.append_header(n.to_string(), *v).expect("field");
        }
        req
    }

    fn response(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, Some(fields.len())).expect("head");
        for (n, v) in fields {
            resp.append_header(n.to_string(), *v).expect("field");
        }
        resp
    }

    #[test]
    fn a_request_head_spliced_is_the_head_changed_and_serialised() {
        let xff = HeaderName::from_static("x-forwarded-for");
        let proto = HeaderName::from_static("x-forwarded-proto");
        let lane = HeaderName::from_static("x-lane");
        let id = HeaderName::from_static("x-request-id");
        let edits = [
            Edit::remove(&CONNECTION),
            Edit::insert(&id, b"x-request-id", b"0123456789abcdef"),
            Edit::insert(&xff, b"x-forwarded-for", b"10.0.0.1, 127.0.0.1"),
            Edit::insert(&proto, b"x-forwarded-proto", b"http"),
            Edit::insert(&lane, b"X-Lane", b"canary"),
        ];
        let heads: &[&[(&str, &str)]] = &[
            &[],
            &[("Host", "shop")],
            &[("Host", "shop"), ("Connection", "keep-alive"), ("X-Forwarded-For", "10.0.0.1"), ("Accept", "*/*")],
            // Repeated names, one of them apart from the others: grouped at its first place.
            &[("Cookie", "a=1"), ("x-forwarded-for", "1.1.1.1"), ("Cookie", "b=2"), ("X-FORWARDED-FOR", "2.2.2.2")],
            &[("x-lane", "stable"), ("Host", "shop"), ("X-Forwarded-Proto", "https"), ("connection", "close")],
            // The client's id twice, apart, and a field after the one removed.
            &[("X-Request-Id", "a"), ("Connection", "close"), ("x-request-id", "b"), ("Accept", "*/*")],
        ];
        for fields in heads {
            let req = request(fields);
            let mut spliced = Vec::new();
            assert!(request_head(&mut spliced, &req, &edits));
            assert_eq!(String::from_utf8_lossy(&spliced), String::from_utf8_lossy(&by_copy_request(&req, &edits)));
        }
    }

    #[test]
    fn an_answer_head_spliced_is_the_head_changed_and_serialised() {
        let cache = HeaderName::from_static("x-gateway-cache");
        let version = HeaderName::from_static("x-version");
        let edits = [
            Edit::insert(&TRANSFER_ENCODING, b"Transfer-Encoding", b"chunked"),
            Edit::insert(&cache, b"x-gateway-cache", b"miss"),
            Edit::insert(&version, b"X-Version", b"v2"),
            Edit::append(&SET_COOKIE, b"Set-Cookie", b"uid=7; Path=/"),
            Edit::insert(&DATE, b"Date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
            Edit::insert(&CONNECTION, b"Connection", b"keep-alive"),
        ];
        let heads: &[&[(&str, &str)]] = &[
            &[],
            &[("Content-Length", "5"), ("content-type", "text/plain")],
            &[("set-cookie", "a=1"), ("Date", "x"), ("SET-COOKIE", "b=2"), ("X-Version", "v1"), ("Server", "be")],
            &[("Connection", "close"), ("Keep-Alive", "timeout=5"), ("x-version", "a"), ("X-Version", "b")],
            &[("A", "1"), ("Connection", "close"), ("B", "2"), ("C", "3")],
            // As they may come off the wire: repeated names apart, in other cases.
            &[("set-cookie", "a=1"), ("Date", "x"), ("SET-COOKIE", "b=2"), ("X-Version", "v1"), ("Set-Cookie", "c")],
            &[("A", "1"), ("b", "2"), ("a", "3"), ("Connection", "close"), ("B", "4"), ("x-version", "a")],
        ];
        for fields in heads {
            // Pingora's client reads each field into its model in turn.
            let resp = response(fields);
            let expected = by_copy_response(&resp, &edits);
            let mut spliced = Vec::new();
            assert!(response_head(&mut spliced, &resp, Version::HTTP_11, &edits));
            assert_eq!(String::from_utf8_lossy(&spliced), String::from_utf8_lossy(&expected));
            // The same head spliced from the fields as read (`lean/upstream.rs`).
            let mut raw = Vec::new();
            let entries = fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
            assert!(raw_response_head(&mut raw, b"200", b"OK", Version::HTTP_11, entries, &edits));
            assert_eq!(String::from_utf8_lossy(&raw), String::from_utf8_lossy(&expected));
        }
    }

    #[test]
    fn removals_appends_and_inserts_of_one_name_follow_the_header_map() {
        let lane = HeaderName::from_static("x-lane");
        let edits = [
            Edit::append(&SET_COOKIE, b"Set-Cookie", b"a=1"),
            Edit::remove(&CONNECTION),
            Edit::insert(&lane, b"x-lane", b"v1"),
            Edit::append(&SET_COOKIE, b"set-cookie", b"b=2"),
            Edit::remove(&lane),
            Edit::append(&lane, b"X-Lane", b"v2"),
            Edit::insert(&CONNECTION, b"Connection", b"close"),
        ];
        let heads: &[&[(&str, &str)]] = &[
            &[],
            &[("Set-Cookie", "z=0"), ("Connection", "keep-alive"), ("Host", "h"), ("X-Lane", "x"), ("Via", "1.1 a")],
            &[("Connection", "keep-alive"), ("Host", "h")],
        ];
        for fields in heads {
            let resp = response(fields);
            let mut spliced = Vec::new();
            assert!(response_head(&mut spliced, &resp, Version::HTTP_11, &edits));
            assert_eq!(String::from_utf8_lossy(&spliced), String::from_utf8_lossy(&by_copy_response(&resp, &edits)));
        }
    }

    #[test]
    fn heads_it_cannot_write_are_declined() {
        let no_case = RequestHeader::build_no_case("GET", b"/", None).expect("head");
        assert!(!request_head(&mut Vec::new(), &no_case, &[]));
        let space = RequestHeader::build("GET", b"/a%20b", None).expect("head");
        assert!(request_head(&mut Vec::new(), &space, &[]));
    }
}
