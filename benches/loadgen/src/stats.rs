//! Exact delivery accounting for one subscriber, and the histogram helpers.
//!
//! Loss is counted, never inferred: every subscriber keeps a bitset of the sequence numbers it
//! received; at the end it is compared with the bitset of publications the hub acknowledged.
//! Offsets are checked separately against the contract (after `subscribed` at offset o, pushes
//! are o+1, o+2, ... with none missing or repeated), which catches reordering that sequence
//! numbers cannot (parallel publishers do not reach the hub in sequence order). Plain data,
//! no I/O: the client task owns one `Tally` and hands it back when it ends.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::cli::ParseMode;
use crate::frame::{self, Push};
use crate::report::round3;

/// Highest latency a histogram tracks: 60 s in µs; longer ones are recorded as 60 s.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A fixed-size set of sequence numbers `0..len`.
#[derive(Debug, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

/// What inserting a sequence number did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    New,
    Duplicate,
    OutOfRange,
}

impl SeqSet {
    pub fn new(len: u64) -> Self {
        Self {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    pub fn insert(&mut self, seq: u64) -> Insert {
        if seq >= self.len {
            return Insert::OutOfRange;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.words[w] & bit != 0 {
            Insert::Duplicate
        } else {
            self.words[w] |= bit;
            Insert::New
        }
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// How many members of `other` are missing from `self`.
    pub fn missing_from(&self, other: &SeqSet) -> u64 {
        other
            .words
            .iter()
            .enumerate()
            .map(|(i, o)| u64::from((o & !self.words.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }
}

/// A latency histogram in microseconds.
pub fn latency_histogram(sigfig: u8) -> Histogram<u64> {
    // The bounds are constants and sigfig is range-checked by the CLI (1..=4), so creation
    // cannot fail; fall back to the coarsest valid histogram rather than panic anyway.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig)
        .or_else(|_| Histogram::new_with_bounds(1, MAX_LATENCY_US, 1))
        .unwrap_or_else(|_| Histogram::new(1).expect("a 1-figure auto-resizing histogram"))
}

/// Records `us`, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.min(h.high()));
}

/// p50/p90/p99/p99.9/max/mean in milliseconds, and the count.
pub fn summary_ms(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    let ms = |us: u64| round3(us as f64 / 1000.0);
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": round3(h.mean() / 1000.0),
    })
}

/// Offset continuity of one subscription, per the contract.
#[derive(Debug, Clone, Default)]
pub struct OffsetCheck {
    /// Last offset seen; starts at the `subscribed` offset.
    pub last: Option<u64>,
    /// Times the next offset was more than last + 1.
    pub gaps: u64,
    /// Offsets skipped over in those gaps.
    pub skipped: u64,
    /// Times an offset was not greater than the last one (repeat or reorder).
    pub regressions: u64,
}

impl OffsetCheck {
    fn observe(&mut self, offset: u64) {
        match self.last {
            Some(last) if offset == last + 1 => {}
            Some(last) if offset > last + 1 => {
                self.gaps += 1;
                self.skipped += offset - last - 1;
            }
            Some(_) => self.regressions += 1,
            None => {}
        }
        if self.last.map_or(true, |last| offset > last) {
            self.last = Some(offset);
        }
    }
}

/// Everything one subscriber observed.
#[derive(Debug)]
pub struct Tally {
    /// Sequence numbers received (`0..expected`).
    pub seen: SeqSet,
    /// Distinct benchmark pushes received.
    pub unique: u64,
    /// Pushes whose sequence number had already been received.
    pub duplicates: u64,
    /// Pushes with a sequence number outside this run's range (someone else publishing).
    pub out_of_range: u64,
    /// Text frames that were not benchmark pushes.
    pub other_frames: u64,
    pub offsets: OffsetCheck,
    /// New pushes whose sequence number is below the highest one received before: an order
    /// check for runs whose publications reach the hub in sequence order (one stream
    /// producer), meaningless for parallel HTTP publishers.
    pub seq_behind: u64,
    max_seq: Option<u64>,
    /// Publish-to-receipt latency; `None` when the scenario publishes nothing.
    pub latency: Option<Histogram<u64>>,
    /// Unix µs of the first and last benchmark push.
    pub first_us: u64,
    pub last_us: u64,
    mode: ParseMode,
    /// What the hub writes before a push's offset on our channel (parser fast path).
    prefix: Vec<u8>,
}

impl Tally {
    /// A tally for a run of `expected` publications; `expected == 0` keeps no histogram, which
    /// matters with thousands of connections that will receive nothing.
    pub fn new(expected: u64, mode: ParseMode, sigfig: u8) -> Self {
        Self {
            seen: SeqSet::new(expected),
            unique: 0,
            duplicates: 0,
            out_of_range: 0,
            other_frames: 0,
            offsets: OffsetCheck::default(),
            seq_behind: 0,
            max_seq: None,
            latency: (expected > 0).then(|| latency_histogram(sigfig)),
            first_us: 0,
            last_us: 0,
            mode,
            prefix: Vec::new(),
        }
    }

    /// Subscribed to `channel`, whose pushes must continue after `offset`.
    pub fn subscribed_at(&mut self, channel: &str, offset: u64) {
        self.offsets.last = Some(offset);
        self.prefix = frame::push_prefix(channel);
    }

    /// Accounts one text frame received at `now_us`. Returns true when it was a new
    /// benchmark push.
    pub fn on_text(&mut self, text: &[u8], now_us: u64) -> bool {
        let Some(push) = frame::parse_push(self.mode, text, &self.prefix) else {
            self.other_frames += 1;
            return false;
        };
        self.on_push(push, now_us)
    }

    fn on_push(&mut self, push: Push, now_us: u64) -> bool {
        if let Some(offset) = push.offset {
            self.offsets.observe(offset);
        }
        match self.seen.insert(push.seq) {
            Insert::New => {}
            Insert::Duplicate => {
                self.duplicates += 1;
                return false;
            }
            Insert::OutOfRange => {
                self.out_of_range += 1;
                return false;
            }
        }
        self.unique += 1;
        match self.max_seq {
            Some(max) if push.seq < max => self.seq_behind += 1,
            _ => self.max_seq = Some(push.seq),
        }
        if self.first_us == 0 {
            self.first_us = now_us;
        }
        self.last_us = now_us;
        if let Some(h) = self.latency.as_mut() {
            record(h, now_us.saturating_sub(push.sent_us));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(seq: u64, offset: u64) -> Push {
        Push {
            seq,
            sent_us: 1000,
            offset: Some(offset),
        }
    }

    #[test]
    fn seqset_counts_new_duplicate_and_out_of_range() {
        let mut s = SeqSet::new(130);
        assert_eq!(s.insert(0), Insert::New);
        assert_eq!(s.insert(129), Insert::New);
        assert_eq!(s.insert(129), Insert::Duplicate);
        assert_eq!(s.insert(130), Insert::OutOfRange);
        assert_eq!(s.count(), 2);
        let mut all = SeqSet::new(130);
        (0..130).for_each(|i| {
            all.insert(i);
        });
        assert_eq!(s.missing_from(&all), 128);
        assert_eq!(all.missing_from(&s), 0);
    }

    #[test]
    fn tally_counts_loss_duplicates_and_offset_gaps() {
        let mut t = Tally::new(10, ParseMode::Scan, 2);
        t.subscribed_at("bench:t", 100);
        assert!(t.on_push(push(0, 101), 1500));
        assert!(t.on_push(push(2, 103), 1600)); // offset 102 skipped
        assert!(!t.on_push(push(2, 103), 1700)); // repeated
        assert!(t.on_push(push(1, 102), 1800)); // late: a regression
        assert_eq!((t.unique, t.duplicates), (3, 1));
        assert_eq!((t.offsets.gaps, t.offsets.skipped), (1, 1));
        assert_eq!(t.offsets.regressions, 2);
        assert_eq!(t.seq_behind, 1);
        let mut expected = SeqSet::new(10);
        (0..10).for_each(|i| {
            expected.insert(i);
        });
        assert_eq!(t.seen.missing_from(&expected), 7);
        let h = t.latency.as_ref().expect("histogram");
        assert_eq!(h.len(), 3);
        assert!(h.max() >= 790 && h.max() <= 810);
    }
}
