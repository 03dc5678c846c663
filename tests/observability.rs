//! What an operator sees: `/metrics` moving under a scripted workload (memory and Redis nodes,
//! Streams ingestion included), JSON logs that carry node, client, user, channel and event_id as
//! fields, and no secret or token in any log line, at any level, in either format.
mod common;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The value of one sample line (`name{labels} value`) of a Prometheus exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
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

/// A client whose TCP connection ends without a close frame (a killed tab, a lost network) is
/// counted as 1006, not as a protocol error of its own.
#[actix_rt::test]
async fn a_connection_dropped_without_a_close_frame_counts_as_1006() {
    let app = spawn_app();
    let mut alice = Client::connect(&app, "alice").await;
    alice.subscribe("room").await;
    drop(alice);
    eventually("the drop is counted as 1006", || async {
        let m = scrape(&app).await;
        sample(&m, "hub_disconnects_total{code=\"1006\"} ") == 1.0
            && sample(&m, "hub_connections ") == 0.0
    })
    .await;
    let m = scrape(&app).await;
    assert_eq!(sample(&m, "hub_disconnects_total{code=\"1002\"} "), 0.0);
}

/// A node without Redis shows no Redis metrics: the "Redis down" alert cannot fire on it.
#[actix_rt::test]
async fn a_node_without_redis_shows_no_redis_metrics() {
    let app = spawn_memory_app(&[]);
    let m = scrape(&app).await;
    assert!(m.contains("hub_connections "), "{m}");
    assert!(!m.contains("hub_redis_"), "{m}");
}

/// Stream entries move `hub_stream_entries_total` by result (acked, retried, dead), each new
/// publication from a stream moves `hub_publications_total{source="stream"}` (a duplicate
/// `event_id` does not), and the stream's pending and lag are shown.
#[actix_rt::test]
async fn stream_ingestion_moves_the_stream_metrics() {
    let redis = RedisServer::start();
    let stream = "o1:events";
    let (node, mut conn, mut c) = ingesting_node(
        &redis,
        stream,
        "o:c",
        &[
            "--stream-max-deliveries",
            "100",
            "--stream-claim-idle-ms",
            "1000",
        ],
    )
    .await;
    let series = |result: &str| {
        format!("hub_stream_entries_total{{stream=\"{stream}\",result=\"{result}\"}} ")
    };

    xadd(
        &mut conn,
        stream,
        &[("channel", "o:c"), ("data", r#"{"n":1}"#)],
    );
    xadd(&mut conn, stream, &[("data", r#"{"n":"no channel"}"#)]);
    assert_eq!(c.next_of("message").await["data"]["n"], 1);
    break_publish(&mut conn, "o:c", "ev-2");
    xadd(
        &mut conn,
        stream,
        &[
            ("channel", "o:c"),
            ("event_id", "ev-2"),
            ("data", r#"{"n":2}"#),
        ],
    );
    eventually("the failing publish is counted as retried", || {
        let node = &node;
        let retried = series("retried");
        async move { sample(&scrape(node).await, &retried) >= 1.0 }
    })
    .await;
    repair(&mut conn, "o:c", "ev-2");
    assert_eq!(c.next_of("message").await["data"]["n"], 2);
    // The same event again: acknowledged as a duplicate, not a new publication.
    xadd(
        &mut conn,
        stream,
        &[
            ("channel", "o:c"),
            ("event_id", "ev-2"),
            ("data", r#"{"n":2}"#),
        ],
    );

    eventually("every entry is counted", || {
        let node = &node;
        let (acked, dead) = (series("acked"), series("dead"));
        async move {
            let m = scrape(node).await;
            sample(&m, &acked) == 3.0
                && sample(&m, &dead) == 1.0
                && sample(&m, "hub_publications_total{source=\"stream\"} ") == 2.0
                && m.contains(&format!("hub_stream_pending{{stream=\"{stream}\"}} 0"))
                && m.contains(&format!("hub_stream_lag{{stream=\"{stream}\"}} 0"))
        }
    })
    .await;
    let m = scrape(&node).await;
    assert_eq!(sample(&m, "hub_publications_total{source=\"api\"} "), 0.0);
    assert_eq!(sample(&m, "hub_deliveries_total "), 2.0);
}

/// `hub_redis_up` is 1 while Redis answers and 0 while it is stopped; once it is back, the
/// link is re-established and `hub_redis_reconnects_total` has moved.
#[actix_rt::test]
async fn the_redis_metrics_follow_the_link_to_redis() {
    let mut redis = RedisServer::start();
    let node = spawn_node(&redis, "a", &["--streams", ""]);
    // By the sample, not by `contains`: the metric's HELP text reads "1 while Redis is
    // reachable", so "hub_redis_up 1" is in the page before the link is up.
    eventually("redis is seen up", || {
        let node = &node;
        async move { sample(&scrape(node).await, "hub_redis_up ") == 1.0 }
    })
    .await;
    assert_eq!(
        sample(&scrape(&node).await, "hub_redis_reconnects_total "),
        0.0
    );

    redis.kill();
    eventually("redis is seen down", || {
        let node = &node;
        async move { sample(&scrape(node).await, "hub_redis_up ") == 0.0 }
    })
    .await;
    redis.restart();
    eventually("redis is seen up again, after a reconnect", || {
        let node = &node;
        async move {
            let m = scrape(node).await;
            sample(&m, "hub_redis_up ") == 1.0 && sample(&m, "hub_redis_reconnects_total ") >= 1.0
        }
    })
    .await;
}

/// The dashboard's `publications_per_s` counts publications that came from a stream.
#[actix_rt::test]
async fn the_dashboard_counts_stream_publications() {
    let redis = RedisServer::start();
    let stream = "o2:events";
    let node = spawn_node(
        &redis,
        "a",
        &["--streams", stream, "--dashboard-interval-s", "1"],
    );
    let mut conn = redis_conn(&redis.url());
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("dashboard:hub").await;
    for n in 1..=5 {
        let data = json!({ "n": n }).to_string();
        xadd(&mut conn, stream, &[("channel", "o:c"), ("data", &data)]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = c
            .next_of_within("message", Duration::from_secs(3))
            .await
            .expect("a dashboard snapshot");
        if m["data"]["publications_per_s"].as_f64() > Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot counted the stream publications: {m}"
        );
    }
}

// ---- Logs ----

/// The real binary as a subprocess logging everything (`RUST_LOG=trace`) in `format`, once
/// ready; [`HubProcess::stop_and_collect`] stops it and returns what it logged.
async fn logged_hub(format: &str, extra: &[(&str, &str)]) -> HubProcess {
    let mut envs = vec![
        ("HUB_JWT_SECRET", SECRET),
        ("HUB_API_KEY", API_KEY),
        ("HUB_NODE_ID", "log-node"),
        ("HUB_LOG_FORMAT", format),
        ("HUB_SHUTDOWN_TIMEOUT_S", "2"),
        ("RUST_LOG", "trace"),
        ("HUB_STATIC_DIR", "static"),
    ];
    envs.extend_from_slice(extra);
    HubProcess::start_ready(&envs).await
}

fn parse_json_lines(lines: &[String]) -> Vec<Value> {
    assert!(!lines.is_empty(), "the hub logged nothing");
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// With `HUB_LOG_FORMAT=json`, every line is a JSON object with the node; one client
/// publication's `event_id` can be followed from its arrival to its fan-out, and an API one's.
#[actix_rt::test]
async fn json_logs_follow_one_event_from_arrival_to_fan_out() {
    let hub = logged_hub("json", &[]).await;
    let mut c = Client::connect_url(&hub.ws_url(), &token("tracer")).await;
    c.subscribe("trace").await;
    let r = c
        .request(
            json!({"type": "publish", "channel": "trace", "data": 1, "event_id": "evt-trace-1"}),
        )
        .await;
    assert_eq!(r["type"], "published", "{r}");
    c.next_of("message").await;
    let res = http()
        .post(hub.http("/api/publish"))
        .insert_header(("X-API-Key", API_KEY))
        .send_body(r#"{"channel":"trace","data":2,"event_id":"evt-trace-2"}"#)
        .await
        .expect("publish");
    assert_eq!(res.status().as_u16(), 200);
    c.next_of("message").await;
    drop(c);
    let records = parse_json_lines(&hub.stop_and_collect());

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
}

/// A stream entry's `event_id` can be followed in the JSON logs from its arrival (stream,
/// entry id, channel) to its fan-out.
#[actix_rt::test]
async fn json_logs_follow_a_stream_event_from_arrival_to_fan_out() {
    let redis = RedisServer::start();
    let url = redis.url();
    let hub = logged_hub(
        "json",
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("HUB_STREAMS", "o3:events"),
        ],
    )
    .await;
    let mut c = Client::connect_url(&hub.ws_url(), &token("tracer")).await;
    c.subscribe("trace").await;
    let mut conn = redis_conn(&redis.url());
    let entry = xadd(
        &mut conn,
        "o3:events",
        &[
            ("channel", "trace"),
            ("event_id", "evt-stream-1"),
            ("data", "1"),
        ],
    );
    assert_eq!(c.next_of("message").await["event_id"], "evt-stream-1");
    drop(c);
    let records = parse_json_lines(&hub.stop_and_collect());

    let arrival = records
        .iter()
        .find(|r| r["event_id"] == "evt-stream-1" && r["msg"] == "published by stream")
        .expect("the stream publication is logged");
    assert_eq!(
        (&arrival["stream"], &arrival["entry"], &arrival["channel"]),
        (&json!("o3:events"), &json!(entry), &json!("trace"))
    );
    let fanout = records
        .iter()
        .find(|r| r["event_id"] == "evt-stream-1" && r["msg"] == "fanned out")
        .expect("the fan-out is logged");
    assert_eq!(fanout["deliveries"], 1);
}

/// Presents every credential the hub receives, accepted and refused: `?token=` (valid, garbage,
/// badly signed), `Authorization: Bearer` (valid, badly signed), `refresh` frames (valid, badly
/// signed, malformed), and the API key (right and wrong). Returns each credential used.
async fn present_every_credential(hub: &HubProcess) -> Vec<String> {
    let other_secret = "not-the-hub-secret-4242-abcdef";
    let badly_signed = |user: &str| {
        sign(
            &json!({"sub": user, "exp": now() + 3600, "channels": ["*"]}),
            other_secret,
        )
    };
    let query = token("q-user");
    let refreshed = token_with("q-user", json!({"exp": now() + 7200}));
    let refused_refresh = badly_signed("q-user");
    let truncated_refresh = token_with("q-user", json!({"exp": now() + 7300}));
    let mistyped_refresh = token_with("q-user", json!({"exp": now() + 7400}));
    let garbage = "garbage-token-5f3a9c0d".to_owned();
    let refused_query = badly_signed("r-user");
    let bearer = token("b-user");
    let refused_bearer = badly_signed("b-user");
    let wrong_key = "wrong-api-key-77d1e0c4".to_owned();

    let mut c = Client::connect_url(&hub.ws_url(), &query).await;
    c.subscribe("trace").await;
    c.publish("trace", json!(1)).await;
    let r = c
        .request(json!({"type": "refresh", "token": refreshed}))
        .await;
    assert_eq!(r["type"], "refreshed", "{r}");
    let r = c
        .request(json!({"type": "refresh", "token": refused_refresh}))
        .await;
    assert_eq!(r["type"], "error", "{r}");
    c.send(json!({"type": "refresh", "id": 90, "token": [mistyped_refresh]}))
        .await;
    assert_eq!(c.next_of("error").await["code"], "bad_request");
    c.send_raw(Message::text(format!(
        r#"{{"type":"refresh","id":91,"token":"{truncated_refresh}""#
    )))
    .await;
    assert_eq!(c.next_of("error").await["code"], "bad_request");
    drop(c);

    for refused in [&garbage, &refused_query] {
        let (code, _) = close_of(&format!("{}?token={refused}", hub.ws_url())).await;
        assert_eq!(code, 1008);
    }
    let mut ws = open_with_headers(
        &hub.ws_url(),
        &[("Authorization", &format!("Bearer {bearer}"))],
    )
    .await;
    let welcome = tokio::time::timeout(WAIT, ws.next()).await;
    assert!(
        matches!(&welcome, Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("welcome")),
        "{welcome:?}"
    );
    let mut refused = open_with_headers(
        &hub.ws_url(),
        &[("Authorization", &format!("Bearer {refused_bearer}"))],
    )
    .await;
    assert_eq!(expect_close(&mut refused).await.0, 1008);
    drop(ws);

    for (key, status) in [(API_KEY, 200), (wrong_key.as_str(), 401)] {
        let res = http()
            .post(hub.http("/api/publish"))
            .insert_header(("X-API-Key", key))
            .send_body(r#"{"channel":"trace","data":2}"#)
            .await
            .expect("publish");
        assert_eq!(res.status().as_u16(), status);
    }
    vec![
        SECRET.to_owned(),
        API_KEY.to_owned(),
        other_secret.to_owned(),
        query,
        refreshed,
        refused_refresh,
        truncated_refresh,
        mistyped_refresh,
        garbage,
        refused_query,
        bearer,
        refused_bearer,
        wrong_key,
    ]
}

/// Asserts that no line holds a credential, or a JWT's signature on its own.
fn assert_no_credential(lines: &[String], credentials: &[String]) {
    for line in lines {
        for credential in credentials {
            assert!(
                !line.contains(credential.as_str()),
                "a credential leaked into the log: {line}"
            );
            if let Some((_, signature)) = credential.rsplit_once('.') {
                assert!(
                    !line.contains(signature),
                    "a token's signature leaked into the log: {line}"
                );
            }
        }
        assert!(
            !line.contains("token=ey"),
            "a token parameter leaked into the log: {line}"
        );
    }
}

/// In JSON logs at every level (`RUST_LOG=trace`), no secret, API key or token appears,
/// whichever way it was presented and whether it was accepted or refused.
#[actix_rt::test]
async fn no_credential_is_logged_in_json_at_any_level() {
    let hub = logged_hub("json", &[]).await;
    let credentials = present_every_credential(&hub).await;
    let lines = hub.stop_and_collect();
    let records = parse_json_lines(&lines);
    assert!(
        records.iter().any(|r| r["level"] == "TRACE"),
        "no trace lines"
    );
    assert!(records
        .iter()
        .any(|r| r["msg"] == "connection refused" && r["code"] == 1008));
    assert_no_credential(&lines, &credentials);
}

/// In text logs at every level (`RUST_LOG=trace`), no secret, API key or token appears,
/// whichever way it was presented and whether it was accepted or refused.
#[actix_rt::test]
async fn no_credential_is_logged_in_text_at_any_level() {
    let hub = logged_hub("text", &[]).await;
    let credentials = present_every_credential(&hub).await;
    let lines = hub.stop_and_collect();
    assert!(
        lines.iter().any(|l| l.contains(" TRACE ")),
        "no trace lines"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("code=1008") && l.contains("connection refused")));
    assert_no_credential(&lines, &credentials);
}
