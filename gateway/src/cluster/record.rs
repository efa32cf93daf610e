//! One shared change as the store holds it: what changed (a block, an
//! unblock, the degrade level), when and by which replica.
//!
//! The merge rule is "latest change per key wins": a record replaces another
//! of the same key only when its stamp is greater, stamps ordering by the
//! wall-clock time of the change, then by replica name (byte order, in Rust
//! and in the store's Lua alike). An unblock is kept as a record of its own
//! (a tombstone), and an expired block stays as one, for
//! [`TOMBSTONE_RETENTION`]: a replica that was cut off and still holds an
//! older block cannot bring it back by writing its copy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::values;
use crate::config::MAX_DEGRADE_LEVEL;
use crate::control::state::MAX_UNIX_TIME;

/// How long an unblock is remembered, so that a replica offline for less
/// than this cannot resurrect the block it still holds.
pub const TOMBSTONE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// When and where a change was made; greater wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, on the clock of the replica that made the change.
    pub at_ms: u64,
    pub origin: String,
}

impl Stamp {
    /// A stamp for a local change that supersedes `previous` even if the
    /// clock stepped back since it was made.
    pub fn next(origin: &str, previous: Option<&Stamp>) -> Stamp {
        let now = unix_ms(SystemTime::now());
        let at_ms = previous.map_or(now, |p| now.max(p.at_ms.saturating_add(1)));
        Stamp { at_ms, origin: origin.to_string() }
    }

    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH.checked_add(Duration::from_millis(self.at_ms)).unwrap_or(UNIX_EPOCH)
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The key of a shared record; its field name in the store's hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordKey {
    Block(IpNet),
    Degrade,
    /// A route's release-guard rollout.
    Rollout(String),
}

impl RecordKey {
    pub fn field(&self) -> String {
        match self {
            RecordKey::Block(cidr) => format!("block:{cidr}"),
            RecordKey::Degrade => "degrade".to_string(),
            RecordKey::Rollout(route) => format!("rollout:{route}"),
        }
    }

    fn parse(field: &str) -> Result<RecordKey, String> {
        match field.split_once(':') {
            Some(("block", cidr)) => {
                let net = values::cidr(cidr)?;
                // Only the canonical spelling: two fields for one range would each win sometimes.
                if net.to_string() != cidr {
                    return Err(format!("{cidr:?} is not written as its network ({net})"));
                }
                Ok(RecordKey::Block(net))
            }
            Some(("rollout", route)) if !route.is_empty() && route.len() <= 256 => {
                Ok(RecordKey::Rollout(route.to_string()))
            }
            None if field == "degrade" => Ok(RecordKey::Degrade),
            _ => Err(format!("unknown field {field:?}")),
        }
    }
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// Blocked; times in whole seconds since the epoch.
    Block { reason: Option<String>, added_at: u64, expires_at: Option<u64> },
    /// Unblocked (a tombstone).
    Unblocked,
    /// The run-time degrade level; `None` gives the config's level back.
    Degrade { level: Option<u8> },
    /// A route's rollout, as the evaluating replica (or an operator) left it.
    Rollout { rollout: Box<crate::release::plan::Rollout> },
}

/// One record as stored: `{"at_ms":…,"origin":"…","body":{…}}` (the Lua
/// scripts read `at_ms` and `origin` to order writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedRecord {
    #[serde(flatten)]
    pub stamp: Stamp,
    pub body: Body,
}

impl SharedRecord {
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always encodes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse and check a record read from the store: anything there may have
    /// been written by another version or by hand, so it is judged like input.
    pub fn parse(field: &str, json: &str) -> Result<(RecordKey, SharedRecord), String> {
        let key = RecordKey::parse(field)?;
        let record: SharedRecord = serde_json::from_str(json).map_err(|e| format!("{field}: {e}"))?;
        let ok = match (&key, &record.body) {
            (RecordKey::Block(_), Body::Block { added_at, expires_at, .. }) => {
                *added_at <= MAX_UNIX_TIME && expires_at.is_none_or(|t| t <= MAX_UNIX_TIME)
            }
            (RecordKey::Block(_), Body::Unblocked) => true,
            (RecordKey::Degrade, Body::Degrade { level }) => level.is_none_or(|l| l <= MAX_DEGRADE_LEVEL),
            (RecordKey::Rollout(_), Body::Rollout { rollout }) => rollout.share_bp.is_none_or(|bp| bp <= 10_000),
            _ => false,
        };
        // Past year 9999 is corruption, and beyond 2^53 the store's Lua would compare it inexactly.
        let sane_time = record.stamp.at_ms <= MAX_UNIX_TIME.saturating_mul(1000);
        if !ok || !sane_time || record.stamp.origin.len() > 256 {
            return Err(format!("{field}: the record's body or times are out of range"));
        }
        Ok((key, record))
    }

    /// A record nobody needs any more: an unblock, or a block that expired,
    /// more than [`TOMBSTONE_RETENTION`] ago. Until then an expired block
    /// blocks nothing but still orders later writes, like an unblock. Any
    /// replica may delete a spent record from the store (if it is still the
    /// same record); the retention dwarfs any clock skew between replicas.
    pub fn is_spent(&self, now: SystemTime) -> bool {
        let ended = match &self.body {
            Body::Block { expires_at: Some(t), .. } => UNIX_EPOCH.checked_add(Duration::from_secs(*t)).unwrap_or(now),
            Body::Block { .. } | Body::Degrade { .. } | Body::Rollout { .. } => return false,
            Body::Unblocked => self.stamp.time(),
        };
        ended.checked_add(TOMBSTONE_RETENTION).is_some_and(|t| t <= now)
    }
}

/// A channel message: the field, a newline, the record's JSON.
pub fn message(field: &str, json: &str) -> String {
    format!("{field}\n{json}")
}

pub fn parse_message(payload: &str) -> Result<(RecordKey, SharedRecord), String> {
    let (field, json) = payload.split_once('\n').ok_or("a change message without a newline")?;
    SharedRecord::parse(field, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_stamps_win_and_ties_go_by_replica_name() {
        let a = Stamp { at_ms: 10, origin: "a".into() };
        let b = Stamp { at_ms: 10, origin: "b".into() };
        let later = Stamp { at_ms: 11, origin: "a".into() };
        assert!(b > a);
        assert!(later > b);
        let next = Stamp::next("z", Some(&Stamp { at_ms: u64::MAX - 1, origin: "x".into() }));
        assert!(next.at_ms == u64::MAX, "a clock behind the last change still moves forward");
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let r = SharedRecord {
            stamp: Stamp { at_ms: 1_700_000_000_000, origin: "gw-a/1".into() },
            body: Body::Block { reason: Some("card testing".into()), added_at: 1_700_000_000, expires_at: None },
        };
        let (key, back) = SharedRecord::parse("block:203.0.113.0/24", &r.to_json()).expect("parses");
        assert_eq!(key, RecordKey::Block("203.0.113.0/24".parse().expect("cidr")));
        assert_eq!(back, r);
        assert!(r.to_json().contains("\"at_ms\":1700000000000"), "{}", r.to_json());
        // Not the canonical network, a body of the wrong kind, a level out of range.
        assert!(SharedRecord::parse("block:203.0.113.7/24", &r.to_json()).is_err());
        assert!(SharedRecord::parse("degrade", &r.to_json()).is_err());
        let bad = r#"{"at_ms":1,"origin":"x","body":{"degrade":{"level":99}}}"#;
        assert!(SharedRecord::parse("degrade", bad).is_err());
        assert!(SharedRecord::parse("block:10.0.0.0/8", "not json").is_err());
        assert!(parse_message("degrade").is_err());
    }

    #[test]
    fn spent_records() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let block = |expires_at| SharedRecord {
            stamp: Stamp { at_ms: 0, origin: "a".into() },
            body: Body::Block { reason: None, added_at: 0, expires_at },
        };
        assert!(!block(Some(999_999)).is_spent(now), "expired, but still orders later writes");
        assert!(block(Some(999_999)).is_spent(now + TOMBSTONE_RETENTION));
        assert!(!block(Some(1_000_001)).is_spent(now + TOMBSTONE_RETENTION));
        assert!(!block(None).is_spent(now));
        let tomb =
            |at_s: u64| SharedRecord { stamp: Stamp { at_ms: at_s * 1000, origin: "a".into() }, body: Body::Unblocked };
        assert!(tomb(0).is_spent(now + TOMBSTONE_RETENTION));
        assert!(!tomb(999_000).is_spent(now));
    }
}
