//! The read path under oversized and half-sent frames: `HUB_MAX_FRAME_BYTES` bounds the hub's
//! memory, not only what it accepts; the server closes TCP first and promptly; the disconnect
//! metric keeps to its fixed labels.
//!
//! The hub runs in this test process and memory is read from `/proc/self/status`, so the tests
//! of this binary run one at a time (see [`serial`]) and nothing else shares the figure.
mod common;
use common::*;

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The tests of this binary one at a time: each measures the process's memory.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::const_new(());
    SERIAL.lock().await
}

/// The process's resident memory in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kib * 1024
}

const MIB: u64 = 1 << 20;
/// The bound of "at once" on a loaded 2-core machine.
const PROMPT: Duration = Duration::from_millis(100);

/// A WebSocket spoken by hand, so that a test can send what no well-behaved library would.
struct Raw {
    r: OwnedReadHalf,
    /// Taken by a test that streams from another task.
    w: Option<OwnedWriteHalf>,
    /// Bytes read past the last parsed server frame.
    buf: Vec<u8>,
}

/// A masked client frame header (mask of zeros, so the payload goes as written).
fn header(first: u8, len: u64) -> Vec<u8> {
    let mut h = vec![first];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=65_535 => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// What the server sent, as far as these tests care.
#[derive(Debug, PartialEq)]
enum Server {
    Text(String),
    Close(u16),
    Other,
    /// The TCP connection ended (or was reset).
    End,
}

impl Raw {
    /// Completes the upgrade with `user`'s valid token and reads the `welcome`.
    async fn connect(app: &TestApp, user: &str) -> Raw {
        let mut tcp = TcpStream::connect(app.addr).await.expect("connect");
        let request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            token(user),
            app.addr
        );
        tcp.write_all(request.as_bytes()).await.expect("request");
        let (r, w) = tcp.into_split();
        let mut raw = Raw {
            r,
            w: Some(w),
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill(WAIT).await, "upgrade answered");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade: {head}");
        raw.buf.drain(..end);
        match raw.next(WAIT).await {
            Server::Text(t) => assert!(t.contains("\"welcome\""), "first frame: {t}"),
            other => panic!("no welcome: {other:?}"),
        }
        raw
    }

    /// Reads more into `buf`; `false` at the end of the connection.
    async fn fill(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(within, self.r.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing from the server within {within:?}"),
        }
    }

    /// The next server frame (servers do not mask).
    async fn next(&mut self, within: Duration) -> Server {
        let deadline = Instant::now() + within;
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut l = [0u8; 8];
                        l.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(l) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if at > 0 && self.buf.len() >= at + len {
                    let opcode = self.buf[0] & 0x0F;
                    let payload: Vec<u8> = self.buf.drain(..at + len).skip(at).collect();
                    return match opcode {
                        1 => Server::Text(String::from_utf8_lossy(&payload).into()),
                        8 if payload.len() >= 2 => {
                            Server::Close(u16::from_be_bytes([payload[0], payload[1]]))
                        }
                        _ => Server::Other,
                    };
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.fill(left).await {
                return Server::End;
            }
        }
    }

    /// The close frame's code, skipping other frames, within `within`.
    async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        loop {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Server::Close(code) => return Some(code),
                Server::End => return None,
                _ => continue,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let w = self.w.as_mut().expect("write half");
        w.write_all(bytes).await.expect("send");
    }
}

/// Streams `total` bytes of payload on `tcp`'s write half until the server stops taking them.
async fn stream_payload(mut w: OwnedWriteHalf, total: u64) -> u64 {
    let chunk = vec![b'x'; 256 << 10];
    let mut sent = 0;
    while sent < total {
        match tokio::time::timeout(WAIT, w.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len() as u64,
            _ => break,
        }
    }
    sent
}

/// A raw client that sent `header` and streams up to `total` payload bytes behind it from
/// another task.
struct Attack {
    raw: Raw,
    sent_at: Instant,
    writer: tokio::task::JoinHandle<u64>,
}

impl Attack {
    async fn start(app: &TestApp, user: &str, prelude: &[u8], total: u64) -> Attack {
        let mut raw = Raw::connect(app, user).await;
        raw.send(prelude).await;
        let sent_at = Instant::now();
        let w = raw.w.take().expect("write half");
        Attack {
            raw,
            sent_at,
            writer: tokio::spawn(stream_payload(w, total)),
        }
    }

    /// The server's close code and how long after the header it came.
    async fn close(&mut self) -> (Option<u16>, Duration) {
        let code = self.raw.close_code(WAIT).await;
        (code, self.sent_at.elapsed())
    }
}

const TWO_GIB: u64 = 2 << 30;
/// What each attacker streams behind its header at most.
const STREAMED: u64 = 1 << 30;

/// Text frame, FIN set.
const TEXT: u8 = 0x81;

/// A header declaring 2 GiB is refused with 1009 at once, and the payload streamed behind it
/// is never buffered.
#[actix_rt::test]
async fn a_frame_declaring_2_gib_is_closed_with_1009_at_once_without_buffering() {
    let _serial = serial().await;
    let app = spawn_app();
    let before = rss();
    let mut attack = Attack::start(&app, "mallory", &header(TEXT, TWO_GIB), STREAMED).await;
    let (code, after) = attack.close().await;
    assert_eq!(code, Some(1009));
    assert!(after < PROMPT, "1009 came {after:?} after the header");
    let sent = attack.writer.await.expect("writer");
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 10 * MIB,
        "RSS grew {} MiB ({} MiB streamed)",
        grown / MIB,
        sent / MIB
    );
}

/// Fifty such attackers at once leave the hub's memory bounded, and a normal client meanwhile
/// subscribes and receives a publication as usual.
#[actix_rt::test]
async fn fifty_oversized_frames_at_once_leave_memory_bounded_and_others_served() {
    let _serial = serial().await;
    let app = spawn_app();
    let before = rss();
    let mut attacks = Vec::new();
    for i in 0..50 {
        let user = format!("mallory{i}");
        attacks.push(Attack::start(&app, &user, &header(TEXT, TWO_GIB), STREAMED).await);
    }
    let mut alice = Client::connect(&app, "alice").await;
    alice.subscribe("chat:lobby").await;
    let mut bob = Client::connect(&app, "bob").await;
    let published = bob.publish("chat:lobby", json!({"text": "hi"})).await;
    assert_eq!(published["type"], "published", "{published}");
    let message = alice.next_of("message").await;
    assert_eq!(message["data"]["text"], "hi");
    for attack in &mut attacks {
        assert_eq!(attack.close().await.0, Some(1009));
    }
    for attack in attacks {
        attack.writer.await.expect("writer");
    }
    let grown = rss().saturating_sub(before);
    assert!(grown < 20 * MIB, "RSS grew {} MiB", grown / MIB);
}

/// A fragmented message is refused with 1009 as soon as a fragment's header takes it past
/// `HUB_MAX_FRAME_BYTES`, before that fragment's payload is buffered.
#[actix_rt::test]
async fn a_fragmented_message_over_the_limit_is_closed_with_1009_at_once() {
    let _serial = serial().await;
    let app = spawn_app();
    let before = rss();
    // A first fragment of 100 KiB (under the 128 KiB limit), then a continuation declaring
    // 2 GiB, whose payload is then streamed.
    let mut prelude = header(0x01, 100 << 10);
    prelude.extend(std::iter::repeat_n(b'x', 100 << 10));
    prelude.extend(header(0x80, TWO_GIB));
    let mut attack = Attack::start(&app, "mallory", &prelude, STREAMED).await;
    let (code, after) = attack.close().await;
    assert_eq!(code, Some(1009));
    assert!(after < PROMPT, "1009 came {after:?} after the header");
    attack.writer.await.expect("writer");
    let grown = rss().saturating_sub(before);
    assert!(grown < 10 * MIB, "RSS grew {} MiB", grown / MIB);
}

/// A close frame from the client with `code` and no reason.
fn close_frame(code: u16) -> Vec<u8> {
    let mut f = header(0x88, 2);
    f.extend_from_slice(&code.to_be_bytes());
    f
}

/// After the close handshake the server closes the TCP connection first, and at once.
#[actix_rt::test]
async fn after_the_close_handshake_the_server_closes_tcp_at_once() {
    let _serial = serial().await;
    let app = spawn_app();
    let mut raw = Raw::connect(&app, "alice").await;
    raw.send(&close_frame(1000)).await;
    let sent_at = Instant::now();
    assert_eq!(raw.close_code(WAIT).await, Some(1000));
    assert_eq!(raw.next(WAIT).await, Server::End);
    let after = sent_at.elapsed();
    assert!(
        after < PROMPT,
        "TCP closed {after:?} after the client's close"
    );
}

/// Clients closing with codes of their own (1011, 4000, 3999, 4999) all count under
/// `code="client"`: no server-fault or slow-consumer figure moves, no new label appears.
#[actix_rt::test]
async fn client_close_codes_count_under_one_label() {
    let _serial = serial().await;
    let app = spawn_app();
    let before = scrape(&app).await;
    let labels = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("hub_disconnects_total{"))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
            .collect()
    };
    assert!(
        before.contains("hub_disconnects_total{code=\"1009\"} 0"),
        "{before}"
    );
    for (i, code) in [1011u16, 4000, 3999, 4999].into_iter().enumerate() {
        let mut raw = Raw::connect(&app, &format!("c{i}")).await;
        raw.send(&close_frame(code)).await;
        assert_eq!(raw.close_code(WAIT).await, Some(code));
    }
    eventually("the four closes are counted", || async {
        scrape(&app)
            .await
            .contains("hub_disconnects_total{code=\"client\"} 4\n")
    })
    .await;
    let after = scrape(&app).await;
    assert_eq!(labels(&before), labels(&after), "{after}");
    for code in ["1011", "4000"] {
        let line = format!("hub_disconnects_total{{code=\"{code}\"}} 0\n");
        assert!(after.contains(&line), "{line} missing from:\n{after}");
    }
}
