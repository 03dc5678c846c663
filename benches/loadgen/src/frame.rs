//! The load generator's own corner of the wire: the `data` it publishes and how a subscriber
//! gets the three numbers it needs back out of a `message` push.
//!
//! A publication's `data` is `{"lg_seq":<n>,"lg_t":<unix µs>,"pad":"xxx…"}`, padded to an exact
//! size. The `lg_` prefix keeps the keys from colliding with anything the hub itself puts in
//! a push. At 2M deliveries/s on one core a subscriber has ~500 ns per message in total, so
//! the default parser does not build JSON at all: it searches the bytes for `"offset":`,
//! `"lg_seq":` and `"lg_t":`. The two serde parsers exist to measure that choice
//! (`--parse typed|value`).

use std::io::Write;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem::Finder;
use serde::Deserialize;

use crate::cli::ParseMode;

/// What a subscriber needs from one benchmark push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    /// The publisher's sequence number.
    pub seq: u64,
    /// When the publisher sent it, Unix microseconds.
    pub sent_us: u64,
    /// The channel offset the hub gave it, if the frame carried one.
    pub offset: Option<u64>,
}

/// Current time in Unix microseconds. Wall-clock rather than monotonic so that a publisher in
/// another process (a stream producer) can stamp publications too; over a run of seconds the
/// difference is immaterial.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Writes the `data` JSON of publication `seq` into `buf` (cleared first), padded so that it is
/// exactly `size` bytes when `size` is at least the unpadded length. Returns the length.
pub fn write_data(buf: &mut Vec<u8>, seq: u64, sent_us: u64, size: usize) -> usize {
    buf.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{{\"lg_seq\":{seq},\"lg_t\":{sent_us},\"pad\":\"");
    let closing = 2; // `"}`
    let pad = size.saturating_sub(buf.len() + closing);
    buf.resize(buf.len() + pad, b'x');
    buf.extend_from_slice(b"\"}");
    buf.len()
}

/// Extracts a benchmark push from a text frame; `None` for any other frame. `prefix` (see
/// [`push_prefix`]) speeds up the scan parser and may be empty.
pub fn parse_push(mode: ParseMode, frame: &[u8], prefix: &[u8]) -> Option<Push> {
    match mode {
        ParseMode::Scan => scan_push(frame, prefix),
        ParseMode::Typed => typed_push(frame),
        ParseMode::Value => value_push(frame),
    }
}

/// The keys the byte-search parser looks for, with their quotes and colon.
struct Needles {
    offset: Finder<'static>,
    seq: Finder<'static>,
    sent: Finder<'static>,
}

static NEEDLES: LazyLock<Needles> = LazyLock::new(|| Needles {
    offset: Finder::new(b"\"offset\":"),
    seq: Finder::new(b"\"lg_seq\":"),
    sent: Finder::new(b"\"lg_t\":"),
});

/// The byte-search parser: ~70 ns for a push in the hub's layout (most of it turning the 28
/// digits into numbers), against ~500 ns for `typed` and ~2 µs for `value` (measured here for
/// a 100-byte payload).
///
/// Fast paths follow the layout the hub writes, each with a fallback to a search of the whole
/// frame, so any key order still parses: `prefix` is what the hub writes before the offset's
/// digits (`{"type":"message","channel":"<ours>","offset":`), our `data` is the first object
/// inside the frame and starts with `lg_seq`, and `lg_t` follows it. No string value can fake
/// a key in a search (a quote inside a JSON string is escaped), and the first `"offset":` is
/// the hub's, since our `data` has no such key.
fn scan_push(frame: &[u8], prefix: &[u8]) -> Option<Push> {
    const SEQ_FIRST: &[u8] = b"{\"lg_seq\":";
    const SENT_NEXT: &[u8] = b",\"lg_t\":";
    let n = &*NEEDLES;
    // The offset first: in the hub's layout the `data` object starts after it, so the search
    // for its `{` can skip the prefix.
    let (offset, data_from) = match (!prefix.is_empty() && frame.starts_with(prefix))
        .then(|| number_after(frame, prefix.len()))
        .flatten()
    {
        Some((offset, end)) => (Some(offset), end),
        None => {
            let offset = n
                .offset
                .find(frame)
                .and_then(|at| number_after(frame, at + n.offset.needle().len()))
                .map(|(v, _)| v);
            (offset, 1)
        }
    };
    let seq_value_at = match memchr::memchr(b'{', frame.get(data_from..)?) {
        Some(at) if frame[data_from + at..].starts_with(SEQ_FIRST) => {
            data_from + at + SEQ_FIRST.len()
        }
        _ => n.seq.find(frame)? + n.seq.needle().len(),
    };
    let (seq, seq_end) = number_after(frame, seq_value_at)?;
    let sent_value_at = if frame[seq_end..].starts_with(SENT_NEXT) {
        seq_end + SENT_NEXT.len()
    } else {
        n.sent.find(frame)? + n.sent.needle().len()
    };
    let (sent_us, _) = number_after(frame, sent_value_at)?;
    Some(Push {
        seq,
        sent_us,
        offset,
    })
}

/// What the hub writes in front of a push's offset digits on `channel`: the fast path of the
/// scan parser.
pub fn push_prefix(channel: &str) -> Vec<u8> {
    let mut prefix = b"{\"type\":\"message\",\"channel\":".to_vec();
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut prefix, channel);
    prefix.extend_from_slice(b",\"offset\":");
    prefix
}

/// Parses an unsigned decimal at `at`, after optional spaces. Returns it and the end position;
/// `None` when there is no digit or the number does not fit in a `u64`.
///
/// The digits are counted first and then converted eight at a time (a 16-digit timestamp is
/// two 8-byte loads and a few multiplications): a digit-by-digit loop with overflow checks
/// was 60–70 % of the parser's time in a profile at 1.6M pushes/s, its multiplications one
/// long dependency chain. Up to 19 digits cannot overflow; 20 are checked.
fn number_after(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    while bytes.get(at) == Some(&b' ') {
        at += 1;
    }
    let digits = count_digits(bytes.get(at..)?);
    let end = at + digits;
    let text = &bytes[at..end];
    match digits {
        0 => None,
        1..=19 => {
            let head = digits % 8;
            let mut value = text[..head]
                .iter()
                .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
            for chunk in text[head..].chunks_exact(8) {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(chunk);
                value = value * 100_000_000 + eight_digits(u64::from_le_bytes(eight));
            }
            Some((value, end))
        }
        20 => {
            let value = text.iter().try_fold(0u64, |v, d| {
                v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })?;
            Some((value, end))
        }
        _ => None,
    }
}

/// How many ASCII digits `bytes` starts with, eight bytes at a time.
#[inline]
fn count_digits(bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Some(chunk) = bytes.get(n..n + 8) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        // Per byte: digits are 0x30..=0x39, i.e. high nibble 3 and low nibble + 6 below 16.
        let x = u64::from_le_bytes(eight) ^ 0x3030_3030_3030_3030;
        let not_digit = (x & 0xF0F0_F0F0_F0F0_F0F0)
            | ((x & 0x0F0F_0F0F_0F0F_0F0F).wrapping_add(0x0606_0606_0606_0606)
                & 0x1010_1010_1010_1010);
        if not_digit != 0 {
            return n + (not_digit.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + bytes[n..].iter().take_while(|b| b.is_ascii_digit()).count()
}

/// The value of eight ASCII digits loaded little-endian (the first digit in the low byte),
/// by combining neighbours pairwise: 8 digits → 4 two-digit → 2 four-digit → 1.
fn eight_digits(chunk: u64) -> u64 {
    let v = chunk.wrapping_sub(0x3030_3030_3030_3030);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let lo = (v & 0x0000_00FF_0000_00FF).wrapping_mul(100 + (1_000_000 << 32));
    let hi = ((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32));
    lo.wrapping_add(hi) >> 32
}

#[derive(Deserialize)]
struct TypedFrame {
    offset: Option<u64>,
    data: Option<TypedData>,
}

#[derive(Deserialize)]
struct TypedData {
    lg_seq: Option<u64>,
    lg_t: Option<u64>,
}

fn typed_push(frame: &[u8]) -> Option<Push> {
    let f: TypedFrame = serde_json::from_slice(frame).ok()?;
    let data = f.data?;
    Some(Push {
        seq: data.lg_seq?,
        sent_us: data.lg_t?,
        offset: f.offset,
    })
}

fn value_push(frame: &[u8]) -> Option<Push> {
    let v: serde_json::Value = serde_json::from_slice(frame).ok()?;
    let data = v.get("data")?;
    Some(Push {
        seq: data.get("lg_seq")?.as_u64()?,
        sent_us: data.get("lg_t")?.as_u64()?,
        offset: v.get("offset").and_then(|o| o.as_u64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUSH: &[u8] = br#"{"type":"message","channel":"bench:f","offset":18,"epoch":"k3x9","event_id":"6f1c","data":{"lg_seq":42,"lg_t":1767225612345678,"pad":"xxxx"},"ts":1767225612345}"#;

    #[test]
    fn data_is_padded_to_the_exact_size() {
        let mut buf = Vec::new();
        for size in [60, 100, 1000] {
            assert_eq!(write_data(&mut buf, 12345, 1767225612345678, size), size);
            let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
            assert_eq!(v["lg_seq"], 12345);
        }
        // Smaller than the unpadded object: no padding, never truncated.
        let n = write_data(&mut buf, 1, 2, 10);
        assert!(n > 10 && serde_json::from_slice::<serde_json::Value>(&buf).is_ok());
    }

    #[test]
    fn all_parsers_agree_on_a_push() {
        let want = Push {
            seq: 42,
            sent_us: 1767225612345678,
            offset: Some(18),
        };
        for mode in [ParseMode::Scan, ParseMode::Typed, ParseMode::Value] {
            assert_eq!(parse_push(mode, PUSH, b""), Some(want), "{mode:?}");
        }
        let prefix = push_prefix("bench:f");
        assert!(PUSH.starts_with(&prefix));
        assert_eq!(parse_push(ParseMode::Scan, PUSH, &prefix), Some(want));
        // A prefix that does not match falls back to searching.
        let other = push_prefix("bench:g");
        assert_eq!(parse_push(ParseMode::Scan, PUSH, &other), Some(want));
    }

    #[test]
    fn scan_tolerates_data_first_and_spaces() {
        let f = br#"{"data": {"lg_t": 5, "lg_seq": 7}, "offset": 3, "type":"message"}"#;
        assert_eq!(
            scan_push(f, b""),
            Some(Push {
                seq: 7,
                sent_us: 5,
                offset: Some(3)
            })
        );
    }

    #[test]
    fn numbers_parse_like_the_standard_library() {
        let mut cases: Vec<String> = [
            "0",
            "7",
            "12345678",
            "123456789",
            "1767225612345678",
            "9999999999999999999",
            "18446744073709551615",
            "00000000000000000001",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A spread of lengths and digit patterns, from a fixed-seed generator.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push((x >> (x % 64)).to_string());
        }
        for case in &cases {
            let text = format!("{case},");
            assert_eq!(
                number_after(text.as_bytes(), 0),
                Some((case.parse::<u64>().expect("fits"), case.len())),
                "{case}"
            );
        }
        assert_eq!(number_after(b"18446744073709551616", 0), None);
        assert_eq!(number_after(b"99999999999999999999999", 0), None);
        assert_eq!(number_after(b"1234567a9", 0), Some((1234567, 7)));
        assert_eq!(number_after(b"12345678:", 0), Some((12345678, 8)));
        assert_eq!(number_after(b"x", 0), None);
        assert_eq!(number_after(b"  42}", 0), Some((42, 4)));
    }

    #[test]
    fn digits_are_counted_like_a_byte_loop() {
        // Every byte value in every position of a 12-byte window after some digits.
        for lead in 0..12 {
            for b in 0..=255u8 {
                let mut bytes = vec![b'7'; lead];
                bytes.push(b);
                bytes.extend_from_slice(b"123");
                let want = bytes.iter().take_while(|c| c.is_ascii_digit()).count();
                assert_eq!(count_digits(&bytes), want, "lead {lead} byte {b:#x}");
            }
        }
        assert_eq!(count_digits(b""), 0);
        assert_eq!(count_digits(b"12345678"), 8);
    }

    #[test]
    fn other_frames_are_not_pushes() {
        let f = br#"{"type":"subscribed","id":1,"channel":"bench:f","offset":17,"epoch":"e","recovered":false,"publications":[]}"#;
        for mode in [ParseMode::Scan, ParseMode::Typed, ParseMode::Value] {
            assert_eq!(parse_push(mode, f, b""), None, "{mode:?}");
        }
        assert_eq!(scan_push(br#"{"lg_seq":"#, b""), None);
        assert_eq!(scan_push(b"", b""), None);
        assert_eq!(
            scan_push(br#"{"lg_seq":99999999999999999999999,"lg_t":1}"#, b""),
            None
        );
    }
}
