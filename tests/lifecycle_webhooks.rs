//! Lifecycle events through webhooks, end to end: real hub nodes (in this process on port 0, or
//! subprocesses where one is killed) with `HUB_WEBHOOK_URLS` pointing at a real HTTP receiver
//! started here (`common::receiver`), on both engines. The delivery rules themselves (retries,
//! order, takeover) are specified against the `Webhooks` service in `tests/webhooks.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const HOOK_SECRET: &str = "lifecycle-hook-secret";

/// The flags of a node sending `events` (`*` for all), with a grace of `grace` seconds, to
/// `url`.
fn hook_flags(url: &str, events: &str, grace: &str) -> Vec<String> {
    [
        "--lifecycle-events",
        events,
        "--lifecycle-grace-s",
        grace,
        "--webhook-urls",
        url,
        "--webhook-secret",
        HOOK_SECRET,
        "--webhook-timeout-s",
        "1",
    ]
    .map(String::from)
    .to_vec()
}

fn memory_node(url: &str, events: &str, grace: &str, extra: &[&str]) -> TestApp {
    let mut flags = hook_flags(url, events, grace);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_memory_app(&flags)
}

/// The next `n` events the receiver gets, each as [`lifecycle_line`], checking every request's
/// signature and timestamp as a receiver should.
async fn next_events(receiver: &mut Receiver, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for request in receiver.events_of_next(n).await {
        let ts = request.header("x-hub-timestamp").to_owned();
        assert!(
            verifies(
                HOOK_SECRET.as_bytes(),
                &ts,
                &request.body,
                request.header("x-hub-signature")
            ),
            "signature of {:?}",
            String::from_utf8_lossy(&request.body)
        );
        let age = now().abs_diff(request.timestamp());
        assert!(age <= 5, "a fresh timestamp: {age} s old");
        assert!(!request.delivery().is_empty());
        assert_eq!(request.header("content-type"), "application/json");
        lines.extend(request.events().iter().map(lifecycle_line));
    }
    lines
}

/// Nothing reaches the receiver for `quiet`.
async fn no_events_for(receiver: &mut Receiver, quiet: Duration) {
    tokio::time::sleep(quiet).await;
    if let Some(request) = receiver.try_next() {
        panic!(
            "unexpected webhook: {}",
            String::from_utf8_lossy(&request.body)
        );
    }
}

/// Memory engine: every type arrives, signed, up events at once and down events after the
/// grace, each once.
#[actix_rt::test]
async fn memory_every_event_type_reaches_the_webhook_signed() {
    let mut receiver = Receiver::start();
    let node = memory_node(&receiver.url(), "*", "1", &[]);
    let mut alice = Client::connect(&node, "alice").await;
    alice.subscribe("chat:x").await;
    assert_eq!(
        next_events(&mut receiver, 3).await,
        [
            "user.online alice",
            "channel.occupied chat:x",
            "member.added chat:x/alice"
        ]
    );
    let closed = Instant::now();
    drop(alice);
    let down = next_events(&mut receiver, 3).await;
    assert!(
        closed.elapsed() >= Duration::from_millis(900),
        "after the 1 s grace"
    );
    let mut sorted = down.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "channel.vacated chat:x closed",
            "member.removed chat:x/alice closed",
            "user.offline alice closed"
        ],
        "{down:?}"
    );
    no_events_for(&mut receiver, Duration::from_millis(1500)).await;
    let metrics = scrape(&node).await;
    assert!(
        metrics.contains(r#"hub_lifecycle_events_total{type="user.online"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"hub_webhook_requests_total{result="ok"}"#));
}

/// Memory engine: a reload inside the grace emits nothing, and two tabs give one `online`.
#[actix_rt::test]
async fn memory_a_reload_and_a_second_tab_emit_nothing() {
    let mut receiver = Receiver::start();
    let node = memory_node(&receiver.url(), "user.online,user.offline", "1", &[]);
    let tab = Client::connect(&node, "alice").await;
    assert_eq!(next_events(&mut receiver, 1).await, ["user.online alice"]);
    let second = Client::connect(&node, "alice").await;
    drop(tab);
    let reloaded = Client::connect(&node, "alice").await;
    drop(second);
    no_events_for(&mut receiver, Duration::from_millis(2000)).await;
    drop(reloaded);
    assert_eq!(
        next_events(&mut receiver, 1).await,
        ["user.offline alice closed"]
    );
}

/// A receiver that is unreachable for good: the events reach `/api/deadletters` with the
/// contract's shape; once it is up, a replay through the API delivers them in a new batch.
#[actix_rt::test]
async fn unreachable_events_are_dead_lettered_and_replayed_through_the_api() {
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let node = memory_node(&url, "user.online", "1", &["--webhook-max-attempts", "1"]);
    let _alice = Client::connect(&node, "alice").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let (status, body) = api_get(&node, "/api/deadletters").await;
        assert_eq!(status, 200, "{body}");
        if body["entries"].as_array().is_some_and(|e| e.len() == 1) {
            break body;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dead = &listed["entries"][0];
    assert_eq!(dead["stream"], "webhooks:dlq");
    assert_eq!(dead["deliveries"], 1);
    assert_eq!(dead["fields"]["url"], url.as_str());
    let event: Value = serde_json::from_str(dead["fields"]["event"].as_str().unwrap()).unwrap();
    assert_eq!(event["type"], "user.online");
    assert_eq!(dead["original_id"], event["id"]);
    assert!(dead["id"].as_str().unwrap().starts_with("webhooks:dlq/"));

    let mut receiver = Receiver::start_on(port);
    let body = serde_json::json!({ "ids": [dead["id"]] }).to_string();
    let (status, replayed) = api_post(&node, "/api/deadletters/replay", &body).await;
    assert_eq!(
        (status, &replayed["replayed"]),
        (200, &serde_json::json!(1))
    );
    let request = receiver.next().await;
    assert_eq!(request.events()[0]["id"], event["id"], "the same event");
    let (_, after) = api_get(&node, "/api/deadletters").await;
    assert_eq!(after["entries"], serde_json::json!([]));
}

/// Redis engine, two nodes sending to one URL: a user with a tab on each gets one `online`
/// and one `offline`, each delivered once.
#[actix_rt::test]
async fn redis_two_nodes_deliver_each_transition_once() {
    let redis = RedisServer::start();
    let mut receiver = Receiver::start();
    let flags = hook_flags(&receiver.url(), "user.online,user.offline", "1");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = spawn_node(&redis, "a", &flags);
    let b = spawn_node(&redis, "b", &flags);
    let on_a = Client::connect(&a, "alice").await;
    let on_b = Client::connect(&b, "alice").await;
    assert_eq!(next_events(&mut receiver, 1).await, ["user.online alice"]);
    drop(on_a);
    no_events_for(&mut receiver, Duration::from_millis(1500)).await;
    drop(on_b);
    assert_eq!(
        next_events(&mut receiver, 1).await,
        ["user.offline alice closed"]
    );
    no_events_for(&mut receiver, Duration::from_millis(1500)).await;
}

/// Redis engine: the node sending a batch that keeps failing is killed; another node sends
/// the same batch (same `X-Hub-Delivery`) once the receiver recovers, and nothing is lost.
#[actix_rt::test]
async fn redis_a_killed_sender_s_batch_is_delivered_by_another_node() {
    let redis = RedisServer::start();
    let mut receiver = Receiver::start();
    receiver.script(&[Reply::Status(500); 3]);
    let url = receiver.url();
    let envs = [
        ("HUB_LIFECYCLE_EVENTS", "user.online"),
        ("HUB_WEBHOOK_URLS", url.as_str()),
        ("HUB_WEBHOOK_SECRET", HOOK_SECRET),
        ("HUB_WEBHOOK_TIMEOUT_S", "1"),
    ];
    let mut a = HubProcess::node(&redis.url(), "a", &envs).await;
    let first = Client::connect_url(&a.ws_url(), &token("alice")).await;
    let failed = receiver.next().await;
    // Only a (the one node) can be sending; b starts now and waits for a's lock.
    let b = HubProcess::node(&redis.url(), "b", &envs).await;
    a.kill();
    drop(first);
    receiver.reset();
    let delivered = loop {
        let request = receiver.next().await;
        if request.header("x-hub-delivery") == failed.delivery() {
            break request;
        }
    };
    assert_eq!(delivered.event_ids(), failed.event_ids());
    assert_eq!(delivered.events()[0]["user"], "alice");
    drop(b);
}

/// Memory engine: stopping the node ends every grace at once (nobody can come back to a node
/// that is gone) and delivers the down events before the process ends.
#[actix_rt::test]
async fn memory_a_stopping_node_delivers_its_down_events_first() {
    let mut receiver = Receiver::start();
    let mut node = memory_node(&receiver.url(), "user.online,user.offline", "60", &[]);
    let alice = Client::connect(&node, "alice").await;
    assert_eq!(next_events(&mut receiver, 1).await, ["user.online alice"]);
    let stopping = std::thread::spawn(move || node.stop());
    drop(alice);
    assert_eq!(
        next_events(&mut receiver, 1).await,
        ["user.offline alice closed"]
    );
    stopping.join().expect("the node stops");
}

/// https webhooks go over rustls. To a receiver whose CA the system trusts (here through
/// `SSL_CERT_FILE`) the events arrive. To one it does not trust every attempt fails, naming
/// the certificate, each failure a JSON log line with the URL and never the secret.
#[actix_rt::test]
async fn https_webhooks_check_the_receiver_s_certificate() {
    let receiver = HttpsReceiver::start();
    let url = receiver.url();
    let ca = receiver.ca.to_string_lossy().into_owned();
    let envs = |cert_file: String| {
        vec![
            ("HUB_JWT_SECRET", SECRET.to_owned()),
            ("HUB_LIFECYCLE_EVENTS", "user.online".to_owned()),
            ("HUB_WEBHOOK_URLS", url.clone()),
            ("HUB_WEBHOOK_SECRET", HOOK_SECRET.to_owned()),
            ("HUB_WEBHOOK_MAX_ATTEMPTS", "2".to_owned()),
            ("HUB_LOG_FORMAT", "json".to_owned()),
            ("SSL_CERT_FILE", cert_file),
        ]
    };
    let trusted_envs = envs(ca);
    let trusted_envs: Vec<(&str, &str)> =
        trusted_envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let trusted = HubProcess::start_ready(&trusted_envs).await;
    let _alice = Client::connect_url(&trusted.ws_url(), &token("alice")).await;
    let body = receiver
        .bodies
        .wait_for(Duration::from_secs(15), |l| l.contains("user.online"))
        .expect("the event reaches the https receiver");
    assert!(body.contains(r#""user":"alice""#), "{body}");

    let untrusted_envs = envs("/nonexistent/ca.pem".to_owned());
    let untrusted_envs: Vec<(&str, &str)> = untrusted_envs
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let mut untrusted = HubProcess::start_ready(&untrusted_envs).await;
    let _bob = Client::connect_url(&untrusted.ws_url(), &token("bob")).await;
    let given_up = untrusted
        .stderr
        .wait_for(Duration::from_secs(15), |l| {
            l.contains("webhook batch given up")
        })
        .expect("the batch is given up after its attempts");
    let line: Value = serde_json::from_str(&given_up).expect("a JSON log line");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["url"], url.as_str(), "{line}");
    let reason = line["reason"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        reason.contains("certificate") || reason.contains("issuer"),
        "{line}"
    );
    let failed = untrusted.stderr.text();
    let attempt = failed
        .lines()
        .find(|l| l.contains("webhook attempt failed"))
        .expect("the first attempt's failure is logged");
    let attempt: Value = serde_json::from_str(attempt).expect("a JSON log line");
    assert_eq!(
        (attempt["level"].as_str(), attempt["attempt"].as_u64()),
        (Some("WARN"), Some(1))
    );
    assert!(attempt["next_retry_ms"].as_u64().is_some(), "{attempt}");
    assert!(!failed.contains(HOOK_SECRET), "the secret is never logged");
    assert!(receiver.bodies.text().lines().all(|l| !l.contains("bob")));
    untrusted.assert_healthy();
}
