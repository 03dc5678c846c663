//! One simulated user's WebSocket: open it from a chosen local address, await `welcome`,
//! subscribe, and say how it ended.
//!
//! Every connection binds a local source address before connecting (127.0.0.2, 127.0.0.3, ...
//! round-robin): one source address gives at most one ephemeral port range (~28k ports) of
//! connections to one server address, and TIME_WAIT sockets from a previous run eat into it.
//! The WebSocket itself is [`Conn`]: the opening handshake written and checked here, then
//! frames read with [`crate::wire`] from one small reusable buffer per connection
//! (`--read-buffer`, 4 KiB by default) so thousands of clients fit on the load generator's one
//! core and in its cache. tokio-tungstenite, used before, cost more per frame than a subscriber
//! can spend at 2M deliveries/s (see docs/benchmarks.md, "The load generator").
//! Knows nothing about scenarios or accounting.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::wire::{self, Event, FrameBuf, Masks, Opcode, ProtocolError};

/// Opens connections to one or more hub nodes.
pub struct Connector {
    targets: Vec<Target>,
    /// Local addresses to bind, used round-robin by connection index; empty: no binding.
    sources: Vec<Ipv4Addr>,
    read_buffer: usize,
}

/// One hub node's WebSocket endpoint.
struct Target {
    /// `host:port`, for the `Host` header.
    host: String,
    addr: SocketAddr,
}

impl Connector {
    /// Resolves `urls` (`ws://host:port`, `/ws` optional); binds `source_ips` loopback source
    /// addresses from 127.0.0.2 when the targets are IPv4 loopback.
    pub async fn new(urls: &[String], source_ips: u8, read_buffer: usize) -> Result<Self> {
        let mut targets = Vec::new();
        for url in urls {
            let rest = url
                .strip_prefix("ws://")
                .ok_or_else(|| anyhow!("{url}: only ws:// URLs are supported"))?
                .trim_end_matches('/');
            let rest = rest.strip_suffix("/ws").unwrap_or(rest);
            if rest.contains('/') {
                bail!("{url}: give the hub's base URL (ws://host:port)");
            }
            let addr = tokio::net::lookup_host(rest)
                .await
                .with_context(|| format!("resolving {rest}"))?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| anyhow!("{rest} has no IPv4 address"))?;
            targets.push(Target {
                host: rest.to_string(),
                addr,
            });
        }
        if targets.is_empty() {
            bail!("no --url given");
        }
        let all_loopback = targets.iter().all(|t| t.addr.ip().is_loopback());
        let sources = if all_loopback {
            (0..source_ips)
                .map(|k| Ipv4Addr::new(127, 0, 0, 2 + k))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            targets,
            sources,
            read_buffer,
        })
    }

    /// The port of the first target, where the hub process to watch listens.
    pub fn first_port(&self) -> u16 {
        // `new` refuses an empty target list.
        self.targets[0].addr.port()
    }

    pub fn source_addrs(&self) -> Vec<String> {
        self.sources.iter().map(|a| a.to_string()).collect()
    }

    /// Connects user `index` with `token` and waits for the `welcome` frame.
    pub async fn open(
        &self,
        index: usize,
        token: &str,
        rcvbuf: Option<u32>,
    ) -> Result<Session, SetupError> {
        let target = &self.targets[index % self.targets.len()];
        let socket = TcpSocket::new_v4().map_err(SetupError::Tcp)?;
        if !self.sources.is_empty() {
            let source = self.sources[index % self.sources.len()];
            socket
                .bind(SocketAddr::new(IpAddr::V4(source), 0))
                .map_err(SetupError::Tcp)?;
        }
        if let Some(bytes) = rcvbuf {
            // Before connect, so the window scale offered in the SYN matches.
            socket
                .set_recv_buffer_size(bytes)
                .map_err(SetupError::Tcp)?;
        }
        let stream = socket.connect(target.addr).await.map_err(SetupError::Tcp)?;
        // Requests are single small frames; don't let Nagle hold them back.
        stream.set_nodelay(true).map_err(SetupError::Tcp)?;
        let mut conn = Conn::new(stream, self.read_buffer, index as u64);
        conn.handshake(&target.host, &format!("/ws?token={token}"))
            .await?;
        let mut session = Session {
            conn,
            next_id: 1,
            node: None,
        };
        let welcome = session.next_json().await?;
        match welcome.get("type").and_then(Value::as_str) {
            Some("welcome") => {
                session.node = welcome
                    .get("node")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                Ok(session)
            }
            _ => Err(SetupError::Protocol(format!(
                "first frame is not a welcome: {}",
                clip(&welcome.to_string())
            ))),
        }
    }
}

/// An open, welcomed connection.
pub struct Session {
    pub conn: Conn,
    next_id: u64,
    /// The `node` its `welcome` named: which hub node serves this connection.
    pub node: Option<String>,
}

impl Session {
    /// Subscribes to `channel`; returns the `offset` of the `subscribed` reply.
    pub async fn subscribe(&mut self, channel: &str) -> Result<u64, SetupError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"type": "subscribe", "id": id, "channel": channel}).to_string();
        self.conn
            .send_text(request.as_bytes())
            .await
            .map_err(|e| SetupError::Protocol(format!("sending subscribe: {}", e.label())))?;
        loop {
            let frame = self.next_json().await?;
            if frame.get("id").and_then(Value::as_u64) != Some(id) {
                // A push or another reply: not ours to judge here.
                continue;
            }
            return match frame.get("type").and_then(Value::as_str) {
                Some("subscribed") => frame
                    .get("offset")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| SetupError::Protocol("subscribed without an offset".into())),
                Some("error") => Err(SetupError::Refused(
                    frame
                        .get("code")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                )),
                _ => Err(SetupError::Protocol(format!(
                    "unexpected reply {}",
                    clip(&frame.to_string())
                ))),
            };
        }
    }

    /// The next text frame as JSON; control frames are answered and skipped, a close is an
    /// error.
    async fn next_json(&mut self) -> Result<Value, SetupError> {
        match self.conn.next_owned().await {
            Ok(Some(OwnedMsg::Text(text))) => serde_json::from_slice(&text).map_err(|e| {
                SetupError::Protocol(format!(
                    "frame is not JSON ({e}): {}",
                    clip(&String::from_utf8_lossy(&text))
                ))
            }),
            Ok(Some(OwnedMsg::Close { code, reason })) => Err(SetupError::Closed { code, reason }),
            Ok(Some(OwnedMsg::Binary(_))) => {
                Err(SetupError::Protocol("binary frame from the hub".into()))
            }
            Err(e) => Err(SetupError::Protocol(e.label())),
            Ok(None) => Err(SetupError::Eof),
        }
    }
}

/// Why a connection could not be set up.
#[derive(Debug)]
pub enum SetupError {
    Tcp(std::io::Error),
    Handshake(String),
    /// The hub closed the connection with this code and reason (e.g. 1008 `invalid token`).
    Closed {
        code: Option<u16>,
        reason: String,
    },
    Eof,
    /// An `error` reply to our request, with its code.
    Refused(String),
    Protocol(String),
    Timeout(&'static str),
}

impl SetupError {
    /// A short label to group failures by in reports.
    pub fn kind(&self) -> String {
        match self {
            SetupError::Tcp(e) => format!("tcp: {e}"),
            SetupError::Handshake(e) => format!("handshake: {e}"),
            SetupError::Closed { code, reason } => match code {
                Some(code) => format!("closed {code} {reason}"),
                None => "closed without code".into(),
            },
            SetupError::Eof => "eof".into(),
            SetupError::Refused(code) => format!("error reply: {code}"),
            SetupError::Protocol(e) => format!("protocol: {e}"),
            SetupError::Timeout(stage) => format!("timeout: {stage}"),
        }
    }
}

/// How a connection's reading ended.
#[derive(Debug, Clone)]
pub enum End {
    /// Never set up.
    NotConnected,
    /// Still open when the scenario ended it.
    Stopped,
    /// The hub sent a close frame.
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// The TCP stream ended without a close frame.
    Eof,
    Error(String),
}

impl End {
    pub fn from_close(code: Option<u16>, reason: &str) -> Self {
        End::Closed {
            code,
            reason: reason.to_string(),
        }
    }

    pub fn from_error(e: &ConnError) -> Self {
        End::Error(e.label())
    }

    pub fn close_code(&self) -> Option<u16> {
        match self {
            End::Closed { code, .. } => *code,
            _ => None,
        }
    }

    /// A short label to group endings by in reports.
    pub fn label(&self) -> String {
        match self {
            End::NotConnected => "not connected".into(),
            End::Stopped => "open until the end".into(),
            End::Closed {
                code: Some(code),
                reason,
            } => format!("closed {code} {reason}"),
            End::Closed { code: None, .. } => "closed without code".into(),
            End::Eof => "eof without close frame".into(),
            End::Error(e) => format!("error: {e}"),
        }
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(120) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// The longest handshake response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What [`Conn`] hands its reader: data, or the hub's close. Pings are answered and pongs
/// dropped inside.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Close { code: Option<u16>, reason: &'a str },
}

/// [`Msg`], copied out of the read buffer (setup and closing only).
#[derive(Debug, PartialEq, Eq)]
pub enum OwnedMsg {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Close { code: Option<u16>, reason: String },
}

impl Msg<'_> {
    pub fn to_owned_msg(&self) -> OwnedMsg {
        match self {
            Msg::Text(t) => OwnedMsg::Text(t.to_vec()),
            Msg::Binary(b) => OwnedMsg::Binary(b.to_vec()),
            Msg::Close { code, reason } => OwnedMsg::Close {
                code: *code,
                reason: reason.to_string(),
            },
        }
    }
}

/// Why a connection's reading or writing failed.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    Protocol(ProtocolError),
}

impl ConnError {
    /// A short label to group failures by in reports.
    pub fn label(&self) -> String {
        match self {
            ConnError::Io(e) => format!("io: {}", e.kind()),
            ConnError::Protocol(e) => format!("WebSocket protocol error: {e}"),
        }
    }
}

/// One client WebSocket over TCP (RFC 6455): our frames masked, the server's parsed in place
/// from a reusable buffer, pings answered with pongs, a close answered with a close.
pub struct Conn {
    stream: TcpStream,
    frames: FrameBuf,
    /// Frames to send (pongs, close, requests) and how much of them is written.
    out: Vec<u8>,
    out_at: usize,
    masks: Masks,
    close_sent: bool,
    eof: bool,
}

impl Conn {
    fn new(stream: TcpStream, read_buffer: usize, salt: u64) -> Self {
        Self {
            stream,
            frames: FrameBuf::new(read_buffer),
            out: Vec::new(),
            out_at: 0,
            masks: Masks::new(salt),
            close_sent: false,
            eof: false,
        }
    }

    /// The opening handshake (RFC 6455 §4.1). Whatever the hub sent after the response head
    /// (its `welcome`, typically in the same segment) stays in the read buffer.
    async fn handshake(&mut self, host: &str, path: &str) -> Result<(), SetupError> {
        use tokio::io::AsyncWriteExt;
        let io_error = |e: io::Error| SetupError::Handshake(format!("io: {}", e.kind()));
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let request = wire::handshake_request(host, path, &key);
        self.stream
            .write_all(request.as_bytes())
            .await
            .map_err(io_error)?;
        loop {
            match wire::check_handshake_response(self.frames.pending(), &key) {
                Ok(Some(head)) => {
                    self.frames.consume(head);
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => return Err(SetupError::Handshake(e.to_string())),
            }
            if self.frames.pending().len() >= MAX_RESPONSE_HEAD {
                return Err(SetupError::Handshake("response head too large".into()));
            }
            let n = poll_fn(|cx| self.poll_read_some(cx, 1))
                .await
                .map_err(io_error)?;
            if n == 0 {
                return Err(io_error(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// One read into the frame buffer; the bytes read (0: end of stream).
    fn poll_read_some(
        &mut self,
        cx: &mut TaskContext<'_>,
        at_least: usize,
    ) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(self.frames.spare(at_least));
        std::task::ready!(Pin::new(&mut self.stream).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.frames.filled(n);
        Poll::Ready(Ok(n))
    }

    fn queue(&mut self, opcode: Opcode, payload: &[u8]) {
        let mask = self.masks.next_mask();
        wire::encode_client_frame(&mut self.out, opcode, payload, mask);
    }

    /// Writes what is queued.
    fn poll_flush(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.stream).poll_write(cx, &self.out[self.out_at..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        self.queue(Opcode::Text, payload);
        poll_fn(|cx| self.poll_flush(cx))
            .await
            .map_err(ConnError::Io)
    }

    /// Sends a close frame (once).
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), ConnError> {
        if !self.close_sent {
            self.close_sent = true;
            self.queue(Opcode::Close, &wire::close_payload(code, reason));
        }
        poll_fn(|cx| self.poll_flush(cx))
            .await
            .map_err(ConnError::Io)
    }

    /// The next message, reading from the socket only when the buffer holds no complete
    /// one. `Ok(None)`: the stream ended. Control frames are dealt with here: a ping is
    /// answered (queued, and written on this or the next call), a close is answered with a
    /// close carrying the same code, a protocol violation is answered with 1002 (1007 for
    /// bad UTF-8) before it is returned.
    pub fn poll_next(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Option<Msg<'_>>, ConnError>> {
        loop {
            if self.out_at < self.out.len() {
                // Pending: the task is woken when the socket takes more. A failed write
                // leaves the reading to tell how the connection ended.
                if let Poll::Ready(Err(_)) = self.poll_flush(cx) {
                    self.out.clear();
                    self.out_at = 0;
                }
            }
            match self.frames.next() {
                Ok(Some(Event::Text(p))) => {
                    return Poll::Ready(Ok(Some(Msg::Text(self.frames.payload(&p)))))
                }
                Ok(Some(Event::Binary(p))) => {
                    return Poll::Ready(Ok(Some(Msg::Binary(self.frames.payload(&p)))))
                }
                Ok(Some(Event::Ping(p))) => {
                    if !self.close_sent {
                        let mask = self.masks.next_mask();
                        let payload = self.frames.payload(&p);
                        wire::encode_client_frame(&mut self.out, Opcode::Pong, payload, mask);
                    }
                    continue;
                }
                Ok(Some(Event::Pong)) => continue,
                Ok(Some(Event::Close(code, p))) => {
                    if !self.close_sent {
                        self.close_sent = true;
                        let echo = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                        self.queue(Opcode::Close, &echo);
                        let _ = self.poll_flush(cx);
                    }
                    // The reason was checked to be UTF-8.
                    let reason = std::str::from_utf8(self.frames.payload(&p)).unwrap_or("");
                    return Poll::Ready(Ok(Some(Msg::Close { code, reason })));
                }
                Ok(None) => {}
                Err(e) => {
                    if !self.close_sent {
                        self.close_sent = true;
                        let code = if e == ProtocolError::InvalidUtf8 {
                            1007
                        } else {
                            1002
                        };
                        self.queue(Opcode::Close, &wire::close_payload(code, ""));
                        let _ = self.stream.try_write(&self.out[self.out_at..]);
                    }
                    return Poll::Ready(Err(ConnError::Protocol(e)));
                }
            }
            if self.eof {
                return Poll::Ready(Ok(None));
            }
            match std::task::ready!(self.poll_read_some(cx, 0)) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(ConnError::Io(e))),
            }
        }
    }

    /// The next message, copied (for setup and closing, not for the receive path).
    pub async fn next_owned(&mut self) -> Result<Option<OwnedMsg>, ConnError> {
        poll_fn(|cx| {
            self.poll_next(cx)
                .map(|r| r.map(|m| m.map(|m| m.to_owned_msg())))
        })
        .await
    }

    /// Reads (and drops) messages until the hub's close frame, the end of the stream or an
    /// error.
    pub async fn skip_until_close(&mut self) {
        poll_fn(|cx| loop {
            match std::task::ready!(self.poll_next(cx)) {
                Ok(Some(Msg::Close { .. })) | Ok(None) | Err(_) => return Poll::Ready(()),
                Ok(Some(_)) => {}
            }
        })
        .await
    }
}
