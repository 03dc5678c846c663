//! Channel names: what is a valid name and what its namespace is.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// 1 to 255 bytes of `A-Z a-z 0-9 _ - : . @ / = |`. Wildcards are never part of a name.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'_' | b'-' | b':' | b'.' | b'@' | b'/' | b'=' | b'|')
        })
}

/// The part before the first `:`, if there is one.
pub fn namespace(channel: &str) -> Option<&str> {
    channel.split_once(':').map(|(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract_alphabet() {
        assert!(valid_channel("chat:lobby"));
        assert!(valid_channel("a/b=c|d@e.f-g_h"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("chat:*"));
        assert!(!valid_channel("chat lobby"));
        assert!(!valid_channel("ünï"));
        assert!(valid_channel(&"x".repeat(255)));
        assert!(!valid_channel(&"x".repeat(256)));
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(namespace("chat:lobby:x"), Some("chat"));
        assert_eq!(namespace("lobby"), None);
    }
}
