//! The bounded read path of a WebSocket: [`Inbound`] sits between the connection's request
//! payload and actix-web-actors' frame decoder, reads every frame header as it passes, and
//! decides from the header alone, before any of the frame's payload is buffered.
//!
//! Why it exists: actix-http 3.20's parser checks `max_size` only once a whole frame is in its
//! buffer, and actix-web-actors reads the payload into that buffer without limit, so a header
//! declaring 2 GiB made the hub buffer up to 2 GiB before closing with 1009. Here:
//!
//! - a frame declaring more than `HUB_MAX_FRAME_BYTES`, or a fragment that takes its message
//!   past it, is never handed on; the decoder gets a header it refuses at once with
//!   `ProtocolError::Overflow` (the session's 1009), and nothing more is read;
//! - a message over [`ALLOWANCE`] bytes takes its size from one process-wide budget
//!   ([`BUDGET_BYTES`]) before its header is handed on, and gives it back when its last byte
//!   has passed (or the connection goes); while the budget is spent it waits, and the socket
//!   applies TCP back-pressure to the sender;
//! - such a message (waiting or arriving) must be complete within its deadline, else the
//!   connection is dropped, so half-sent messages cannot hold the budget for long.
//!
//! It knows nothing about sessions or the JSON protocol; masking, UTF-8 and control-frame rules
//! stay with actix's parser.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Bytes of a message that stay outside the budget: a JSON request is far below this, and
/// actix already gives every connection fixed buffers larger than it.
pub const ALLOWANCE: usize = 4 << 10;

/// What all incomplete messages over [`ALLOWANCE`] may hold together. Process-wide rather than
/// per node: memory belongs to the process, and nodes sharing one (as in tests) share it.
pub const BUDGET_BYTES: usize = 64 << 20;

/// The budget is counted in KiB so that a permit count always fits tokio's `u32`.
const UNIT: usize = 1 << 10;

/// A header that actix-http's parser refuses with `ProtocolError::Overflow` as soon as it has
/// read it: a 64-bit length with its top bit set, which RFC 6455 §5.2 forbids. Masked, as a
/// client frame must be, so no other check comes first (pinned by a test below).
const REFUSED_HEADER: [u8; 14] = [
    0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // FIN binary, masked, 2^63, mask 0
];

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>>>>;

/// The request payload of one WebSocket, bounded as the module says.
pub struct Inbound<S> {
    /// The connection's payload; dropped once the read path has ended (the HTTP dispatcher then
    /// discards whatever else arrives).
    payload: Option<S>,
    max: usize,
    deadline: Duration,
    /// Input read from the payload and not yet handed on.
    pending: Bytes,
    /// The frame header being read; handed on only once complete and accepted.
    head: Vec<u8>,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Whether the current frame ends its message (FIN on a data frame).
    ends_message: bool,
    /// Declared bytes of the data message under way (its fragments so far).
    message: usize,
    /// This message's share of the budget, held until its last byte has passed.
    share: Option<OwnedSemaphorePermit>,
    /// Waiting for budget with a complete header in `head`.
    acquiring: Option<Acquire>,
    /// The deadline of the message holding or waiting for a share.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Inbound<S> {
    /// Bounds `payload` to messages of at most `max` bytes; a message over [`ALLOWANCE`] must
    /// arrive within `deadline` of its first header.
    pub fn new(payload: S, max: usize, deadline: Duration) -> Self {
        Inbound {
            payload: Some(payload),
            max,
            deadline,
            pending: Bytes::new(),
            head: Vec::with_capacity(14),
            remaining: 0,
            ends_message: false,
            message: 0,
            share: None,
            acquiring: None,
            timer: None,
        }
    }

    /// Ends the read path for good: the input is dropped, the share given back.
    fn end(&mut self) {
        self.payload = None;
        self.pending = Bytes::new();
        self.share = None;
        self.acquiring = None;
        self.timer = None;
    }

    /// The length `head` must reach, once its first two bytes are known.
    fn head_len(&self) -> Option<usize> {
        let second = *self.head.get(1)?;
        let ext = match second & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    /// The payload length `head` declares (complete header).
    fn declared(&self) -> u64 {
        match self.head[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(len)
            }
            n => u64::from(n),
        }
    }

    /// Decides on a complete header. `Ok(true)`: hand it on; `Ok(false)`: wait for budget;
    /// `Err(())`: refuse the message.
    fn admit(&mut self) -> Result<bool, ()> {
        let opcode = self.head[0] & 0x0F;
        let fin = self.head[0] & 0x80 != 0;
        let len = usize::try_from(self.declared()).map_err(|_| ())?;
        if len > self.max {
            return Err(());
        }
        self.remaining = len as u64;
        if opcode >= 8 {
            // Control frames may come between fragments and belong to no message; actix
            // refuses one over 125 bytes, after at most `max` bytes of it.
            self.ends_message = false;
            return Ok(true);
        }
        self.message = if opcode == 0 {
            self.message.saturating_add(len)
        } else {
            len
        };
        if self.message > self.max {
            return Err(());
        }
        self.ends_message = fin;
        if self.message <= ALLOWANCE || self.share.is_some() {
            return Ok(true);
        }
        // The share covers the largest the message may still become, so one is enough.
        let units =
            u32::try_from(self.max.div_ceil(UNIT).min(BUDGET_BYTES / UNIT)).unwrap_or(u32::MAX);
        self.timer = Some(Box::pin(tokio::time::sleep(self.deadline)));
        match Arc::clone(budget()).try_acquire_many_owned(units) {
            Ok(share) => {
                self.share = Some(share);
                Ok(true)
            }
            Err(_) => {
                self.acquiring = Some(Box::pin(Arc::clone(budget()).acquire_many_owned(units)));
                Ok(false)
            }
        }
    }

    /// A frame's last payload byte has passed.
    fn frame_done(&mut self) {
        if self.ends_message {
            self.message = 0;
            self.share = None;
            self.timer = None;
        }
    }
}

/// The process-wide budget, as the `Arc` that tokio's owned permits need.
fn budget() -> &'static Arc<Semaphore> {
    static SHARED: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| Arc::new(Semaphore::new(BUDGET_BYTES / UNIT)))
}

/// What scanning the pending input came to.
enum Scan {
    /// Hand these bytes on.
    Forward(Bytes),
    /// All pending input is consumed (part of a header may be in `head`).
    NeedInput,
    /// A complete header waits for budget.
    Wait,
    /// The message is refused.
    Refuse,
}

impl<S> Inbound<S> {
    fn scan(&mut self) -> Scan {
        let mut i = 0;
        while i < self.pending.len() {
            if self.remaining > 0 {
                let n = (self.pending.len() - i)
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                i += n;
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.frame_done();
                }
                continue;
            }
            if self.head.is_empty() && i > 0 {
                // Hand on the frames before this header first; the header is decided alone.
                return Scan::Forward(self.pending.split_to(i));
            }
            self.head.push(self.pending[i]);
            i += 1;
            if self.head_len() != Some(self.head.len()) {
                continue;
            }
            let _ = self.pending.split_to(i);
            return match self.admit() {
                Ok(true) => self.pass_head(),
                Ok(false) => Scan::Wait,
                Err(()) => Scan::Refuse,
            };
        }
        if i > 0 && self.head.is_empty() {
            return Scan::Forward(std::mem::take(&mut self.pending));
        }
        self.pending = Bytes::new();
        Scan::NeedInput
    }

    /// Hands on the accepted header in `head`.
    fn pass_head(&mut self) -> Scan {
        let head = Bytes::copy_from_slice(&self.head);
        self.head.clear();
        if self.remaining == 0 {
            self.frame_done();
        }
        Scan::Forward(head)
    }
}

impl<S> Stream for Inbound<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.payload.is_none() {
            // Refused or dropped: the decoder has what it needs; the session ends the rest.
            return Poll::Pending;
        }
        if let Some(timer) = this.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                tracing::debug!(
                    declared = this.message,
                    "message not complete within its deadline: dropping"
                );
                this.end();
                return Poll::Ready(None);
            }
        }
        loop {
            if let Some(acquiring) = this.acquiring.as_mut() {
                match acquiring.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(share) => {
                        this.acquiring = None;
                        // The budget is never closed; a closed one would only mean no bound.
                        this.share = share.ok();
                        if let Scan::Forward(head) = this.pass_head() {
                            return Poll::Ready(Some(Ok(head)));
                        }
                    }
                }
            }
            match this.scan() {
                Scan::Forward(bytes) => return Poll::Ready(Some(Ok(bytes))),
                Scan::Wait => continue,
                Scan::Refuse => {
                    // What came before the refused header was handed on already; the refusing
                    // header follows, and nothing after it.
                    this.end();
                    return Poll::Ready(Some(Ok(Bytes::from_static(&REFUSED_HEADER))));
                }
                Scan::NeedInput => {}
            }
            let Some(payload) = this.payload.as_mut() else {
                return Poll::Pending;
            };
            match Pin::new(payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.pending = chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{Parser, ProtocolError};
    use actix_web::web::BytesMut;

    /// actix-http's parser refuses the refusing header with `Overflow` from the header alone:
    /// the session's 1009 depends on it, so a new actix that parses it otherwise fails here.
    #[test]
    fn actix_refuses_the_refusing_header_with_overflow() {
        let mut buf = BytesMut::from(&REFUSED_HEADER[..]);
        let result = Parser::parse(&mut buf, true, 1 << 17);
        assert!(matches!(result, Err(ProtocolError::Overflow)), "{result:?}");
    }
}
