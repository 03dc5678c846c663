//! Channels: subscribe, publish, history, presence, permissions and limits (docs/protocol.md §3).
mod common;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

/// `subscribed` gives the channel's position: offset 0 and an epoch for a new channel.
#[actix_rt::test]
async fn subscribe_answers_with_the_channel_position() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    let s = c.subscribe("chat:new").await;
    assert_eq!(s["offset"], 0);
    assert!(s["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(s["recovered"], false);
    assert_eq!(s["publications"], json!([]));
    assert_eq!(s["channel"], "chat:new");
}

/// Publications reach every subscriber with the contract's fields; the offset grows by one.
#[actix_rt::test]
async fn publications_reach_every_subscriber_in_order() {
    let app = spawn_app();
    let mut a = Client::connect(&app, "a").await;
    let mut b = Client::connect(&app, "b").await;
    a.subscribe("news").await;
    let epoch = b.subscribe("news").await["epoch"].clone();
    for i in 1..=3 {
        let p = a
            .request(json!({"type": "publish", "channel": "news", "data": {"n": i}, "event_type": "news.item"}))
            .await;
        assert_eq!(p["type"], "published");
        assert_eq!(p["offset"], i);
        assert_eq!(p["epoch"], epoch);
        assert!(p["event_id"].as_str().is_some_and(|e| !e.is_empty()));
    }
    for client in [&mut a, &mut b] {
        for i in 1..=3 {
            let m = client.next_of("message").await;
            assert_eq!(m["channel"], "news");
            assert_eq!(m["offset"], i);
            assert_eq!(m["epoch"], epoch);
            assert_eq!(m["data"], json!({"n": i}));
            assert_eq!(m["event_type"], "news.item");
            assert_eq!(m["from"]["user"], "a");
            assert!(m["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000));
        }
    }
}

/// A publication's `data` arrives byte for byte as it was sent.
#[actix_rt::test]
async fn data_passes_through_untouched() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    c.subscribe("raw").await;
    let raw = r#"{"type":"publish","id":1,"channel":"raw","data":{"z":1,  "a":[1.50,"\u00e9"]}}"#;
    c.send_raw(tokio_tungstenite::tungstenite::Message::text(raw))
        .await;
    use futures_util::StreamExt;
    loop {
        let m = c.ws.next().await.expect("frame").expect("ok");
        let text = m.to_text().expect("text").to_owned();
        if text.contains("\"message\"") {
            assert!(
                text.contains(r#""data":{"z":1,  "a":[1.50,"\u00e9"]}"#),
                "{text}"
            );
            break;
        }
    }
}

/// Subscribing twice answers `subscribed` again and never doubles deliveries.
#[actix_rt::test]
async fn subscribing_twice_never_doubles_deliveries() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    c.subscribe("dup").await;
    c.publish("dup", json!(1)).await;
    let again = c.subscribe("dup").await;
    assert_eq!(again["offset"], 1);
    c.publish("dup", json!(2)).await;
    assert_eq!(c.next_of("message").await["offset"], 1);
    assert_eq!(c.next_of("message").await["offset"], 2);
    c.expect_silence(QUIET).await;
}

/// A repeated `subscribe` (here with `recover`) that fails because the engine is unavailable
/// leaves the subscription as it was: pushes keep arriving, and `unsubscribe` still takes the
/// connection out of presence.
#[actix_rt::test]
async fn failed_resubscribe_keeps_the_subscription() {
    let mut redis = RedisServer::start();
    let app = spawn_node(&redis, "n1", &[]);
    wait_ready_blocking(app.addr);
    let mut c = Client::connect(&app, "alice").await;
    let s = c.subscribe("chat:a").await;

    redis.kill();
    let r = c
        .request(json!({"type": "subscribe", "channel": "chat:a",
            "recover": {"offset": s["offset"], "epoch": s["epoch"]}}))
        .await;
    assert_eq!(
        (r["type"].as_str(), code_of(&r)),
        (Some("error"), "unavailable"),
        "{r}"
    );

    redis.restart();
    eventually("the node is ready again", || async {
        api_get(&app, "/ready").await.0 == 200
    })
    .await;
    eventually("a publication is accepted", || async {
        api_post(
            &app,
            "/api/publish",
            r#"{"channel":"chat:a","data":"after"}"#,
        )
        .await
        .0 == 200
    })
    .await;
    let m = c
        .next_of_within("message", WAIT)
        .await
        .expect("the subscription still receives");
    assert_eq!(
        (&m["channel"], &m["data"]),
        (&json!("chat:a"), &json!("after"))
    );

    let u = c
        .request(json!({"type": "unsubscribe", "channel": "chat:a"}))
        .await;
    assert_eq!(u["type"], "unsubscribed");
    eventually("the connection leaves presence", || async {
        api_get(&app, "/api/presence/chat:a").await.1["clients"] == json!([])
    })
    .await;
}

/// After `unsubscribed`, no more pushes for the channel arrive.
#[actix_rt::test]
async fn unsubscribe_stops_pushes() {
    let app = spawn_app();
    let mut a = Client::connect(&app, "a").await;
    let mut b = Client::connect(&app, "b").await;
    a.subscribe("u").await;
    let r = a
        .request(json!({"type": "unsubscribe", "channel": "u"}))
        .await;
    assert_eq!(
        r,
        json!({"type": "unsubscribed", "id": r["id"], "channel": "u"})
    );
    b.publish("u", json!("x")).await;
    a.expect_silence(QUIET).await;
}

/// The same `event_id` in the same channel is published once; the answer repeats the original.
#[actix_rt::test]
async fn duplicate_event_id_is_published_once() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    c.subscribe("d").await;
    let frame = json!({"type": "publish", "channel": "d", "data": 1, "event_id": "evt-1"});
    let first = c.request(frame.clone()).await;
    let second = c.request(frame).await;
    assert_eq!(first["event_id"], "evt-1");
    assert_eq!(
        (first["offset"].clone(), first["epoch"].clone()),
        (second["offset"].clone(), second["epoch"].clone())
    );
    assert_eq!(c.next_of("message").await["event_id"], "evt-1");
    c.expect_silence(QUIET).await;
    // Another channel is another scope.
    let other = c
        .request(json!({"type": "publish", "channel": "d2", "data": 1, "event_id": "evt-1"}))
        .await;
    assert_eq!(other["offset"], 1);
}

async fn publish_n(c: &mut Client, channel: &str, n: usize) {
    for i in 0..n {
        c.publish(channel, json!({"i": i})).await;
    }
}

/// `history` with `limit` gives the newest publications, oldest first; `limit: 0` only the position.
#[actix_rt::test]
async fn history_with_limit_gives_the_newest_oldest_first() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    publish_n(&mut c, "h", 5).await;
    let h = c
        .request(json!({"type": "history", "channel": "h", "limit": 2}))
        .await;
    assert_eq!(h["type"], "history");
    assert_eq!(h["offset"], 5);
    let offsets: Vec<Value> = h["publications"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(offsets, vec![json!(4), json!(5)]);
    assert_eq!(h["publications"][0]["type"], "message");
    let h = c
        .request(json!({"type": "history", "channel": "h", "limit": 0}))
        .await;
    assert_eq!(h["publications"], json!([]));
    assert_eq!(h["offset"], 5);
}

/// `history` with `since` gives what follows that offset; another epoch's `since` is ignored.
#[actix_rt::test]
async fn history_since_an_offset() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    publish_n(&mut c, "h", 5).await;
    let epoch = c
        .request(json!({"type": "history", "channel": "h", "limit": 0}))
        .await["epoch"]
        .clone();
    let h = c
        .request(json!({"type": "history", "channel": "h", "limit": 2, "since": {"offset": 1, "epoch": epoch}}))
        .await;
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    assert_eq!(offsets, vec![2, 3]);
    let h = c
        .request(
            json!({"type": "history", "channel": "h", "since": {"offset": 1, "epoch": "other"}}),
        )
        .await;
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(5));
    assert_eq!(h["epoch"], epoch);
}

/// History keeps `HUB_HISTORY_SIZE` publications, and `limit` is capped there.
#[actix_rt::test]
async fn history_is_bounded_by_its_size() {
    let app = spawn_app_with(&["--history-size", "3"]);
    let mut c = Client::connect(&app, "a").await;
    publish_n(&mut c, "h", 5).await;
    let h = c
        .request(json!({"type": "history", "channel": "h", "limit": 100}))
        .await;
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    assert_eq!(offsets, vec![3, 4, 5]);
}

/// `history` without `limit` returns exactly the newest `HUB_HISTORY_SIZE` publications, oldest
/// first, from a channel that has had more.
#[actix_rt::test]
async fn ws_history_without_limit_defaults_to_history_size() {
    let app = spawn_app_with(&["--history-size", "3"]);
    let mut c = Client::connect(&app, "a").await;
    publish_n(&mut c, "h", 5).await;
    let h = c.request(json!({"type": "history", "channel": "h"})).await;
    assert_eq!(h["type"], "history", "{h}");
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    assert_eq!(offsets, vec![3, 4, 5]);
}

/// History expires `HUB_HISTORY_TTL_S` after the last publication: a new epoch at offset 0.
#[actix_rt::test]
async fn history_expires_into_a_new_epoch() {
    let app = spawn_app_with(&["--history-ttl-s", "1"]);
    let mut c = Client::connect(&app, "a").await;
    let first = c.publish("t", json!(1)).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let h = c.request(json!({"type": "history", "channel": "t"})).await;
    assert_eq!(h["offset"], 0);
    assert_ne!(h["epoch"], first["epoch"]);
    assert_eq!(h["publications"], json!([]));
}

/// Presence lists the subscribers with their token's `info`.
#[actix_rt::test]
async fn presence_lists_subscribers() {
    let app = spawn_app();
    let mut a = Client::connect_token(
        &app,
        &token_with("alice", json!({"info": {"name": "Alice"}})),
    )
    .await;
    let mut b = Client::connect(&app, "bob").await;
    a.subscribe("room:1").await;
    b.subscribe("room:1").await;
    let p = a
        .request(json!({"type": "presence", "channel": "room:1"}))
        .await;
    let mut users: Vec<(String, Value)> = p["clients"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["user"].as_str().unwrap_or_default().to_owned(),
                c["info"].clone(),
            )
        })
        .collect();
    users.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        users,
        vec![
            ("alice".into(), json!({"name": "Alice"})),
            ("bob".into(), json!({}))
        ]
    );
}

/// In a `chat` channel the others get `join` and `leave`; the session itself does not.
#[actix_rt::test]
async fn join_and_leave_reach_the_other_subscribers() {
    let app = spawn_app();
    let mut a = Client::connect(&app, "alice").await;
    a.subscribe("chat:room").await;
    let mut b = Client::connect(&app, "bob").await;
    b.subscribe("chat:room").await;
    let join = a.next_of("join").await;
    assert_eq!(join["user"], "bob");
    assert_eq!(join["channel"], "chat:room");
    assert_eq!(join["client"], b.client_id());
    assert_eq!(join["info"], json!({}));
    b.expect_silence(QUIET).await;
    let r = b
        .request(json!({"type": "unsubscribe", "channel": "chat:room"}))
        .await;
    assert_eq!(r["type"], "unsubscribed");
    let leave = a.next_of("leave").await;
    assert_eq!(leave["user"], "bob");
    // Disconnecting leaves too.
    b.subscribe("chat:room").await;
    assert_eq!(a.next_of("join").await["user"], "bob");
    drop(b);
    assert_eq!(a.next_of("leave").await["user"], "bob");
}

/// Outside `HUB_JOIN_LEAVE_NAMESPACES`, presence is kept but not announced.
#[actix_rt::test]
async fn no_join_leave_outside_configured_namespaces() {
    let app = spawn_app();
    let mut a = Client::connect(&app, "alice").await;
    a.subscribe("news:x").await;
    let mut b = Client::connect(&app, "bob").await;
    b.subscribe("news:x").await;
    a.expect_silence(QUIET).await;
    let p = a
        .request(json!({"type": "presence", "channel": "news:x"}))
        .await;
    assert_eq!(p["clients"].as_array().map(Vec::len), Some(2));
}

fn code_of(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("")
}

/// Permissions come from the token's patterns; history and presence need subscribe rights.
#[actix_rt::test]
async fn token_patterns_decide_permissions() {
    let app = spawn_app();
    let t = token_with(
        "u",
        json!({"channels": ["chat:*"], "publish": ["chat:lobby"]}),
    );
    let mut c = Client::connect_token(&app, &t).await;
    assert_eq!(
        c.request(json!({"type": "subscribe", "channel": "chat:a:b"}))
            .await["type"],
        "subscribed"
    );
    for req in [
        json!({"type": "subscribe", "channel": "news"}),
        json!({"type": "history", "channel": "news"}),
        json!({"type": "presence", "channel": "news"}),
        json!({"type": "publish", "channel": "chat:other", "data": 1}),
    ] {
        let r = c.request(req.clone()).await;
        assert_eq!(
            (r["type"].as_str(), code_of(&r)),
            (Some("error"), "forbidden"),
            "{req}"
        );
    }
    assert_eq!(
        c.request(json!({"type": "publish", "channel": "chat:lobby", "data": 1}))
            .await["type"],
        "published"
    );
}

/// `user:<sub>` is always open to its user and closed to everyone else, whatever the patterns.
#[actix_rt::test]
async fn personal_channel_belongs_to_its_user() {
    let app = spawn_app();
    let t = token_with("alice", json!({"channels": [], "publish": []}));
    let mut alice = Client::connect_token(&app, &t).await;
    assert_eq!(
        alice
            .request(json!({"type": "subscribe", "channel": "user:alice"}))
            .await["type"],
        "subscribed"
    );
    let mut bob = Client::connect(&app, "bob").await; // patterns ["*"]
    let r = bob
        .request(json!({"type": "subscribe", "channel": "user:alice"}))
        .await;
    assert_eq!(code_of(&r), "forbidden");
    let r = bob
        .request(json!({"type": "publish", "channel": "user:alice", "data": 1}))
        .await;
    assert_eq!(code_of(&r), "forbidden");
}

/// Tokens without `channels`/`publish` get `HUB_DEFAULT_CHANNELS`/`HUB_DEFAULT_PUBLISH`.
#[actix_rt::test]
async fn default_patterns_apply_to_tokens_without_claims() {
    let app = spawn_app_with(&[
        "--default-channels",
        "public:*",
        "--default-publish",
        "public:chat",
    ]);
    let t = sign(&json!({"sub": "d", "exp": now() + 600}), SECRET);
    let mut c = Client::connect_token(&app, &t).await;
    assert_eq!(
        c.request(json!({"type": "subscribe", "channel": "public:x"}))
            .await["type"],
        "subscribed"
    );
    assert_eq!(
        code_of(
            &c.request(json!({"type": "subscribe", "channel": "private"}))
                .await
        ),
        "forbidden"
    );
    assert_eq!(
        c.request(json!({"type": "publish", "channel": "public:chat", "data": 1}))
            .await["type"],
        "published"
    );
    assert_eq!(
        code_of(
            &c.request(json!({"type": "publish", "channel": "public:x", "data": 1}))
                .await
        ),
        "forbidden"
    );
}

/// A connection may hold at most `HUB_MAX_SUBSCRIPTIONS` subscriptions.
#[actix_rt::test]
async fn subscription_limit() {
    let app = spawn_app_with(&["--max-subscriptions", "2"]);
    let mut c = Client::connect(&app, "a").await;
    c.subscribe("s1").await;
    c.subscribe("s2").await;
    assert_eq!(
        code_of(
            &c.request(json!({"type": "subscribe", "channel": "s3"}))
                .await
        ),
        "limit_exceeded"
    );
    c.request(json!({"type": "unsubscribe", "channel": "s1"}))
        .await;
    c.subscribe("s3").await;
}

/// `data` over `HUB_MAX_PUBLICATION_BYTES` is refused with `too_large`.
#[actix_rt::test]
async fn oversize_publication_is_too_large() {
    let app = spawn_app_with(&["--max-publication-bytes", "1000"]);
    let mut c = Client::connect(&app, "a").await;
    let r = c
        .request(json!({"type": "publish", "channel": "x", "data": "y".repeat(1000)}))
        .await;
    assert_eq!(code_of(&r), "too_large");
    let r = c
        .request(json!({"type": "publish", "channel": "x", "data": "y".repeat(990)}))
        .await;
    assert_eq!(r["type"], "published");
}

/// Over the request rate, each dropped request gets exactly one `rate_limited` reply.
#[actix_rt::test]
async fn requests_over_the_rate_are_dropped_with_one_reply_each() {
    let app = spawn_app_with(&["--client-rate", "5"]);
    let mut c = Client::connect(&app, "a").await;
    for id in 1..=30u64 {
        c.send(json!({"type": "ping", "id": id})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 1..=30u64 {
        let f = c.next_frame().await;
        match (f["type"].as_str(), code_of(&f)) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), "rate_limited") => {
                assert!(f["id"].as_u64().is_some());
                limited += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs + limited, 30);
    assert!(
        (10..=12).contains(&pongs),
        "burst of twice the rate, got {pongs}"
    );
    c.expect_silence(QUIET).await;
}

/// Binary frames count against the request rate like any request: each one over the rate gets
/// exactly one `rate_limited` (and no `bad_request`).
#[actix_rt::test]
async fn binary_frames_over_the_rate_are_rate_limited() {
    let app = spawn_app_with(&["--client-rate", "5"]);
    let mut c = Client::connect(&app, "a").await;
    for _ in 0..30 {
        c.send_raw(tokio_tungstenite::tungstenite::Message::binary(vec![
            1u8, 2, 3,
        ]))
        .await;
    }
    let mut refused = 0;
    let mut limited = 0;
    for _ in 0..30 {
        let f = c.next_frame().await;
        assert_eq!(f["type"], "error", "{f}");
        assert!(f.get("id").is_none(), "a binary frame has no id: {f}");
        match code_of(&f) {
            "bad_request" => refused += 1,
            "rate_limited" => limited += 1,
            other => panic!("unexpected code {other}: {f}"),
        }
    }
    assert!(
        (10..=12).contains(&refused),
        "burst of twice the rate, got {refused} bad_request and {limited} rate_limited"
    );
    c.expect_silence(QUIET).await;
}

/// `ping` answers `pong` with the same id.
#[actix_rt::test]
async fn ping_answers_pong() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    c.send(json!({"type": "ping", "id": 9007199254740991u64}))
        .await;
    assert_eq!(
        c.next_frame().await,
        json!({"type": "pong", "id": 9007199254740991u64})
    );
}
