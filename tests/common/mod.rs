//! The test harness: the real hub on port 0 in its own actix system, real WebSocket clients
//! (tokio-tungstenite) and a real HTTP client (awc), and token minting.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use realtime_hub::config::ServeArgs;

pub const SECRET: &str = "test-secret-0123456789";
pub const API_KEY: &str = "test-api-key";
/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running hub node; dropping it shuts the node down.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The Redis this node runs on when the suite runs against the Redis engine
    /// (`HUB_TEST_ENGINE=redis`); dropped after the node.
    redis: Option<RedisServer>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestApp {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers the shutdown sequence (as SIGTERM would) and waits for the node to stop.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Starts the shutdown sequence without waiting for it to finish.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node with the test secret and API key and the given extra flags.
pub fn spawn_app_with(extra: &[&str]) -> TestApp {
    let mut args = vec![
        "realtime-hub",
        "--bind",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--workers",
        "2",
        "--shutdown-timeout-s",
        "3",
    ];
    args.extend_from_slice(extra);
    // The same suite runs against the Redis engine when asked to, each node on its own Redis.
    let redis = (std::env::var("HUB_TEST_ENGINE").as_deref() == Ok("redis")
        && !extra.contains(&"--redis-url"))
    .then(RedisServer::start);
    let url = redis.as_ref().map(RedisServer::url);
    if let Some(url) = &url {
        args.extend_from_slice(&["--redis-url", url, "--node-heartbeat-s", "1"]);
    }
    let mut app = spawn_app_args(&args);
    if redis.is_some() {
        // A Redis node is ready once its pub/sub link is up; the single-node suites expect a
        // node that can serve from the first request, as a load balancer would wait for.
        wait_ready_blocking(app.addr);
    }
    app.redis = redis;
    app
}

/// Waits (blocking, up to [`WAIT`]) until the node's `/ready` answers 200.
pub fn wait_ready_blocking(addr: SocketAddr) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        let mut status = [0u8; 12];
        let ok = std::net::TcpStream::connect(addr)
            .and_then(|mut s| {
                s.write_all(b"GET /ready HTTP/1.0\r\n\r\n")?;
                s.read_exact(&mut status)
            })
            .is_ok();
        if ok && status.ends_with(b" 200") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("node at {addr} not ready within {WAIT:?}");
}

pub fn spawn_app() -> TestApp {
    spawn_app_with(&[])
}

/// A node from exactly these arguments (`--bind 127.0.0.1:0` included by the caller).
pub fn spawn_app_args(args: &[&str]) -> TestApp {
    let _ = env_logger::builder().is_test(true).try_init();
    let config = ServeArgs::from_args(args)
        .and_then(|a| a.into_config())
        .expect("valid test config");
    let listener = realtime_hub::bind(config.bind).expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let system = actix_rt::System::new();
        let shutdown = async move {
            let _ = rx.await;
        };
        if let Err(e) = system.block_on(realtime_hub::run(config, listener, shutdown)) {
            eprintln!("test hub stopped with an error: {e}");
        }
    });
    TestApp {
        addr,
        redis: None,
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs any claims with a secret, HS256.
pub fn sign(claims: &Value, secret: &str) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// A valid token for `user` that may subscribe and publish anywhere.
pub fn token(user: &str) -> String {
    sign(
        &json!({"sub": user, "exp": now() + 3600, "channels": ["*"], "publish": ["*"]}),
        SECRET,
    )
}

/// A valid token with the given claims added (overriding the defaults).
pub fn token_with(user: &str, extra: Value) -> String {
    let mut claims = json!({"sub": user, "exp": now() + 3600, "channels": ["*"], "publish": ["*"]});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    sign(&claims, SECRET)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
        let ws = open(&format!("{}?token={}", app.ws_url(), token)).await;
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

/// An HTTP client for the server API.
pub fn http() -> awc::Client {
    awc::Client::builder().timeout(WAIT).finish()
}

/// POSTs JSON text with the API key; returns status and parsed body.
pub async fn api_post(app: &TestApp, path: &str, body: &str) -> (u16, Value) {
    let mut res = http()
        .post(app.http(path))
        .insert_header(("X-API-Key", API_KEY))
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_owned())
        .await
        .expect("http request");
    let status = res.status().as_u16();
    let body = res.body().limit(16 << 20).await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub async fn api_get(app: &TestApp, path: &str) -> (u16, Value) {
    let mut res = http()
        .get(app.http(path))
        .insert_header(("X-API-Key", API_KEY))
        .send()
        .await
        .expect("http request");
    let status = res.status().as_u16();
    let body = res.body().limit(16 << 20).await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

// ---- Helpers for hubs started elsewhere (subprocesses) and for key files ----

/// The path of a file under `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
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

/// A real `redis-server` on a free port, started for one test and killed with it.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer { port, child: None };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn launch(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server (everything in it is lost: it keeps nothing on disk).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A hub node on `redis` with the given node id and extra flags.
pub fn spawn_node(redis: &RedisServer, node: &str, extra: &[&str]) -> TestApp {
    let url = redis.url();
    let mut args = vec![
        "--redis-url",
        url.as_str(),
        "--node-id",
        node,
        "--node-heartbeat-s",
        "1",
    ];
    args.extend_from_slice(extra);
    spawn_app_with(&args)
}

/// Waits until `check` holds, polling; panics with `what` after the wait.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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
