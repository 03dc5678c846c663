//! `/ready` after a Redis outage (docs/scaling.md, "While Redis is away"): once Redis accepts
//! connections again, a node reports ready within about 2 s by itself, idle or not, without
//! waiting for its next heartbeat to find Redis back.
//!
//! Every test runs its own `redis-server` and one in-process node on it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The promise ("back within about 2 s") with slack for a loaded two-core machine.
const READY_AGAIN_WITHIN: Duration = Duration::from_millis(3500);

/// Longer than the whole test, so that no heartbeat runs after the first: whatever brings
/// `/ready` back, it is not the heartbeat. (With the default 5 s the heartbeat would, late.)
const IDLE_HEARTBEAT_S: &str = "120";

/// `/ready` on `app`: the status and the reason given (empty when ready).
async fn ready(app: &TestApp) -> (u16, String) {
    let mut res = http()
        .get(app.http("/ready"))
        .send()
        .await
        .expect("http request");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (
        status,
        body["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Polls `/ready` until it answers 200 or `within` has passed; answers how long it took, or
/// the last reason given.
async fn ready_within(app: &TestApp, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let (status, reason) = ready(app).await;
        if status == 200 {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= within {
            return Err(reason);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node that found Redis unreachable, and then sees no traffic at all, reports ready again
/// within about 2 s of Redis accepting connections.
#[actix_rt::test]
async fn an_idle_node_is_ready_again_soon_after_redis_comes_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = spawn_app_with(&[
        "--redis-url",
        &url,
        "--node-id",
        "idle",
        "--node-heartbeat-s",
        IDLE_HEARTBEAT_S,
    ]);
    ready_within(&node, WAIT)
        .await
        .expect("the node is ready before the outage");

    redis.kill();
    // One request during the outage finds Redis gone (as a heartbeat would on a node with a
    // shorter one); after it, nothing but `/ready` reaches the node.
    let (status, body) = api_get(&node, "/api/info").await;
    assert_eq!(status, 503, "/api/info while Redis is down: {body}");
    let (status, reason) = ready(&node).await;
    assert_eq!(status, 503, "/ready while Redis is down: {reason}");

    // `restart` returns once the new server accepts connections.
    redis.restart();
    let back = ready_within(&node, READY_AGAIN_WITHIN).await;
    assert!(
        back.is_ok(),
        "/ready still 503 {READY_AGAIN_WITHIN:?} after Redis came back: {:?}",
        back.err()
    );
}
