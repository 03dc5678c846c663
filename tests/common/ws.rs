//! Real WebSocket clients (tokio-tungstenite) speaking the hub's JSON protocol, to any hub:
//! in process or a subprocess.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{token, TestApp, WAIT};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client speaking the hub's JSON protocol.
pub struct Client {
    pub ws: Ws,
    next_id: u64,
    /// Frames received while waiting for something else, in order.
    pending: std::collections::VecDeque<Value>,
    pub welcome: Value,
}

fn ws_config() -> WebSocketConfig {
    // Small read buffer: the default 128 KiB one is zero-filled on every read.
    WebSocketConfig::default().read_buffer_size(4096)
}

/// Opens a WebSocket to `url` without waiting for any frame.
pub async fn open(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false)
        .await
        .expect("websocket upgrade");
    ws
}

/// Opens a WebSocket with extra request headers.
pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("name"),
            v.parse().expect("value"),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), false)
        .await
        .expect("websocket upgrade");
    ws
}

/// Reads until a close frame (or the end) and returns its code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("close within the wait");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection error instead of a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

impl Client {
    /// Connects as `user` with a valid token and waits for `welcome`.
    pub async fn connect(app: &TestApp, user: &str) -> Client {
        Client::connect_token(app, &token(user)).await
    }

    pub async fn connect_token(app: &TestApp, token: &str) -> Client {
        Client::connect_url(&app.ws_url(), token).await
    }

    pub fn client_id(&self) -> String {
        self.welcome["client"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next JSON frame from the server (held frames first).
    pub async fn next_frame(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame within the wait");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str()).expect("server frames are JSON")
                }
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a request with a fresh id and returns the reply with that id; other frames are
    /// held for `next_frame`.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(frame).await;
        self.reply_to(id).await
    }

    /// Waits for the reply carrying `id`, holding other frames.
    pub async fn reply_to(&mut self, id: u64) -> Value {
        if let Some(pos) = self.pending.iter().position(|f| f["id"] == json!(id)) {
            return self.pending.remove(pos).unwrap_or_default();
        }
        loop {
            let f = self.read_frame().await;
            if f["id"] == json!(id) {
                return f;
            }
            self.pending.push_back(f);
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(r["type"], "subscribed", "subscribe reply: {r}");
        r
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        let r = self
            .request(json!({"type": "publish", "channel": channel, "data": data}))
            .await;
        assert_eq!(r["type"], "published", "publish reply: {r}");
        r
    }

    /// The next push of the given type (held frames first; others are skipped).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let f = self.next_frame().await;
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// Asserts that nothing arrives for `dur` (used only to show the absence of a push).
    pub async fn expect_silence(&mut self, dur: Duration) {
        assert!(self.pending.is_empty(), "held frames: {:?}", self.pending);
        match tokio::time::timeout(dur, self.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Ping(_)))) | Ok(Some(Ok(Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }

    pub async fn expect_close(&mut self) -> (u16, String) {
        expect_close(&mut self.ws).await
    }

    /// The next raw WebSocket message, whatever it is.
    pub async fn ws_next(
        &mut self,
    ) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
        self.ws.next().await
    }
}

/// The close code a given url's connection gets right after the upgrade.
pub async fn close_of(url: &str) -> (u16, String) {
    let mut ws = open(url).await;
    expect_close(&mut ws).await
}

pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

impl Client {
    /// Connects to the hub at `ws_url` (e.g. a hub running as a subprocess) with `token` and
    /// waits for `welcome`.
    pub async fn connect_url(ws_url: &str, token: &str) -> Client {
        let ws = open(&format!("{ws_url}?token={token}")).await;
        let mut c = Client {
            ws,
            next_id: 1,
            pending: Default::default(),
            welcome: Value::Null,
        };
        let welcome = c.next_frame().await;
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        c.welcome = welcome;
        c
    }
}

// ---- Helpers for waiting on pushes with a deadline of the test's choosing ----

impl Client {
    /// The next frame of type `kind` that arrives within `within` (held frames first; frames
    /// of other types are skipped), or `None` when none came in time. Unlike `next_of`, the
    /// wait is the caller's, so a test can bound an event by its contract ("within four
    /// heartbeats").
    pub async fn next_of_within(&mut self, kind: &str, within: Duration) -> Option<Value> {
        while let Some(f) = self.pending.pop_front() {
            if f["type"] == kind {
                return Some(f);
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    let f: Value =
                        serde_json::from_str(t.as_str()).expect("server frames are JSON");
                    if f["type"] == kind {
                        return Some(f);
                    }
                }
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
                other => panic!("waiting for a `{kind}` frame, got {other:?}"),
            }
        }
    }
}

/// The offsets of a list of `message` frames.
pub fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["offset"].as_u64())
        .collect()
}
