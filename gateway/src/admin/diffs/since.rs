//! The `since` parameter: a humantime duration meaning "that long ago"
//! (`1h`, `30m`, `2d 4h`) or an RFC 3339 time (`2026-05-01T10:00:00Z`,
//! `...+02:00`), as Unix milliseconds; and back to RFC 3339 for display.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `1h`, `30m`, `2d 4h` (that long before `now`) or an RFC 3339 time, as Unix milliseconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, String> {
    let text = text.trim();
    let at = if let Ok(ago) = humantime::parse_duration(text) {
        now.checked_sub(ago).unwrap_or(UNIX_EPOCH)
    } else {
        parse_rfc3339(text).ok_or_else(|| {
            format!(
                "since={text:?} is neither a duration (1h, 30m) nor an RFC 3339 time (2026-05-01T10:00:00Z or +02:00)"
            )
        })?
    };
    Ok(unix_ms(at))
}

/// RFC 3339 with `Z`, a numeric offset (`+02:00`), or none (taken as UTC).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Some(t);
    }
    // humantime reads `Z` only; apply a `±HH:MM` offset ourselves.
    // `get`, not `split_at`: six bytes from the end may fall inside a character.
    let cut = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..cut)?, text.get(cut..)?);
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = offset[1..].split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    let shift = Duration::from_secs(h * 3600 + m * 60);
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    // 10:00+02:00 is 08:00Z.
    if sign > 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

pub(super) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Never panics, whatever the store holds (see `admin::times`).
pub(super) fn rfc3339_ms(ms: i64) -> String {
    crate::admin::times::rfc3339_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).expect("test time")
    }

    #[test]
    fn since_reads_durations_and_rfc3339_times() {
        let now = at("2026-05-01T12:00:00Z");
        assert_eq!(parse_since("1h", now), Ok(unix_ms(at("2026-05-01T11:00:00Z"))));
        assert_eq!(parse_since("30m", now), Ok(unix_ms(at("2026-05-01T11:30:00Z"))));
        assert_eq!(parse_since("2026-05-01T10:00:00Z", now), Ok(unix_ms(at("2026-05-01T10:00:00Z"))));
        assert_eq!(parse_since("2026-05-01T10:00:00+02:00", now), Ok(unix_ms(at("2026-05-01T08:00:00Z"))));
        assert_eq!(parse_since("2026-05-01T10:00:00-01:30", now), Ok(unix_ms(at("2026-05-01T11:30:00Z"))));
        assert!(parse_since("yesterday", now).is_err_and(|e| e.contains("neither a duration")));
        assert!(parse_since("2026-05-01T10:00:00+25:00", now).is_err());
    }

    #[test]
    fn since_with_a_character_across_the_offset_cut_is_an_error_not_a_panic() {
        let now = at("2026-05-01T12:00:00Z");
        // 7 bytes: the cut six bytes from the end falls inside the first '€'.
        assert!(parse_since("€a€", now).is_err());
        assert!(parse_since("2026-05-01T10:00:00€0", now).is_err());
    }
}
