//! Slow consumers: a client that does not read is closed with 4000 `slow consumer` once its
//! backlog passes its bound, and the others keep receiving (docs/protocol.md §5.2).
mod common;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Publishes `n` publications of about `size` bytes through the API.
async fn flood(app: &TestApp, channel: &str, n: usize, size: usize) {
    let body = json!({"channel": channel, "data": {"pad": "x".repeat(size)}}).to_string();
    for _ in 0..n {
        let (status, _) = api_post(app, "/api/publish", &body).await;
        assert_eq!(status, 200);
    }
}

/// Publishes `n` publications of about `size` bytes while `reader` reads them, keeping the
/// reader at most `window` publications behind: a client that keeps up, whatever the load on
/// the machine running the test.
async fn flood_with_reader(
    app: &TestApp,
    channel: &str,
    n: usize,
    size: usize,
    reader: &mut Client,
    window: usize,
) {
    let body = json!({"channel": channel, "data": {"pad": "x".repeat(size)}}).to_string();
    let mut read = 0;
    for sent in 1..=n {
        let (status, _) = api_post(app, "/api/publish", &body).await;
        assert_eq!(status, 200);
        while sent - read > window {
            read += 1;
            assert_eq!(reader.next_of("message").await["offset"], read as u64);
        }
    }
    while read < n {
        read += 1;
        assert_eq!(reader.next_of("message").await["offset"], read as u64);
    }
}

/// Reads a client's frames until its close frame; returns the code and how many messages came.
async fn drain_until_close(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> (Option<u16>, usize) {
    let mut messages = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => messages += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (frame.map(|f| u16::from(f.code)), messages)
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) | Err(_) => return (None, messages),
        }
    }
}

/// A subscriber that stops reading is closed with 4000 while a reading one gets everything.
#[actix_rt::test]
async fn slow_consumer_is_closed_and_others_keep_receiving() {
    let app = spawn_app_with(&["--client-queue-bytes", "524288"]);
    let mut slow = Client::connect(&app, "slow").await;
    slow.subscribe("firehose").await;
    let mut fast = Client::connect(&app, "fast").await;
    fast.subscribe("firehose").await;
    const N: usize = 400;
    // 400 × 50 KB = 20 MB: more than the kernel's socket buffers can hide.
    flood_with_reader(&app, "firehose", N, 50_000, &mut fast, 4).await;
    let (code, received) = drain_until_close(&mut slow.ws).await;
    assert_eq!(
        code,
        Some(4000),
        "slow consumer close after {received} messages"
    );
    assert!(
        received < N,
        "the slow client cannot have received everything"
    );
    // The reading client is still served.
    fast.publish("firehose", json!("after")).await;
    assert_eq!(fast.next_of("message").await["data"], "after");
}

/// The slow consumer's close frame carries the contract's reason text.
#[actix_rt::test]
async fn slow_consumer_close_reason_is_exact() {
    let app = spawn_app_with(&["--client-queue-bytes", "65536"]);
    let mut slow = Client::connect(&app, "slow").await;
    slow.subscribe("f").await;
    flood(&app, "f", 300, 50_000).await;
    let mut reason = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), slow.ws.next()).await {
        if let Ok(Message::Close(Some(frame))) = msg {
            reason = Some((u16::from(frame.code), frame.reason.to_string()));
            break;
        }
    }
    assert_eq!(reason, Some((4000, "slow consumer".to_owned())));
}

/// Over the node-wide bound, the most-lagging sessions are closed first even though each is
/// under its own bound.
#[actix_rt::test]
async fn node_bound_closes_the_most_lagging_first() {
    let app = spawn_app_with(&[
        "--client-queue-bytes",
        "8388608",
        "--node-queue-bytes",
        "8388608",
    ]);
    let mut stalled = Vec::new();
    for n in 0..3 {
        let mut c = Client::connect(&app, &format!("stalled{n}")).await;
        c.subscribe("wide").await;
        stalled.push(c);
    }
    let mut fast = Client::connect(&app, "fast").await;
    fast.subscribe("wide").await;
    flood_with_reader(&app, "wide", 500, 50_000, &mut fast, 4).await;
    let mut closed_slow = 0;
    for c in &mut stalled {
        if drain_until_close(&mut c.ws).await.0 == Some(4000) {
            closed_slow += 1;
        }
    }
    assert!(closed_slow >= 1, "no stalled session was closed");
    fast.publish("wide", json!("alive")).await;
    assert_eq!(fast.next_of("message").await["data"], "alive");
}
