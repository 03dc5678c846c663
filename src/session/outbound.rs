//! A session's outbound backlog, measured in bytes, and the response stream that measures it.
//!
//! actix-web-actors buffers outgoing frames without bound, and the HTTP dispatcher polls the
//! response stream only while the socket takes data. So the real backlog of a session is what
//! was handed to it (by the Hub, or written by the session itself) minus what the response
//! stream has yielded to the socket. [`Outbound`] counts both sides; [`Metered`] wraps the
//! stream from `WebsocketContext` to do the yielding side, and to cut a dropped session short
//! with its close frame instead of flushing a backlog nobody will read.
//!
//! The session's text frames do not go through the context's message queue: [`Frames`]
//! encodes each one straight into a buffer that [`Metered`] yields, so a push shared by every
//! subscriber is copied once into each session's buffer and never reference-counted, queued
//! or re-encoded per delivery. The context still writes the control frames (ping, pong, close).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::ws::{OpCode, Parser};
use actix_web::web::{Bytes, BytesMut};
use futures_util::Stream;

use crate::hub::Outbound;
use crate::protocol::Close;

/// The first allocation of a session's write buffer.
const WRITE_CHUNK: usize = 512;

/// The text frames one session has written and its socket has not yet been handed. Shared by
/// the session actor (which writes) and its [`Metered`] stream (which yields); both live on
/// the same worker thread, and the session only runs inside the stream's poll.
#[derive(Clone, Default)]
pub struct Frames(Rc<Cell<BytesMut>>);

impl Frames {
    /// Appends one text frame (server frames are unmasked) with `payload`.
    pub fn text(&self, payload: &[u8]) {
        let mut buf = self.0.take();
        if buf.capacity() == 0 {
            // Room for a few frames at once rather than a regrowth per frame; small, because an
            // idle session's one reply leaves its pages touched in the allocator.
            buf.reserve(WRITE_CHUNK.max(payload.len() + 14));
        }
        Parser::write_message(&mut buf, payload, OpCode::Text, true, false);
        self.0.set(buf);
    }

    /// Everything written so far, as one chunk for the socket. The buffer goes with it, so an
    /// idle session holds no buffer at all.
    fn take(&self) -> Option<Bytes> {
        let buf = self.0.take();
        if buf.is_empty() {
            self.0.set(buf);
            return None;
        }
        Some(buf.freeze())
    }

    /// Forgets what was written (the connection is gone).
    fn clear(&self) {
        self.0.take();
    }
}

/// The response stream of one WebSocket: the session's text frames and the context's own,
/// counted out of the backlog.
pub struct Metered<S, E> {
    inner: Pin<Box<S>>,
    outbound: Arc<Outbound>,
    frames: Frames,
    /// What the context yielded in the poll that also found session frames: it goes out next,
    /// after them (the session wrote its frames before, e.g., the close that follows them).
    next: Option<Option<Result<Bytes, E>>>,
    /// Set once the stream has ended (or the abort close frame was yielded).
    done: bool,
}

impl<S, E> Metered<S, E> {
    pub fn new(inner: S, outbound: Arc<Outbound>, frames: Frames) -> Self {
        Metered {
            inner: Box::pin(inner),
            outbound,
            frames,
            next: None,
            done: false,
        }
    }

    /// Passes on one item of the context's, counting a chunk out of the backlog.
    fn context_item(&mut self, item: Option<Result<Bytes, E>>) -> Poll<Option<Result<Bytes, E>>> {
        match &item {
            Some(Ok(chunk)) => self.outbound.release(chunk.len()),
            Some(Err(_)) | None => {
                // Nothing the session writes after this reaches the socket.
                self.done = true;
                self.frames.clear();
            }
        }
        Poll::Ready(item)
    }
}

// Nothing in `Metered` is pinned in place: the context stream is boxed.
impl<S, E> Unpin for Metered<S, E> {}

impl<S, E> Stream for Metered<S, E>
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
        if let Some(item) = self.next.take() {
            return self.context_item(item);
        }
        // Polling the context runs the session's handlers, which write into `frames`.
        let polled = self.inner.as_mut().poll_next(cx);
        if let Some(chunk) = self.frames.take() {
            if let Poll::Ready(item) = polled {
                self.next = Some(item);
            }
            self.outbound.release(chunk.len());
            return Poll::Ready(Some(Ok(chunk)));
        }
        match polled {
            Poll::Ready(item) => self.context_item(item),
            Poll::Pending => Poll::Pending,
        }
    }
}
