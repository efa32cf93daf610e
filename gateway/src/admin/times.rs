//! Times as RFC 3339 text in admin answers. Total: humantime's formatter
//! panics before 1970 and past year 9999, and an answer must never panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::control::state::MAX_UNIX_TIME;

/// Clamped into 1970-01-01T00:00:00Z..=9999-12-31T23:59:59Z.
fn clamp(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let max = Duration::from_secs(MAX_UNIX_TIME);
    UNIX_EPOCH.checked_add(secs.min(max)).unwrap_or(UNIX_EPOCH)
}

/// `2026-01-02T03:04:05Z`.
pub(crate) fn rfc3339_seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(clamp(t)).to_string()
}

/// `2026-01-02T03:04:05.678Z` for milliseconds since the epoch (diff records).
pub(crate) fn rfc3339_millis(ms: i64) -> String {
    let t = UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).unwrap_or(0))).unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_millis(clamp(t)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_what_rfc3339_can_write_are_clamped_not_a_panic() {
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339_seconds(far), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_seconds(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_millis(i64::MAX), "9999-12-31T23:59:59.000Z");
        assert_eq!(rfc3339_millis(-1), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
