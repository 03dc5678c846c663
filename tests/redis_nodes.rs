//! Many nodes on one Redis act as one hub (the Redis engine and its bridge).
mod common;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A publication on one node reaches subscribers on every node, in offset order.
#[actix_rt::test]
async fn publications_cross_nodes_in_order() {
    let redis = RedisServer::start();
    let a = spawn_node(&redis, "a", &[]);
    let b = spawn_node(&redis, "b", &[]);
    let mut on_a = Client::connect(&a, "alice").await;
    let mut on_b = Client::connect(&b, "bob").await;
    let epoch = on_a.subscribe("news").await["epoch"].clone();
    assert_eq!(on_b.subscribe("news").await["epoch"], epoch);
    for i in 1..=5 {
        let p = on_a.publish("news", json!({"n": i})).await;
        assert_eq!(p["offset"], i);
    }
    for c in [&mut on_a, &mut on_b] {
        for i in 1..=5u64 {
            let m = c.next_of("message").await;
            assert_eq!(
                (m["offset"].as_u64(), m["data"]["n"].as_u64()),
                (Some(i), Some(i))
            );
            assert_eq!(m["epoch"], epoch);
        }
    }
    on_b.expect_silence(Duration::from_millis(200)).await;
}

/// A client that lost its node recovers exactly what it missed from another node.
#[actix_rt::test]
async fn recovery_works_on_another_node() {
    let redis = RedisServer::start();
    let a = spawn_node(&redis, "a", &[]);
    let b = spawn_node(&redis, "b", &[]);
    let mut c = Client::connect(&a, "reader").await;
    let epoch = c.subscribe("r").await["epoch"].clone();
    let mut publisher = Client::connect(&b, "writer").await;
    publisher.publish("r", json!(1)).await;
    assert_eq!(c.next_of("message").await["offset"], 1);
    drop(c);
    for i in 2..=4 {
        publisher.publish("r", json!(i)).await;
    }
    let mut c = Client::connect(&b, "reader").await;
    let s = c
        .request(
            json!({"type": "subscribe", "channel": "r", "recover": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert_eq!(s["recovered"], true);
    let offsets = offsets(&s["publications"]);
    assert_eq!(offsets, vec![2, 3, 4]);
}

/// History, dedup and limits behave on the Redis engine as on the memory engine.
#[actix_rt::test]
async fn history_and_dedup_through_redis() {
    let redis = RedisServer::start();
    let a = spawn_node(&redis, "a", &["--history-size", "3"]);
    let mut c = Client::connect(&a, "u").await;
    for i in 1..=5 {
        c.publish("h", json!(i)).await;
    }
    let h = c
        .request(json!({"type": "history", "channel": "h", "limit": 10}))
        .await;
    let offsets = offsets(&h["publications"]);
    assert_eq!(offsets, vec![3, 4, 5]);
    let since = c
        .request(json!({"type": "history", "channel": "h", "limit": 1, "since": {"offset": 3, "epoch": h["epoch"]}}))
        .await;
    assert_eq!(since["publications"][0]["offset"], 4);
    let limit0 = c
        .request(json!({"type": "history", "channel": "h", "limit": 0}))
        .await;
    assert_eq!(
        (limit0["offset"].clone(), limit0["publications"].clone()),
        (json!(5), json!([]))
    );
    let first = c
        .request(json!({"type": "publish", "channel": "d", "data": 1, "event_id": "x"}))
        .await;
    let again = c
        .request(json!({"type": "publish", "channel": "d", "data": 2, "event_id": "x"}))
        .await;
    assert_eq!(first["offset"], again["offset"]);
    assert_eq!(first["epoch"], again["epoch"]);
}

/// Presence spans nodes, and join/leave reach subscribers on other nodes.
#[actix_rt::test]
async fn presence_and_join_leave_span_nodes() {
    let redis = RedisServer::start();
    let a = spawn_node(&redis, "a", &[]);
    let b = spawn_node(&redis, "b", &[]);
    let mut alice = Client::connect(&a, "alice").await;
    alice.subscribe("chat:x").await;
    let mut bob = Client::connect(&b, "bob").await;
    bob.subscribe("chat:x").await;
    let join = alice.next_of("join").await;
    assert_eq!(
        (join["user"].as_str(), join["client"].as_str()),
        (Some("bob"), Some(bob.client_id().as_str()))
    );
    let p = bob
        .request(json!({"type": "presence", "channel": "chat:x"}))
        .await;
    let mut users: Vec<String> = p["clients"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["user"].as_str().map(str::to_owned))
        .collect();
    users.sort();
    assert_eq!(users, vec!["alice", "bob"]);
    bob.request(json!({"type": "unsubscribe", "channel": "chat:x"}))
        .await;
    assert_eq!(alice.next_of("leave").await["user"], "bob");
    bob.expect_silence(Duration::from_millis(200)).await;
}

/// The per-user connection limit counts connections on every node (three here).
#[actix_rt::test]
async fn connection_limit_is_cluster_wide() {
    let redis = RedisServer::start();
    let limit = ["--max-connections-per-user", "2"];
    let a = spawn_node(&redis, "a", &limit);
    let b = spawn_node(&redis, "b", &limit);
    let c = spawn_node(&redis, "c", &limit);
    let first = Client::connect(&a, "carol").await;
    let _second = Client::connect(&b, "carol").await;
    let url = format!("{}?token={}", c.ws_url(), token("carol"));
    assert_eq!(close_of(&url).await, (1008, "connection limit".to_owned()));
    drop(first);
    eventually("a closed connection frees its slot cluster-wide", || async {
        let mut ws = open(&format!("{}?token={}", c.ws_url(), token("carol"))).await;
        use futures_util::StreamExt;
        matches!(ws.next().await, Some(Ok(m)) if m.to_text().is_ok_and(|t| t.contains("welcome")))
    })
    .await;
}

/// `/api/disconnect` on one node closes the user's sockets on every node (three here).
#[actix_rt::test]
async fn disconnect_reaches_every_node() {
    let redis = RedisServer::start();
    let a = spawn_node(&redis, "a", &[]);
    let b = spawn_node(&redis, "b", &[]);
    let c = spawn_node(&redis, "c", &[]);
    let mut on_a = Client::connect(&a, "dave").await;
    let mut on_b = Client::connect(&b, "dave").await;
    let mut on_c = Client::connect(&c, "dave").await;
    let mut other = Client::connect(&b, "erin").await;
    let (status, body) = api_post(&a, "/api/disconnect", r#"{"user":"dave"}"#).await;
    assert_eq!((status, body["disconnected"].as_u64()), (200, Some(1)));
    for dave in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(dave.expect_close().await, (4001, "disconnected".to_owned()));
    }
    assert_eq!(other.request(json!({"type": "ping"})).await["type"], "pong");
}

/// Presence and join/leave span three nodes: each node's subscriber is listed everywhere,
/// and one leaving reaches the subscribers on both other nodes.
#[actix_rt::test]
async fn presence_spans_three_nodes() {
    let redis = RedisServer::start();
    let nodes = [
        spawn_node(&redis, "a", &[]),
        spawn_node(&redis, "b", &[]),
        spawn_node(&redis, "c", &[]),
    ];
    let mut clients = Vec::new();
    for (node, user) in nodes.iter().zip(["ann", "ben", "cid"]) {
        let mut c = Client::connect(node, user).await;
        c.subscribe("chat:three").await;
        clients.push(c);
    }
    for node in &nodes {
        let (status, body) = api_get(node, "/api/presence/chat:three").await;
        let mut users: Vec<&str> = body["clients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["user"].as_str())
            .collect();
        users.sort_unstable();
        assert_eq!((status, users), (200, vec!["ann", "ben", "cid"]));
    }
    let mut leaving = clients.pop().expect("cid");
    leaving
        .request(json!({"type": "unsubscribe", "channel": "chat:three"}))
        .await;
    for c in &mut clients {
        let leave = c.next_of("leave").await;
        assert_eq!(leave["user"], "cid", "{leave}");
    }
}

/// A node subscribes a channel's topic in Redis only while it has local subscribers: once
/// for the first (before its `subscribed`), not again for the second, and unsubscribes after
/// the last leaves.
#[actix_rt::test]
async fn a_channel_topic_is_subscribed_only_while_the_node_has_subscribers() {
    let redis = RedisServer::start();
    let a = spawn_node(&redis, "a", &[]);
    let topic = realtime_hub::engine::redis::Keys::new("hub").topic("lazy");
    let mut conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("a Redis connection");
    let mut numsub = move || -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&topic)
            .query(&mut conn)
            .expect("PUBSUB NUMSUB");
        n
    };
    assert_eq!(numsub(), 0);
    let mut first = Client::connect(&a, "one").await;
    let mut second = Client::connect(&a, "two").await;
    first.subscribe("lazy").await;
    assert_eq!(numsub(), 1, "after the first local subscriber");
    second.subscribe("lazy").await;
    assert_eq!(numsub(), 1, "after the second");
    first
        .request(json!({"type": "unsubscribe", "channel": "lazy"}))
        .await;
    second.request(json!({"type": "ping"})).await;
    assert_eq!(numsub(), 1, "while one subscriber is left");
    second
        .request(json!({"type": "unsubscribe", "channel": "lazy"}))
        .await;
    eventually("the topic is unsubscribed after the last leaves", || {
        let n = numsub();
        async move { n == 0 }
    })
    .await;
}

/// `/api/info` lists every live node and `/api/channels` adds up subscribers across nodes.
#[actix_rt::test]
async fn info_and_channels_cover_every_node() {
    let redis = RedisServer::start();
    let a = spawn_node(&redis, "node-a", &[]);
    let b = spawn_node(&redis, "node-b", &[]);
    let mut x = Client::connect(&a, "x").await;
    let mut y = Client::connect(&b, "y").await;
    x.subscribe("shared").await;
    y.subscribe("shared").await;
    y.subscribe("only-b").await;
    eventually("both nodes report their figures", || async {
        let (_, info) = api_get(&a, "/api/info").await;
        let mut nodes: Vec<(String, u64)> = info["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .map(|n| {
                        (
                            n["node"].as_str().unwrap_or("").to_owned(),
                            n["subscriptions"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        nodes == vec![("node-a".to_owned(), 1), ("node-b".to_owned(), 2)]
    })
    .await;
    let (status, channels) = api_get(&b, "/api/channels").await;
    assert_eq!(status, 200);
    assert_eq!(
        channels,
        json!({"channels": [{"channel": "only-b", "subscribers": 1}, {"channel": "shared", "subscribers": 2}]})
    );
}

/// A node on a reachable Redis is ready; its keys and topics stay under its prefix.
#[actix_rt::test]
async fn nodes_with_different_prefixes_do_not_see_each_other() {
    let redis = RedisServer::start();
    let a = spawn_node(&redis, "a", &["--redis-prefix", "one"]);
    let b = spawn_node(&redis, "b", &["--redis-prefix", "two"]);
    eventually("ready", || async { api_get(&a, "/ready").await.0 == 200 }).await;
    let mut on_a = Client::connect(&a, "p").await;
    let mut on_b = Client::connect(&b, "q").await;
    on_a.subscribe("same").await;
    on_b.subscribe("same").await;
    on_a.publish("same", json!("only one")).await;
    assert_eq!(on_a.next_of("message").await["data"], "only one");
    on_b.expect_silence(Duration::from_millis(300)).await;
}

/// A node's lease is live while its expiry, on the Redis server's clock, is still ahead; a node
/// that never held one, or whose expiry has passed, is gone (the Streams readers rely on this to
/// remove the consumers of dead nodes, and only those).
#[actix_rt::test]
async fn a_lease_is_live_only_until_its_expiry_on_the_redis_clock() {
    use realtime_hub::engine::redis::node_lease_live;
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).expect("a redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a connection");
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("the server's clock");
    let now_ms = secs * 1000 + micros / 1000;
    let nodes = "test:nodes";
    let _: () = redis::pipe()
        .zadd(nodes, "ahead", now_ms + 60_000)
        .ignore()
        .zadd(nodes, "passed", now_ms.saturating_sub(60_000))
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("leases written");
    let live = |node: &'static str| {
        let mut conn = conn.clone();
        async move {
            node_lease_live(&mut conn, nodes, node)
                .await
                .expect("an answer")
        }
    };
    assert!(live("ahead").await, "an expiry a minute ahead is live");
    assert!(!live("passed").await, "an expiry a minute ago is gone");
    assert!(!live("never").await, "a node without a lease is gone");
}
