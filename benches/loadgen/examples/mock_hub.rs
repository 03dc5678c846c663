//! A stand-in hub for measuring the load generator itself.
//!
//! Speaks just enough of the wire contract for `hub-loadgen` (a `welcome` frame, `subscribe` →
//! `subscribed`, `POST /api/publish` → `message` pushes with gapless offsets), checks no token
//! and no key, and encodes each push once, copies it into every subscriber's buffer, and lets
//! one flusher write all buffers every `--flush-ms` (one non-blocking write per connection per
//! round, however many frames it holds). So on one core it delivers faster than one core can
//! receive, which gives the load generator's own ceiling: the real hub cannot show it while
//! the hub is the slower side. The batching adds up to `--flush-ms` of latency.
//!
//! `--drop-every K` / `--dup-every K` skip or double the delivery of publication `offset` to
//! subscriber `i` whenever `(offset + i) % K == 0`, and print how many they skipped/doubled:
//! the load generator must report exactly those numbers as lost and duplicated.
//!
//! Run: `cargo run --release -p hub-loadgen --example mock_hub -- --lifetime-s 120`, then point
//! the load generator at `--url ws://127.0.0.1:8100 --http http://127.0.0.1:8101`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use memchr::memmem;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

#[derive(Parser)]
struct Args {
    /// WebSocket listen address.
    #[arg(long, default_value = "127.0.0.1:8100")]
    ws: SocketAddr,
    /// HTTP (publish) listen address.
    #[arg(long, default_value = "127.0.0.1:8101")]
    http: SocketAddr,
    /// Skip delivery (offset, subscriber i) when (offset + i) % K == 0.
    #[arg(long)]
    drop_every: Option<u64>,
    /// Deliver (offset, subscriber i) twice when (offset + i) % K == 0.
    #[arg(long)]
    dup_every: Option<u64>,
    /// Period of the flusher that writes every subscriber's pending frames.
    #[arg(long, default_value_t = 5)]
    flush_ms: u64,
    /// Exit after this many seconds, whatever happens.
    #[arg(long, default_value_t = 300)]
    lifetime_s: u64,
}

/// Everything shared, single-threaded: the mock runs on one current-thread runtime.
#[derive(Default)]
struct State {
    channels: RefCell<HashMap<String, Channel>>,
    drop_every: Option<u64>,
    dup_every: Option<u64>,
    /// Every open connection's outbox, for the flusher.
    outboxes: RefCell<Vec<Rc<Outbox>>>,
    delivered: Cell<u64>,
    dropped: Cell<u64>,
    duplicated: Cell<u64>,
}

#[derive(Default)]
struct Channel {
    offset: u64,
    subscribers: Vec<Rc<Outbox>>,
}

/// A connection's pending bytes and its write half; the flusher drains them.
struct Outbox {
    buf: RefCell<Vec<u8>>,
    writer: OwnedWriteHalf,
    /// Set when the connection is done: the flusher forgets it once its buffer is empty.
    closed: Cell<bool>,
}

impl Outbox {
    fn push(&self, frame: &[u8]) {
        self.buf.borrow_mut().extend_from_slice(frame);
    }

    /// Writes what the socket takes now; false when the connection is broken.
    fn flush(&self) -> bool {
        let mut buf = self.buf.borrow_mut();
        while !buf.is_empty() {
            match self.writer.try_write(&buf) {
                Ok(n) => {
                    buf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

/// Writes every connection's pending frames, every `period`.
async fn flusher(state: Rc<State>, period: Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        state.outboxes.borrow_mut().retain(|o| {
            let ok = o.flush();
            ok && !(o.closed.get() && o.buf.borrow().is_empty())
        });
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let state = Rc::new(State {
        drop_every: args.drop_every.filter(|k| *k > 0),
        dup_every: args.dup_every.filter(|k| *k > 0),
        ..State::default()
    });
    local.block_on(&runtime, async move {
        let ws = TcpListener::bind(args.ws).await?;
        let http = TcpListener::bind(args.http).await?;
        eprintln!("mock hub: ws {} http {}", args.ws, args.http);
        tokio::task::spawn_local(flusher(
            state.clone(),
            Duration::from_millis(args.flush_ms.max(1)),
        ));
        tokio::task::spawn_local(accept(ws, state.clone(), serve_ws));
        tokio::task::spawn_local(accept(http, state.clone(), serve_http));
        let mut last = 0;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        for _ in 0..args.lifetime_s {
            every.tick().await;
            let now = state.delivered.get();
            if now != last {
                eprintln!(
                    "mock hub: {} deliveries/s; total {} delivered, {} dropped, {} duplicated",
                    now - last,
                    now,
                    state.dropped.get(),
                    state.duplicated.get()
                );
                last = now;
            }
        }
        Ok(())
    })
}

async fn accept<F, Fut>(listener: TcpListener, state: Rc<State>, serve: F)
where
    F: Fn(TcpStream, Rc<State>) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<()>> + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(serve(stream, state.clone()));
    }
}

/// Reads an HTTP request head into `buf`; returns its length.
async fn read_head(stream: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Result<Option<usize>> {
    loop {
        if let Some(at) = memmem::find(buf, b"\r\n\r\n") {
            return Ok(Some(at + 4));
        }
        if buf.len() > 64 * 1024 {
            bail!("request head too large");
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A server (unmasked) WebSocket frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xFFFF => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Parses one masked client frame from the front of `buf`: (opcode, payload, consumed).
fn client_frame(buf: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 == 0 {
        bail!("unmasked client frame");
    }
    let (len, mut at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().context("length")?),
            10,
        ),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len)?;
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let payload = buf[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((opcode, payload, at + len)))
}

async fn serve_ws(stream: TcpStream, state: Rc<State>) -> Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = Vec::new();
    let Some(head_len) = read_head(&mut rd, &mut buf).await? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
    buf.drain(..head_len);
    let key = header(&head, "sec-websocket-key").ok_or_else(|| anyhow!("no key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    wr.write_all(response.as_bytes()).await?;

    let outbox = Rc::new(Outbox {
        buf: RefCell::new(Vec::new()),
        writer: wr,
        closed: Cell::new(false),
    });
    let welcome =
        json!({"type":"welcome","client":"mock","user":"mock","node":"mock","expires_at":0});
    outbox.push(&frame(0x1, welcome.to_string().as_bytes()));
    state.outboxes.borrow_mut().push(outbox.clone());

    let mut chunk = vec![0u8; 4096];
    'conn: loop {
        while let Some((opcode, payload, used)) = client_frame(&buf)? {
            buf.drain(..used);
            match opcode {
                0x1 => on_request(&payload, &outbox, &state),
                0x8 => {
                    outbox.push(&frame(0x8, &payload));
                    break 'conn;
                }
                0x9 => outbox.push(&frame(0xA, &payload)),
                _ => {}
            }
        }
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // The flusher sends what is left (a close reply) and then drops the connection.
    outbox.closed.set(true);
    for ch in state.channels.borrow_mut().values_mut() {
        ch.subscribers.retain(|s| !Rc::ptr_eq(s, &outbox));
    }
    Ok(())
}

fn on_request(payload: &[u8], outbox: &Rc<Outbox>, state: &State) {
    let Ok(req) = serde_json::from_slice::<Value>(payload) else {
        return;
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let reply = match (req["type"].as_str(), req["channel"].as_str()) {
        (Some("subscribe"), Some(name)) => {
            let mut channels = state.channels.borrow_mut();
            let ch = channels.entry(name.to_string()).or_default();
            if !ch.subscribers.iter().any(|s| Rc::ptr_eq(s, outbox)) {
                ch.subscribers.push(outbox.clone());
            }
            json!({"type":"subscribed","id":id,"channel":name,"offset":ch.offset,
                   "epoch":"mock","recovered":false,"publications":[]})
        }
        (Some("ping"), _) => json!({"type":"pong","id":id}),
        _ => json!({"type":"error","id":id,"code":"unknown_type","message":"mock"}),
    };
    outbox.push(&frame(0x1, reply.to_string().as_bytes()));
}

async fn serve_http(stream: TcpStream, state: Rc<State>) -> Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let Some(head_len) = read_head(&mut rd, &mut buf).await? else {
            return Ok(());
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + len {
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf.drain(..head_len + len).skip(head_len).collect();
        let (status, answer) = if head.starts_with("POST /api/publish ") {
            match publish(&body, &state) {
                Ok(v) => ("200 OK", v),
                Err(e) => (
                    "400 Bad Request",
                    json!({"error":{"code":"bad_request","message":e.to_string()}}),
                ),
            }
        } else {
            (
                "404 Not Found",
                json!({"error":{"code":"not_found","message":"mock"}}),
            )
        };
        let answer = answer.to_string();
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        wr.write_all(response.as_bytes()).await?;
    }
}

fn publish(body: &[u8], state: &State) -> Result<Value> {
    let req: Value = serde_json::from_slice(body)?;
    let name = req["channel"]
        .as_str()
        .ok_or_else(|| anyhow!("no channel"))?;
    let mut channels = state.channels.borrow_mut();
    let ch = channels.entry(name.to_string()).or_default();
    ch.offset += 1;
    // In the hub's key order (`json!` would sort the keys), so that the load generator's
    // parser takes the same path as against the hub.
    let push = format!(
        r#"{{"type":"message","channel":{},"offset":{},"epoch":"mock","data":{},"ts":0}}"#,
        Value::from(name),
        ch.offset,
        req["data"]
    );
    let bytes = frame(0x1, push.as_bytes());
    ch.subscribers.retain(|s| !s.closed.get());
    for (i, sub) in ch.subscribers.iter().enumerate() {
        let hit = |k: Option<u64>| k.is_some_and(|k| (ch.offset + i as u64) % k == 0);
        if hit(state.drop_every) {
            state.dropped.set(state.dropped.get() + 1);
            continue;
        }
        sub.push(&bytes);
        if hit(state.dup_every) {
            sub.push(&bytes);
            state.duplicated.set(state.duplicated.get() + 1);
        }
        state.delivered.set(state.delivered.get() + 1);
    }
    Ok(json!({"channel":name,"offset":ch.offset,"epoch":"mock","event_id":""}))
}
