//! The test harness, the one place each piece of it is written: the real hub on port 0 in its
//! own actix system (here), the real binary as a subprocess ([`process`]), a real
//! `redis-server` per test and connections to it ([`redis_server`]), real WebSocket clients
//! ([`ws`]), a real HTTP client (awc), and token minting.
#![allow(dead_code)]

mod process;
mod receiver;
mod redis_server;
mod ws;

#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use receiver::*;
#[allow(unused_imports)]
pub use redis_server::*;
#[allow(unused_imports)]
pub use ws::*;

use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

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

/// The arguments of every in-process node: port 0, the test API key, two workers, a 3 s
/// shutdown timeout, then `auth` (how it verifies tokens) and `extra`.
pub fn node_args<'a>(auth: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "realtime-hub",
        "--bind",
        "127.0.0.1:0",
        "--api-key",
        API_KEY,
        "--workers",
        "2",
        "--shutdown-timeout-s",
        "3",
    ];
    args.extend_from_slice(auth);
    args.extend_from_slice(extra);
    args
}

/// A memory-engine node with the test secret and API key and `extra` flags, whatever
/// `HUB_TEST_ENGINE` says.
pub fn spawn_memory_app(extra: &[&str]) -> TestApp {
    spawn_app_args(&node_args(&["--jwt-secret", SECRET], extra))
}

/// A node with the test secret and API key and the given extra flags.
pub fn spawn_app_with(extra: &[&str]) -> TestApp {
    let mut args = node_args(&["--jwt-secret", SECRET], extra);
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
    realtime_hub::logging::init_for_tests();
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

/// An HTTP client for the server API.
pub fn http() -> awc::Client {
    awc::Client::builder().timeout(WAIT).finish()
}

/// A hub node the test can reach over HTTP and WebSocket, wherever it runs (in process or a
/// subprocess).
pub trait Node {
    /// `http://host:port` of the node.
    fn base(&self) -> String;

    /// The node's WebSocket endpoint.
    fn ws(&self) -> String {
        format!("{}/ws", self.base().replacen("http://", "ws://", 1))
    }
}

impl Node for TestApp {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The node's `/metrics` page (Prometheus text), which must answer 200.
pub async fn scrape(node: &impl Node) -> String {
    let mut res = http()
        .get(format!("{}/metrics", node.base()))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(res.status().as_u16(), 200);
    let body = res.body().limit(4 << 20).await.expect("body");
    String::from_utf8(body.to_vec()).expect("utf-8")
}

/// POSTs JSON text with the API key; returns status and parsed body (`Null` if not JSON).
pub async fn api_post(node: &impl Node, path: &str, body: &str) -> (u16, Value) {
    post_url(&format!("{}{path}", node.base()), Some(API_KEY), body).await
}

/// GETs with the API key; returns status and parsed body (`Null` if not JSON).
pub async fn api_get(node: &impl Node, path: &str) -> (u16, Value) {
    get_url(&format!("{}{path}", node.base()), Some(API_KEY)).await
}

/// POSTs JSON text to `url`, with `key` as `X-API-Key` if given.
pub async fn post_url(url: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = http()
        .post(url)
        .insert_header(("Content-Type", "application/json"));
    if let Some(key) = key {
        req = req.insert_header(("X-API-Key", key));
    }
    let mut res = req.send_body(body.to_owned()).await.expect("http request");
    let status = res.status().as_u16();
    let body = res.body().limit(16 << 20).await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// GETs `url`, with `key` as `X-API-Key` if given.
pub async fn get_url(url: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = http().get(url);
    if let Some(key) = key {
        req = req.insert_header(("X-API-Key", key));
    }
    let mut res = req.send().await.expect("http request");
    let status = res.status().as_u16();
    let body = res.body().limit(16 << 20).await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The path of a file under `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
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

/// Polls `check` every 50 ms until it holds (`true`) or `within` has passed (`false`).
pub async fn poll_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Node `a` on `redis` ingesting `stream` (with `extra` flags), a connection to its Redis,
/// and a client subscribed to `channel` on it.
pub async fn ingesting_node(
    redis: &RedisServer,
    stream: &str,
    channel: &str,
    extra: &[&str],
) -> (TestApp, redis::Connection, Client) {
    let mut flags = vec!["--streams", stream];
    flags.extend_from_slice(extra);
    let node = spawn_node(redis, "a", &flags);
    let conn = redis_conn(&redis.url());
    let mut c = Client::connect(&node, "u").await;
    c.subscribe(channel).await;
    (node, conn, c)
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
