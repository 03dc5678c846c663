//! The client side of RFC 6455 framing, without I/O: server frames parsed out of a reusable
//! read buffer, messages reassembled from fragments, client frames masked, and the opening
//! handshake's request and response check.
//!
//! This replaces tokio-tungstenite on the receive path, where at 2M deliveries/s on one core a
//! subscriber has well under half a microsecond per push: frames are parsed in place in one
//! buffer per connection (a few KiB, allocated and zeroed once), a read typically brings a
//! dozen of them, and a message is handed out as a borrowed slice of that buffer. Nothing is
//! allocated per frame; only a fragmented message is copied (into a per-connection `Vec` that
//! is reused). [`crate::ws`] owns the socket and drives this.
//!
//! What a client must do (RFC 6455 §5) is done here or refused loudly: server frames must be
//! unmasked with no reserved bits (no extension is negotiated), control frames short and
//! unfragmented, continuation frames only inside a fragmented message; all three length forms
//! are read, with a cap on frame and message size. Text is validated as UTF-8, with an ASCII
//! test first (what a push costs).

use std::ops::Range;

/// Largest frame and largest (reassembled) message accepted, like tungstenite's limits before.
pub const MAX_MESSAGE: usize = 4 << 20;

/// The longest frame header: 2 bytes, 8 of extended length, no mask (servers do not mask).
const MAX_HEADER: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why the server's bytes cannot be a WebSocket stream; the connection is failed on any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    ReservedBits(u8),
    UnknownOpcode(u8),
    MaskedServerFrame,
    FragmentedControl,
    ControlTooLong(usize),
    /// A 64-bit length with its top bit set.
    BadLength,
    FrameTooLarge(u64),
    MessageTooLarge(usize),
    /// A continuation frame with no fragmented message open.
    StrayContinuation,
    /// A text or binary frame while a fragmented message was still open.
    UnfinishedMessage,
    InvalidUtf8,
    /// A close payload of one byte, or a code that may not be sent.
    BadClose(Option<u16>),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::ReservedBits(b) => write!(f, "reserved bits set ({b:#x})"),
            ProtocolError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            ProtocolError::MaskedServerFrame => f.write_str("masked frame from the server"),
            ProtocolError::FragmentedControl => f.write_str("fragmented control frame"),
            ProtocolError::ControlTooLong(n) => write!(f, "control frame of {n} bytes"),
            ProtocolError::BadLength => f.write_str("64-bit frame length with the top bit set"),
            ProtocolError::FrameTooLarge(n) => write!(f, "frame of {n} bytes"),
            ProtocolError::MessageTooLarge(n) => write!(f, "message of {n} bytes or more"),
            ProtocolError::StrayContinuation => f.write_str("continuation frame outside a message"),
            ProtocolError::UnfinishedMessage => {
                f.write_str("new message before the fragmented one ended")
            }
            ProtocolError::InvalidUtf8 => f.write_str("text that is not UTF-8"),
            ProtocolError::BadClose(Some(code)) => write!(f, "close code {code}"),
            ProtocolError::BadClose(None) => f.write_str("close frame of one byte"),
        }
    }
}

/// A server frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    /// Bytes of header (2, 4 or 10).
    pub header_len: usize,
    pub payload_len: usize,
}

impl Header {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the header at the front of `buf`: `Ok(None)` when `buf` is too short to hold it.
/// Checks everything that can be checked from the header alone.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits(b0 & 0x70));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(ProtocolError::UnknownOpcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 != 0 {
        return Err(ProtocolError::MaskedServerFrame);
    }
    let (header_len, len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (4, u64::from(u16::from_be_bytes([a, b]))),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(bytes) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(ProtocolError::BadLength);
                }
                (10, len)
            }
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if len > 125 {
            return Err(ProtocolError::ControlTooLong(len as usize));
        }
    }
    if len > MAX_MESSAGE as u64 {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    Ok(Some(Header {
        fin,
        opcode,
        header_len,
        payload_len: len as usize,
    }))
}

/// A complete message or control frame, found by [`FrameBuf::next`]. Its payload is read with
/// [`FrameBuf::payload`] (by position, so that the buffer is not borrowed meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Text(Payload),
    Binary(Payload),
    Ping(Payload),
    Pong,
    /// The close code (none when the frame had no payload) and the reason's position.
    Close(Option<u16>, Payload),
}

/// Where an event's payload is: in the read buffer, or in the reassembled fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Buf(Range<usize>),
    Assembled,
}

/// One connection's receive side: the read buffer and the state of a fragmented message.
///
/// Bytes are read into [`FrameBuf::spare`] and announced with [`FrameBuf::filled`];
/// [`FrameBuf::next`] then hands out complete events one at a time, without copying unless the
/// message was fragmented. The buffer starts at `base` bytes and grows only for a frame that
/// does not fit (up to [`MAX_MESSAGE`]); it shrinks back when it is empty again.
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    base: usize,
    /// Total bytes the frame at `start` needs, once its header is known and it is incomplete.
    need: usize,
    /// The opcode and payload so far of a fragmented message.
    frag_op: Option<Opcode>,
    frag: Vec<u8>,
    /// `frag` was handed out as a whole message: clear it on the next call.
    frag_done: bool,
}

impl FrameBuf {
    pub fn new(base: usize) -> Self {
        let base = base.max(MAX_HEADER + 2);
        Self {
            buf: vec![0; base],
            start: 0,
            end: 0,
            base,
            need: 0,
            frag_op: None,
            frag: Vec::new(),
            frag_done: false,
        }
    }

    /// Bytes received and not yet parsed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops `n` bytes from the front of the unparsed ones (the handshake response's head).
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Free space to read into, after moving unparsed bytes to the front, and growing the
    /// buffer if the frame being read is larger than it (or if `at_least` more bytes are
    /// asked for). Never empty.
    pub fn spare(&mut self, at_least: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * self.base {
                self.buf.truncate(self.base);
                self.buf.shrink_to_fit();
            }
        } else if self.start > 0 {
            // The tail of a partial frame: usually shorter than one push.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = self.need.max(self.end + at_least.max(1));
        if want > self.buf.len() {
            let len = want.next_power_of_two().max(self.buf.len());
            self.buf.resize(len, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into the slice [`FrameBuf::spare`] returned.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete event in the bytes received so far; `Ok(None)` when more bytes are
    /// needed. Text messages have been checked to be UTF-8.
    pub fn next(&mut self) -> Result<Option<Event>, ProtocolError> {
        if self.frag_done {
            self.frag_done = false;
            self.frag.clear();
            if self.frag.capacity() > 4 * self.base {
                self.frag = Vec::new();
            }
        }
        loop {
            let avail = &self.buf[self.start..self.end];
            let Some(h) = parse_header(avail)? else {
                return Ok(None);
            };
            if avail.len() < h.frame_len() {
                self.need = h.frame_len();
                return Ok(None);
            }
            self.need = 0;
            let at = self.start + h.header_len;
            let payload = at..at + h.payload_len;
            self.start += h.frame_len();
            match h.opcode {
                Opcode::Text | Opcode::Binary => {
                    if self.frag_op.is_some() {
                        return Err(ProtocolError::UnfinishedMessage);
                    }
                    if !h.fin {
                        self.frag_op = Some(h.opcode);
                        self.frag.extend_from_slice(&self.buf[payload]);
                        continue;
                    }
                    return Ok(Some(if h.opcode == Opcode::Text {
                        check_utf8(&self.buf[payload.clone()])?;
                        Event::Text(Payload::Buf(payload))
                    } else {
                        Event::Binary(Payload::Buf(payload))
                    }));
                }
                Opcode::Continuation => {
                    let Some(op) = self.frag_op else {
                        return Err(ProtocolError::StrayContinuation);
                    };
                    if self.frag.len() + payload.len() > MAX_MESSAGE {
                        return Err(ProtocolError::MessageTooLarge(
                            self.frag.len() + payload.len(),
                        ));
                    }
                    self.frag.extend_from_slice(&self.buf[payload]);
                    if !h.fin {
                        continue;
                    }
                    self.frag_op = None;
                    self.frag_done = true;
                    return Ok(Some(if op == Opcode::Text {
                        check_utf8(&self.frag)?;
                        Event::Text(Payload::Assembled)
                    } else {
                        Event::Binary(Payload::Assembled)
                    }));
                }
                Opcode::Ping => return Ok(Some(Event::Ping(Payload::Buf(payload)))),
                Opcode::Pong => return Ok(Some(Event::Pong)),
                Opcode::Close => {
                    let body = &self.buf[payload.clone()];
                    return match body.len() {
                        0 => Ok(Some(Event::Close(None, Payload::Buf(payload)))),
                        1 => Err(ProtocolError::BadClose(None)),
                        _ => {
                            let code = u16::from_be_bytes([body[0], body[1]]);
                            if !close_code_allowed(code) {
                                return Err(ProtocolError::BadClose(Some(code)));
                            }
                            check_utf8(&body[2..])?;
                            Ok(Some(Event::Close(
                                Some(code),
                                Payload::Buf(payload.start + 2..payload.end),
                            )))
                        }
                    };
                }
            }
        }
    }

    /// The bytes of an event's payload.
    pub fn payload(&self, p: &Payload) -> &[u8] {
        match p {
            Payload::Buf(range) => &self.buf[range.clone()],
            Payload::Assembled => &self.frag,
        }
    }
}

/// Full UTF-8 validation, with an ASCII test first: pushes are ASCII, and `is_ascii` (a
/// word-at-a-time OR of the bytes) costs a fraction of `from_utf8` on them.
fn check_utf8(bytes: &[u8]) -> Result<(), ProtocolError> {
    if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
        Ok(())
    } else {
        Err(ProtocolError::InvalidUtf8)
    }
}

/// Close codes a peer may send (RFC 6455 §7.4): 1000–1003, 1007–1014, 3000–4999.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends a client frame (FIN set, masked with `mask`) carrying `payload` to `out`.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode.bits());
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A close frame's payload: the code and the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// Mask keys for one connection's frames. RFC 6455 wants them unpredictable to the network
/// (against cache poisoning of intermediaries); a xorshift seeded from std's per-process
/// random hash keys does that for a load generator.
#[derive(Debug)]
pub struct Masks(u64);

impl Masks {
    pub fn new(salt: u64) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        Masks(h.finish() | 1)
    }

    pub fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        ((x >> 16) as u32).to_ne_bytes()
    }
}

/// The opening handshake's request for `path` on `host` with `key`.
pub fn handshake_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Why the server's answer to the opening handshake does not open a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// A status other than 101: the label is e.g. `HTTP 401 Unauthorized`, as tungstenite
    /// reported it.
    Status(u16),
    Malformed(String),
    Missing(&'static str),
    AcceptMismatch,
    /// An extension or subprotocol we did not ask for.
    Unrequested(&'static str),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Status(code) => {
                match tokio_tungstenite::tungstenite::http::StatusCode::from_u16(*code) {
                    Ok(status) => write!(f, "HTTP {status}"),
                    Err(_) => write!(f, "HTTP {code}"),
                }
            }
            HandshakeError::Malformed(e) => write!(f, "malformed response: {e}"),
            HandshakeError::Missing(what) => write!(f, "response without {what}"),
            HandshakeError::AcceptMismatch => f.write_str("Sec-WebSocket-Accept mismatch"),
            HandshakeError::Unrequested(what) => write!(f, "unrequested {what}"),
        }
    }
}

/// Checks the response head at the front of `bytes` against the request's `key`:
/// `Ok(None)` while the head is incomplete, else the head's length (the bytes after it are
/// already WebSocket frames).
pub fn check_handshake_response(bytes: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let is_token = |value: &[u8], token: &str| {
        value
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    match header("Upgrade") {
        Some(v) if v.trim_ascii().eq_ignore_ascii_case(b"websocket") => {}
        _ => return Err(HandshakeError::Missing("Upgrade: websocket")),
    }
    match header("Connection") {
        Some(v) if is_token(v, "upgrade") => {}
        _ => return Err(HandshakeError::Missing("Connection: Upgrade")),
    }
    let accept =
        header("Sec-WebSocket-Accept").ok_or(HandshakeError::Missing("Sec-WebSocket-Accept"))?;
    let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if accept.trim_ascii() != expected.as_bytes() {
        return Err(HandshakeError::AcceptMismatch);
    }
    if header("Sec-WebSocket-Extensions").is_some() {
        return Err(HandshakeError::Unrequested("Sec-WebSocket-Extensions"));
    }
    if header("Sec-WebSocket-Protocol").is_some() {
        return Err(HandshakeError::Unrequested("Sec-WebSocket-Protocol"));
    }
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked) with the given first byte and payload, in the length form
    /// `form` asks for (7, 16 or 64 bits), whatever the payload's size.
    fn server_frame(b0: u8, payload: &[u8], form: u8) -> Vec<u8> {
        let mut f = vec![b0];
        match form {
            7 => f.push(payload.len() as u8),
            16 => {
                f.push(126);
                f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                f.push(127);
                f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn text(payload: &[u8]) -> Vec<u8> {
        server_frame(0x81, payload, if payload.len() < 126 { 7 } else { 16 })
    }

    /// Feeds `bytes` to a fresh buffer in reads of at most `chunk` bytes and collects every
    /// event as (kind, payload).
    fn feed(
        bytes: &[u8],
        base: usize,
        chunk: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, ProtocolError> {
        let mut fb = FrameBuf::new(base);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            while let Some(ev) = fb.next()? {
                let (kind, p) = match &ev {
                    Event::Text(p) => ("text".to_string(), p.clone()),
                    Event::Binary(p) => ("binary".to_string(), p.clone()),
                    Event::Ping(p) => ("ping".to_string(), p.clone()),
                    Event::Pong => ("pong".to_string(), Payload::Buf(0..0)),
                    Event::Close(code, p) => (format!("close {code:?}"), p.clone()),
                };
                out.push((kind, fb.payload(&p).to_vec()));
            }
            if at == bytes.len() {
                return Ok(out);
            }
            let spare = fb.spare(0);
            let n = spare.len().min(chunk).min(bytes.len() - at);
            spare[..n].copy_from_slice(&bytes[at..at + n]);
            fb.filled(n);
            at += n;
        }
    }

    fn events(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(k, p)| (k.to_string(), p.to_vec()))
            .collect()
    }

    #[test]
    fn frames_split_across_reads_at_every_size() {
        let a = br#"{"type":"message","offset":1}"#;
        let b = vec![b'y'; 300]; // 16-bit length
        let mut stream = text(a);
        stream.extend(text(&b));
        stream.extend(server_frame(0x89, b"hi", 7)); // ping
        stream.extend(text(b"{}"));
        let want = events(&[("text", a), ("text", &b), ("ping", b"hi"), ("text", b"{}")]);
        for chunk in 1..=stream.len() {
            for base in [16, 64, 256, 4096] {
                assert_eq!(
                    feed(&stream, base, chunk),
                    Ok(want.clone()),
                    "chunk {chunk} base {base}"
                );
            }
        }
    }

    #[test]
    fn all_three_length_forms_are_read() {
        for (len, form) in [
            (0, 7),
            (125, 7),
            (5, 16),
            (126, 16),
            (65535, 16),
            (7, 64),
            (70000, 64),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let frame = server_frame(0x82, &payload, form);
            let got = feed(&frame, 4096, 4096).expect("parses");
            assert_eq!(
                got,
                vec![("binary".to_string(), payload)],
                "len {len} form {form}"
            );
        }
    }

    #[test]
    fn a_frame_larger_than_the_buffer_grows_it_and_it_shrinks_back() {
        let big = vec![b'z'; 20_000];
        let mut fb = FrameBuf::new(256);
        let frame = text(&big);
        let mut at = 0;
        let mut got = None;
        while got.is_none() {
            let spare = fb.spare(0);
            let n = spare.len().min(frame.len() - at);
            spare[..n].copy_from_slice(&frame[at..at + n]);
            fb.filled(n);
            at += n;
            got = fb.next().expect("valid");
        }
        let Some(Event::Text(p)) = got else {
            panic!("not text: {got:?}")
        };
        assert_eq!(fb.payload(&p), &big[..]);
        assert!(fb.buf.len() >= 20_004);
        assert_eq!(fb.next(), Ok(None));
        fb.spare(0);
        assert_eq!(fb.buf.len(), 256);
    }

    #[test]
    fn fragmented_messages_are_reassembled_around_control_frames() {
        let mut stream = server_frame(0x01, b"{\"a\":", 7); // text, not fin
        stream.extend(server_frame(0x89, b"p", 7)); // ping in between
        stream.extend(server_frame(0x00, b"12", 16)); // continuation, not fin
        stream.extend(server_frame(0x80, b"}", 64)); // last continuation
        stream.extend(server_frame(0x02, b"\x01", 7)); // binary, not fin
        stream.extend(server_frame(0x80, b"\x02", 7));
        stream.extend(text(b"after"));
        let want = events(&[
            ("ping", b"p"),
            ("text", b"{\"a\":12}"),
            ("binary", b"\x01\x02"),
            ("text", b"after"),
        ]);
        for chunk in 1..=stream.len() {
            assert_eq!(feed(&stream, 64, chunk), Ok(want.clone()), "chunk {chunk}");
        }
    }

    #[test]
    fn fragmentation_errors_are_refused() {
        assert_eq!(
            feed(&server_frame(0x80, b"x", 7), 64, 64),
            Err(ProtocolError::StrayContinuation)
        );
        let mut two = server_frame(0x01, b"x", 7);
        two.extend(text(b"y"));
        assert_eq!(feed(&two, 64, 64), Err(ProtocolError::UnfinishedMessage));
        assert_eq!(
            feed(&server_frame(0x09, b"x", 7), 64, 64),
            Err(ProtocolError::FragmentedControl)
        );
        // Invalid UTF-8 split over two fragments is still caught.
        let mut split = server_frame(0x01, &[0xE2, 0x82], 7);
        split.extend(server_frame(0x80, &[0x28], 7));
        assert_eq!(feed(&split, 64, 64), Err(ProtocolError::InvalidUtf8));
        // ... and valid UTF-8 split mid-character is accepted.
        let mut euro = server_frame(0x01, &[0xE2, 0x82], 7);
        euro.extend(server_frame(0x80, &[0xAC], 7));
        assert_eq!(feed(&euro, 64, 64), Ok(events(&[("text", "€".as_bytes())])));
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let mut body = 4000u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"slow consumer");
        assert_eq!(
            feed(&server_frame(0x88, &body, 7), 64, 3),
            Ok(events(&[("close Some(4000)", b"slow consumer")]))
        );
        assert_eq!(
            feed(&server_frame(0x88, b"", 7), 64, 64),
            Ok(events(&[("close None", b"")]))
        );
        assert_eq!(
            feed(&server_frame(0x88, b"\x03", 7), 64, 64),
            Err(ProtocolError::BadClose(None))
        );
        assert_eq!(
            feed(&server_frame(0x88, &1005u16.to_be_bytes(), 7), 64, 64),
            Err(ProtocolError::BadClose(Some(1005)))
        );
        assert_eq!(
            feed(&server_frame(0x88, &[0x03, 0xE8, 0xFF], 7), 64, 64),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn header_violations_are_refused() {
        assert_eq!(parse_header(&[0x81]), Ok(None));
        assert_eq!(parse_header(&[0x81, 126, 0]), Ok(None));
        assert_eq!(parse_header(&[0x82, 127, 0, 0, 0, 0, 0, 0, 1]), Ok(None));
        assert_eq!(
            parse_header(&[0xC1, 0]),
            Err(ProtocolError::ReservedBits(0x40))
        );
        assert_eq!(
            parse_header(&[0x83, 0]),
            Err(ProtocolError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x81, 0x85]),
            Err(ProtocolError::MaskedServerFrame)
        );
        assert_eq!(
            parse_header(&[0x89, 126, 0, 126]),
            Err(ProtocolError::ControlTooLong(126))
        );
        assert_eq!(
            parse_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::BadLength)
        );
        assert_eq!(
            parse_header(&[0x82, 127, 0, 0, 0, 0, 1, 0, 0, 0]),
            Err(ProtocolError::FrameTooLarge(1 << 24))
        );
        assert_eq!(
            feed(&text(&[b'{', 0xFF, b'}']), 64, 64),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn client_frames_are_masked_in_every_length_form() {
        for len in [0usize, 1, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            encode_client_frame(&mut out, Opcode::Text, &payload, mask);
            assert_eq!(out[0], 0x81);
            assert_ne!(out[1] & 0x80, 0, "mask bit");
            let (len_field, at) = match out[1] & 0x7F {
                126 => (usize::from(u16::from_be_bytes([out[2], out[3]])), 4),
                127 => (
                    u64::from_be_bytes(out[2..10].try_into().expect("8")) as usize,
                    10,
                ),
                n => (usize::from(n), 2),
            };
            assert_eq!(len_field, len);
            assert_eq!(&out[at..at + 4], &mask);
            let unmasked: Vec<u8> = out[at + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(unmasked, payload);
        }
        let mut m = Masks::new(7);
        assert_ne!(m.next_mask(), m.next_mask());
    }

    #[test]
    fn handshake_response_is_checked() {
        // RFC 6455 §1.3's example key and accept value.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   Connection: keep-alive, Upgrade\r\n\
                   Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02{}";
        let head = ok.len() - 4;
        assert_eq!(check_handshake_response(ok, key), Ok(Some(head)));
        assert_eq!(check_handshake_response(&ok[..head - 2], key), Ok(None));
        let wrong = String::from_utf8_lossy(ok).replace("s3pPL", "s3pPM");
        assert_eq!(
            check_handshake_response(wrong.as_bytes(), key),
            Err(HandshakeError::AcceptMismatch)
        );
        let no_upgrade = String::from_utf8_lossy(ok).replace("Upgrade: websocket\r\n", "");
        assert_eq!(
            check_handshake_response(no_upgrade.as_bytes(), key),
            Err(HandshakeError::Missing("Upgrade: websocket"))
        );
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        let e = check_handshake_response(refused, key).expect_err("refused");
        assert_eq!(e.to_string(), "HTTP 401 Unauthorized");
        let request = handshake_request("127.0.0.1:8000", "/ws?token=t", key);
        assert!(request.starts_with("GET /ws?token=t HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"));
        assert!(request.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"));
    }
}
