//! Service events through Redis Streams (docs/events.md) and the dead-letter API (docs/protocol.md §6.9): entries are
//! published through the engine and acknowledged after; poison goes to `<stream>:dlq` without
//! blocking what follows; passing failures are retried, then dead-lettered; a restarted node
//! re-reads its own pending entries; a killed node's entries are claimed by another; every
//! redelivery is harmless thanks to `event_id` dedup; dead letters are listed, replayed and
//! deleted through the API; `demo-events` produces domain events that reach the dashboard.
//!
//! Every test runs its own `redis-server` and names its own stream. Redis is driven directly
//! with the `redis` crate (as a service would), and passing publish failures are made real by
//! putting a key of the wrong type where the engine keeps an event's dedup entry: the
//! engine's publish of that event then fails with a Redis error until the key is removed.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use realtime_hub::engine::redis::Keys;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ---- Redis, as a service sees it ----

/// Entries pending in the `hub` group of `stream`, per consumer.
fn pending_by_consumer(conn: &mut redis::Connection, stream: &str) -> Vec<(String, u64)> {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("hub")
        .query(conn)
        .expect("XPENDING");
    let redis::Value::Array(parts) = reply else {
        return Vec::new();
    };
    let Some(redis::Value::Array(consumers)) = parts.get(3) else {
        return Vec::new();
    };
    consumers
        .iter()
        .filter_map(|c| {
            let (name, count): (String, String) = redis::from_redis_value_ref(c).ok()?;
            Some((name, count.parse().ok()?))
        })
        .collect()
}

fn pending(conn: &mut redis::Connection, stream: &str) -> u64 {
    pending_by_consumer(conn, stream).iter().map(|c| c.1).sum()
}

/// How often the pending entry `id` has been delivered (0 when it is not pending).
fn deliveries(conn: &mut redis::Connection, stream: &str, id: &str) -> u64 {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg("hub")
        .arg(id)
        .arg(id)
        .arg(1)
        .query(conn)
        .expect("XPENDING range");
    rows.first().map_or(0, |r| r.3)
}

/// The id of the first entry of `stream`.
fn first_id(conn: &mut redis::Connection, stream: &str) -> String {
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query(conn)
        .expect("XRANGE");
    first.into_iter().next().map(|e| e.0).unwrap_or_default()
}

/// The consumers of the `hub` group of `stream`.
fn consumers(conn: &mut redis::Connection, stream: &str) -> Vec<String> {
    let reply: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg("hub")
        .query(conn)
        .expect("XINFO CONSUMERS");
    reply
        .iter()
        .filter_map(|c| {
            let fields: std::collections::HashMap<String, redis::Value> =
                redis::from_redis_value_ref(c).ok()?;
            redis::from_redis_value_ref(fields.get("name")?).ok()
        })
        .collect()
}

// ---- The subscriber's side ----

/// The text of the next `message` push, exactly as the hub sent it.
async fn next_raw_message(c: &mut Client) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, c.ws.next())
            .await
            .expect("a message within the wait");
        if let Some(Ok(Message::Text(t))) = next {
            if t.as_str().starts_with(r#"{"type":"message""#) {
                return t.as_str().to_owned();
            }
        }
    }
}

/// The next `n` messages' `data.n`, asserting each arrives within the wait.
async fn numbers(c: &mut Client, n: usize) -> Vec<u64> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let m = c.next_of("message").await;
        got.push(m["data"]["n"].as_u64().expect("data.n"));
    }
    got
}

fn entry(channel: &str, n: u64) -> Vec<(String, String)> {
    vec![
        ("channel".into(), channel.into()),
        ("data".into(), json!({ "n": n }).to_string()),
    ]
}

/// Entries `1..=n` of `channel`, each with the event id `<prefix>-<number>`.
fn entries_with_ids(channel: &str, prefix: &str, n: u64) -> Vec<Vec<(String, String)>> {
    (1..=n)
        .map(|k| {
            let mut e = entry(channel, k);
            e.push(("event_id".into(), format!("{prefix}-{k}")));
            e
        })
        .collect()
}

/// Waits until exactly `n` of the stream's entries are pending.
async fn until_pending(conn: &mut redis::Connection, stream: &str, n: u64, what: &str) {
    eventually(what, || {
        let p = pending(conn, stream);
        async move { p == n }
    })
    .await;
}

/// Waits until the stream's first entry has been delivered again: its publish failed and is
/// being retried.
async fn first_entry_retried(conn: &mut redis::Connection, stream: &str) {
    let first = first_id(conn, stream);
    eventually("the first entry is delivered again", || {
        let d = deliveries(conn, stream, &first);
        async move { d >= 2 }
    })
    .await;
}

/// Appends many entries in one transaction: a blocked reader sees all of them at once.
fn xadd_many(conn: &mut redis::Connection, stream: &str, entries: &[Vec<(String, String)>]) {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for fields in entries {
        let cmd = pipe.cmd("XADD").arg(stream).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd.ignore();
    }
    pipe.query::<()>(conn).expect("XADD pipeline");
}

/// A node ingesting `stream` that retries a failing entry up to 100 times, a connection to its
/// Redis, and a client subscribed to `channel` on it.
async fn retrying_node(
    redis: &RedisServer,
    stream: &str,
    channel: &str,
) -> (TestApp, redis::Connection, Client) {
    ingesting_node(redis, stream, channel, &["--stream-max-deliveries", "100"]).await
}

/// A node that ingests no stream (`--streams ""`), to hold subscribers that must not race the
/// consumers under test.
fn spawn_watcher(redis: &RedisServer) -> TestApp {
    spawn_node(redis, "watcher", &["--streams", ""])
}

// ---- Entries ----

/// An entry's `data` reaches subscribers byte for byte, with its `event_type` and `event_id`;
/// `payload` is an alias of `data`, and an entry without `event_id` gets `<stream>/<entry id>`.
#[actix_rt::test]
async fn an_entry_reaches_subscribers_with_its_data_untouched() {
    let redis = RedisServer::start();
    let node = spawn_node(&redis, "a", &["--streams", "t1:events"]);
    let mut conn = redis_conn(&redis.url());
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("dashboard:orders").await;

    let data = r#"{"event_id":"e-1", "event_type":"order.created","aggregate_id":"ord-7","occurred_at":"2026-01-01T00:00:00.000Z","amount":129.90}"#;
    xadd(
        &mut conn,
        "t1:events",
        &[
            ("channel", "dashboard:orders"),
            ("event_type", "order.created"),
            ("event_id", "e-1"),
            ("data", data),
        ],
    );
    let raw = next_raw_message(&mut c).await;
    assert!(raw.contains(&format!(r#""data":{data}"#)), "frame: {raw}");
    let m: Value = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(
        (
            &m["channel"],
            &m["offset"],
            &m["event_id"],
            &m["event_type"]
        ),
        (
            &json!("dashboard:orders"),
            &json!(1),
            &json!("e-1"),
            &json!("order.created")
        )
    );
    assert!(
        m.get("from").is_none(),
        "services publish without `from`: {m}"
    );

    let id = xadd(
        &mut conn,
        "t1:events",
        &[("channel", "dashboard:orders"), ("payload", "[1, 2]")],
    );
    let m = c.next_of("message").await;
    assert_eq!(m["data"], json!([1, 2]));
    assert_eq!(m["event_id"], format!("t1:events/{id}"));
    assert!(m.get("event_type").is_none(), "no event_type given: {m}");
    until_pending(&mut conn, "t1:events", 0, "both entries acknowledged").await;
}

/// Two entries with the same `event_id` are published once: the second is acknowledged as a
/// duplicate.
#[actix_rt::test]
async fn entries_with_an_event_id_already_published_are_not_published_again() {
    let redis = RedisServer::start();
    let node = spawn_node(&redis, "a", &["--streams", "t2:events"]);
    let mut conn = redis_conn(&redis.url());
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("d:c").await;
    for n in [1, 1, 2] {
        let id = format!("ev-{n}");
        let data = json!({ "n": n }).to_string();
        xadd(
            &mut conn,
            "t2:events",
            &[("channel", "d:c"), ("event_id", &id), ("data", &data)],
        );
    }
    assert_eq!(numbers(&mut c, 2).await, vec![1, 2]);
    c.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(pending(&mut conn, "t2:events"), 0);
}

// ---- Poison and dead letters ----

/// Every kind of poison goes to `<stream>:dlq` with its reason and original fields, and the
/// entries behind it are published in order; `/api/deadletters` lists them newest first and
/// `/api/info` counts them.
#[actix_rt::test]
async fn poison_entries_are_dead_lettered_and_never_block_the_entries_behind_them() {
    let redis = RedisServer::start();
    let node = spawn_node(
        &redis,
        "a",
        &["--streams", "t3:events", "--max-publication-bytes", "1024"],
    );
    let mut conn = redis_conn(&redis.url());
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("p:c").await;

    let big = format!("\"{}\"", "x".repeat(2000));
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let poison: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("data", "{\"n\":99}")], "no `channel` field"),
        (
            vec![("channel", "p:c"), ("data", "{oops")],
            "not valid JSON",
        ),
        (
            vec![("channel", "bad channel"), ("data", "1")],
            "invalid channel name",
        ),
        (vec![("channel", "p:c"), ("data", &big)], "over 1024 bytes"),
        (vec![("channel", "p:c"), ("data", &deep)], "nested deeper"),
        (vec![("channel", "p:c")], "no `data` (or `payload`) field"),
    ];
    let before = now() * 1000;
    xadd(
        &mut conn,
        "t3:events",
        &[("channel", "p:c"), ("data", r#"{"n":1}"#)],
    );
    let mut poison_ids = Vec::new();
    for (fields, _) in &poison {
        poison_ids.push(xadd(&mut conn, "t3:events", fields));
    }
    xadd(
        &mut conn,
        "t3:events",
        &[("channel", "p:c"), ("data", r#"{"n":2}"#)],
    );

    let first = c.next_of("message").await;
    let second = c.next_of("message").await;
    assert_eq!(
        (
            &first["data"]["n"],
            &first["offset"],
            &second["data"]["n"],
            &second["offset"]
        ),
        (&json!(1), &json!(1), &json!(2), &json!(2))
    );

    let (status, listed) = api_get(&node, "/api/deadletters").await;
    assert_eq!(status, 200, "{listed}");
    let entries = listed["entries"].as_array().expect("entries").clone();
    assert_eq!(entries.len(), poison.len(), "{listed}");
    // Newest first: the reverse of the order they were appended in.
    for (dead, ((fields, reason), id)) in entries.iter().rev().zip(poison.iter().zip(&poison_ids)) {
        assert_eq!(dead["stream"], "t3:events");
        assert_eq!(dead["original_id"], json!(id));
        assert!(
            dead["reason"].as_str().is_some_and(|r| r.contains(reason)),
            "reason of {id}: {dead}"
        );
        assert_eq!(dead["deliveries"], 1);
        assert!(dead["failed_at"].as_u64().is_some_and(|t| t >= before));
        assert!(dead["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("t3:events:dlq/")));
        let expected: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        assert_eq!(dead["fields"], Value::Object(expected), "fields of {id}");
    }

    let (_, two) = api_get(&node, "/api/deadletters?limit=2").await;
    assert_eq!(two["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(two["entries"][0], entries[0]);

    until_pending(&mut conn, "t3:events", 0, "nothing left pending").await;
    let (_, info) = api_get(&node, "/api/info").await;
    assert_eq!(
        info["streams"],
        json!([{"stream": "t3:events", "length": 8, "pending": 0, "lag": 0, "dead_letters": 6}])
    );
}

/// A dead letter can be deleted once (then it is `not_found`), by its id as listed or
/// percent-encoded; an id that names no dead letter is `not_found` too.
#[actix_rt::test]
async fn dead_letters_are_deleted_by_id() {
    let redis = RedisServer::start();
    let node = spawn_node(&redis, "a", &["--streams", "t7:events"]);
    let mut conn = redis_conn(&redis.url());
    xadd(&mut conn, "t7:events", &[("data", "1")]);
    xadd(&mut conn, "t7:events", &[("data", "2")]);
    let mut listed = Vec::new();
    eventually("two dead letters", || {
        let node = &node;
        async move {
            api_get(node, "/api/deadletters").await.1["entries"]
                .as_array()
                .map(Vec::len)
                == Some(2)
        }
    })
    .await;
    for e in api_get(&node, "/api/deadletters").await.1["entries"]
        .as_array()
        .expect("entries")
    {
        listed.push(e["id"].as_str().expect("id").to_owned());
    }

    let delete = |path: String| {
        let url = node.http(&path);
        async move {
            let mut res = http()
                .delete(url)
                .insert_header(("X-API-Key", API_KEY))
                .send()
                .await
                .expect("http request");
            let body = res.body().await.expect("body");
            (
                res.status().as_u16(),
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(
        delete(format!("/api/deadletters/{}", listed[0])).await,
        (200, json!({"deleted": 1}))
    );
    let (status, body) = delete(format!("/api/deadletters/{}", listed[0])).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let encoded = listed[1].replace(':', "%3A").replace('/', "%2F");
    assert_eq!(
        delete(format!("/api/deadletters/{encoded}")).await,
        (200, json!({"deleted": 1}))
    );
    for bad in [
        "nope",
        "t7:events:dlq/x-y",
        "other:dlq/1-0",
        "t7:events/1-0",
    ] {
        let (status, body) = delete(format!("/api/deadletters/{bad}")).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &json!("not_found")),
            "{bad}"
        );
    }
    assert_eq!(
        api_get(&node, "/api/deadletters").await.1,
        json!({"entries": []})
    );
}

/// Without Redis there is no ingestion: no dead letters, nothing to replay or delete, and no
/// streams in `/api/info`.
#[actix_rt::test]
async fn without_redis_there_are_no_dead_letters() {
    let node = spawn_memory_app(&[]);
    assert_eq!(
        api_get(&node, "/api/deadletters").await,
        (200, json!({"entries": []}))
    );
    assert_eq!(
        api_post(
            &node,
            "/api/deadletters/replay",
            r#"{"ids":["hub:events:dlq/1-0"]}"#
        )
        .await,
        (200, json!({"replayed": 0}))
    );
    let (status, body) = api_post(&node, "/api/deadletters/replay", r#"{"id":1}"#).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_request"))
    );
    let (_, info) = api_get(&node, "/api/info").await;
    assert_eq!(info["streams"], json!([]));
}

/// A batch whose first entry is a duplicate on a channel whose history Redis would refuse to
/// trim still moves the next channel on: that channel's next publication gets a new offset,
/// never one already given.
#[actix_rt::test]
async fn a_batch_never_gives_an_offset_twice_when_another_channel_is_broken() {
    let redis = RedisServer::start();
    let node = spawn_node(&redis, "a", &["--streams", "t14:events"]);
    let mut conn = redis_conn(&redis.url());
    let publish = |body: serde_json::Value| {
        let node = &node;
        async move {
            let (status, answer) = api_post(node, "/api/publish", &body.to_string()).await;
            assert_eq!(status, 200, "{answer}");
            answer
        }
    };
    publish(json!({"channel": "x:c", "data": 1, "event_id": "ev-x"})).await;
    publish(json!({"channel": "y:c", "data": 1})).await;
    let _: () = redis::cmd("SET")
        .arg(Keys::new("hub").history("x:c"))
        .arg("not a list")
        .query(&mut conn)
        .expect("SET");
    let mut dup = entry("x:c", 2);
    dup.push(("event_id".into(), "ev-x".into()));
    xadd_many(&mut conn, "t14:events", &[dup, entry("y:c", 2)]);
    eventually("both entries acknowledged", || {
        let p = pending(&mut conn, "t14:events");
        let read: i64 = redis::cmd("XLEN")
            .arg("t14:events")
            .query(&mut conn)
            .unwrap_or(0);
        async move { p == 0 && read == 2 }
    })
    .await;
    eventually("y:c's entry is in its history", || async {
        api_get(&node, "/api/history/y:c").await.1["offset"] == 2
    })
    .await;
    let third = publish(json!({"channel": "y:c", "data": 3})).await;
    assert_eq!(third["offset"], 3, "{third}");
}

/// Consecutive entries of one channel are appended to history together. When that append
/// fails, none of them is kept, sent or acknowledged, and no offset or dedup claim is used up:
/// once the cause is gone they arrive once each, in order, with the offsets that follow the
/// channel's last one.
#[actix_rt::test]
async fn a_run_whose_history_append_fails_is_published_whole_once_repaired() {
    let redis = RedisServer::start();
    let (node, mut conn, mut c) = retrying_node(&redis, "t16:events", "h:c").await;
    let (status, first) =
        api_post(&node, "/api/publish", r#"{"channel":"h:c","data":{"n":0}}"#).await;
    assert_eq!(
        (status, first["offset"].as_u64()),
        (200, Some(1)),
        "{first}"
    );
    assert_eq!(numbers(&mut c, 1).await, vec![0]);
    let history = Keys::new("hub").history("h:c");
    let _: () = redis::cmd("SET")
        .arg(&history)
        .arg("not a list")
        .query(&mut conn)
        .expect("SET");
    xadd_many(&mut conn, "t16:events", &entries_with_ids("h:c", "run", 3));
    first_entry_retried(&mut conn, "t16:events").await;
    c.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(pending(&mut conn, "t16:events"), 3, "all three wait");
    for n in 1..=3 {
        let claim: Option<String> = redis::cmd("GET")
            .arg(Keys::new("hub").dedup("h:c", &format!("run-{n}")))
            .query(&mut conn)
            .expect("GET");
        assert_eq!(claim, None, "the dedup claim of run-{n} was taken back");
    }

    let _: () = redis::cmd("DEL")
        .arg(&history)
        .query(&mut conn)
        .expect("DEL");
    let mut offsets = Vec::new();
    for n in 1..=3 {
        let m = c.next_of("message").await;
        assert_eq!(m["data"]["n"], n, "{m}");
        offsets.push(m["offset"].as_u64().expect("offset"));
    }
    assert_eq!(offsets, vec![2, 3, 4]);
    c.expect_silence(Duration::from_millis(300)).await;
    until_pending(&mut conn, "t16:events", 0, "all three acknowledged").await;
}

/// A step that fails after others of the same call succeeded: those are published and
/// acknowledged, the failed entry and everything after it wait, and once repaired they follow
/// in order with the next offsets.
#[actix_rt::test]
async fn a_failure_inside_a_batch_keeps_the_entries_before_it_and_holds_the_rest() {
    let redis = RedisServer::start();
    let (_node, mut conn, mut c) = retrying_node(&redis, "t17:events", "m:c").await;
    break_publish(&mut conn, "m:c", "mid-2");
    xadd_many(&mut conn, "t17:events", &entries_with_ids("m:c", "mid", 3));
    let first = c.next_of("message").await;
    assert_eq!(
        (first["data"]["n"].as_u64(), first["offset"].as_u64()),
        (Some(1), Some(1))
    );
    until_pending(
        &mut conn,
        "t17:events",
        2,
        "the first entry acknowledged, the other two pending",
    )
    .await;
    c.expect_silence(Duration::from_millis(200)).await;

    repair(&mut conn, "m:c", "mid-2");
    for n in 2..=3 {
        let m = c.next_of("message").await;
        assert_eq!(
            (m["data"]["n"].as_u64(), m["offset"].as_u64()),
            (Some(n), Some(n)),
            "{m}"
        );
    }
    c.expect_silence(Duration::from_millis(300)).await;
    until_pending(&mut conn, "t17:events", 0, "all acknowledged").await;
}

/// One call spanning two channels: the first channel's run goes out; the second's append
/// fails, so it and the entry after it (of the first channel again) wait, and follow in stream
/// order once repaired.
#[actix_rt::test]
async fn when_a_later_channel_of_a_batch_fails_the_earlier_one_is_kept_and_order_holds() {
    let redis = RedisServer::start();
    let (node, mut conn, mut c) = retrying_node(&redis, "t18:events", "p:c").await;
    c.subscribe("q:c").await;
    let (status, answer) =
        api_post(&node, "/api/publish", r#"{"channel":"q:c","data":{"n":0}}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(numbers(&mut c, 1).await, vec![0]);
    let history = Keys::new("hub").history("q:c");
    let _: () = redis::cmd("SET")
        .arg(&history)
        .arg("not a list")
        .query(&mut conn)
        .expect("SET");
    xadd_many(
        &mut conn,
        "t18:events",
        &[entry("p:c", 1), entry("q:c", 2), entry("p:c", 3)],
    );
    let first = c.next_of("message").await;
    assert_eq!(
        (first["channel"].as_str(), first["data"]["n"].as_u64()),
        (Some("p:c"), Some(1))
    );
    until_pending(
        &mut conn,
        "t18:events",
        2,
        "the first entry acknowledged, the other two pending",
    )
    .await;
    c.expect_silence(Duration::from_millis(200)).await;

    let _: () = redis::cmd("DEL")
        .arg(&history)
        .query(&mut conn)
        .expect("DEL");
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = c.next_of("message").await;
        got.push((
            m["channel"].as_str().unwrap_or_default().to_owned(),
            m["data"]["n"].as_u64(),
            m["offset"].as_u64(),
        ));
    }
    assert_eq!(
        got,
        vec![
            ("q:c".to_owned(), Some(2), Some(2)),
            ("p:c".to_owned(), Some(3), Some(2))
        ]
    );
    c.expect_silence(Duration::from_millis(300)).await;
}

/// A dedup key holding something other than a position (another tool's data under the hub's
/// prefix, say) is not taken for a duplicate: the entry waits instead of being acknowledged
/// unpublished.
#[actix_rt::test]
async fn a_dedup_key_without_a_position_holds_the_entry_rather_than_dropping_it() {
    let redis = RedisServer::start();
    let (_node, mut conn, mut c) = retrying_node(&redis, "t19:events", "g:c").await;
    let dedup = Keys::new("hub").dedup("g:c", "garbled-1");
    let _: () = redis::cmd("SET")
        .arg(&dedup)
        .arg("garbage")
        .query(&mut conn)
        .expect("SET");
    xadd_many(
        &mut conn,
        "t19:events",
        &entries_with_ids("g:c", "garbled", 1),
    );
    first_entry_retried(&mut conn, "t19:events").await;
    assert_eq!(pending(&mut conn, "t19:events"), 1, "the entry waits");
    c.expect_silence(Duration::from_millis(200)).await;

    let _: () = redis::cmd("DEL").arg(&dedup).query(&mut conn).expect("DEL");
    assert_eq!(numbers(&mut c, 1).await, vec![1]);
    until_pending(&mut conn, "t19:events", 0, "acknowledged").await;
}

// ---- Passing failures ----

/// A publish that fails for a passing reason leaves the entry pending, and the entries behind
/// it wait; once the cause is gone, the retry publishes it and the rest follow, in order and
/// each once.
#[actix_rt::test]
async fn a_passing_failure_is_retried_until_it_succeeds_and_keeps_the_order() {
    let redis = RedisServer::start();
    let (_node, mut conn, mut c) = retrying_node(&redis, "t4:events", "r:c").await;
    break_publish(&mut conn, "r:c", "ev-1");
    xadd_many(&mut conn, "t4:events", &entries_with_ids("r:c", "ev", 2));
    first_entry_retried(&mut conn, "t4:events").await;
    c.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(pending(&mut conn, "t4:events"), 2, "both entries wait");

    repair(&mut conn, "r:c", "ev-1");
    assert_eq!(numbers(&mut c, 2).await, vec![1, 2]);
    c.expect_silence(Duration::from_millis(300)).await;
    until_pending(&mut conn, "t4:events", 0, "both acknowledged").await;
}

/// An entry that keeps failing is dead-lettered after `HUB_STREAM_MAX_DELIVERIES` deliveries and
/// the entries behind it go on; once the cause is fixed, replaying the dead letter publishes it.
#[actix_rt::test]
async fn a_persistent_failure_is_dead_lettered_and_its_replay_delivers_it_once_fixed() {
    let redis = RedisServer::start();
    let node = spawn_node(
        &redis,
        "a",
        &["--streams", "t5:events", "--stream-max-deliveries", "2"],
    );
    let mut conn = redis_conn(&redis.url());
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("f:c").await;
    break_publish(&mut conn, "f:c", "ev-1");
    let first = xadd(
        &mut conn,
        "t5:events",
        &[
            ("channel", "f:c"),
            ("event_id", "ev-1"),
            ("data", r#"{"n":1}"#),
        ],
    );
    xadd(
        &mut conn,
        "t5:events",
        &[
            ("channel", "f:c"),
            ("event_id", "ev-2"),
            ("data", r#"{"n":2}"#),
        ],
    );
    assert_eq!(
        numbers(&mut c, 1).await,
        vec![2],
        "the entry behind goes on"
    );

    let (_, listed) = api_get(&node, "/api/deadletters").await;
    let dead = &listed["entries"][0];
    assert_eq!(dead["original_id"], json!(first), "{listed}");
    assert_eq!(dead["deliveries"], 2);
    assert!(
        dead["reason"]
            .as_str()
            .is_some_and(|r| r.contains("publish failed on each of 2 deliveries")),
        "{dead}"
    );
    assert_eq!(
        dead["fields"],
        json!({"channel": "f:c", "event_id": "ev-1", "data": "{\"n\":1}"})
    );

    repair(&mut conn, "f:c", "ev-1");
    let body = json!({ "ids": [dead["id"], "t5:events:dlq/1-0", "elsewhere/1-0"] }).to_string();
    assert_eq!(
        api_post(&node, "/api/deadletters/replay", &body).await,
        (200, json!({"replayed": 1}))
    );
    let m = c.next_of("message").await;
    assert_eq!(
        (&m["data"]["n"], &m["event_id"]),
        (&json!(1), &json!("ev-1"))
    );
    assert_eq!(
        api_post(&node, "/api/deadletters/replay", &body).await,
        (200, json!({"replayed": 0})),
        "a dead letter is replayed once"
    );
    assert_eq!(
        api_get(&node, "/api/deadletters").await.1,
        json!({"entries": []})
    );
    c.expect_silence(Duration::from_millis(300)).await;
}

/// An entry pending for longer than a node lives, delivered more than
/// `HUB_STREAM_MAX_DELIVERIES` times without an acknowledgement (nodes kept dying on it), is
/// dead-lettered with that reason instead of being published once more.
#[actix_rt::test]
async fn an_entry_delivered_more_than_max_deliveries_times_is_dead_lettered_with_its_reason() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url());
    let stream = "t13:events";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("hub")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut conn)
        .expect("XGROUP CREATE");
    let id = xadd(
        &mut conn,
        stream,
        &[("channel", "x:c"), ("data", r#"{"n":1}"#)],
    );
    // Taken by node "a", then (as if it had died on it three more times) counted at four.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("hub")
        .arg("a")
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(&mut conn)
        .expect("XREADGROUP");
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(stream)
        .arg("hub")
        .arg("a")
        .arg(0)
        .arg(&id)
        .arg("RETRYCOUNT")
        .arg(4)
        .arg("JUSTID")
        .query(&mut conn)
        .expect("XCLAIM");
    assert_eq!(deliveries(&mut conn, stream, &id), 4);
    let watcher = spawn_watcher(&redis);
    let mut c = Client::connect(&watcher, "u").await;
    c.subscribe("x:c").await;

    // Node "a" comes back and re-reads it: its fifth delivery, over the maximum of three.
    let node = spawn_node(
        &redis,
        "a",
        &["--streams", stream, "--stream-max-deliveries", "3"],
    );
    eventually("the entry is dead-lettered", || {
        let node = &node;
        async move {
            api_get(node, "/api/deadletters").await.1["entries"]
                .as_array()
                .map(Vec::len)
                == Some(1)
        }
    })
    .await;
    let (_, listed) = api_get(&node, "/api/deadletters").await;
    let dead = &listed["entries"][0];
    assert_eq!(
        (&dead["original_id"], &dead["deliveries"]),
        (&json!(id), &json!(5)),
        "{dead}"
    );
    assert!(
        dead["reason"]
            .as_str()
            .is_some_and(|r| r.contains("delivered 5 times without being acknowledged")),
        "{dead}"
    );
    assert_eq!(pending(&mut conn, stream), 0);
    c.expect_silence(Duration::from_millis(300)).await;
}

/// Where Redis cannot tell how far behind the group is (entries deleted between the group's
/// position and the end of the stream), `/api/info` shows `lag` null and `/metrics` has no
/// `hub_stream_lag` series for the stream; once the group has read past the deletion it is a
/// number again.
#[actix_rt::test]
async fn lag_is_null_where_redis_cannot_tell() {
    let redis = RedisServer::start();
    let stream = "t14:events";
    let (node, mut conn, mut c) = ingesting_node(
        &redis,
        stream,
        "l:c",
        &[
            "--stream-max-deliveries",
            "1000",
            "--stream-claim-idle-ms",
            "1000",
        ],
    )
    .await;
    // The first entry is retried (and the group's position stays on it) until repaired.
    break_publish(&mut conn, "l:c", "ev-1");
    let first = xadd(
        &mut conn,
        stream,
        &[
            ("channel", "l:c"),
            ("event_id", "ev-1"),
            ("data", r#"{"n":1}"#),
        ],
    );
    eventually("the first entry is being retried", || {
        let d = deliveries(&mut conn, stream, &first);
        async move { d >= 2 }
    })
    .await;
    let second = xadd(
        &mut conn,
        stream,
        &[
            ("channel", "l:c"),
            ("event_id", "ev-2"),
            ("data", r#"{"n":2}"#),
        ],
    );
    xadd(
        &mut conn,
        stream,
        &[
            ("channel", "l:c"),
            ("event_id", "ev-3"),
            ("data", r#"{"n":3}"#),
        ],
    );
    let _: i64 = redis::cmd("XDEL")
        .arg(stream)
        .arg(&second)
        .query(&mut conn)
        .expect("XDEL");

    let (status, info) = api_get(&node, "/api/info").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        info["streams"],
        json!([{"stream": stream, "length": 2, "pending": 1, "lag": null, "dead_letters": 0}])
    );
    let series = format!("hub_stream_lag{{stream=\"{stream}\"}}");
    eventually("the lag series is withdrawn", || {
        let url = node.http("/metrics");
        let series = series.clone();
        async move {
            let body = http().get(url).send().await.expect("scrape").body().await;
            let text = String::from_utf8_lossy(&body.expect("body")).into_owned();
            text.contains("hub_stream_pending{") && !text.contains(&series)
        }
    })
    .await;

    repair(&mut conn, "l:c", "ev-1");
    assert_eq!(numbers(&mut c, 2).await, vec![1, 3]);
    // A number again once the group has read past the deletion (Redis 7.0 then counts the
    // deleted entry as one not yet read: its figure, not ours).
    eventually("the lag is known again", || {
        let node = &node;
        async move {
            let info = api_get(node, "/api/info").await.1;
            let figures = &info["streams"][0];
            figures["pending"] == 0 && figures["lag"].is_u64()
        }
    })
    .await;
}

/// A replayed dead letter that had no `event_id` keeps the idempotency key of its original
/// entry (`<stream>/<original id>`): if its publish had in fact gone through (only the
/// acknowledgements failed), the replay does not publish it a second time.
#[actix_rt::test]
async fn a_replayed_dead_letter_keeps_the_idempotency_key_of_its_original_entry() {
    let redis = RedisServer::start();
    let stream = "t16:events";
    let node = spawn_node(&redis, "a", &["--streams", stream]);
    let mut conn = redis_conn(&redis.url());
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("rp:c").await;
    // As a node left it whose publish of entry 1700000000000-0 went through but whose
    // acknowledgements kept failing until the entry was dead-lettered.
    let original = "1700000000000-0";
    let (status, _) = api_post(
        &node,
        "/api/publish",
        &json!({"channel": "rp:c", "data": {"n": 1}, "event_id": format!("{stream}/{original}")})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(numbers(&mut c, 1).await, vec![1]);
    let dlq = format!("{stream}:dlq");
    let dead_id = xadd(
        &mut conn,
        &dlq,
        &[
            ("channel", "rp:c"),
            ("data", r#"{"n":1}"#),
            ("stream", stream),
            ("original_id", original),
            ("reason", "delivered 6 times without being acknowledged"),
            ("deliveries", "6"),
            ("failed_at", "1700000060000"),
        ],
    );

    let body = json!({ "ids": [format!("{dlq}/{dead_id}")] }).to_string();
    assert_eq!(
        api_post(&node, "/api/deadletters/replay", &body).await,
        (200, json!({"replayed": 1}))
    );
    let readded: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    assert_eq!(readded.len(), 1);
    assert!(
        readded[0]
            .1
            .contains(&("event_id".to_owned(), format!("{stream}/{original}"))),
        "{readded:?}"
    );
    eventually("the replayed entry is read and acknowledged", || {
        let node = &node;
        async move {
            api_get(node, "/api/info").await.1["streams"][0]
                == json!({"stream": stream, "length": 1, "pending": 0, "lag": 0, "dead_letters": 0})
        }
    })
    .await;
    c.expect_silence(Duration::from_millis(300)).await;
}

/// The routes that read Redis on behalf of the API call.
async fn api_calls_during_an_outage(
    node: &TestApp,
    stream: &str,
) -> Vec<(&'static str, u16, Duration)> {
    let dead = format!("{stream}:dlq/1-0");
    let mut answers = Vec::new();
    let started = Instant::now();
    let (status, _) = api_get(node, "/api/info").await;
    answers.push(("GET /api/info", status, started.elapsed()));
    let started = Instant::now();
    let (status, _) = api_get(node, "/api/deadletters").await;
    answers.push(("GET /api/deadletters", status, started.elapsed()));
    let started = Instant::now();
    let body = json!({ "ids": [dead] }).to_string();
    let (status, _) = api_post(node, "/api/deadletters/replay", &body).await;
    answers.push(("POST /api/deadletters/replay", status, started.elapsed()));
    let started = Instant::now();
    let status = http()
        .delete(node.http(&format!("/api/deadletters/{dead}")))
        .insert_header(("X-API-Key", API_KEY))
        .send()
        .await
        .expect("http request")
        .status()
        .as_u16();
    answers.push(("DELETE /api/deadletters/{id}", status, started.elapsed()));
    answers
}

/// With Redis stopped, `/api/info` and the dead-letter routes answer 503 `unavailable` within
/// their 2 s deadline.
#[actix_rt::test]
async fn the_dead_letter_routes_answer_unavailable_promptly_while_redis_is_stopped() {
    let mut redis = RedisServer::start();
    let stream = "t17:events";
    let node = spawn_node(&redis, "a", &["--streams", stream]);
    assert_eq!(api_get(&node, "/api/deadletters").await.0, 200);
    redis.kill();
    for (route, status, took) in api_calls_during_an_outage(&node, stream).await {
        assert_eq!(status, 503, "{route}");
        assert!(took < Duration::from_millis(2800), "{route} took {took:?}");
    }
}

/// With a Redis that accepts connections but never answers (hung, or a black hole on the
/// way), `/api/info` and the dead-letter routes still answer 503 within their 2 s deadline,
/// rather than waiting out every command's and every reconnect's own timeout.
#[actix_rt::test]
async fn the_dead_letter_routes_answer_unavailable_promptly_while_redis_hangs() {
    let mut redis = RedisServer::start();
    let stream = "t18:events";
    let node = spawn_node(&redis, "a", &["--streams", stream]);
    assert_eq!(api_get(&node, "/api/deadletters").await.0, 200);
    redis.kill();
    // Accepts on Redis's port and holds every connection without a word.
    let black_hole = std::net::TcpListener::bind(("127.0.0.1", redis.port)).expect("bind");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in black_hole.incoming().map_while(Result::ok) {
            held.push(conn);
        }
    });
    for (route, status, took) in api_calls_during_an_outage(&node, stream).await {
        assert_eq!(status, 503, "{route}");
        assert!(took < Duration::from_millis(2800), "{route} took {took:?}");
    }
}

// ---- Restarts, kills and shutdowns ----

/// A node restarted with the same node id first re-reads the entries it had taken: the one it
/// had already published is recognised by its `<stream>/<entry id>` and not published again.
#[actix_rt::test]
async fn a_restarted_node_rereads_its_own_pending_entries() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url());
    let stream = "t6:events";
    // As node "a" left it when it died: it had taken three entries, published the first and
    // acknowledged none.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("hub")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut conn)
        .expect("XGROUP CREATE");
    let ids: Vec<String> = (1..=3)
        .map(|n| {
            let data = json!({ "n": n }).to_string();
            xadd(&mut conn, stream, &[("channel", "s:c"), ("data", &data)])
        })
        .collect();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("hub")
        .arg("a")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(&mut conn)
        .expect("XREADGROUP");
    let watcher = spawn_watcher(&redis);
    let mut c = Client::connect(&watcher, "u").await;
    c.subscribe("s:c").await;
    let (status, _) = api_post(
        &watcher,
        "/api/publish",
        &json!({"channel": "s:c", "data": {"n": 1}, "event_id": format!("{stream}/{}", ids[0])})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(numbers(&mut c, 1).await, vec![1]);

    // The claim idle time is far away: only the re-read of its own entries can deliver them.
    let _a = spawn_node(&redis, "a", &["--streams", stream]);
    let m2 = c.next_of("message").await;
    let m3 = c.next_of("message").await;
    assert_eq!(
        (&m2["data"]["n"], &m2["event_id"], &m3["data"]["n"]),
        (&json!(2), &json!(format!("{stream}/{}", ids[1])), &json!(3))
    );
    c.expect_silence(Duration::from_millis(300)).await;
    until_pending(&mut conn, stream, 0, "all acknowledged").await;
}

/// A node killed with SIGKILL while it holds pending entries: another node claims them after
/// the claim idle time and a subscriber receives each exactly once, in stream order; the dead
/// node's consumer is then removed from the group.
#[actix_rt::test]
async fn entries_of_a_node_killed_with_sigkill_are_claimed_by_another_and_delivered_once() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url());
    let stream = "t8:events";
    // The first entry cannot be published until repaired, so the doomed node keeps all twenty
    // pending (the others wait behind it).
    break_publish(&mut conn, "k:c", "ev-1");
    xadd_many(&mut conn, stream, &entries_with_ids("k:c", "ev", 20));
    let mut doomed = HubProcess::node(
        &redis.url(),
        "doomed",
        &[
            ("HUB_STREAMS", stream),
            ("HUB_STREAM_MAX_DELIVERIES", "100"),
            ("HUB_STREAM_CLAIM_IDLE_MS", "60000"),
        ],
    )
    .await;
    eventually("the doomed node holds all twenty", || {
        let held = pending_by_consumer(&mut conn, stream);
        async move { held == vec![("doomed".to_owned(), 20)] }
    })
    .await;
    doomed.kill();
    repair(&mut conn, "k:c", "ev-1");

    let watcher = spawn_watcher(&redis);
    let mut c = Client::connect(&watcher, "u").await;
    c.subscribe("k:c").await;
    let _b = spawn_node(
        &redis,
        "b",
        &[
            "--streams",
            stream,
            "--stream-claim-idle-ms",
            "300",
            "--stream-max-deliveries",
            "100",
        ],
    );
    assert_eq!(numbers(&mut c, 20).await, (1..=20).collect::<Vec<_>>());
    c.expect_silence(Duration::from_millis(300)).await;
    until_pending(&mut conn, stream, 0, "everything acknowledged").await;
    eventually("the dead node's consumer is removed", || {
        let names = consumers(&mut conn, stream);
        async move { names == vec!["b".to_owned()] }
    })
    .await;
}

/// A node that published entries but could not acknowledge them (its Redis user may not
/// `XACK`) is killed with SIGKILL; another node claims them, finds each already published
/// (`<stream>/<entry id>`) and acknowledges it: the subscriber received each exactly once.
#[actix_rt::test]
async fn entries_published_but_not_acknowledged_by_a_killed_node_are_delivered_once() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url());
    let stream = "t15:events";
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("noack")
        .arg("on")
        .arg(">noack-password")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-xack")
        .query(&mut conn)
        .expect("ACL SETUSER");
    let watcher = spawn_watcher(&redis);
    let mut c = Client::connect(&watcher, "u").await;
    c.subscribe("q:c").await;
    let url = format!("redis://noack:noack-password@127.0.0.1:{}/0", redis.port);
    let mut doomed = HubProcess::node(
        &redis.url(),
        "doomed",
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("HUB_STREAMS", stream),
            ("HUB_STREAM_MAX_DELIVERIES", "1000000"),
            ("HUB_STREAM_CLAIM_IDLE_MS", "60000"),
        ],
    )
    .await;
    let entries: Vec<_> = (1..=10).map(|n| entry("q:c", n)).collect();
    xadd_many(&mut conn, stream, &entries);
    assert_eq!(numbers(&mut c, 10).await, (1..=10).collect::<Vec<_>>());
    let first = first_id(&mut conn, stream);
    eventually("the doomed node holds all ten and has re-read them", || {
        let held = pending_by_consumer(&mut conn, stream);
        let d = deliveries(&mut conn, stream, &first);
        async move { held == vec![("doomed".to_owned(), 10)] && d >= 2 }
    })
    .await;
    doomed.kill();

    let _b = spawn_node(
        &redis,
        "b",
        &[
            "--streams",
            stream,
            "--stream-claim-idle-ms",
            "300",
            "--stream-max-deliveries",
            "1000000",
        ],
    );
    until_pending(&mut conn, stream, 0, "node b acknowledged all ten").await;
    c.expect_silence(Duration::from_millis(500)).await;
    let dead: u64 = redis::cmd("XLEN")
        .arg(format!("{stream}:dlq"))
        .query(&mut conn)
        .expect("XLEN");
    assert_eq!(dead, 0);
}

/// Two nodes share a stream through one group (consumers named after the nodes). One is stopped
/// in the middle of a burst: it finishes the batch in hand (nothing stays pending on it) and
/// the other delivers the rest; every entry arrives exactly once, with gapless offsets.
#[actix_rt::test]
async fn a_node_stopped_mid_burst_leaves_nothing_behind() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url());
    let stream = "t9:events";
    let flags = [
        "--streams",
        stream,
        "--stream-claim-idle-ms",
        "500",
        "--client-queue-bytes",
        "67108864",
        "--node-queue-bytes",
        "134217728",
    ];
    let mut a = spawn_node(&redis, "a", &flags);
    let b = spawn_node(&redis, "b", &flags);
    let mut c = Client::connect(&b, "u").await;
    c.subscribe("m:c").await;
    eventually("both consumers joined the group", || {
        let mut names = consumers(&mut conn, stream);
        names.sort();
        async move { names == ["a", "b"] }
    })
    .await;

    const N: u64 = 2000;
    let entries: Vec<_> = (1..=N).map(|n| entry("m:c", n)).collect();
    xadd_many(&mut conn, stream, &entries);
    let mut seen = Vec::new();
    while seen.len() < 100 {
        seen.extend(numbers(&mut c, 1).await);
    }
    let stopping = Instant::now();
    a.stop();
    let stopped_in = stopping.elapsed();
    assert!(
        pending_by_consumer(&mut conn, stream)
            .iter()
            .all(|(name, n)| name != "a" || *n == 0),
        "a left entries pending"
    );
    let mut offsets = Vec::new();
    while seen.len() < N as usize {
        let m = c.next_of("message").await;
        offsets.push(m["offset"].as_u64().expect("offset"));
        seen.push(m["data"]["n"].as_u64().expect("n"));
    }
    c.expect_silence(Duration::from_millis(300)).await;
    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), N as usize, "every entry exactly once");
    assert_eq!(distinct.first().copied(), Some(1));
    assert_eq!(distinct.last().copied(), Some(N));
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "offsets are gapless"
    );
    assert!(
        stopped_in < Duration::from_secs(3),
        "stop took {stopped_in:?}"
    );
}

/// The reader's blocking read (`XREADGROUP ... BLOCK`, up to 1 s in the hub) as Redis sees it:
/// whether a connection is blocked in one right now (`CLIENT LIST`: `flags` with `b`).
fn reader_blocked(conn: &mut redis::Connection) -> bool {
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(conn)
        .expect("CLIENT LIST");
    clients.lines().any(|c| {
        let field = |name: &str| {
            c.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_default()
        };
        field("cmd=") == "xreadgroup" && field("flags=").contains('b')
    })
}

/// Polls [`reader_blocked`] every few milliseconds (the events here are shorter than 50 ms
/// polls would resolve) until it answers `blocked`; when it did, how long that took.
async fn until_reader_blocked(
    conn: &mut redis::Connection,
    blocked: bool,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if reader_blocked(conn) == blocked {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// A stopped node does not wait out its blocking read: the stop releases it (`CLIENT
/// UNBLOCK`) long before the read's own timeout.
///
/// An entry ends the reader's current read, so the read it blocks in next began after the
/// entry was appended and cannot time out before a full block (1 s) after it. The node is
/// stopped as soon as Redis shows that read blocked; the test asserts that Redis shows it
/// released well before that full block, so a stop that waited the read out fails whatever
/// the machine's load. A cycle in which the machine was too slow to stop in time is retried.
#[actix_rt::test]
async fn an_idle_node_stops_without_waiting_for_its_blocking_read() {
    /// The hub's longest blocking read (`MAX_BLOCK` in `bridge::streams`).
    const BLOCK: Duration = Duration::from_secs(1);
    /// Released before this, counted from the entry: only a release, not a timeout, can be.
    const RELEASED_WITHIN: Duration = Duration::from_millis(900);
    /// A cycle in which the stop came later than this after the entry proves nothing.
    const STOP_BY: Duration = Duration::from_millis(400);
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url());
    let stream = "t10:events";
    let mut node = spawn_node(&redis, "a", &["--streams", stream]);
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("t10:c").await;
    eventually("the node reads the stream", || {
        let names = consumers_or_none(&mut conn, stream);
        async move { names == ["a"] }
    })
    .await;

    let mut appended_at = None;
    for n in 1..=10 {
        let appended = Instant::now();
        xadd_many(&mut conn, stream, &[entry("t10:c", n)]);
        assert_eq!(numbers(&mut c, 1).await, [n], "the entry ended the read");
        let blocked = until_reader_blocked(&mut conn, true, WAIT).await;
        assert!(blocked.is_some(), "the reader never blocked again");
        if appended.elapsed() < STOP_BY {
            appended_at = Some(appended);
            break;
        }
    }
    let appended = appended_at.expect("one of ten cycles stopped the node in time");
    node.begin_stop();
    let released = until_reader_blocked(&mut conn, false, BLOCK * 3).await;
    let since_entry = appended.elapsed();
    assert!(released.is_some(), "the blocking read was never released");
    assert!(
        since_entry < RELEASED_WITHIN,
        "the read ended {since_entry:?} after the entry: it timed out instead of being released"
    );
    let started = Instant::now();
    node.stop();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
}

fn consumers_or_none(conn: &mut redis::Connection, stream: &str) -> Vec<String> {
    let exists: i64 = redis::cmd("EXISTS")
        .arg(stream)
        .query(conn)
        .expect("EXISTS");
    if exists == 0 {
        return Vec::new();
    }
    consumers(conn, stream)
}

/// After Redis restarts (empty: group and stream gone), the reader reconnects by itself,
/// creates the group again and publishes what services append from then on.
#[actix_rt::test]
async fn ingestion_resumes_after_a_redis_restart() {
    let mut redis = RedisServer::start();
    let node = spawn_node(&redis, "a", &["--streams", "t12:events"]);
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("z:c").await;
    let mut conn = redis_conn(&redis.url());
    xadd(
        &mut conn,
        "t12:events",
        &[("channel", "z:c"), ("data", r#"{"n":1}"#)],
    );
    assert_eq!(numbers(&mut c, 1).await, vec![1]);

    redis.restart();
    let mut conn = redis_conn(&redis.url());
    eventually("the group is created again", || {
        let names = consumers_or_none(&mut conn, "t12:events");
        async move { names == ["a"] }
    })
    .await;
    xadd(
        &mut conn,
        "t12:events",
        &[("channel", "z:c"), ("data", r#"{"n":2}"#)],
    );
    let m = c
        .next_of_within("message", Duration::from_secs(10))
        .await
        .expect("the entry appended after the restart");
    assert_eq!(m["data"]["n"], 2);
    until_pending(&mut conn, "t12:events", 0, "acknowledged").await;
}

// ---- Throughput and order ----

/// A burst of 10,000 entries through one node reaches a subscriber exactly once and in stream
/// order.
#[actix_rt::test]
async fn a_burst_of_ten_thousand_entries_arrives_exactly_once_in_stream_order() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url());
    let node = spawn_node(
        &redis,
        "a",
        &[
            "--streams",
            "t11:events",
            "--client-queue-bytes",
            "67108864",
            "--node-queue-bytes",
            "134217728",
        ],
    );
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("burst:c").await;
    const N: u64 = 10_000;
    let entries: Vec<_> = (1..=N).map(|n| entry("burst:c", n)).collect();
    let started = Instant::now();
    xadd_many(&mut conn, "t11:events", &entries);
    for expected in 1..=N {
        let m = c.next_of("message").await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["n"].as_u64()),
            (Some(expected), Some(expected))
        );
    }
    eprintln!("10,000 stream entries delivered in {:?}", started.elapsed());
    c.expect_silence(Duration::from_millis(300)).await;
    until_pending(&mut conn, "t11:events", 0, "all acknowledged").await;
}

// ---- The demo producer ----

/// `realtime-hub demo-events` appends domain events that reach `dashboard:orders` and
/// `dashboard:sensors`, each `data` an envelope carrying the entry's `event_id` and
/// `event_type`.
#[actix_rt::test]
async fn demo_events_reach_dashboard_subscribers_as_domain_envelopes() {
    let redis = RedisServer::start();
    let mut conn = redis_conn(&redis.url());
    let node = spawn_node(&redis, "a", &[]);
    let mut c = Client::connect(&node, "u").await;
    c.subscribe("dashboard:orders").await;
    c.subscribe("dashboard:sensors").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_realtime-hub"))
        .args(["demo-events", "--rate", "40", "--duration", "1"])
        .env("HUB_REDIS_URL", redis.url())
        .output()
        .expect("run demo-events");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("events appended to `hub:events`"),
        "{stdout}"
    );
    let appended: u64 = redis::cmd("XLEN")
        .arg("hub:events")
        .query(&mut conn)
        .expect("XLEN");
    assert!(
        (30..=50).contains(&appended),
        "{appended} events in 1 s at 40/s"
    );
    let mut kinds = BTreeSet::new();
    for _ in 0..appended {
        let m = c.next_of("message").await;
        let data = &m["data"];
        assert_eq!(data["event_id"], m["event_id"], "{m}");
        assert_eq!(data["event_type"], m["event_type"], "{m}");
        assert!(
            data["aggregate_id"].is_string() && data["occurred_at"].is_string(),
            "{m}"
        );
        match m["channel"].as_str() {
            Some("dashboard:orders") => assert!(data["order_id"].is_string(), "{m}"),
            Some("dashboard:sensors") => assert!(data["temperature_c"].is_number(), "{m}"),
            other => panic!("unexpected channel {other:?}"),
        }
        kinds.insert(m["event_type"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        kinds.contains("sensor.reading") && kinds.contains("order.created"),
        "{kinds:?}"
    );
    c.expect_silence(Duration::from_millis(300)).await;

    let without = std::process::Command::new(env!("CARGO_BIN_EXE_realtime-hub"))
        .args(["demo-events", "--duration", "1"])
        .env_remove("HUB_REDIS_URL")
        .output()
        .expect("run demo-events");
    assert_eq!(without.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&without.stderr).contains("HUB_REDIS_URL"));
}
