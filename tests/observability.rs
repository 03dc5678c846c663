//! What an operator sees: `/metrics` moving under a scripted workload, JSON logs that carry
//! node, client, user, channel and event_id as fields, and no secret in any log line.
mod common;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The value of one sample line (`name{labels} value`) of a Prometheus exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let mut res = http()
        .get(app.http("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(res.status().as_u16(), 200);
    let body = res.body().limit(1 << 20).await.expect("body");
    String::from_utf8(body.to_vec()).expect("utf-8")
}

/// Connections, subscriptions, publications by source, deliveries, latency, errors, refused
/// connects, slow consumers and disconnects by code all move as the workload runs.
#[actix_rt::test]
async fn metrics_follow_a_scripted_workload() {
    let app = spawn_app_with(&["--client-queue-bytes", "65536"]);
    let before = scrape(&app).await;
    assert_eq!(sample(&before, "hub_connections "), 0.0);
    assert!(before.contains("hub_build_info{version="));

    let mut alice = Client::connect(&app, "alice").await;
    let mut bob = Client::connect(&app, "bob").await;
    alice.subscribe("room").await;
    bob.subscribe("room").await;
    alice.publish("room", json!("by client")).await;
    let (status, _) = api_post(
        &app,
        "/api/publish",
        r#"{"channel":"room","data":"by api"}"#,
    )
    .await;
    assert_eq!(status, 200);
    for c in [&mut alice, &mut bob] {
        c.next_of("message").await;
        c.next_of("message").await;
    }
    let r = alice
        .request(json!({"type": "subscribe", "channel": "user:bob"}))
        .await;
    assert_eq!(r["code"], "forbidden");
    let (status, _) = api_get(&app, "/api/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(
        close_of(&format!("{}?token=garbage", app.ws_url())).await.0,
        1008
    );

    let m = scrape(&app).await;
    assert_eq!(sample(&m, "hub_connections "), 2.0);
    assert_eq!(sample(&m, "hub_subscriptions "), 2.0);
    assert_eq!(sample(&m, "hub_channels "), 1.0);
    assert_eq!(
        sample(&m, "hub_publications_total{source=\"client\"} "),
        1.0
    );
    assert_eq!(sample(&m, "hub_publications_total{source=\"api\"} "), 1.0);
    assert_eq!(sample(&m, "hub_deliveries_total "), 4.0);
    assert_eq!(sample(&m, "hub_delivery_latency_seconds_count "), 2.0);
    assert_eq!(sample(&m, "hub_errors_total{code=\"forbidden\"} "), 1.0);
    assert_eq!(sample(&m, "hub_errors_total{code=\"not_found\"} "), 1.0);
    assert_eq!(sample(&m, "hub_connects_total{result=\"accepted\"} "), 2.0);
    assert_eq!(
        sample(&m, "hub_connects_total{result=\"invalid_token\"} "),
        1.0
    );

    // Bob stops reading and falls behind; then Alice is disconnected through the API.
    alice
        .request(json!({"type": "unsubscribe", "channel": "room"}))
        .await;
    let body = json!({"channel": "room", "data": {"pad": "x".repeat(50_000)}}).to_string();
    let mut slow_closed = false;
    for _ in 0..400 {
        assert_eq!(api_post(&app, "/api/publish", &body).await.0, 200);
        if sample(&scrape(&app).await, "hub_slow_consumer_disconnects_total ") >= 1.0 {
            slow_closed = true;
            break;
        }
    }
    assert!(slow_closed, "bob was never closed as a slow consumer");
    let (status, _) = api_post(&app, "/api/disconnect", r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200);
    drop(bob);
    eventually("both disconnects are counted", || async {
        let m = scrape(&app).await;
        sample(&m, "hub_disconnects_total{code=\"4000\"} ") == 1.0
            && sample(&m, "hub_disconnects_total{code=\"4001\"} ") == 1.0
            && sample(&m, "hub_connections ") == 0.0
            && sample(&m, "hub_subscriptions ") == 0.0
    })
    .await;
}

/// With `HUB_LOG_FORMAT=json`, every line is a JSON object with the node; one `event_id` can
/// be followed from its arrival to its fan-out; no token, secret or API key is ever logged.
#[actix_rt::test]
async fn json_logs_follow_one_event_and_never_leak_secrets() {
    let port = free_port();
    let mut hub = Command::new(env!("CARGO_BIN_EXE_realtime-hub"))
        .env_clear()
        .env("HUB_BIND", format!("127.0.0.1:{port}"))
        .env("HUB_JWT_SECRET", SECRET)
        .env("HUB_API_KEY", API_KEY)
        .env("HUB_NODE_ID", "log-node")
        .env("HUB_LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .env("HUB_STATIC_DIR", "static")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the hub");
    let stderr = hub.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let base = format!("127.0.0.1:{port}");
    eventually("the hub listens", || async {
        std::net::TcpStream::connect(&base).is_ok()
    })
    .await;

    let t = token("tracer");
    let mut ws = open(&format!("ws://{base}/ws?token={t}")).await;
    use futures_util::{SinkExt, StreamExt};
    let _welcome = ws.next().await;
    for frame in [
        json!({"type": "subscribe", "id": 1, "channel": "trace"}),
        json!({"type": "publish", "id": 2, "channel": "trace", "data": 1, "event_id": "evt-trace-1"}),
    ] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            frame.to_string(),
        ))
        .await
        .expect("send");
    }
    let mut got_message = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, ws.next()).await {
        if m.to_text().is_ok_and(|t| t.contains("\"message\"")) {
            got_message = true;
            break;
        }
    }
    assert!(got_message);
    let _ = http()
        .post(format!("http://{base}/api/publish"))
        .insert_header(("X-API-Key", API_KEY))
        .send_body(r#"{"channel":"trace","data":2,"event_id":"evt-trace-2"}"#)
        .await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &hub.id().to_string()])
        .status();
    let _ = hub.wait();
    let lines = lines.join().expect("log reader");

    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!records.is_empty());
    assert!(records
        .iter()
        .all(|r| r["node"] == "log-node" && r["level"].is_string() && r["msg"].is_string()));
    let arrival = records
        .iter()
        .find(|r| r["event_id"] == "evt-trace-1" && r["msg"] == "published by client")
        .expect("the client publication is logged");
    assert_eq!(arrival["channel"], "trace");
    assert_eq!(arrival["user"], "tracer");
    assert!(arrival["client"].is_string());
    let fanout = records
        .iter()
        .find(|r| r["event_id"] == "evt-trace-1" && r["msg"] == "fanned out")
        .expect("the fan-out is logged");
    assert_eq!(fanout["channel"], "trace");
    assert_eq!(fanout["deliveries"], 1);
    assert!(records
        .iter()
        .any(|r| r["event_id"] == "evt-trace-2" && r["msg"] == "published by api"));
    assert!(records
        .iter()
        .any(|r| r["client"].is_string() && r["user"] == "tracer" && r["msg"] == "connected"));
    for line in &lines {
        for secret in [SECRET, API_KEY, t.as_str()] {
            assert!(
                !line.contains(secret),
                "a secret leaked into the log: {line}"
            );
        }
        assert!(
            !line.contains("token=ey"),
            "a token parameter leaked into the log: {line}"
        );
    }
}
