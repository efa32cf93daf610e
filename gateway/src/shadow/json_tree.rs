//! The parsed form of a JSON body inside the diff: strings borrowed from the
//! captured bytes wherever they have no escapes, objects as key-sorted
//! vectors. Building a `serde_json::Value` instead allocates every key and
//! string and costs several times the comparison itself; only values that
//! end up in a report are converted ([`Node::to_value`]).

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A JSON number as the parser gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    pub fn as_int(self) -> Option<i128> {
        match self {
            Num::U(u) => Some(i128::from(u)),
            Num::I(i) => Some(i128::from(i)),
            Num::F(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'a, str>),
    Arr(Vec<Node<'a>>),
    /// Sorted by key, keys unique (of duplicates the last wins, as in serde_json).
    Obj(Vec<(Cow<'a, str>, Node<'a>)>),
}

/// The shared stand-in for a value absent on one side.
pub static NULL: Node<'static> = Node::Null;

/// Parses a whole body; `None` when it is not JSON. Nesting is limited by
/// serde_json (128 levels), which also bounds the diff's recursion.
pub fn parse(body: &[u8]) -> Option<Node<'_>> {
    serde_json::from_slice(body).ok()
}

impl Node<'_> {
    /// The value for a report.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Num(Num::U(u)) => Value::from(*u),
            Node::Num(Num::I(i)) => Value::from(*i),
            Node::Num(Num::F(f)) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Node::Str(s) => Value::String(s.to_string()),
            Node::Arr(xs) => Value::Array(xs.iter().map(Node::to_value).collect()),
            Node::Obj(m) => Value::Object(m.iter().map(|(k, v)| (k.to_string(), v.to_value())).collect()),
        }
    }

    /// Feeds a hash that is equal for exactly equal values, however a number
    /// is written (`1` and `1.0`); used to pair equal elements of set arrays.
    pub fn feed<H: Hasher>(&self, h: &mut H) {
        match self {
            Node::Null => h.write_u8(0),
            Node::Bool(b) => (1u8, *b).hash(h),
            // `+ 0.0` folds -0.0 into 0.0, which compares equal to it.
            Node::Num(n) => (2u8, (n.as_f64() + 0.0).to_bits()).hash(h),
            Node::Str(s) => (3u8, s.as_ref()).hash(h),
            Node::Arr(xs) => {
                (4u8, xs.len()).hash(h);
                xs.iter().for_each(|x| x.feed(h));
            }
            Node::Obj(m) => {
                (5u8, m.len()).hash(h);
                for (k, v) in m {
                    k.as_ref().hash(h);
                    v.feed(h);
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(b))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Node<'de>, E> {
        Ok(Node::Num(Num::U(u)))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Node<'de>, E> {
        Ok(Node::Num(Num::I(i)))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Node<'de>, E> {
        Ok(Node::Num(Num::F(f)))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut entries: Vec<(Cow<'de, str>, Node<'de>)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(k)) = map.next_key()? {
            entries.push((k, map.next_value()?));
        }
        // Stable, so among equal keys the later entry stays later; keep that one.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let duplicate = later.0 == kept.0;
            if duplicate {
                std::mem::swap(later, kept);
            }
            duplicate
        });
        Ok(Node::Obj(entries))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_to_the_same_value_as_serde_json() {
        let text = r#"{"b": [1, -2, 3.5, 1e300, true, null], "a": {"esc\"aped": "line\nbreak", "u": "\u00e9"}}"#;
        let node = parse(text.as_bytes()).expect("json");
        let value: Value = serde_json::from_str(text).expect("json");
        assert_eq!(node.to_value(), value);
        assert!(parse(b"{\"a\": }").is_none());
        assert!(parse(b"[1] trailing").is_none());
    }

    #[test]
    fn keys_are_sorted_and_the_last_duplicate_wins() {
        let node = parse(br#"{"z": 1, "a": 2, "z": 3, "m": 4, "z": 5}"#).expect("json");
        assert_eq!(node.to_value(), json!({"a": 2, "m": 4, "z": 5}));
        let Node::Obj(entries) = node else { panic!("an object") };
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "m", "z"]);
    }
}
