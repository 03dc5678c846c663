//! The wire: every frame a client may send ([`client`]), every frame the server sends
//! ([`server`]), the close codes ([`close`]) and channel names ([`channel`]). Nothing outside this
//! module builds or parses protocol JSON.

pub mod channel;
pub mod client;
pub mod close;
pub mod node;
pub mod server;

pub use channel::{namespace, valid_channel};
pub use client::{parse_frame, Request};
pub use close::Close;
pub use server::{ClientInfo, Message, MessageTemplate, ServerFrame};

/// The largest request `id` a client may use: 2^53 − 1, the largest integer JavaScript holds exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Deepest nesting of arrays and objects a publication's `data` may have: well inside what
/// every consumer's JSON parser accepts (serde_json's default limit is 128).
pub const MAX_DATA_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects in a valid JSON text, found in one pass without
/// recursion (so hostile input cannot exhaust the stack).
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A channel position: an offset within one epoch of the channel's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

#[cfg(test)]
mod tests {
    use super::json_depth;

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"["[[[\"{{"]"#), 1);
        assert_eq!(
            json_depth(&format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
            10_000
        );
    }
}
