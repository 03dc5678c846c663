//! A session's outbound backlog, measured in bytes, and the response stream that measures it.
//!
//! actix-web-actors buffers outgoing frames without bound, and the HTTP dispatcher polls the
//! response stream only while the socket takes data. So the real backlog of a session is what
//! was handed to it (by the Hub, or written by the session itself) minus what the response
//! stream has yielded to the socket. [`Outbound`] counts both sides; [`Metered`] wraps the
//! stream from `WebsocketContext` to do the yielding side, and to cut a dropped session short
//! with its close frame instead of flushing a backlog nobody will read.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::web::Bytes;
use futures_util::Stream;

use crate::protocol::Close;

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

/// The response stream of one WebSocket: the context's frames, counted out of the backlog.
pub struct Metered<S> {
    inner: Pin<Box<S>>,
    outbound: Arc<Outbound>,
    /// Set once the abort close frame was yielded; the stream then ends.
    done: bool,
}

impl<S> Metered<S> {
    pub fn new(inner: S, outbound: Arc<Outbound>) -> Self {
        Metered {
            inner: Box::pin(inner),
            outbound,
            done: false,
        }
    }
}

impl<S, E> Stream for Metered<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.outbound.is_aborted() {
            // Chunks from the context always end on a frame boundary, so the close frame is
            // well-formed after whatever was already written. Ending the stream drops the
            // context, which stops the session actor and frees its backlog.
            self.done = true;
            return Poll::Ready(Some(Ok(Bytes::from(Close::SlowConsumer.encoded_frame()))));
        }
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            self.outbound.release(chunk.len());
        }
        polled
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
