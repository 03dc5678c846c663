//! Webhook delivery of lifecycle events (contract §6, settled points 1, 2, 3, 5), through the
//! crate's public `Webhooks` service against a real HTTP receiver started here on port 0 (a
//! plain TCP listener that records each request's headers and raw body and answers with the
//! statuses a test scripts), and for the Redis engine a real `redis-server` per test.
//!
//! The memory engine gets its events through `Webhooks::push`; with Redis the test RPUSHes
//! them onto each URL's queue list, as the lifecycle scripts do. The cases that hold for both
//! engines run against each.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use realtime_hub::config::WebhookConfig;
use realtime_hub::deadletters::{DeadLetter, DeadLetterSource};
use realtime_hub::engine::redis::Keys;
use realtime_hub::metrics::{Metrics, ResultLabels};
use realtime_hub::webhooks::Webhooks;

const HOOK_SECRET: &[u8] = b"webhook-test-secret";

// ---- The hub side ----

fn event(n: u32) -> String {
    format!(r#"{{"id":"ev-{n}","type":"user.online","ts":1767225600000,"user":"u{n}"}}"#)
}

fn ids(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("ev-{n}")).collect()
}

fn config(url: &str, max_attempts: u32, queue_events: usize) -> WebhookConfig {
    WebhookConfig {
        urls: vec![url.to_owned()],
        secret: HOOK_SECRET.to_vec(),
        timeout: Duration::from_secs(1),
        max_attempts,
        queue_events,
    }
}

/// The two engines, side by side.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Redis,
}

/// A webhook service on one engine; with Redis, on its own `redis-server`.
struct Hooks {
    hooks: Arc<Webhooks>,
    metrics: Arc<Metrics>,
    url: String,
    redis: Option<RedisServer>,
}

const PREFIX: &str = "whtest";

impl Hooks {
    fn new(kind: Kind, config: WebhookConfig) -> Hooks {
        let metrics = Metrics::new();
        let url = config.urls[0].clone();
        match kind {
            Kind::Memory => Hooks {
                hooks: Webhooks::memory(config, metrics.clone()).expect("a webhook service"),
                metrics,
                url,
                redis: None,
            },
            Kind::Redis => {
                let server = RedisServer::start();
                let hooks = redis_node(&server, config, "node-a", metrics.clone());
                Hooks {
                    hooks,
                    metrics,
                    url,
                    redis: Some(server),
                }
            }
        }
    }

    /// Queues events as the lifecycle side does: `push` (memory) or RPUSH (Redis).
    fn push(&self, events: &[String]) {
        match &self.redis {
            None => self.hooks.push(events),
            Some(server) => rpush(server, &self.url, events),
        }
    }

    fn dlq(&self) -> String {
        match &self.redis {
            None => "webhooks:dlq".to_owned(),
            Some(_) => Keys::new(PREFIX).webhook_dlq(),
        }
    }

    /// Waits until the dead letters number `n`, and returns them.
    async fn dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let deadline = Instant::now() + LONG_WAIT;
        loop {
            let listed = self.hooks.list(100).await.expect("dead letters listed");
            if listed.len() == n {
                return listed;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} dead letters, have {}",
                listed.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` requests had `result` (the receiver reports a request before it
    /// answers, so the hub may not have judged it yet).
    async fn wait_requests(&self, result: &str, n: u64) {
        let deadline = Instant::now() + LONG_WAIT;
        while self.requests(result) < n {
            assert!(Instant::now() < deadline, "{n} requests {result}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn requests(&self, result: &str) -> u64 {
        self.metrics
            .webhook_requests
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .get()
    }
}

fn redis_node(
    server: &RedisServer,
    config: WebhookConfig,
    node: &str,
    metrics: Arc<Metrics>,
) -> Arc<Webhooks> {
    let client = redis::Client::open(server.url()).expect("a redis client");
    Webhooks::redis(config, &client, Keys::new(PREFIX), node.to_owned(), metrics)
        .expect("a redis webhook service")
}

fn rpush(server: &RedisServer, url: &str, events: &[String]) {
    let _: i64 = redis::cmd("RPUSH")
        .arg(Keys::new(PREFIX).webhook_queue(url))
        .arg(events)
        .query(&mut redis_conn(&server.url()))
        .expect("RPUSH");
}

// ---- (1) The signature ----

/// A request's signature verifies with an independent HMAC over the raw body; a body changed
/// by one byte, or another timestamp, does not.
#[tokio::test]
async fn the_signature_verifies_over_the_raw_body_and_a_tampered_one_fails() {
    realtime_hub::logging::init_for_tests();
    let mut receiver = Receiver::start();
    let hooks = Hooks::new(Kind::Memory, config(&receiver.url(), 3, 100));
    hooks.hooks.start();
    hooks.push(&[event(1), event(2)]);

    let request = receiver.next().await;
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(
        request.body,
        format!(r#"{{"events":[{},{}]}}"#, event(1), event(2)).into_bytes(),
        "the events' JSON texts, verbatim"
    );
    let timestamp = request.header("x-hub-timestamp");
    let now = realtime_hub::clock::unix_seconds();
    assert!(
        request.timestamp().abs_diff(now) <= 5,
        "a current timestamp"
    );
    let signature = request.header("x-hub-signature");
    assert!(verifies(HOOK_SECRET, timestamp, &request.body, signature));

    let mut tampered = request.body.clone();
    tampered[12] ^= 1;
    assert!(!verifies(HOOK_SECRET, timestamp, &tampered, signature));
    let other = (request.timestamp() + 1).to_string();
    assert!(!verifies(HOOK_SECRET, &other, &request.body, signature));
    hooks.hooks.stop().await;
}

// ---- (2) Retries and order ----

/// 500, then no answer within the timeout, then 200: the same batch each time (same
/// `X-Hub-Delivery`, same events) with a fresh timestamp and signature; events queued
/// meanwhile go in a later batch, after the first succeeded; nothing is lost.
async fn retries_keep_the_batch_and_the_order(kind: Kind) {
    let mut receiver = Receiver::start();
    receiver.script(&[Reply::Status(500), Reply::Stall]);
    let hooks = Hooks::new(kind, config(&receiver.url(), 5, 100));
    hooks.push(&[event(1), event(2), event(3)]);
    hooks.hooks.start();

    let first = receiver.next().await;
    // Pushed while the first batch is in flight: they must wait for it.
    hooks.push(&[event(4), event(5)]);
    let second = receiver.next().await;
    let third = receiver.next().await;
    for attempt in [&first, &second, &third] {
        assert_eq!(attempt.delivery(), first.delivery(), "one delivery id");
        assert_eq!(attempt.event_ids(), ids(1..=3), "the same events");
        assert!(verifies(
            HOOK_SECRET,
            attempt.header("x-hub-timestamp"),
            &attempt.body,
            attempt.header("x-hub-signature")
        ));
    }
    // Each retry waits at least 1 s, so each attempt is stamped anew.
    assert!(first.timestamp() < second.timestamp());
    assert!(second.timestamp() < third.timestamp());
    assert_ne!(
        first.header("x-hub-signature"),
        second.header("x-hub-signature")
    );

    let next = receiver.next().await;
    assert_ne!(next.delivery(), first.delivery(), "a new batch, a new id");
    assert_eq!(next.event_ids(), ids(4..=5));
    assert!(uuid::Uuid::parse_str(&next.delivery()).is_ok());

    hooks.wait_requests("ok", 2).await;
    assert_eq!(hooks.requests("ok"), 2);
    assert_eq!(hooks.requests("error"), 1);
    assert_eq!(hooks.requests("timeout"), 1);
    assert_eq!(hooks.metrics.webhook_dead.get(), 0);
    hooks.hooks.stop().await;
    assert_eq!(
        hooks.metrics.webhook_lost.get(),
        0,
        "everything was delivered"
    );
    if let Some(server) = &hooks.redis {
        let mut conn = redis_conn(&server.url());
        let keys = Keys::new(PREFIX);
        let queued: i64 = redis::cmd("LLEN")
            .arg(keys.webhook_queue(&hooks.url))
            .query(&mut conn)
            .expect("LLEN");
        let batch: i64 = redis::cmd("EXISTS")
            .arg(keys.webhook_batch(&hooks.url))
            .query(&mut conn)
            .expect("EXISTS");
        assert_eq!((queued, batch), (0, 0), "delivered events leave the queue");
    }
}

#[tokio::test]
async fn memory_retries_keep_the_batch_and_the_order() {
    realtime_hub::logging::init_for_tests();
    retries_keep_the_batch_and_the_order(Kind::Memory).await;
}

#[tokio::test]
async fn redis_retries_keep_the_batch_and_the_order() {
    realtime_hub::logging::init_for_tests();
    retries_keep_the_batch_and_the_order(Kind::Redis).await;
}

// ---- (3) Dead letters ----

/// A receiver unreachable for good: after `max_attempts` the events are dead letters of the
/// contract's shape; `delete` removes one; once the receiver answers, a replay sends the
/// others in a new batch (a new delivery id) and they leave the dead letters, each once.
async fn dead_letters_are_listed_replayed_and_deleted(kind: Kind) {
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let hooks = Hooks::new(kind, config(&url, 2, 100));
    hooks.hooks.start();
    hooks.push(&[event(1), event(2), event(3)]);

    let dlq = hooks.dlq();
    let listed = hooks.dead_letters(3).await;
    assert_eq!(hooks.metrics.webhook_dead.get(), 3);
    assert_eq!(hooks.requests("error"), 2, "two attempts in all");
    let newest_first: Vec<&str> = listed.iter().map(|d| d.original_id.as_str()).collect();
    assert_eq!(newest_first, ["ev-3", "ev-2", "ev-1"]);
    for (dead, n) in listed.iter().zip([3, 2, 1]) {
        assert!(dead.id.starts_with(&format!("{dlq}/")), "{}", dead.id);
        assert_eq!(dead.stream, dlq);
        assert_eq!(dead.deliveries, 2);
        assert!(!dead.reason.is_empty() && !dead.reason.starts_with("HTTP"));
        assert!(dead.failed_at > 1_767_225_600_000);
        assert_eq!(dead.fields.len(), 2);
        assert_eq!(dead.fields["event"], event(n));
        assert_eq!(dead.fields["url"], url);
    }

    // Delete ev-3; a second delete finds nothing.
    assert!(hooks.hooks.delete(&listed[0].id).await.expect("delete"));
    assert!(!hooks.hooks.delete(&listed[0].id).await.expect("delete"));
    assert!(!hooks
        .hooks
        .delete("someone-else:dlq/1-0")
        .await
        .expect("delete"));

    // The receiver comes up and first answers 500 twice: ev-4's batch is seen, then given up.
    let mut receiver = Receiver::start_on(port);
    receiver.script(&[Reply::Status(500), Reply::Status(500)]);
    hooks.push(&[event(4)]);
    let failed = receiver.next().await;
    assert_eq!(receiver.next().await.delivery(), failed.delivery());
    let listed = hooks.dead_letters(3).await;
    assert_eq!(listed[0].original_id, "ev-4");
    assert_eq!(listed[0].reason, "HTTP 500");

    // Replay ev-1, ev-2 and ev-4, twice at once, ev-1 twice in each: each goes once, in a new
    // batch (with Redis the two calls interleave their commands on the shared link).
    let mut replay: Vec<String> = listed.iter().rev().map(|d| d.id.clone()).collect();
    replay.push(replay[0].clone());
    replay.push("someone-else:dlq/1-0".to_owned());
    let (one, other) = tokio::join!(hooks.hooks.replay(&replay), hooks.hooks.replay(&replay));
    assert_eq!(one.expect("replay") + other.expect("replay"), 3);
    for request in receiver
        .until_events(&["ev-1".into(), "ev-2".into(), "ev-4".into()])
        .await
    {
        assert_ne!(request.delivery(), failed.delivery(), "a new delivery id");
    }
    assert!(hooks.dead_letters(0).await.is_empty());
    assert_eq!(hooks.hooks.replay(&replay).await.expect("replay"), 0);
    assert_eq!(hooks.metrics.webhook_dead.get(), 4);
    hooks.hooks.stop().await;
}

#[tokio::test]
async fn memory_dead_letters_are_listed_replayed_and_deleted() {
    realtime_hub::logging::init_for_tests();
    dead_letters_are_listed_replayed_and_deleted(Kind::Memory).await;
}

#[tokio::test]
async fn redis_dead_letters_are_listed_replayed_and_deleted() {
    realtime_hub::logging::init_for_tests();
    dead_letters_are_listed_replayed_and_deleted(Kind::Redis).await;
}

/// A password in the URL reaches neither the dead letters nor (by the same function) the logs.
#[tokio::test]
async fn a_dead_letter_shows_the_url_without_its_password() {
    realtime_hub::logging::init_for_tests();
    let url = format!("http://hook:pa55word@127.0.0.1:{}/in", closed_port());
    let hooks = Hooks::new(Kind::Memory, config(&url, 1, 100));
    hooks.hooks.start();
    hooks.push(&[event(1)]);
    let listed = hooks.dead_letters(1).await;
    let shown = listed[0].fields["url"].as_str().expect("a url");
    assert!(!shown.contains("pa55word"), "{shown}");
    assert!(
        shown.starts_with("http://hook:redacted@127.0.0.1:"),
        "{shown}"
    );
    hooks.hooks.stop().await;
}

// ---- (4) Redis: a batch survives its node ----

/// Node A takes the batch of `ev-1`, `ev-2` queued for `receiver`, records it, gets 500s, and
/// is killed mid-batch. Returns A's first request and the attempts A recorded.
async fn node_killed_mid_batch(server: &RedisServer, receiver: &mut Receiver) -> (Request, u32) {
    // Node A only ever gets 500s: scripted generously, cut back once A is gone.
    receiver.script(&[Reply::Status(500); 20]);
    let url = receiver.url();
    rpush(server, &url, &[event(1), event(2)]);

    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let node_a = {
        let (server_url, url) = (server.url(), url.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for node A");
            runtime.block_on(async move {
                let client = redis::Client::open(server_url).expect("a redis client");
                let hooks = Webhooks::redis(
                    config(&url, 8, 100),
                    &client,
                    Keys::new(PREFIX),
                    "node-a".into(),
                    Metrics::new(),
                )
                .expect("node A");
                hooks.start();
                let _ = killed.await;
            });
            // Dropping the runtime cancels node A's tasks where they stand: no stop, no lock
            // released, as if the process had been killed.
            drop(runtime);
        })
    };
    let first = receiver.next().await;
    assert_eq!(first.event_ids(), ids(1..=2));
    let _ = kill.send(());
    node_a.join().expect("node A's thread");
    // Node A's retries answered before it died are not node B's.
    receiver.reset();

    let keys = Keys::new(PREFIX);
    let mut conn = redis_conn(&server.url());
    let recorded: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.webhook_batch(&url))
        .query(&mut conn)
        .expect("HGETALL");
    assert_eq!(recorded.get("delivery"), Some(&first.delivery()));
    assert_eq!(recorded.get("count").map(String::as_str), Some("2"));
    let attempts_by_a: u32 = recorded
        .get("attempts")
        .and_then(|a| a.parse().ok())
        .expect("attempts recorded");
    assert!(attempts_by_a >= 1);
    let lock: Option<String> = redis::cmd("GET")
        .arg(keys.webhook_lock(&url))
        .query(&mut conn)
        .expect("GET");
    assert!(
        lock.is_some_and(|owner| owner.starts_with("node-a:")),
        "node A still holds the lock"
    );

    (first, attempts_by_a)
}

/// A node killed with its batch in flight (recorded, one attempt made and failed) leaves it
/// in Redis; another node takes the lock once its lease ran out and sends the same batch with
/// the same `X-Hub-Delivery`, then removes it from the queue.
#[tokio::test]
async fn redis_a_killed_nodes_batch_is_sent_by_another_node_with_its_delivery_id() {
    realtime_hub::logging::init_for_tests();
    let server = RedisServer::start();
    let mut receiver = Receiver::start();
    let (first, _) = node_killed_mid_batch(&server, &mut receiver).await;
    let url = receiver.url();
    let keys = Keys::new(PREFIX);
    let mut conn = redis_conn(&server.url());

    let metrics = Metrics::new();
    let node_b = redis_node(&server, config(&url, 8, 100), "node-b", metrics.clone());
    node_b.start();
    let taken_over = receiver.next().await;
    assert_eq!(taken_over.delivery(), first.delivery(), "the same batch");
    assert_eq!(taken_over.event_ids(), ids(1..=2));

    // Delivered: the queue and the record are gone, and node B goes on with a new batch.
    rpush(&server, &url, &[event(3)]);
    let next = receiver.next().await;
    assert_eq!(next.event_ids(), ids(3..=3));
    assert_ne!(next.delivery(), first.delivery());
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        let (queued, batch): (i64, i64) = redis::pipe()
            .cmd("LLEN")
            .arg(keys.webhook_queue(&url))
            .cmd("EXISTS")
            .arg(keys.webhook_batch(&url))
            .query(&mut conn)
            .expect("LLEN, EXISTS");
        if (queued, batch) == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "queue {queued}, batch {batch}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metrics.webhook_dead.get(), 0);
    node_b.stop().await;
    let lock: Option<String> = redis::cmd("GET")
        .arg(keys.webhook_lock(&url))
        .query(&mut conn)
        .expect("GET");
    assert_eq!(lock, None, "a stopped node lets its lock go");
}

// ---- (5) The memory engine's bounds ----

/// A full memory queue drops its oldest events, counted in `hub_webhook_dropped_total`; the
/// rest are delivered, oldest first; what is still queued at stop is counted as lost.
#[tokio::test]
async fn memory_overflow_drops_the_oldest_and_counts_them() {
    realtime_hub::logging::init_for_tests();
    let mut receiver = Receiver::start();
    let hooks = Hooks::new(Kind::Memory, config(&receiver.url(), 3, 3));
    hooks.push(&[event(1), event(2), event(3), event(4), event(5)]);
    assert_eq!(hooks.metrics.webhook_dropped.get(), 2);
    assert_eq!(hooks.metrics.webhook_queue_events.get(), 3);
    hooks.hooks.start();
    assert_eq!(receiver.next().await.event_ids(), ids(3..=5));
    hooks.wait_requests("ok", 1).await;
    hooks.hooks.stop().await;
    assert_eq!(hooks.metrics.webhook_lost.get(), 0);
    assert_eq!(hooks.metrics.webhook_queue_events.get(), 0);

    // Never started: everything queued is lost at stop, and counted.
    let idle = Hooks::new(Kind::Memory, config(&receiver.url(), 3, 10));
    idle.push(&[event(6), event(7)]);
    idle.hooks.stop().await;
    assert_eq!(idle.metrics.webhook_lost.get(), 2);
}

/// The node that takes a batch over continues its attempt count: allowed one attempt more than
/// node A made, node B sends the batch once, and that failure sets its events aside.
#[tokio::test]
async fn redis_a_taken_over_batch_keeps_its_attempt_count() {
    realtime_hub::logging::init_for_tests();
    let server = RedisServer::start();
    let mut receiver = Receiver::start();
    let (first, attempts_by_a) = node_killed_mid_batch(&server, &mut receiver).await;
    receiver.script(&[Reply::Status(500); 10]);
    let metrics = Metrics::new();
    let node_b = Hooks {
        hooks: redis_node(
            &server,
            config(&receiver.url(), attempts_by_a + 1, 100),
            "node-b",
            metrics.clone(),
        ),
        metrics,
        url: receiver.url(),
        // The server belongs to this test: node B only lists dead letters through `Hooks`.
        redis: None,
    };
    node_b.hooks.start();
    assert_eq!(receiver.next().await.delivery(), first.delivery());
    let listed = node_b.dead_letters(2).await;
    assert_eq!(node_b.requests("error"), 1, "one attempt by node B");
    for dead in &listed {
        assert_eq!(dead.deliveries, u64::from(attempts_by_a) + 1);
        assert_eq!(dead.reason, "HTTP 500");
    }
    assert!(receiver.try_next().is_none(), "no attempt after the last");
    node_b.hooks.stop().await;
}

/// A node that lost its lock mid-request (paused past its lease, another node took over)
/// removes nothing when its request succeeds: the batch stays queued and recorded for the
/// node that holds the lock now.
#[tokio::test]
async fn redis_a_node_that_lost_its_lock_removes_nothing() {
    realtime_hub::logging::init_for_tests();
    let mut receiver = Receiver::start();
    receiver.script(&[Reply::Slow]);
    let hooks = Hooks::new(Kind::Redis, config(&receiver.url(), 8, 100));
    let server = hooks.redis.as_ref().expect("a redis server");
    let keys = Keys::new(PREFIX);
    let mut conn = redis_conn(&server.url());
    hooks.push(&[event(1), event(2)]);
    hooks.hooks.start();

    let request = receiver.next().await;
    // While the answer is on its way, another node holds the lock.
    let _: () = redis::cmd("SET")
        .arg(keys.webhook_lock(&hooks.url))
        .arg("intruder")
        .query(&mut conn)
        .expect("SET");
    let deadline = Instant::now() + LONG_WAIT;
    while hooks.requests("ok") + hooks.requests("timeout") == 0 {
        assert!(Instant::now() < deadline, "the request was judged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the sender its chance to (wrongly) finish the batch, then look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (queued, delivery): (i64, Option<String>) = redis::pipe()
        .cmd("LLEN")
        .arg(keys.webhook_queue(&hooks.url))
        .cmd("HGET")
        .arg(keys.webhook_batch(&hooks.url))
        .arg("delivery")
        .query(&mut conn)
        .expect("LLEN, HGET");
    assert_eq!(queued, 2, "the events stay queued");
    assert_eq!(
        delivery,
        Some(request.delivery()),
        "the batch stays recorded"
    );
    hooks.hooks.stop().await;
    let lock: Option<String> = redis::cmd("GET")
        .arg(keys.webhook_lock(&hooks.url))
        .query(&mut conn)
        .expect("GET");
    assert_eq!(
        lock.as_deref(),
        Some("intruder"),
        "a stop releases only its own lock"
    );
}

/// A batch in flight survives a restart of a Redis that persists (AOF, settled point 2): the
/// sender rides out the outage and, once Redis is back, sends the same batch with the same
/// `X-Hub-Delivery`.
#[tokio::test]
async fn redis_a_batch_survives_a_redis_restart() {
    realtime_hub::logging::init_for_tests();
    let mut server = RedisServer::start_durable();
    let mut receiver = Receiver::start();
    receiver.script(&[Reply::Status(500)]);
    let url = receiver.url();
    rpush(&server, &url, &[event(1), event(2)]);
    let metrics = Metrics::new();
    let hooks = redis_node(&server, config(&url, 8, 100), "node-a", metrics.clone());
    hooks.start();
    let first = receiver.next().await;

    server.kill();
    // An outage longer than the retry's wait: the sender meets it when it renews its lock.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.launch();

    let again = receiver.next().await;
    assert_eq!(again.delivery(), first.delivery(), "the same batch");
    assert_eq!(again.event_ids(), ids(1..=2));
    rpush(&server, &url, &[event(3)]);
    let next = receiver.next().await;
    assert_eq!(next.event_ids(), ids(3..=3));
    assert_eq!(metrics.webhook_dead.get(), 0);
    hooks.stop().await;
}
