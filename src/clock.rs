//! What the hub reads from the operating system besides sockets and files: the wall clock (Unix
//! time in seconds, milliseconds and microseconds) and random ids (epochs, node suffixes,
//! generated secrets). Knows nothing about tokens, settings or the wire.

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
}
