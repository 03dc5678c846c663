//! Failures of a Redis-backed cluster (docs/scaling.md "While Redis is away", docs/protocol.md §3 and §6):
//! a node killed without warning is forgotten by the others within four heartbeats, a Redis
//! outage keeps connections up and answers `unavailable` until Redis is back, after which the
//! nodes resubscribe and re-assert their state by themselves; a cut pub/sub link comes back
//! with its gap filled from history; recovery, gapless subscribing and `event_id` dedup hold
//! across nodes.
//!
//! Every test runs its own `redis-server`. Nodes that must die abruptly or be watched for
//! panics run as subprocesses of the real binary, configured through `HUB_*` variables only;
//! the others run in process (`spawn_node`, once ready). Heartbeats are 1 s unless a test says
//! otherwise. Redis "hangs" by SIGSTOP (its connections stay open and nothing answers), keeps
//! its data across a SIGKILL with an fsynced append-only file ([`RedisServer::start_durable`]), and a
//! half-open pub/sub link is made by a proxy that stops forwarding it ([`SilencingProxy`]).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

/// `HUB_NODE_HEARTBEAT_S` of every node here.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Slack for a loaded two-core machine on top of a contractual bound.
const MARGIN: Duration = Duration::from_secs(2);

/// How long an answer may take while Redis is down: the engine deadline (2 s) plus slack.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(3);

/// An in-process node on `redis` (see `spawn_node`), once it reports ready: a node accepts
/// connections before its Redis link is up, and answers `unavailable` until then, as its
/// `/ready` says.
async fn ready_node(redis: &RedisServer, node: &str, extra: &[&str]) -> TestApp {
    ready_node_on(&redis.url(), node, "1", extra).await
}

/// An in-process node on the Redis at `url` with the given heartbeat (s), once ready.
async fn ready_node_on(url: &str, node: &str, heartbeat_s: &str, extra: &[&str]) -> TestApp {
    let mut args = vec![
        "--redis-url",
        url,
        "--node-id",
        node,
        "--node-heartbeat-s",
        heartbeat_s,
    ];
    args.extend_from_slice(extra);
    let app = spawn_app_with(&args);
    let ready = poll_until(WAIT, || async { api_get(&app, "/ready").await.0 == 200 }).await;
    assert!(ready, "node {node} never became ready");
    app
}

/// A JSON POST on `node`, with the API key.
async fn post(node: &impl Node, path: &str, body: Value) -> (u16, Value) {
    api_post(node, path, &body.to_string()).await
}

/// Publishes through `node`'s server API and returns the answer, asserting it succeeded.
async fn api_publish(node: &impl Node, channel: &str, data: Value) -> Value {
    let (status, body) = post(
        node,
        "/api/publish",
        json!({"channel": channel, "data": data}),
    )
    .await;
    assert_eq!(status, 200, "publish through the API: {body}");
    body
}

async fn connect(node: &impl Node, user: &str) -> Client {
    Client::connect_url(&node.ws(), &token(user)).await
}

/// The `node` names `/api/info` on `node` lists.
async fn listed_nodes(node: &impl Node) -> Vec<String> {
    let (_, info) = api_get(node, "/api/info").await;
    let mut names: Vec<String> = info["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The client ids `/api/presence/{channel}` on `node` lists.
async fn present_clients(node: &impl Node, channel: &str) -> Vec<String> {
    let (_, body) = api_get(node, &format!("/api/presence/{channel}")).await;
    let mut clients: Vec<String> = body["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["client"].as_str().map(str::to_owned))
        .collect();
    clients.sort();
    clients
}

/// The cluster-wide subscriber count of `channel` in `/api/channels` on `node` (0 if absent).
async fn subscriber_count(node: &impl Node, channel: &str) -> u64 {
    let (_, body) = api_get(node, "/api/channels").await;
    body["channels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["channel"] == channel)
        .and_then(|c| c["subscribers"].as_u64())
        .unwrap_or(0)
}

/// Connects `user` to `node` and hangs up: `Ok` when it was welcomed, `Err` with the close code
/// and reason when it was refused.
async fn try_connect(node: &impl Node, user: &str) -> Result<(), (u16, String)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}?token={}", node.ws(), token(user));
    let mut ws = open(&url).await;
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a first frame within the wait");
    match first {
        Some(Ok(Message::Text(t))) => {
            let welcome: Value = serde_json::from_str(t.as_str()).expect("JSON");
            assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
            Ok(())
        }
        Some(Ok(Message::Close(Some(frame)))) => {
            Err((u16::from(frame.code), frame.reason.to_string()))
        }
        other => panic!("expected welcome or a close frame, got {other:?}"),
    }
}

// ---- A node killed without warning ----

/// A node killed with SIGKILL is forgotten by the cluster within four heartbeats: its
/// subscribers' `leave` reaches the others, and `/api/info`, presence, `/api/channels` and the
/// per-user connection slots no longer count it or its clients.
#[actix_rt::test]
async fn a_node_killed_with_sigkill_is_forgotten_within_four_heartbeats() {
    let redis = RedisServer::start();
    let survivor = ready_node(&redis, "survivor", &["--max-connections-per-user", "1"]).await;
    let mut doomed = HubProcess::node(
        &redis.url(),
        "doomed",
        &[("HUB_MAX_CONNECTIONS_PER_USER", "1")],
    )
    .await;

    let mut watcher = connect(&survivor, "sam").await;
    watcher.subscribe("chat:room").await;
    let mut victim = connect(&doomed, "mallory").await;
    victim.subscribe("chat:room").await;
    let victim_id = victim.client_id();
    let join = watcher.next_of("join").await;
    assert_eq!(join["client"], victim_id.as_str(), "join: {join}");

    // The cluster knows the doomed node and its client before the kill.
    let known = poll_until(WAIT, || async {
        listed_nodes(&survivor).await == ["doomed", "survivor"]
            && present_clients(&survivor, "chat:room").await.len() == 2
            && subscriber_count(&survivor, "chat:room").await == 2
    })
    .await;
    assert!(known, "the survivor never saw the doomed node's figures");
    assert_eq!(
        try_connect(&survivor, "mallory").await.err(),
        Some((1008, "connection limit".to_owned())),
        "mallory's one slot is held on the doomed node"
    );

    doomed.assert_healthy();
    doomed.kill();
    let killed = Instant::now();
    let bound = HEARTBEAT * 4 + MARGIN;

    let leave = watcher
        .next_of_within("leave", bound)
        .await
        .unwrap_or_else(|| panic!("no leave within {bound:?} of the kill"));
    assert_eq!(
        (leave["channel"].as_str(), leave["user"].as_str()),
        (Some("chat:room"), Some("mallory"))
    );
    assert_eq!(leave["client"], victim_id.as_str());

    let left = bound.saturating_sub(killed.elapsed());
    assert!(
        poll_until(left, || async {
            listed_nodes(&survivor).await == ["survivor"]
        })
        .await,
        "/api/info still lists the dead node: {:?}",
        listed_nodes(&survivor).await
    );
    let left = bound.saturating_sub(killed.elapsed());
    assert!(
        poll_until(left, || async {
            !present_clients(&survivor, "chat:room")
                .await
                .contains(&victim_id)
        })
        .await,
        "presence still lists the dead node's client"
    );
    let left = bound.saturating_sub(killed.elapsed());
    assert!(
        poll_until(left, || async {
            subscriber_count(&survivor, "chat:room").await == 1
        })
        .await,
        "/api/channels still counts the dead node's subscriber: {}",
        api_get(&survivor, "/api/channels").await.1
    );
    let left = bound.saturating_sub(killed.elapsed());
    let freed = poll_until(left, || async {
        try_connect(&survivor, "mallory").await.is_ok()
    })
    .await;
    assert!(freed, "mallory's connection slot was never freed");
    assert_eq!(
        watcher.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
}

// ---- Redis down, and back ----

/// While Redis is down, connections stay open and answer pings, `/ready` is 503 with a reason
/// naming redis, `/health` stays 200, and publishing (WebSocket and API) and subscribing to a
/// new channel answer `unavailable` within the engine deadline instead of hanging.
#[actix_rt::test]
async fn a_redis_outage_keeps_connections_and_answers_unavailable() {
    let mut redis = RedisServer::start();
    let mut a = HubProcess::node(&redis.url(), "a", &[]).await;
    let mut b = HubProcess::node(&redis.url(), "b", &[]).await;
    let mut on_a = connect(&a, "alice").await;
    let mut on_b = connect(&b, "bob").await;
    on_a.subscribe("feed").await;
    on_b.subscribe("feed").await;
    for i in 1..=3u64 {
        api_publish(&a, "feed", json!(i)).await;
    }
    for c in [&mut on_a, &mut on_b] {
        for i in 1..=3u64 {
            assert_eq!(c.next_of("message").await["offset"], i);
        }
    }

    redis.kill();

    for node in [&a, &b] {
        let not_ready = poll_until(WAIT, || async { api_get(node, "/ready").await.0 == 503 }).await;
        assert!(not_ready, "/ready stayed 200 with Redis down");
        let (_, body) = api_get(node, "/ready").await;
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("redis"), "reason: {body}");
        assert_eq!(api_get(node, "/health").await.0, 200);
    }
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    }

    let started = Instant::now();
    let reply = on_a
        .request(json!({"type": "publish", "channel": "feed", "data": "lost"}))
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "publish over WebSocket: {reply}"
    );
    assert!(
        started.elapsed() < UNAVAILABLE_WITHIN,
        "took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let (status, body) = post(&b, "/api/publish", json!({"channel": "feed", "data": 1})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "publish through the API: {body}"
    );
    assert!(
        started.elapsed() < UNAVAILABLE_WITHIN,
        "took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let reply = on_b
        .request(json!({"type": "subscribe", "channel": "fresh"}))
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "subscribe to a new channel: {reply}"
    );
    assert!(
        started.elapsed() < UNAVAILABLE_WITHIN,
        "took {:?}",
        started.elapsed()
    );

    // The failures left the connections open.
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    }
    a.assert_healthy();
    b.assert_healthy();
}

/// After Redis comes back empty, nodes turn ready again and resubscribe by themselves: the
/// same connections, which did nothing, get the new publications on every node, in a new
/// epoch starting at offset 1.
#[actix_rt::test]
async fn after_redis_restarts_the_same_subscribers_get_new_publications_on_every_node() {
    let mut redis = RedisServer::start();
    let mut a = HubProcess::node(&redis.url(), "a", &[]).await;
    let mut b = HubProcess::node(&redis.url(), "b", &[]).await;
    let mut on_a = connect(&a, "alice").await;
    let mut on_b = connect(&b, "bob").await;
    let old_epoch = on_a.subscribe("feed").await["epoch"].clone();
    on_b.subscribe("feed").await;
    for i in 1..=3u64 {
        api_publish(&b, "feed", json!(i)).await;
    }
    for c in [&mut on_a, &mut on_b] {
        for i in 1..=3u64 {
            assert_eq!(c.next_of("message").await["offset"], i);
        }
    }

    redis.kill();
    for node in [&a, &b] {
        assert!(
            poll_until(WAIT, || async { api_get(node, "/ready").await.0 == 503 }).await,
            "/ready stayed 200 with Redis down"
        );
        // Traffic goes on during the outage, and fails.
        let (status, _) = post(node, "/api/publish", json!({"channel": "feed", "data": 0})).await;
        assert_eq!(status, 503);
    }
    redis.restart();
    for node in [&a, &b] {
        assert!(
            poll_until(WAIT, || async { api_get(node, "/ready").await.0 == 200 }).await,
            "/ready did not return to 200 after Redis came back: {}",
            api_get(node, "/ready").await.1
        );
    }

    let first = api_publish(&a, "feed", json!("after")).await;
    assert_eq!(
        first["offset"], 1,
        "a new epoch starts at offset 1: {first}"
    );
    assert_ne!(
        first["epoch"], old_epoch,
        "Redis came back empty: a new epoch"
    );
    api_publish(&b, "feed", json!("after-2")).await;
    for (name, c) in [("a", &mut on_a), ("b", &mut on_b)] {
        for (offset, data) in [(1, "after"), (2, "after-2")] {
            let m = c.next_of_within("message", WAIT).await.unwrap_or_else(|| {
                panic!("the subscriber on node {name} never got offset {offset} of the new epoch")
            });
            assert_eq!(
                (&m["offset"], &m["epoch"], m["data"].as_str()),
                (&json!(offset), &first["epoch"], Some(data)),
                "subscriber on node {name}: {m}"
            );
        }
    }
    a.assert_healthy();
    b.assert_healthy();
}

/// After Redis comes back empty, each node's heartbeat writes its presence entries again:
/// `/api/presence` lists every subscriber within a few heartbeats, though no client did a thing.
#[actix_rt::test]
async fn after_redis_restarts_presence_is_reasserted_by_the_heartbeat() {
    let mut redis = RedisServer::start();
    let mut a = HubProcess::node(&redis.url(), "a", &[]).await;
    let mut b = HubProcess::node(&redis.url(), "b", &[]).await;
    let mut on_a = connect(&a, "alice").await;
    let mut on_b = connect(&b, "bob").await;
    on_a.subscribe("chat:room").await;
    on_b.subscribe("chat:room").await;
    let mut everyone = vec![on_a.client_id(), on_b.client_id()];
    everyone.sort();
    assert!(
        poll_until(WAIT, || async {
            present_clients(&a, "chat:room").await == everyone
        })
        .await,
        "presence before the outage"
    );

    redis.restart();
    assert!(
        poll_until(WAIT, || async { api_get(&a, "/ready").await.0 == 200 }).await,
        "/ready after Redis came back"
    );
    let reasserted = poll_until(HEARTBEAT * 4 + MARGIN, || async {
        present_clients(&a, "chat:room").await == everyone
            && present_clients(&b, "chat:room").await == everyone
    })
    .await;
    assert!(
        reasserted,
        "presence after the restart: {:?}",
        present_clients(&a, "chat:room").await
    );
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    }
    a.assert_healthy();
    b.assert_healthy();
}

/// The first requests after Redis came back are answered, though the node's command links sat
/// idle through the restart and only a command can find them dead.
#[actix_rt::test]
async fn the_first_requests_after_redis_restarts_are_answered() {
    let mut redis = RedisServer::start();
    let node = ready_node(&redis, "n1", &["--streams", "hub:events"]).await;
    assert_eq!(
        api_get(&node, "/api/info").await.0,
        200,
        "before the restart"
    );

    redis.restart();
    assert!(
        poll_until(WAIT, || async { api_get(&node, "/ready").await.0 == 200 }).await,
        "/ready after Redis came back"
    );
    let (status, body) = api_get(&node, "/api/info").await;
    assert_eq!(status, 200, "the first /api/info after the restart: {body}");
    let (status, body) = api_get(&node, "/api/deadletters").await;
    assert_eq!(
        status, 200,
        "the first /api/deadletters after the restart: {body}"
    );
    api_publish(&node, "chat:after", json!("first")).await;
}

// ---- Across nodes ----

/// A client whose node stopped reconnects to the restarted node with `recover` and gets
/// exactly what was published meanwhile through another node, then live publications.
#[actix_rt::test]
async fn a_client_recovers_on_a_restarted_node_what_another_node_published_meanwhile() {
    let redis = RedisServer::start();
    let mut a = ready_node(&redis, "a", &[]).await;
    let b = ready_node(&redis, "b", &[]).await;
    let mut x = connect(&a, "xavier").await;
    let epoch = x.subscribe("r").await["epoch"].clone();
    api_publish(&b, "r", json!(1)).await;
    assert_eq!(x.next_of("message").await["offset"], 1);

    a.begin_stop();
    assert_eq!(x.expect_close().await, (1001, "going away".to_owned()));
    a.stop();
    for i in 2..=4 {
        api_publish(&b, "r", json!(i)).await;
    }
    let a2 = ready_node(&redis, "a", &[]).await;

    let mut x = connect(&a2, "xavier").await;
    let s = x
        .request(
            json!({"type": "subscribe", "channel": "r", "recover": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert_eq!(
        (s["type"].as_str(), s["recovered"].as_bool(), &s["offset"]),
        (Some("subscribed"), Some(true), &json!(4)),
        "{s}"
    );
    assert_eq!(offsets(&s["publications"]), vec![2, 3, 4]);
    let data: Vec<&Value> = s["publications"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(data, [&json!(2), &json!(3), &json!(4)]);
    api_publish(&b, "r", json!(5)).await;
    assert_eq!(x.next_of("message").await["offset"], 5);
}

/// When a node's pub/sub link is cut while Redis stays up, its subscribers still get what
/// another node published meanwhile, from history, once the link is back by itself: every
/// offset once, in order, and live publications after.
#[actix_rt::test]
async fn a_cut_pubsub_link_comes_back_and_fills_the_gap_from_history() {
    let redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let b = ready_node(&redis, "b", &[]).await;
    let mut reader = connect(&a, "reader").await;
    reader.subscribe("news").await;
    let mut last = api_publish(&b, "news", json!(1)).await["offset"]
        .as_u64()
        .expect("offset");
    assert_eq!(reader.next_of("message").await["offset"], last);

    let mut conn = redis_conn(&redis.url());
    // The node reconnects after at least 100 ms: publications made right after it noticed the
    // cut can only reach its subscriber through history. `/ready` still 503 after them shows
    // they were; a slow machine may need another try.
    let mut published_while_cut = false;
    for _ in 0..5 {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut conn)
            .expect("CLIENT KILL");
        assert!(killed >= 1, "no pub/sub link to cut");
        assert!(
            poll_until(WAIT, || async { api_get(&a, "/ready").await.0 == 503 }).await,
            "node a never noticed its link was cut"
        );
        for _ in 0..3 {
            last = api_publish(&b, "news", json!(last + 1)).await["offset"]
                .as_u64()
                .expect("offset");
        }
        published_while_cut = api_get(&a, "/ready").await.0 == 503;
        assert!(
            poll_until(WAIT, || async { api_get(&a, "/ready").await.0 == 200 }).await,
            "node a's link never came back"
        );
        if published_while_cut {
            break;
        }
    }
    assert!(
        published_while_cut,
        "nothing was published while the link was down: the test proved little"
    );

    // Nothing else is published until the gap has arrived: the node fills it by itself.
    for expected in 2..=last {
        let m = reader
            .next_of_within("message", WAIT)
            .await
            .unwrap_or_else(|| {
                panic!("offset {expected}, published while the link was cut, never arrived")
            });
        assert_eq!(m["offset"], expected, "{m}");
    }
    let end = api_publish(&b, "news", json!("end")).await;
    assert_eq!(end["offset"], last + 1);
    assert_eq!(reader.next_of("message").await["offset"], last + 1);
}

/// Subscribers joining on any of three nodes while publishers on all three publish flat out
/// to one channel see every offset after their `subscribed` exactly once, in order.
#[actix_rt::test]
async fn subscribing_on_any_node_under_concurrent_publishers_is_gapless() {
    const PER_NODE: u64 = 1000;
    const TOTAL: u64 = PER_NODE * 3;
    const IN_FLIGHT: u64 = 32;
    let redis = RedisServer::start();
    let fast = ["--client-rate", "100000"];
    let nodes = [
        ready_node(&redis, "a", &fast).await,
        ready_node(&redis, "b", &fast).await,
        ready_node(&redis, "c", &fast).await,
    ];
    let mut publishers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        publishers.push(connect(node, &format!("pub{n}")).await);
    }
    let publishing = join_all(publishers.into_iter().map(|mut publisher| async move {
        // Pipelined: up to IN_FLIGHT publications at once from each of the three nodes.
        for i in 0..PER_NODE + IN_FLIGHT {
            if i < PER_NODE {
                publisher
                    .send(json!({"type": "publish", "id": i, "channel": "g", "data": i}))
                    .await;
            }
            if let Some(done) = i.checked_sub(IN_FLIGHT) {
                let reply = publisher.reply_to(done).await;
                assert_eq!(reply["type"], "published", "{reply}");
            }
        }
    }));
    let subscribing = async {
        let mut joined = Vec::new();
        for n in 0..9 {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let on = n % nodes.len();
            let mut c = connect(&nodes[on], &format!("sub{n}")).await;
            let start = c.subscribe("g").await["offset"].as_u64().expect("offset");
            joined.push((c, start, on));
        }
        joined
    };
    let (_, subscribers) = tokio::join!(publishing, subscribing);

    let mid_stream: Vec<usize> = subscribers
        .iter()
        .filter(|(_, start, _)| (1..TOTAL).contains(start))
        .map(|(_, _, on)| *on)
        .collect();
    assert!(
        mid_stream.len() >= 3,
        "only {} subscribers joined mid-stream: the test proved little",
        mid_stream.len()
    );
    let mut mid_nodes = mid_stream.clone();
    mid_nodes.sort_unstable();
    mid_nodes.dedup();
    assert!(
        mid_nodes.len() >= 2,
        "mid-stream joins on nodes {mid_stream:?} only"
    );

    // A last publication marks the end: whatever came before it was a gap or a repeat.
    let end = api_publish(&nodes[0], "g", json!("end")).await;
    assert_eq!(end["offset"], TOTAL + 1);
    for (mut c, start, on) in subscribers {
        for expected in start + 1..=TOTAL + 1 {
            let m = c.next_of("message").await;
            assert_eq!(
                m["offset"], expected,
                "subscriber on node {on} starting at {start}"
            );
        }
    }
}

/// The same `event_id` published through two nodes at once is one publication: both answers
/// carry the same offset and epoch, and subscribers on both nodes receive it once.
#[actix_rt::test]
async fn the_same_event_id_through_two_nodes_is_published_once() {
    let redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let b = ready_node(&redis, "b", &[]).await;
    let mut on_a = connect(&a, "ann").await;
    let mut on_b = connect(&b, "ben").await;
    on_a.subscribe("orders").await;
    on_b.subscribe("orders").await;
    let mut publisher = connect(&b, "shop").await;

    let via_api = post(
        &a,
        "/api/publish",
        json!({"channel": "orders", "data": "via-a", "event_id": "order-42"}),
    );
    let via_ws = publisher.request(json!({
        "type": "publish", "channel": "orders", "data": "via-b", "event_id": "order-42"
    }));
    let ((status, from_a), from_b) = tokio::join!(via_api, via_ws);
    assert_eq!(status, 200, "{from_a}");
    assert_eq!(from_b["type"], "published", "{from_b}");
    assert_eq!(
        (&from_a["offset"], &from_a["epoch"], &from_a["event_id"]),
        (&from_b["offset"], &from_b["epoch"], &from_b["event_id"]),
        "answers through a and b"
    );
    assert_eq!(from_a["offset"], 1);

    // The next publication must be the next thing each subscriber sees.
    api_publish(&b, "orders", json!("next")).await;
    let mut delivered = Vec::new();
    for c in [&mut on_a, &mut on_b] {
        let once = c.next_of("message").await;
        assert_eq!(
            (&once["offset"], once["event_id"].as_str()),
            (&json!(1), Some("order-42"))
        );
        let next = c.next_of("message").await;
        assert_eq!(
            (&next["offset"], &next["data"]),
            (&json!(2), &json!("next"))
        );
        delivered.push(once["data"].clone());
    }
    assert_eq!(delivered[0], delivered[1], "one publication, one content");
    let (_, history) = api_get(&a, "/api/history/orders").await;
    assert_eq!(offsets(&history["publications"]), vec![1, 2]);
}

// ---- Tools for the failures below ----

/// How many connections are subscribed to `topic` (`PUBSUB NUMSUB`).
fn numsub(conn: &mut redis::Connection, topic: &str) -> i64 {
    let answer: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(topic)
        .query(conn)
        .expect("PUBSUB NUMSUB");
    answer.1
}

/// A Redis server frozen with SIGSTOP: its connections stay open and nothing answers, as with
/// a hung server or a long pause. Thawed (SIGCONT) when dropped, even if the test fails.
struct Frozen {
    pid: String,
}

impl Frozen {
    fn freeze(redis: &RedisServer) -> Frozen {
        let pid = redis.pid().expect("a running redis-server").to_string();
        signal_pid("STOP", &pid);
        Frozen { pid }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_pid("CONT", &self.pid);
    }
}

/// One connection through [`SilencingProxy`].
struct Proxied {
    /// Set once the client sent a SUBSCRIBE: a pub/sub link.
    pubsub: AtomicBool,
    /// Nothing is forwarded either way any more; the sockets stay open.
    silent: AtomicBool,
    /// Clones of both sockets, to close them when the proxy goes.
    sockets: Vec<std::net::TcpStream>,
}

/// A TCP proxy in front of Redis that can make the pub/sub links through it go silent while
/// every other connection flows: a half-open link, open but carrying nothing, which no error
/// and no end of stream reveals.
struct SilencingProxy {
    port: u16,
    conns: Arc<Mutex<Vec<Arc<Proxied>>>>,
    /// Tells the accepting thread to stop; set on drop.
    stop: Arc<AtomicBool>,
}

impl SilencingProxy {
    fn start(target: u16) -> SilencingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking accept");
        let conns: Arc<Mutex<Vec<Arc<Proxied>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (list, stopping) = (Arc::clone(&conns), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let conn = Arc::new(Proxied {
                    pubsub: AtomicBool::new(false),
                    silent: AtomicBool::new(false),
                    sockets: [&client, &server]
                        .iter()
                        .filter_map(|s| s.try_clone().ok())
                        .collect(),
                });
                list.lock().expect("proxy list").push(Arc::clone(&conn));
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let up = Arc::clone(&conn);
                std::thread::spawn(move || pump(client, server, &up, true));
                std::thread::spawn(move || pump(s2, c2, &conn, false));
            }
        });
        SilencingProxy { port, conns, stop }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Silences every pub/sub link open now; answers how many. Later connections flow.
    fn silence_pubsub(&self) -> usize {
        self.silence(|c| c.pubsub.load(Ordering::Acquire))
    }

    /// Silences every connection open now; answers how many. Later connections flow.
    fn silence_all(&self) -> usize {
        self.silence(|_| true)
    }

    fn silence(&self, which: impl Fn(&Proxied) -> bool) -> usize {
        let conns = self.conns.lock().expect("proxy list");
        let mut silenced = 0;
        for conn in conns.iter().filter(|c| which(c)) {
            if !conn.silent.swap(true, Ordering::AcqRel) {
                silenced += 1;
            }
        }
        silenced
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for conn in self.conns.lock().expect("proxy list").iter() {
            for socket in &conn.sockets {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Copies one direction of a proxied connection until either side closes; a silent
/// connection's bytes are read and dropped.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    conn: &Proxied,
    upstream: bool,
) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if upstream
            && buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
        {
            conn.pubsub.store(true, Ordering::Release);
        }
        if conn.silent.load(Ordering::Acquire) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// The user ids of a `presence` answer's clients, sorted.
fn users_of(clients: &Value) -> Vec<String> {
    let mut users: Vec<String> = clients
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["user"].as_str().map(str::to_owned))
        .collect();
    users.sort();
    users
}

// ---- Leases and dead nodes ----

/// The `leave` pushes of a killed node's clients reach subscribers on every other node even
/// when presence is queried while its leases have run out but it is not yet removed: a
/// presence query hides expired entries without deleting them (and their `leave`).
#[actix_rt::test]
async fn leaves_of_a_killed_node_reach_every_node_even_if_presence_is_queried_meanwhile() {
    let redis = RedisServer::start();
    let one = ready_node(&redis, "one", &[]).await;
    let two = ready_node(&redis, "two", &[]).await;
    let mut doomed = HubProcess::node(&redis.url(), "doomed", &[]).await;
    let mut on_one = connect(&one, "ann").await;
    on_one.subscribe("chat:room").await;
    let mut on_two = connect(&two, "bea").await;
    on_two.subscribe("chat:room").await;
    let mut victim = connect(&doomed, "vic").await;
    victim.subscribe("chat:room").await;
    let victim_id = victim.client_id();
    for c in [&mut on_one, &mut on_two] {
        let join = c.next_of_within("join", WAIT).await.expect("join of vic");
        if join["user"] == "bea" {
            let again = c.next_of_within("join", WAIT).await.expect("join of vic");
            assert_eq!(again["client"], victim_id.as_str(), "{again}");
        } else {
            assert_eq!(join["client"], victim_id.as_str(), "{join}");
        }
    }
    assert_eq!(present_clients(&one, "chat:room").await.len(), 3);

    doomed.kill();
    let killed = Instant::now();
    let bound = HEARTBEAT * 4 + MARGIN;
    // Queried all along, on both survivors: the victim vanishes from presence first (its
    // lease ran out), and is removed with its `leave` a heartbeat later at most.
    let gone = poll_until(bound, || async {
        let here = present_clients(&one, "chat:room").await;
        let there = present_clients(&two, "chat:room").await;
        !here.contains(&victim_id) && !there.contains(&victim_id)
    })
    .await;
    assert!(gone, "presence still lists the killed node's client");
    for (name, c) in [("one", &mut on_one), ("two", &mut on_two)] {
        let left = bound.saturating_sub(killed.elapsed()) + HEARTBEAT;
        let leave = c
            .next_of_within("leave", left)
            .await
            .unwrap_or_else(|| panic!("no leave of the killed node's client on node {name}"));
        assert_eq!(
            (leave["client"].as_str(), leave["user"].as_str()),
            (Some(victim_id.as_str()), Some("vic")),
            "{leave}"
        );
    }
    assert_eq!(listed_nodes(&one).await, ["one", "two"]);
}

/// Redis restarted with its data after an outage longer than three heartbeats (every lease in
/// it has run out) does not make the nodes take each other for dead once it is back: neither
/// removes the other, no `leave` is pushed, presence is unchanged.
#[actix_rt::test]
async fn a_redis_restart_with_data_after_every_lease_ran_out_removes_no_node() {
    let mut redis = RedisServer::start_durable();
    let mut a = HubProcess::node(&redis.url(), "a", &[]).await;
    let mut b = HubProcess::node(&redis.url(), "b", &[]).await;
    let mut on_a = connect(&a, "alice").await;
    on_a.subscribe("chat:room").await;
    let mut on_b = connect(&b, "bob").await;
    on_b.subscribe("chat:room").await;
    assert_eq!(on_a.next_of("join").await["user"], "bob");
    let mut everyone = vec![on_a.client_id(), on_b.client_id()];
    everyone.sort();
    assert!(
        poll_until(WAIT, || async {
            listed_nodes(&a).await == ["a", "b"]
                && present_clients(&b, "chat:room").await == everyone
        })
        .await,
        "the cluster before the outage"
    );

    redis.kill();
    for node in [&a, &b] {
        assert!(
            poll_until(WAIT, || async { api_get(node, "/ready").await.0 == 503 }).await,
            "/ready stayed 200 with Redis down"
        );
    }
    // The scenario itself: every lease kept in Redis (three heartbeats) runs out meanwhile.
    tokio::time::sleep(HEARTBEAT * 3 + MARGIN).await;
    redis.launch();
    for node in [&a, &b] {
        assert!(
            poll_until(WAIT, || async { api_get(node, "/ready").await.0 == 200 }).await,
            "/ready did not come back after the restart"
        );
    }

    // A wrong removal would come at the first beats after the restart; give it a lease and
    // more.
    let watch = HEARTBEAT * 5;
    let (leave_a, leave_b) = tokio::join!(
        on_a.next_of_within("leave", watch),
        on_b.next_of_within("leave", watch)
    );
    assert_eq!(
        (leave_a, leave_b),
        (None, None),
        "a node was taken for dead"
    );
    for node in [&a, &b] {
        let log = node.stderr.text();
        assert!(
            !log.contains("removing a node that stopped renewing"),
            "a node was taken for dead:\n{log}"
        );
    }
    assert_eq!(present_clients(&a, "chat:room").await, everyone);
    a.assert_healthy();
    b.assert_healthy();
}

/// A node that was alive after all when another took it for dead (its lease ran out, as when
/// it is cut off from Redis for a lease) announces its clients again: the `leave` the others
/// got is followed by a `join`, and presence lists them again.
#[actix_rt::test]
async fn a_live_node_taken_for_dead_announces_its_clients_again() {
    let redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let b = ready_node(&redis, "b", &[]).await;
    let mut on_a = connect(&a, "alice").await;
    on_a.subscribe("chat:room").await;
    let mut on_b = connect(&b, "bob").await;
    on_b.subscribe("chat:room").await;
    assert_eq!(on_a.next_of("join").await["user"], "bob");

    // Node b's lease looks run out (score 0) until node a removes it.
    let mut conn = redis_conn(&redis.url());
    let nodes = realtime_hub::engine::redis::Keys::new("hub").nodes();
    let deadline = Instant::now() + HEARTBEAT * 6 + MARGIN;
    let leave = loop {
        let _: i64 = redis::cmd("ZADD")
            .arg(&nodes)
            .arg(0)
            .arg("b")
            .query(&mut conn)
            .expect("ZADD");
        if let Some(leave) = on_a
            .next_of_within("leave", Duration::from_millis(50))
            .await
        {
            break leave;
        }
        assert!(Instant::now() < deadline, "node a never removed node b");
    };
    assert_eq!(leave["user"], "bob", "{leave}");

    let join = on_a
        .next_of_within("join", HEARTBEAT * 3 + MARGIN)
        .await
        .expect("bob was never announced again");
    assert_eq!(join["user"], "bob", "{join}");
    let bob = on_b.client_id();
    assert!(
        poll_until(WAIT, || async {
            present_clients(&a, "chat:room").await.contains(&bob)
        })
        .await,
        "presence does not list bob again"
    );
}

// ---- What an error means ----

/// A command Redis refuses (a wrong-typed key makes the publish script fail) answers
/// `internal` over WebSocket and 500 over HTTP, and the node stays ready: Redis answered.
#[actix_rt::test]
async fn a_command_redis_refuses_answers_internal_and_the_node_stays_ready() {
    let redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let _: () = redis::cmd("SET")
        .arg(realtime_hub::engine::redis::Keys::new("hub").meta("broken"))
        .arg("not a hash")
        .query(&mut redis_conn(&redis.url()))
        .expect("SET");

    let (status, body) = post(&a, "/api/publish", json!({"channel": "broken", "data": 1})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("internal")),
        "{body}"
    );
    let mut c = connect(&a, "u").await;
    let reply = c
        .request(json!({"type": "publish", "channel": "broken", "data": 1}))
        .await;
    assert_eq!(reply["code"], "internal", "{reply}");
    assert_eq!(
        api_get(&a, "/ready").await.0,
        200,
        "{}",
        api_get(&a, "/ready").await.1
    );
    api_publish(&a, "fine", json!(1)).await;
}

/// A publication Redis refuses half-way (its history key is of the wrong type) leaves no trace:
/// once the key is repaired, the same `event_id` is published, at the next offset, rather than
/// answered as a duplicate of a publication that never happened.
#[actix_rt::test]
async fn a_publication_refused_half_way_is_not_taken_for_a_duplicate_later() {
    let redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let keys = realtime_hub::engine::redis::Keys::new("hub");
    let mut conn = redis_conn(&redis.url());
    api_publish(&a, "half", json!(0)).await;
    let _: () = redis::cmd("SET")
        .arg(keys.history("half"))
        .arg("not a list")
        .query(&mut conn)
        .expect("SET");
    let body = json!({"channel": "half", "data": 1, "event_id": "ev-half"});
    let (status, answer) = post(&a, "/api/publish", body.clone()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (500, Some("internal")),
        "{answer}"
    );

    let _: () = redis::cmd("DEL")
        .arg(keys.history("half"))
        .query(&mut conn)
        .expect("DEL");
    let (status, answer) = post(&a, "/api/publish", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["offset"], 2, "published, not a duplicate: {answer}");
    let (_, page) = api_get(&a, "/api/history/half").await;
    assert_eq!(page["offset"], 2, "{page}");
}

/// A presence write Redis refuses is not retried ahead of the writes behind it: the next
/// subscriber's `subscribed` comes at once, and presence lists it.
#[actix_rt::test]
async fn a_presence_write_redis_refuses_does_not_hold_up_the_next() {
    let redis = RedisServer::start();
    // The default heartbeat: a refused write used to be retried for a whole lease (15 s).
    let a = ready_node_on(&redis.url(), "a", "5", &[]).await;
    let _: () = redis::cmd("SET")
        .arg(realtime_hub::engine::redis::Keys::new("hub").presence("chat:bad"))
        .arg("not a hash")
        .query(&mut redis_conn(&redis.url()))
        .expect("SET");
    let mut first = connect(&a, "first").await;
    first.subscribe("chat:bad").await;

    let mut next = connect(&a, "next").await;
    let started = Instant::now();
    next.subscribe("chat:good").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "subscribed after {took:?}");
    let (_, body) = api_get(&a, "/api/presence/chat:good").await;
    assert_eq!(users_of(&body["clients"]), ["next"], "{body}");
}

// ---- A link that dies without ending ----

/// A pub/sub link that goes silent without closing (half-open) is noticed, because this
/// node's own heartbeats stop coming back over it, and replaced within about three
/// heartbeats: what was published meanwhile arrives, in order, and live pushes follow.
#[actix_rt::test]
async fn a_silent_pubsub_link_is_replaced_and_the_gap_filled() {
    let redis = RedisServer::start();
    let proxy = SilencingProxy::start(redis.port);
    let a = ready_node_on(&proxy.url(), "a", "1", &[]).await;
    let b = ready_node(&redis, "b", &[]).await;
    let mut reader = connect(&a, "reader").await;
    reader.subscribe("news").await;
    api_publish(&b, "news", json!(1)).await;
    assert_eq!(reader.next_of("message").await["offset"], 1);

    assert_eq!(proxy.silence_pubsub(), 1, "node a's one pub/sub link");
    for i in 2..=4 {
        api_publish(&b, "news", json!(i)).await;
    }
    let bound = HEARTBEAT * 4 + MARGIN;
    for expected in 2..=4 {
        let m = reader
            .next_of_within("message", bound)
            .await
            .unwrap_or_else(|| panic!("offset {expected} never arrived over a new link"));
        assert_eq!(m["offset"], expected, "{m}");
    }
    api_publish(&b, "news", json!("live")).await;
    assert_eq!(reader.next_of("message").await["offset"], 5);
}

/// When every link to Redis goes silent without closing (Redis gone behind a firewall, say),
/// the command link is replaced after two answers in a row time out, like the pub/sub link
/// after its missed heartbeats: publishing works again within seconds instead of when the
/// kernel gives the connection up, and subscribers get what is published then.
#[actix_rt::test]
async fn silent_links_are_replaced_and_publishing_comes_back() {
    let redis = RedisServer::start();
    let proxy = SilencingProxy::start(redis.port);
    let a = ready_node_on(&proxy.url(), "a", "1", &[]).await;
    let mut reader = connect(&a, "reader").await;
    reader.subscribe("news").await;
    api_publish(&a, "news", json!(1)).await;
    assert_eq!(reader.next_of("message").await["offset"], 1);

    assert!(proxy.silence_all() >= 2, "the command and pub/sub links");
    let deadline = Instant::now() + Duration::from_secs(20);
    let offset = loop {
        let (status, body) = post(&a, "/api/publish", json!({"channel": "news", "data": 2})).await;
        if status == 200 {
            break body["offset"].clone();
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "publishing never came back: {body}"
        );
    };
    let m = reader
        .next_of_within("message", HEARTBEAT * 4 + MARGIN)
        .await
        .expect("the publication over the new links");
    assert_eq!((m["offset"].clone(), m["data"].clone()), (offset, json!(2)));
}

// ---- Redis hangs ----

/// Subscribing to a new channel while Redis hangs (the link looks up, nothing answers)
/// answers `unavailable` from the engine within its deadline, not the session's "overloaded"
/// timeout.
#[actix_rt::test]
async fn subscribing_while_redis_hangs_answers_unavailable_within_the_deadline() {
    let redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let mut c = connect(&a, "u").await;
    let _frozen = Frozen::freeze(&redis);
    let started = Instant::now();
    let reply = c
        .request(json!({"type": "subscribe", "channel": "fresh"}))
        .await;
    let took = started.elapsed();
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{reply}"
    );
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(!message.contains("overloaded"), "{reply}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// While Redis hangs, `/api/presence`, `/api/history`, `/api/info` and `/api/channels` answer
/// 503 `unavailable` within the engine deadline.
#[actix_rt::test]
async fn while_redis_hangs_the_server_api_answers_503_within_the_deadline() {
    let redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let _frozen = Frozen::freeze(&redis);
    for path in [
        "/api/presence/chat:x",
        "/api/history/chat:x",
        "/api/info",
        "/api/channels",
    ] {
        let started = Instant::now();
        let (status, body) = api_get(&a, path).await;
        let took = started.elapsed();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "{path}: {body}"
        );
        assert!(took < Duration::from_millis(2500), "{path} took {took:?}");
    }
}

// ---- Redis down, and back (more) ----

/// While Redis is down, `/api/presence`, `/api/history`, `/api/info` and `/api/channels`
/// answer 503 `unavailable` within the engine deadline.
#[actix_rt::test]
async fn while_redis_is_down_the_server_api_answers_503_within_the_deadline() {
    let mut redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    redis.kill();
    assert!(
        poll_until(WAIT, || async { api_get(&a, "/ready").await.0 == 503 }).await,
        "/ready stayed 200 with Redis down"
    );
    for path in [
        "/api/presence/chat:x",
        "/api/history/chat:x",
        "/api/info",
        "/api/channels",
    ] {
        let started = Instant::now();
        let (status, body) = api_get(&a, path).await;
        let took = started.elapsed();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "{path}: {body}"
        );
        assert!(took < Duration::from_millis(2500), "{path} took {took:?}");
    }
}

/// A subscribe refused during an outage leaves nothing behind (its topic is not subscribed
/// once Redis is back) and works when tried again after the outage.
#[actix_rt::test]
async fn a_subscribe_refused_during_an_outage_works_once_redis_is_back() {
    let mut redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let mut c = connect(&a, "u").await;
    redis.kill();
    assert!(
        poll_until(WAIT, || async { api_get(&a, "/ready").await.0 == 503 }).await,
        "/ready stayed 200 with Redis down"
    );
    let refused = c
        .request(json!({"type": "subscribe", "channel": "later"}))
        .await;
    assert_eq!(refused["code"], "unavailable", "{refused}");

    redis.restart();
    assert!(
        poll_until(WAIT, || async { api_get(&a, "/ready").await.0 == 200 }).await,
        "/ready after Redis came back"
    );
    let topic = realtime_hub::engine::redis::Keys::new("hub").topic("later");
    let mut conn = redis_conn(&redis.url());
    let control = realtime_hub::engine::redis::Keys::new("hub").control();
    assert!(
        poll_until(WAIT, || {
            let n = numsub(&mut conn, &control);
            async move { n == 1 }
        })
        .await,
        "the link never resubscribed the control topic"
    );
    assert_eq!(
        numsub(&mut conn, &topic),
        0,
        "the refused subscribe left its topic"
    );
    c.subscribe("later").await;
    assert_eq!(numsub(&mut conn, &topic), 1);
    api_publish(&a, "later", json!("now")).await;
    assert_eq!(c.next_of("message").await["data"], "now");
}

/// After an outage long enough for the reconnect backoff to reach its 2 s cap, the bridge is
/// back within about 2 s of Redis returning and resubscribes by itself: the same connection,
/// which did nothing, gets the next publication.
#[actix_rt::test]
async fn after_an_outage_past_the_backoff_cap_the_link_is_back_within_two_seconds() {
    let mut redis = RedisServer::start();
    let a = ready_node(&redis, "a", &[]).await;
    let b = ready_node(&redis, "b", &[]).await;
    let mut reader = connect(&a, "reader").await;
    reader.subscribe("feed").await;
    redis.kill();
    assert!(
        poll_until(WAIT, || async { api_get(&a, "/ready").await.0 == 503 }).await,
        "/ready stayed 200 with Redis down"
    );
    // The scenario: 100 ms doubling reaches the 2 s cap after about 3 s of failed attempts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.restart();
    let back = Instant::now();

    let topic = realtime_hub::engine::redis::Keys::new("hub").topic("feed");
    let mut conn = redis_conn(&redis.url());
    let resubscribed = poll_until(Duration::from_secs(3), || {
        let n = numsub(&mut conn, &topic);
        async move { n == 1 }
    })
    .await;
    assert!(resubscribed, "the topic was not resubscribed within 3 s");
    let took = back.elapsed();
    assert!(
        took <= Duration::from_millis(2500),
        "resubscribed after {took:?}"
    );

    let published = poll_until(WAIT, || async {
        post(
            &b,
            "/api/publish",
            json!({"channel": "feed", "data": "back"}),
        )
        .await
        .0 == 200
    })
    .await;
    assert!(published, "node b could not publish after the outage");
    let m = reader
        .next_of_within("message", WAIT)
        .await
        .expect("the same connection gets the next publication");
    assert_eq!(m["data"], "back", "{m}");
}

/// Redis killed and restarted with its data, mid-traffic, while publishers on two nodes keep
/// publishing through it: a client that recovers from before the traffic, on either node, gets
/// every publication that was acknowledged, once, in order (and the subscribers that stayed
/// connected get the same sequence).
#[actix_rt::test]
async fn recovering_clients_get_every_acknowledged_publication_across_a_redis_restart() {
    use std::cell::{Cell, RefCell};
    let mut redis = RedisServer::start_durable();
    let url = redis.url();
    let settings = ["--history-size", "100000", "--client-rate", "100000"];
    let nodes = [
        ready_node_on(&url, "a", "1", &settings).await,
        ready_node_on(&url, "b", "1", &settings).await,
    ];
    let mut live = Vec::new();
    for node in &nodes {
        let mut c = connect(node, "reader").await;
        let s = c.subscribe("t").await;
        live.push((c, s["epoch"].clone()));
    }
    let epoch = live[0].1.clone();

    // (publisher, sequence number) → (offset, epoch) of every acknowledged publication.
    let acked: RefCell<Vec<(u64, u64, u64, Value)>> = RefCell::default();
    let failed = Cell::new(0u32);
    let stop = Cell::new(false);
    let publishing = join_all(nodes.iter().enumerate().map(|(p, node)| {
        let (acked, failed, stop) = (&acked, &failed, &stop);
        async move {
            let mut i = 0u64;
            while !stop.get() {
                let data = json!({"p": p, "i": i});
                let (status, body) =
                    post(node, "/api/publish", json!({"channel": "t", "data": data})).await;
                if status == 200 {
                    let offset = body["offset"].as_u64().expect("offset");
                    acked
                        .borrow_mut()
                        .push((p as u64, i, offset, body["epoch"].clone()));
                } else {
                    failed.set(failed.get() + 1);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }));
    let count = |p: u64| acked.borrow().iter().filter(|a| a.0 == p).count();
    let controlling = async {
        assert!(poll_until(WAIT, || async { count(0) >= 20 && count(1) >= 20 }).await);
        redis.kill();
        assert!(
            poll_until(WAIT, || async { failed.get() >= 2 }).await,
            "no publication failed while Redis was down"
        );
        let before = (count(0), count(1));
        redis.launch();
        assert!(
            poll_until(Duration::from_secs(15), || async {
                count(0) >= before.0 + 20 && count(1) >= before.1 + 20
            })
            .await,
            "publishing did not resume after Redis came back"
        );
        stop.set(true);
    };
    tokio::join!(publishing, controlling);
    let acked = acked.into_inner();
    assert!(
        acked.iter().all(|a| a.3 == epoch),
        "Redis kept its data: one epoch throughout"
    );

    // What each subscriber must see: every offset up to the last, each acknowledged one with
    // its own data; and each publisher's acknowledged publications in the order it made them.
    let last = acked
        .iter()
        .map(|a| a.2)
        .max()
        .expect("acknowledged publications");
    for p in 0..2u64 {
        let offsets: Vec<u64> = acked.iter().filter(|a| a.0 == p).map(|a| a.2).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "publisher {p}: {offsets:?}"
        );
    }
    let check = |who: &str, publications: &[Value]| {
        let offsets: Vec<u64> = publications
            .iter()
            .filter_map(|m| m["offset"].as_u64())
            .collect();
        assert_eq!(offsets, (1..=last).collect::<Vec<_>>(), "{who}: offsets");
        for (p, i, offset, _) in &acked {
            let m = &publications[(*offset - 1) as usize];
            assert_eq!(
                (&m["data"]["p"], &m["data"]["i"]),
                (&json!(p), &json!(i)),
                "{who}: offset {offset}"
            );
        }
    };
    for (n, node) in nodes.iter().enumerate() {
        let mut c = connect(node, "recoverer").await;
        let s = c
            .request(json!({"type": "subscribe", "channel": "t", "recover": {"offset": 0, "epoch": epoch}}))
            .await;
        assert_eq!(s["recovered"], true, "recovering on node {n}: {s}");
        let publications = s["publications"].as_array().cloned().unwrap_or_default();
        check(&format!("recovering on node {n}"), &publications);
    }
    for (n, (c, _)) in live.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < last as usize {
            let m = c
                .next_of_within("message", WAIT)
                .await
                .unwrap_or_else(|| panic!("subscriber on node {n} stopped after {}", got.len()));
            got.push(m);
        }
        check(&format!("subscribed on node {n}"), &got);
    }
}

// ---- A failed watch ----

mod failed_watch {
    use super::*;
    use actix::prelude::*;
    use realtime_hub::engine::EngineError;
    use realtime_hub::hub::{
        Connect, Hub, SubOutcome, Subscribe, Unwatch, UseWatcher, Watch, Watcher,
    };
    use realtime_hub::metrics::Metrics;
    use realtime_hub::session::{Control, Outbound, Pushes};
    use tokio::sync::{mpsc, oneshot};

    /// Stands in for a session: takes pushes and orders, does nothing with them.
    struct Session;
    impl Actor for Session {
        type Context = Context<Self>;
    }
    impl Handler<Pushes> for Session {
        type Result = ();
        fn handle(&mut self, _: Pushes, _: &mut Context<Self>) {}
    }
    impl Handler<Control> for Session {
        type Result = ();
        fn handle(&mut self, _: Control, _: &mut Context<Self>) {}
    }

    /// Stands in for the Redis bridge: hands every watch to the test, which answers it.
    struct Bridge {
        watches: mpsc::UnboundedSender<WatchAsked>,
    }
    impl Actor for Bridge {
        type Context = Context<Self>;
    }
    impl Handler<Watch> for Bridge {
        type Result = ResponseFuture<Result<(), EngineError>>;
        fn handle(&mut self, msg: Watch, _: &mut Context<Self>) -> Self::Result {
            let (tx, rx) = oneshot::channel();
            let _ = self.watches.send((msg.channel, tx));
            Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Err(EngineError::Unavailable("dropped".into())))
            })
        }
    }
    impl Handler<Unwatch> for Bridge {
        type Result = ();
        fn handle(&mut self, _: Unwatch, _: &mut Context<Self>) {}
    }

    type WatchAsked = (String, oneshot::Sender<Result<(), EngineError>>);

    /// The next watch the Hub asks for, if one comes within the wait.
    async fn next_watch(watches: &mut mpsc::UnboundedReceiver<WatchAsked>) -> Option<WatchAsked> {
        tokio::time::timeout(WAIT, watches.recv())
            .await
            .ok()
            .flatten()
    }

    /// A subscriber that arrives after a watch failed, while the failed subscriber is still
    /// registered (its rollback not yet in), gets a watch of its own and is answered only
    /// once that watch succeeded, never at once with nothing delivering the channel.
    #[actix_rt::test]
    async fn a_subscriber_after_a_failed_watch_waits_for_a_new_watch() {
        let (tx, mut watches) = mpsc::unbounded_channel();
        let bridge = Bridge { watches: tx }.start();
        let hub = Hub::new(1 << 20, Metrics::new()).start();
        hub.send(UseWatcher(Watcher {
            watch: bridge.clone().recipient(),
            unwatch: bridge.recipient(),
        }))
        .await
        .expect("hub");
        let session = Session.start();
        for client in ["failed", "later"] {
            hub.send(Connect {
                client: client.into(),
                user: client.to_owned(),
                push: session.clone().recipient(),
                control: session.clone().recipient(),
                outbound: Outbound::new(1 << 20),
            })
            .await
            .expect("hub");
        }
        let subscribe = |client: &str| {
            hub.send(Subscribe {
                client: client.into(),
                channel: "x".to_owned(),
            })
        };

        let failed = actix_rt::spawn(subscribe("failed"));
        let (channel, answer) = next_watch(&mut watches).await.expect("the first watch");
        assert_eq!(channel, "x");
        let _ = answer.send(Err(EngineError::Unavailable("redis is down".into())));
        let refused = failed.await.expect("task").expect("hub");
        assert!(refused.is_err(), "{refused:?}");

        // "failed" is still registered: no Unsubscribe was sent for it.
        let later = actix_rt::spawn(subscribe("later"));
        let (channel, answer) = next_watch(&mut watches)
            .await
            .expect("no new watch for the later subscriber");
        assert_eq!(channel, "x");
        let _ = answer.send(Ok(()));
        let answered = later.await.expect("task").expect("hub");
        assert_eq!(answered, Ok(SubOutcome::Added));
    }
}
