//! One simulated user's WebSocket: open it from a chosen local address, await `welcome`,
//! subscribe, and say how it ended.
//!
//! Every connection binds a local source address before connecting (127.0.0.2, 127.0.0.3, ...
//! round-robin): one source address gives at most one ephemeral port range (~28k ports) of
//! connections to one server address, and TIME_WAIT sockets from a previous run eat into it.
//! Buffers are kept small (`read_buffer_size` 4 KiB by default instead of tungstenite's
//! zero-filled 128 KiB) so thousands of clients fit on the load generator's one core and in
//! its cache.
//! Knows nothing about scenarios or accounting.

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Opens connections to one or more hub nodes.
pub struct Connector {
    targets: Vec<Target>,
    /// Local addresses to bind, used round-robin by connection index; empty: no binding.
    sources: Vec<Ipv4Addr>,
    config: WebSocketConfig,
}

/// One hub node's WebSocket endpoint.
struct Target {
    /// `ws://host:port/ws?token=`, to which the token is appended.
    url_prefix: String,
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
                url_prefix: format!("ws://{rest}/ws?token="),
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
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            // Clients write one small request at a time: write it at once, buffer nothing.
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024)
            .max_message_size(Some(4 << 20))
            .max_frame_size(Some(4 << 20));
        Ok(Self {
            targets,
            sources,
            config,
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
        let url = format!("{}{token}", target.url_prefix);
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(self.config))
                .await
                .map_err(|e| SetupError::Handshake(short_ws_error(&e)))?;
        let mut session = Session {
            ws,
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
    pub ws: Ws,
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
        self.ws.send(Message::text(request)).await.map_err(|e| {
            SetupError::Protocol(format!("sending subscribe: {}", short_ws_error(&e)))
        })?;
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

    /// The next text frame as JSON; control frames are skipped, a close is an error.
    async fn next_json(&mut self) -> Result<Value, SetupError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str()).map_err(|e| {
                        SetupError::Protocol(format!("frame is not JSON ({e}): {}", clip(&text)))
                    })
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = close_parts(frame.as_ref());
                    return Err(SetupError::Closed { code, reason });
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(SetupError::Protocol("binary frame from the hub".into()))
                }
                Some(Ok(_)) => {} // ping (tungstenite queues the pong), pong
                Some(Err(e)) => return Err(SetupError::Protocol(short_ws_error(&e))),
                None => return Err(SetupError::Eof),
            }
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
    pub fn from_close(frame: Option<&CloseFrame>) -> Self {
        let (code, reason) = close_parts(frame);
        End::Closed { code, reason }
    }

    pub fn from_error(e: &WsError) -> Self {
        End::Error(short_ws_error(e))
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

fn close_parts(frame: Option<&CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_string()),
        None => (None, String::new()),
    }
}

/// tungstenite errors, shortened to something that groups well (no per-connection detail).
fn short_ws_error(e: &WsError) -> String {
    match e {
        WsError::Http(response) => format!("HTTP {}", response.status()),
        WsError::Io(io) => format!("io: {}", io.kind()),
        other => clip(&other.to_string()).to_string(),
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(120) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}
