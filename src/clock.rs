//! What the hub reads from the operating system besides sockets and files: the wall clock (Unix
//! time in seconds, milliseconds and microseconds) and random ids (epochs, node suffixes,
//! generated secrets), and Unix time written as RFC 3339. Knows nothing about tokens, settings
//! or the wire.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds; a clock set before 1970 reads 0 rather than failing.
pub fn unix_seconds() -> u64 {
    since_epoch().as_secs()
}

/// Now, in Unix milliseconds (the wire's `ts`, dead letters' `failed_at`).
pub fn unix_millis() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// Now, in Unix microseconds (delivery latency).
pub fn unix_micros() -> u64 {
    u64::try_from(since_epoch().as_micros()).unwrap_or(u64::MAX)
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix milliseconds written as RFC 3339 in UTC with milliseconds (`2026-12-07T16:45:19.123Z`):
/// log lines' `ts` and demo events' `occurred_at`. A `Display`, so a log line formats it without
/// allocating.
pub struct Rfc3339Millis(pub u64);

impl fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            self.0 % 1000
        )
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A random URL-safe token of `len` characters from the OS's random source.
pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = vec![0u8; len];
    // A machine without a working random source cannot run a hub safely; uuid would fail too.
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three clocks agree with each other (to the unit) and tokens have the asked length
    /// from the URL-safe alphabet.
    #[test]
    fn clocks_agree_and_tokens_are_url_safe() {
        let (s, ms, us) = (unix_seconds(), unix_millis(), unix_micros());
        assert!(ms / 1000 >= s && ms / 1000 <= s + 1, "{s} {ms}");
        assert!(us / 1000 >= ms && us / 1000 <= ms + 1000, "{ms} {us}");
        let token = random_token(32);
        assert_eq!(token.len(), 32);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric()), "{token}");
        assert_ne!(random_token(32), token);
    }

    /// Timestamps are RFC 3339 UTC with milliseconds, truncated (as env_logger wrote them), on
    /// leap days and century years too.
    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        let at = |ms: u64| Rfc3339Millis(ms).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_999), "2000-02-29T00:00:00.999Z");
        assert_eq!(at(951_825_600_123), "2000-02-29T12:00:00.123Z");
        assert_eq!(at(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(at(1_796_663_067_286), "2026-12-07T17:04:27.286Z");
        assert_eq!(at(4_107_542_399_000), "2100-02-28T23:59:59.000Z");
    }
}
