//! The `Engine` trait itself, the same cases against both engines (as centrifuge runs its broker
//! tests against the memory and the Redis broker): offsets, history (`newest`, `since`, a
//! `limit` of 0, a `since` from another epoch), recovery at subscribe time, dedup by
//! `event_id`, batches, presence, per-user connection slots, epochs, and the single-node
//! answers of the cluster calls.
//!
//! Each case is one `async fn` taking a way to build the engine under test; `both_engines!`
//! turns it into one test per engine (`memory::case`, `redis::case`). The memory engine hands
//! its publications to a real (empty) Hub; the Redis engine runs on its own `redis-server`,
//! without a bridge: nothing here needs a publication routed, only kept.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use serde_json::{json, value::RawValue, Value};

use common::*;
use realtime_hub::engine::memory::MemoryEngine;
use realtime_hub::engine::redis::{Keys, RedisEngine, RedisSettings};
use realtime_hub::engine::{Engine, PublishRequest, Published, Reason};
use realtime_hub::hub::Hub;
use realtime_hub::metrics::Metrics;
use realtime_hub::protocol::{ClientInfo, Message, Position};

/// What a case may set on the engine it gets.
#[derive(Clone, Copy)]
struct Settings {
    history_size: usize,
    history_ttl: Duration,
    dedup_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            dedup_window: Duration::from_secs(120),
        }
    }
}

/// An engine under test, with what it runs on.
struct Under {
    engine: Arc<dyn Engine>,
    /// The Redis engine's own server; dropped with the engine.
    _redis: Option<RedisServer>,
}

/// Builds the engine under test.
type Make = fn(Settings) -> Under;

fn memory(s: Settings) -> Under {
    let hub = Hub::new(1 << 20, Metrics::new()).start();
    let engine = Arc::new(MemoryEngine::new(
        hub.recipient(),
        s.history_size,
        s.history_ttl,
        s.dedup_window,
    ));
    engine.start_sweeper();
    Under {
        engine,
        _redis: None,
    }
}

fn redis(s: Settings) -> Under {
    let server = RedisServer::start();
    let client = ::redis::Client::open(server.url()).expect("a Redis url");
    let settings = RedisSettings {
        node_id: "engine-test".into(),
        history_size: s.history_size,
        history_ttl: s.history_ttl,
        dedup_window: s.dedup_window,
        // Leases outlast every case: nothing here renews them.
        heartbeat: Duration::from_secs(60),
    };
    let engine = RedisEngine::new(&client, Keys::new("hub"), settings).expect("a Redis engine");
    Under {
        engine,
        _redis: Some(server),
    }
}

/// Generates, for each case, one test per engine.
macro_rules! both_engines {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                /// The case of the same name, on the memory engine.
                #[actix_rt::test]
                async fn $case() {
                    super::$case(super::memory).await
                }
            )*
        }
        mod redis {
            $(
                /// The case of the same name, on the Redis engine.
                #[actix_rt::test]
                async fn $case() {
                    super::$case(super::redis).await
                }
            )*
        }
    };
}

both_engines!(
    publish_assigns_consecutive_offsets_from_one,
    channels_count_their_offsets_apart,
    history_without_since_gives_the_newest_oldest_first,
    history_since_gives_what_follows_it,
    history_with_limit_zero_is_empty_but_tells_the_position,
    history_keeps_only_history_size_publications,
    a_since_from_another_epoch_gives_the_newest,
    subscribe_tells_the_position_of_an_unknown_channel,
    subscribe_recovers_every_publication_after_the_given_offset,
    subscribe_does_not_recover_from_another_epoch,
    subscribe_does_not_recover_a_gap_history_no_longer_holds,
    a_repeated_event_id_answers_the_first_publication,
    a_repeated_event_id_is_not_kept_twice,
    the_same_event_id_in_another_channel_is_published,
    a_batch_answers_in_order_with_consecutive_offsets,
    presence_lists_who_joined_until_they_leave,
    connection_slots_are_limited_per_user,
    a_released_slot_can_be_taken_again,
    a_channel_forgotten_after_its_history_ttl_starts_a_new_epoch,
    a_single_node_knows_no_other_nodes,
);

// ---- Helpers ----

fn request(channel: &str, data: Value, event_id: Option<&str>) -> PublishRequest {
    PublishRequest {
        channel: channel.to_owned(),
        data: RawValue::from_string(data.to_string()).expect("JSON"),
        event_id: event_id.map(str::to_owned),
        event_type: None,
        from: None,
    }
}

async fn publish(e: &dyn Engine, channel: &str, data: Value) -> Published {
    e.publish(request(channel, data, None))
        .await
        .expect("publish")
}

async fn publish_n(e: &dyn Engine, channel: &str, n: u64) -> Vec<Published> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(publish(e, channel, json!(i)).await);
    }
    out
}

/// The offsets of messages, in their order.
fn offsets_of(messages: &[Message]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(m.get()).expect("a message is JSON");
            v["offset"].as_u64().expect("offset")
        })
        .collect()
}

fn client(id: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client: id.to_owned(),
        user: user.to_owned(),
        info: None,
    }
}

/// The client ids in `channel`'s presence, sorted.
async fn present(e: &dyn Engine, channel: &str) -> Vec<String> {
    let mut ids: Vec<String> = e
        .presence(channel)
        .await
        .expect("presence")
        .into_iter()
        .map(|c| c.client)
        .collect();
    ids.sort();
    ids
}

// ---- Offsets ----

/// The first publication of a channel gets offset 1 and each next one the next offset, all in
/// one epoch.
async fn publish_assigns_consecutive_offsets_from_one(make: Make) {
    let u = make(Settings::default());
    let published = publish_n(&*u.engine, "c", 5).await;
    let offsets: Vec<u64> = published.iter().map(|p| p.position.offset).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    assert!(published.iter().all(|p| !p.duplicate));
    let epoch = &published[0].position.epoch;
    assert!(!epoch.is_empty(), "an epoch is given");
    assert!(published.iter().all(|p| &p.position.epoch == epoch));
}

/// Each channel has offsets of its own.
async fn channels_count_their_offsets_apart(make: Make) {
    let u = make(Settings::default());
    publish_n(&*u.engine, "a", 3).await;
    assert_eq!(publish(&*u.engine, "b", json!(1)).await.position.offset, 1);
    assert_eq!(publish(&*u.engine, "a", json!(4)).await.position.offset, 4);
}

// ---- History ----

/// `history` without `since` gives the newest `limit` publications, oldest first, and the
/// channel's position.
async fn history_without_since_gives_the_newest_oldest_first(make: Make) {
    let u = make(Settings::default());
    let last = publish_n(&*u.engine, "h", 5).await.pop().expect("five");
    let page = u.engine.history("h", 3, None).await.expect("history");
    assert_eq!(offsets_of(&page.publications), [3, 4, 5]);
    assert_eq!(page.position, last.position);
}

/// `history` with `since` gives the first `limit` publications after it.
async fn history_since_gives_what_follows_it(make: Make) {
    let u = make(Settings::default());
    let epoch = publish_n(&*u.engine, "h", 6).await[0]
        .position
        .epoch
        .clone();
    let since = Position { offset: 2, epoch };
    let page = u
        .engine
        .history("h", 3, Some(&since))
        .await
        .expect("history");
    assert_eq!(offsets_of(&page.publications), [3, 4, 5]);
    let page = u
        .engine
        .history("h", 10, Some(&since))
        .await
        .expect("history");
    assert_eq!(offsets_of(&page.publications), [3, 4, 5, 6]);
}

/// A `limit` of 0 gives no publication, but still the channel's position.
async fn history_with_limit_zero_is_empty_but_tells_the_position(make: Make) {
    let u = make(Settings::default());
    let last = publish_n(&*u.engine, "h", 2).await.pop().expect("two");
    let page = u.engine.history("h", 0, None).await.expect("history");
    assert!(page.publications.is_empty(), "{:?}", page.publications);
    assert_eq!(page.position, last.position);
}

/// History holds the newest `history_size` publications only.
async fn history_keeps_only_history_size_publications(make: Make) {
    let u = make(Settings {
        history_size: 3,
        ..Settings::default()
    });
    publish_n(&*u.engine, "h", 5).await;
    let page = u.engine.history("h", 100, None).await.expect("history");
    assert_eq!(offsets_of(&page.publications), [3, 4, 5]);
}

/// A `since` whose epoch is not the channel's says nothing about this life of the channel:
/// the answer is the newest publications, as without `since`.
async fn a_since_from_another_epoch_gives_the_newest(make: Make) {
    let u = make(Settings::default());
    publish_n(&*u.engine, "h", 4).await;
    let since = Position {
        offset: 1,
        epoch: "another-epoch".into(),
    };
    let page = u
        .engine
        .history("h", 2, Some(&since))
        .await
        .expect("history");
    assert_eq!(offsets_of(&page.publications), [3, 4]);
}

// ---- Subscribing and recovery ----

/// A channel nobody published in is at offset 0, with an epoch.
async fn subscribe_tells_the_position_of_an_unknown_channel(make: Make) {
    let u = make(Settings::default());
    let s = u.engine.subscribe("new", None).await.expect("subscribe");
    assert_eq!(s.position.offset, 0);
    assert!(!s.position.epoch.is_empty());
    assert!(s.recovered.is_none(), "nothing to recover without asking");
}

/// Subscribing with `recover` gives every publication after the offset, and the position.
async fn subscribe_recovers_every_publication_after_the_given_offset(make: Make) {
    let u = make(Settings::default());
    let published = publish_n(&*u.engine, "r", 5).await;
    let from = Position {
        offset: 2,
        epoch: published[0].position.epoch.clone(),
    };
    let s = u
        .engine
        .subscribe("r", Some(&from))
        .await
        .expect("subscribe");
    let recovered = s.recovered.expect("recovered");
    assert_eq!(offsets_of(&recovered), [3, 4, 5]);
    assert_eq!(s.position, published[4].position);
}

/// A position from another epoch cannot be recovered from.
async fn subscribe_does_not_recover_from_another_epoch(make: Make) {
    let u = make(Settings::default());
    publish_n(&*u.engine, "r", 3).await;
    let from = Position {
        offset: 1,
        epoch: "another-epoch".into(),
    };
    let s = u
        .engine
        .subscribe("r", Some(&from))
        .await
        .expect("subscribe");
    assert!(s.recovered.is_none(), "{:?}", s.recovered);
    assert_eq!(s.position.offset, 3);
}

/// A gap older than history cannot be filled: nothing is recovered rather than a part.
async fn subscribe_does_not_recover_a_gap_history_no_longer_holds(make: Make) {
    let u = make(Settings {
        history_size: 3,
        ..Settings::default()
    });
    let published = publish_n(&*u.engine, "r", 6).await;
    let from = Position {
        offset: 1,
        epoch: published[0].position.epoch.clone(),
    };
    let s = u
        .engine
        .subscribe("r", Some(&from))
        .await
        .expect("subscribe");
    assert!(s.recovered.is_none(), "{:?}", s.recovered);
    // From offset 3, history (4, 5, 6) holds all of the gap.
    let from = Position { offset: 3, ..from };
    let s = u
        .engine
        .subscribe("r", Some(&from))
        .await
        .expect("subscribe");
    assert_eq!(offsets_of(&s.recovered.expect("recovered")), [4, 5, 6]);
}

// ---- Dedup ----

/// Publishing an `event_id` again answers the first publication's position, as a duplicate.
async fn a_repeated_event_id_answers_the_first_publication(make: Make) {
    let u = make(Settings::default());
    let e = &*u.engine;
    let first = e
        .publish(request("d", json!(1), Some("ev-1")))
        .await
        .expect("publish");
    publish(e, "d", json!("between")).await;
    let again = e
        .publish(request("d", json!(2), Some("ev-1")))
        .await
        .expect("publish");
    assert!(!first.duplicate);
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.position, first.position);
    assert_eq!(again.event_id, "ev-1");
}

/// A duplicate takes no offset and is not kept in history.
async fn a_repeated_event_id_is_not_kept_twice(make: Make) {
    let u = make(Settings::default());
    let e = &*u.engine;
    e.publish(request("d", json!(1), Some("ev-1")))
        .await
        .expect("publish");
    e.publish(request("d", json!(1), Some("ev-1")))
        .await
        .expect("publish");
    assert_eq!(publish(e, "d", json!(2)).await.position.offset, 2);
    let page = e.history("d", 10, None).await.expect("history");
    assert_eq!(offsets_of(&page.publications), [1, 2]);
}

/// Dedup is per channel: the same `event_id` in another channel is a new publication.
async fn the_same_event_id_in_another_channel_is_published(make: Make) {
    let u = make(Settings::default());
    let e = &*u.engine;
    e.publish(request("d1", json!(1), Some("ev-1")))
        .await
        .expect("publish");
    let other = e
        .publish(request("d2", json!(1), Some("ev-1")))
        .await
        .expect("publish");
    assert!(!other.duplicate, "{other:?}");
    assert_eq!(other.position.offset, 1);
}

/// `publish_many` answers each request in its order; a repeated `event_id` within the batch is
/// answered as a duplicate of the first.
async fn a_batch_answers_in_order_with_consecutive_offsets(make: Make) {
    let u = make(Settings::default());
    let answers = u
        .engine
        .publish_many(vec![
            request("b", json!(1), Some("b-1")),
            request("b", json!(2), Some("b-2")),
            request("b", json!(1), Some("b-1")),
            request("b", json!(3), None),
        ])
        .await;
    let answers: Vec<Published> = answers.into_iter().map(|a| a.expect("published")).collect();
    let offsets: Vec<u64> = answers.iter().map(|a| a.position.offset).collect();
    assert_eq!(offsets, [1, 2, 1, 3]);
    let duplicates: Vec<bool> = answers.iter().map(|a| a.duplicate).collect();
    assert_eq!(duplicates, [false, false, true, false]);
}

// ---- Presence and connection slots ----

/// Presence lists the connections that joined a channel (once visible, as `join` resolves)
/// and no longer those that left.
async fn presence_lists_who_joined_until_they_leave(make: Make) {
    let u = make(Settings::default());
    let e = &*u.engine;
    e.join("p", client("c1", "ann"), true).await.expect("join");
    e.join("p", client("c2", "bob"), false).await.expect("join");
    e.join("other", client("c3", "cat"), true)
        .await
        .expect("join");
    assert_eq!(present(e, "p").await, ["c1", "c2"]);
    let users: Vec<String> = e
        .presence("p")
        .await
        .expect("presence")
        .into_iter()
        .map(|c| c.user)
        .collect();
    assert!(users.contains(&"ann".to_owned()) && users.contains(&"bob".to_owned()));
    // `leave` is fire and forget: it takes effect in call order, shortly.
    e.leave("p", "c1", true, Reason::Closed);
    eventually("c1 left p", || async { present(e, "p").await == ["c2"] }).await;
    assert_eq!(present(e, "other").await, ["c3"]);
}

/// A user holds at most `limit` connections at once; other users are not counted against it.
async fn connection_slots_are_limited_per_user(make: Make) {
    let u = make(Settings::default());
    let e = &*u.engine;
    assert!(e.acquire_connection("ann", "c1", 2).await.expect("slot"));
    assert!(e.acquire_connection("ann", "c2", 2).await.expect("slot"));
    assert!(!e.acquire_connection("ann", "c3", 2).await.expect("slot"));
    assert!(e.acquire_connection("bob", "c4", 2).await.expect("slot"));
}

/// A slot given back can be taken by the user's next connection.
async fn a_released_slot_can_be_taken_again(make: Make) {
    let u = make(Settings::default());
    let e = &*u.engine;
    assert!(e.acquire_connection("ann", "c1", 1).await.expect("slot"));
    assert!(!e.acquire_connection("ann", "c2", 1).await.expect("slot"));
    e.release_connection("ann", "c1", Reason::Closed);
    eventually("c1's slot is free again", || async {
        // A refused attempt takes nothing, so polling is harmless.
        e.acquire_connection("ann", "c2", 1).await.expect("slot")
    })
    .await;
}

// ---- Epochs ----

/// A channel nobody published in for its history TTL is forgotten: it begins again at offset
/// 0 in a new epoch, and nothing from the old one is recovered.
async fn a_channel_forgotten_after_its_history_ttl_starts_a_new_epoch(make: Make) {
    let u = make(Settings {
        history_ttl: Duration::from_secs(1),
        ..Settings::default()
    });
    let e = &*u.engine;
    let old = publish_n(e, "t", 2).await.pop().expect("two").position;
    // Polled: the TTL runs out in the engine's own time (Redis's for the Redis engine).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let fresh = loop {
        let s = e.subscribe("t", Some(&old)).await.expect("subscribe");
        if s.position.epoch != old.epoch {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the channel never started a new epoch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fresh.position.offset, 0);
    assert!(fresh.recovered.is_none(), "nothing recovered across epochs");
    let next = publish(e, "t", json!(3)).await;
    assert_eq!(
        next.position,
        Position {
            offset: 1,
            ..fresh.position
        }
    );
}

// ---- The cluster calls on one node ----

/// A node alone knows no other node and no other node's channels. (Health is left out: the
/// Redis engine's follows its pub/sub link, which the bridge holds, not the engine.)
async fn a_single_node_knows_no_other_nodes(make: Make) {
    let u = make(Settings::default());
    let e = &*u.engine;
    publish(e, "n", json!(1)).await;
    assert!(e.other_nodes().await.expect("nodes").is_empty());
    assert!(e.other_channels().await.expect("channels").is_empty());
}
