//! What the Hub hands to sessions: the pushes it fans out (one encoded frame shared by every
//! subscriber), the control orders it sends, and the byte counter of each session's backlog it
//! reserves in before delivering. Sessions depend on these; this module knows nothing of
//! sessions, sockets or the engine.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::protocol::Close;

/// A frame for one channel, routed by the Hub. Its bytes are shared by every subscriber.
#[derive(Clone)]
pub struct Push {
    pub channel: Arc<str>,
    pub kind: PushKind,
    pub frame: ByteString,
    /// What it counts in a session's backlog: the frame's size on the wire.
    pub cost: usize,
    /// The client a presence push is about, which does not get it.
    pub skip: Option<Arc<str>>,
}

/// One channel's pushes from one Hub flush, in order, shared by all its local subscribers:
/// fan-out costs one reference count per subscriber and flush, not one per push.
pub struct ChannelPushes {
    pub pushes: Vec<Push>,
    /// The pushes' costs together: what the Hub reserves in each subscriber's backlog.
    pub cost: usize,
}

impl ChannelPushes {
    pub fn new(pushes: Vec<Push>) -> Self {
        let cost = pushes.iter().map(|p| p.cost).sum();
        ChannelPushes { pushes, cost }
    }

    /// How many of the pushes `client` gets (all but those about itself).
    pub fn deliveries_to(&self, client: &str) -> u64 {
        self.pushes
            .iter()
            .filter(|p| p.skip.as_deref() != Some(client))
            .count() as u64
    }
}

/// The pushes the Hub gathered for this session since its last flush, one batch per channel:
/// one mailbox message and one wake-up for all of them, and the context writes them in one go.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pushes(pub Vec<Arc<ChannelPushes>>);

#[derive(Clone)]
pub enum PushKind {
    Message { offset: u64, epoch: Arc<str> },
    Presence,
}

/// Orders from the node to a session.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Control {
    Close(Close),
    /// Publications of this channel may have been missed: fill any gap from history.
    Resync(Arc<str>),
}

/// The bytes a WebSocket text frame of `payload` bytes takes on the wire (server frames are
/// unmasked), so that both sides of the count agree exactly.
pub fn frame_cost(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        }
}

/// Shared between a session, its response stream and the Hub.
#[derive(Debug)]
pub struct Outbound {
    /// Bytes handed to the session and not yet yielded to the socket.
    queued: AtomicUsize,
    /// The session's bound (`HUB_CLIENT_QUEUE_BYTES`).
    limit: usize,
    /// 0 while healthy; else the close code the stream ends with (see [`Outbound::abort`]).
    aborted: AtomicU8,
}

const ABORT_NONE: u8 = 0;
const ABORT_SLOW: u8 = 1;

impl Outbound {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Outbound {
            queued: AtomicUsize::new(0),
            limit,
            aborted: AtomicU8::new(ABORT_NONE),
        })
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Counts `cost` more bytes if they fit under the bound; `false` means the session is too
    /// slow and must go.
    pub fn try_reserve(&self, cost: usize) -> bool {
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.limit {
            self.release(cost);
            false
        } else {
            true
        }
    }

    /// Counts bytes the session writes itself (replies, pings); these are never refused, the
    /// next push will see the total.
    pub fn add(&self, cost: usize) {
        self.queued.fetch_add(cost, Ordering::Relaxed);
    }

    /// Bytes that left the backlog: yielded to the socket, or dropped unsent.
    pub fn release(&self, cost: usize) {
        // Saturating: frames the context writes on its own (e.g. a close it echoes) were never
        // counted in, and must not wrap the counter.
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(cost))
            });
    }

    /// Marks the session as dropped for slowness: its stream ends with a 4000 close frame at
    /// the next poll, discarding the backlog. Returns `false` if it was already aborted.
    pub fn abort_slow(&self) -> bool {
        self.aborted
            .compare_exchange(ABORT_NONE, ABORT_SLOW, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire) != ABORT_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_cost_counts_the_header() {
        assert_eq!(frame_cost(0), 2);
        assert_eq!(frame_cost(125), 127);
        assert_eq!(frame_cost(126), 130);
        assert_eq!(frame_cost(65_536), 65_546);
    }

    #[test]
    fn reserve_refuses_past_the_bound_and_leaves_the_count_unchanged() {
        let o = Outbound::new(100);
        assert!(o.try_reserve(60));
        assert!(!o.try_reserve(41));
        assert_eq!(o.queued(), 60);
        o.release(100);
        assert_eq!(o.queued(), 0);
    }
}
