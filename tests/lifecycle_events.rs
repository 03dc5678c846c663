//! Lifecycle events on the Redis engine (docs/lifecycle.md): `user.online`/`offline`,
//! `channel.occupied`/`vacated` and `member.added`/`removed`, decided cluster-wide and appended
//! to the lifecycle stream, read here straight from a real `redis-server`. Nodes run in this
//! process on port 0, or as subprocesses where a test kills or pauses one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const STREAM: &str = "hub:lifecycle";

/// A node on `redis` emitting `events` (`*`: all) with a grace of `grace` seconds; join and
/// leave in `chat:` (the default).
fn lifecycle_node(redis: &RedisServer, node: &str, events: &str, grace: &str) -> TestApp {
    spawn_node(
        redis,
        node,
        &["--lifecycle-events", events, "--lifecycle-grace-s", grace],
    )
}

/// Waits until the lifecycle stream holds exactly `want` (in order), then checks that it stays
/// so for `settle` (nothing more is emitted).
async fn stream_becomes(redis: &RedisServer, want: &[&str], settle: Duration) {
    let mut conn = redis_conn(&redis.url());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = lifecycle_stream(&mut conn, STREAM);
        if seen == want {
            break;
        }
        assert!(
            Instant::now() < deadline && seen.len() <= want.len(),
            "lifecycle stream: {seen:#?}\nwanted: {want:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(settle).await;
    let seen = lifecycle_stream(&mut conn, STREAM);
    assert_eq!(seen, want, "nothing more after the wait");
}

/// The events of one user's connection subscribing to a `chat:` room: online, occupied, added.
#[actix_rt::test]
async fn a_connection_and_its_subscription_bring_every_up_event() {
    let redis = RedisServer::start();
    let node = lifecycle_node(&redis, "a", "*", "1");
    let mut alice = Client::connect(&node, "alice").await;
    alice.subscribe("chat:x").await;
    stream_becomes(
        &redis,
        &[
            "user.online alice",
            "channel.occupied chat:x",
            "member.added chat:x/alice",
        ],
        Duration::from_millis(300),
    )
    .await;
    let events = lifecycle_stream_events(&mut redis_conn(&redis.url()), STREAM);
    for e in &events {
        assert!(e["id"].as_str().is_some_and(|id| !id.is_empty()), "{e}");
        assert!(
            e["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000),
            "{e}"
        );
    }
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), events.len(), "ids are unique");
    assert_eq!(events[2]["info"], json!(null), "member.added carries info");
}

/// Closing the last connection brings every down event, after the grace, with `closed`.
#[actix_rt::test]
async fn closing_the_last_connection_brings_every_down_event_after_the_grace() {
    let redis = RedisServer::start();
    let node = lifecycle_node(&redis, "a", "*", "1");
    let mut alice = Client::connect(&node, "alice").await;
    alice.subscribe("chat:x").await;
    stream_becomes(
        &redis,
        &[
            "user.online alice",
            "channel.occupied chat:x",
            "member.added chat:x/alice",
        ],
        Duration::ZERO,
    )
    .await;
    let closed = Instant::now();
    drop(alice);
    stream_becomes(
        &redis,
        &[
            "user.online alice",
            "channel.occupied chat:x",
            "member.added chat:x/alice",
            "channel.vacated chat:x closed",
            "member.removed chat:x/alice closed",
            "user.offline alice closed",
        ],
        Duration::from_millis(500),
    )
    .await;
    assert!(
        closed.elapsed() >= Duration::from_millis(900),
        "the down events waited for the 1 s grace: {:?}",
        closed.elapsed()
    );
}

/// An unsubscribe takes the channel and the member down (`closed`); the user stays online.
#[actix_rt::test]
async fn unsubscribing_vacates_the_channel_but_keeps_the_user_online() {
    let redis = RedisServer::start();
    let node = lifecycle_node(&redis, "a", "*", "1");
    let mut alice = Client::connect(&node, "alice").await;
    alice.subscribe("news").await;
    let r = alice
        .request(json!({"type": "unsubscribe", "channel": "news"}))
        .await;
    assert_eq!(r["type"], "unsubscribed", "{r}");
    stream_becomes(
        &redis,
        &[
            "user.online alice",
            "channel.occupied news",
            "channel.vacated news closed",
        ],
        Duration::from_millis(300),
    )
    .await;
}

/// A reload (close, and a new connection within the grace) emits nothing at all.
#[actix_rt::test]
async fn a_reload_inside_the_grace_emits_nothing() {
    let redis = RedisServer::start();
    let node = lifecycle_node(&redis, "a", "*", "3");
    let mut tab = Client::connect(&node, "alice").await;
    tab.subscribe("chat:x").await;
    let up = [
        "user.online alice",
        "channel.occupied chat:x",
        "member.added chat:x/alice",
    ];
    stream_becomes(&redis, &up, Duration::ZERO).await;
    drop(tab);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut reloaded = Client::connect(&node, "alice").await;
    reloaded.subscribe("chat:x").await;
    stream_becomes(&redis, &up, Duration::from_secs(4)).await;
}

/// Two tabs of one user on two nodes: one `online`; closing one emits nothing; closing the
/// other emits one `offline`.
#[actix_rt::test]
async fn two_tabs_on_two_nodes_give_one_online_and_one_offline() {
    let redis = RedisServer::start();
    let a = lifecycle_node(&redis, "a", "user.online,user.offline", "1");
    let b = lifecycle_node(&redis, "b", "user.online,user.offline", "1");
    let first = Client::connect(&a, "alice").await;
    let second = Client::connect(&b, "alice").await;
    stream_becomes(&redis, &["user.online alice"], Duration::from_millis(300)).await;
    drop(first);
    stream_becomes(&redis, &["user.online alice"], Duration::from_millis(1500)).await;
    drop(second);
    stream_becomes(
        &redis,
        &["user.online alice", "user.offline alice closed"],
        Duration::from_millis(500),
    )
    .await;
}

/// `/api/disconnect` gives the reason `disconnected`.
#[actix_rt::test]
async fn a_server_disconnect_gives_the_reason_disconnected() {
    let redis = RedisServer::start();
    let node = lifecycle_node(&redis, "a", "user.online,user.offline", "1");
    let mut alice = Client::connect(&node, "alice").await;
    stream_becomes(&redis, &["user.online alice"], Duration::ZERO).await;
    let (status, body) = api_post(&node, "/api/disconnect", r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    let (code, _) = alice.expect_close().await;
    assert_eq!(code, 4001);
    stream_becomes(
        &redis,
        &["user.online alice", "user.offline alice disconnected"],
        Duration::from_millis(300),
    )
    .await;
}

/// `HUB_LIFECYCLE_EVENTS` filters what is emitted, not what is tracked: with only the
/// channel types, users and members emit nothing, and channels still alternate.
#[actix_rt::test]
async fn only_the_named_types_are_emitted() {
    let redis = RedisServer::start();
    let node = lifecycle_node(&redis, "a", "channel.occupied,channel.vacated", "0");
    let mut alice = Client::connect(&node, "alice").await;
    alice.subscribe("chat:x").await;
    drop(alice);
    stream_becomes(
        &redis,
        &["channel.occupied chat:x", "channel.vacated chat:x closed"],
        Duration::from_millis(500),
    )
    .await;
}

/// Without `HUB_LIFECYCLE_EVENTS` nothing is tracked or written.
#[actix_rt::test]
async fn lifecycle_events_are_off_by_default() {
    let redis = RedisServer::start();
    let node = spawn_node(&redis, "a", &[]);
    let mut alice = Client::connect(&node, "alice").await;
    alice.subscribe("chat:x").await;
    drop(alice);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = redis_conn(&redis.url());
    let keys: Vec<String> = redis::cmd("KEYS").arg("hub:lc*").query(&mut conn).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    assert!(lifecycle_stream(&mut conn, STREAM).is_empty());
}

/// Nodes as subprocesses (`kill -9`, `SIGSTOP`): one hub per `node` on `redis`, lifecycle on.
async fn process_node(redis: &RedisServer, node: &str) -> HubProcess {
    HubProcess::node(
        &redis.url(),
        node,
        &[
            ("HUB_LIFECYCLE_EVENTS", "*"),
            ("HUB_LIFECYCLE_GRACE_S", "1"),
        ],
    )
    .await
}

/// A node killed with users, channels and members on it: the survivors emit their down events
/// with `node_lost`, exactly once among three nodes, within four heartbeats of the kill.
#[actix_rt::test]
async fn a_killed_node_s_users_go_offline_once_with_node_lost() {
    let redis = RedisServer::start();
    let a = process_node(&redis, "a").await;
    let b = process_node(&redis, "b").await;
    let mut c = process_node(&redis, "c").await;
    let mut on_c = Client::connect_url(&c.ws_url(), &token("carol")).await;
    on_c.subscribe("chat:x").await;
    let up = [
        "user.online carol",
        "channel.occupied chat:x",
        "member.added chat:x/carol",
        "user.online bob",
        "member.added chat:x/bob",
    ];
    stream_becomes(&redis, &up[..3], Duration::ZERO).await;
    // Bob stays on a: the channel stays occupied, his membership too.
    let mut on_a = Client::connect_url(&a.ws_url(), &token("bob")).await;
    on_a.subscribe("chat:x").await;
    stream_becomes(&redis, &up, Duration::ZERO).await;
    let killed = Instant::now();
    c.kill();
    let mut want = up.to_vec();
    want.extend([
        "member.removed chat:x/carol node_lost",
        "user.offline carol node_lost",
    ]);
    let mut conn = redis_conn(&redis.url());
    let sorted_tail = |seen: Vec<String>| {
        let mut tail = seen[up.len().min(seen.len())..].to_vec();
        tail.sort();
        tail
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = lifecycle_stream(&mut conn, STREAM);
    while seen.len() < want.len() {
        assert!(Instant::now() < deadline, "{seen:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = lifecycle_stream(&mut conn, STREAM);
    }
    let within = killed.elapsed();
    assert!(
        within < Duration::from_secs(4 + 2),
        "within four heartbeats (1 s) and a sweep: {within:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = lifecycle_stream(&mut conn, STREAM);
    assert_eq!(seen[..up.len()], up);
    let mut want_tail = want[up.len()..].to_vec();
    want_tail.sort();
    assert_eq!(sorted_tail(seen), want_tail, "each once, nothing else");
    drop((a, b));
}

/// A node taken for dead (paused past its lease) that comes back announces its users again:
/// `offline` (node_lost) then `online`, alternating.
#[actix_rt::test]
async fn a_node_taken_for_dead_that_returns_announces_its_users_again() {
    let redis = RedisServer::start();
    let _a = process_node(&redis, "a").await;
    let b = process_node(&redis, "b").await;
    let _carol = Client::connect_url(&b.ws_url(), &token("carol")).await;
    stream_becomes(&redis, &["user.online carol"], Duration::ZERO).await;
    b.signal("STOP");
    let lost = ["user.online carol", "user.offline carol node_lost"];
    let mut conn = redis_conn(&redis.url());
    let deadline = Instant::now() + Duration::from_secs(15);
    while lifecycle_stream(&mut conn, STREAM) != lost {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            lifecycle_stream(&mut conn, STREAM)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.signal("CONT");
    stream_becomes(
        &redis,
        &[
            "user.online carol",
            "user.offline carol node_lost",
            "user.online carol",
        ],
        Duration::from_secs(2),
    )
    .await;
}

/// Redis restarted (with AOF) while users come and go: no event is lost, none doubled.
#[actix_rt::test]
async fn a_redis_restart_loses_no_event() {
    let mut redis = RedisServer::start_durable();
    let node = lifecycle_node(&redis, "a", "user.online,user.offline", "0");
    let first = Client::connect(&node, "u1").await;
    stream_becomes(&redis, &["user.online u1"], Duration::ZERO).await;
    redis.restart();
    drop(first);
    stream_becomes(
        &redis,
        &["user.online u1", "user.offline u1 closed"],
        Duration::ZERO,
    )
    .await;
    let second = Client::connect(&node, "u2").await;
    stream_becomes(
        &redis,
        &["user.online u1", "user.offline u1 closed", "user.online u2"],
        Duration::from_secs(2),
    )
    .await;
    drop(second);
}

/// Redis restarted without persistence: the heartbeat writes the node's entries back, and the
/// clients that never left get no second `online`.
#[actix_rt::test]
async fn redis_losing_its_state_brings_no_second_online() {
    let mut redis = RedisServer::start();
    let node = lifecycle_node(&redis, "a", "*", "1");
    let mut alice = Client::connect(&node, "alice").await;
    alice.subscribe("chat:x").await;
    let up = [
        "user.online alice",
        "channel.occupied chat:x",
        "member.added chat:x/alice",
    ];
    stream_becomes(&redis, &up, Duration::ZERO).await;
    redis.restart();
    let mut conn = redis_conn(&redis.url());
    // The node's entries are back once its set is.
    eventually("the node's lifecycle entries are written back", || {
        let n: i64 = redis::cmd("SCARD")
            .arg("hub:lc:node:a")
            .query(&mut conn)
            .unwrap_or(0);
        std::future::ready(n == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        lifecycle_stream(&mut conn, STREAM).is_empty(),
        "no event after the restart"
    );
    drop(alice);
    stream_becomes(
        &redis,
        &[
            "channel.vacated chat:x closed",
            "member.removed chat:x/alice closed",
            "user.offline alice closed",
        ],
        Duration::from_millis(300),
    )
    .await;
}

/// A node drained with SIGTERM closes its clients with 1001: their users go offline after
/// the grace with `closed` (not `node_lost`): the node's last writes reach Redis before it
/// exits, and the graces run out on another node.
#[actix_rt::test]
async fn a_drained_node_s_users_go_offline_as_closed() {
    const USERS: usize = 200;
    let redis = RedisServer::start();
    let _a = process_node(&redis, "a").await;
    let mut b = process_node(&redis, "b").await;
    let mut clients = Vec::new();
    for i in 0..USERS {
        clients.push(Client::connect_url(&b.ws_url(), &token(&format!("u{i}"))).await);
    }
    let mut conn = redis_conn(&redis.url());
    eventually("every user is online", || {
        std::future::ready(lifecycle_stream(&mut conn, STREAM).len() == USERS)
    })
    .await;
    b.signal("TERM");
    for c in &mut clients {
        assert_eq!(c.expect_close().await.0, 1001);
    }
    assert!(b.wait_exit(Duration::from_secs(10)).success());
    eventually("every user is offline", || {
        std::future::ready(lifecycle_stream(&mut conn, STREAM).len() >= 2 * USERS)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = lifecycle_stream(&mut conn, STREAM);
    let offline: Vec<&String> = events[USERS..].iter().collect();
    assert_eq!(offline.len(), USERS, "once each");
    assert!(
        offline
            .iter()
            .all(|e| e.starts_with("user.offline ") && e.ends_with(" closed")),
        "{offline:#?}"
    );
}
