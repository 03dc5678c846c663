//! The cluster-wide state of the Redis engine: this node's heartbeat (its own lease, figures
//! and channel counts, and the renewal of every presence entry and connection slot it holds),
//! the removal of nodes that stopped renewing, and the views built from all live nodes.
//!
//! Leases are scored on the Redis server's clock. A node removes others only once it has
//! itself renewed without a failure for a whole lease: after an outage (or a Redis pause) every
//! lease has run out, and the first node back must give the others a lease's time to renew
//! theirs before it takes them for dead.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use actix::Recipient;
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use super::clock::server_ms;
use super::health::{classify, Failure};
use super::presence::presence_member;
use super::replies::StoredClient;
use super::RedisEngine;
use crate::clock::unix_millis;
use crate::engine::{EngineError, NodeInfo};
use crate::hub;
use crate::protocol::node::NodeMessage;
use crate::protocol::ServerFrame;

/// Renews this node's leases every heartbeat and removes dead nodes; ends with the engine.
pub fn start_heartbeat(engine: &Arc<RedisEngine>, stats: Recipient<hub::Stats>) {
    let weak: Weak<RedisEngine> = Arc::downgrade(engine);
    let period = engine.settings.heartbeat;
    let started_ms = unix_millis();
    actix::spawn(async move {
        let mut tick = tokio::time::interval(period);
        // A beat slower than the period (a timeout) is followed by one beat, not a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Since when every beat has succeeded; `None` until the first, and after a failure.
        let mut steady_since: Option<Instant> = None;
        loop {
            tick.tick().await;
            let Some(engine) = weak.upgrade() else {
                break;
            };
            let Ok(figures) = stats
                .send(hub::Stats {
                    with_channels: true,
                })
                .await
            else {
                break;
            };
            match beat(&engine, &figures, started_ms).await {
                Ok(()) => {
                    engine.health.ok();
                    engine.health.beat_published();
                    steady_since.get_or_insert_with(Instant::now);
                }
                // Whatever failed, a node that could not renew cleanly does not judge others
                // by their leases until it has again for a whole lease.
                Err(e) => {
                    steady_since = None;
                    if classify(&e) == Failure::Unreachable {
                        engine.health.failed(&e);
                        tracing::warn!(error = %e, "heartbeat failed");
                        continue;
                    }
                    // Redis answered, refusing part of the pipeline (a key of the wrong type,
                    // memory full); the rest of it was applied.
                    engine.health.ok();
                    tracing::warn!(error = %e, "heartbeat partly refused by redis");
                }
            }
            if steady_since.is_some_and(|t| t.elapsed() >= engine.settings.lease()) {
                if let Err(e) = remove_dead_nodes(&engine).await {
                    tracing::warn!(error = %e, "dead node cleanup failed");
                }
            }
        }
    });
}

/// One renewal, as one pipeline. Presence entries and slots are written in full, not just
/// touched, so state lost in a Redis restart (or removed by a node that took this one for
/// dead) comes back by itself; in the second case this node's clients are announced again.
async fn beat(
    engine: &RedisEngine,
    figures: &hub::NodeStats,
    started_ms: u64,
) -> redis::RedisResult<()> {
    let keys = &engine.keys;
    let node = &engine.settings.node_id;
    let lease_ms = engine.settings.lease().as_millis() as i64;
    let mut conn = engine.conn();
    engine.clock.sync(&mut conn).await?;
    let expiry = engine.lease_expiry();
    let mut pipe = redis::pipe();
    pipe.zadd(keys.nodes(), node, expiry).ignore();
    pipe.hset_multiple(
        keys.node_info(node),
        &[
            ("connections", figures.connections.to_string()),
            ("subscriptions", figures.subscriptions.to_string()),
            ("started_ms", started_ms.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ],
    )
    .ignore()
    .pexpire(keys.node_info(node), lease_ms)
    .ignore();
    pipe.del(keys.node_channels(node)).ignore();
    if !figures.channels.is_empty() {
        let counts: Vec<(&str, usize)> = figures
            .channels
            .iter()
            .map(|(c, n)| (c.as_str(), *n))
            .collect();
        pipe.hset_multiple(keys.node_channels(node), &counts)
            .ignore()
            .pexpire(keys.node_channels(node), lease_ms)
            .ignore();
    }
    {
        let local = engine.lock();
        for (channel, clients) in &local.presence {
            for (client, entry) in clients {
                let json = serde_json::to_string(&entry.info).unwrap_or_default();
                pipe.hset(keys.presence(channel), client, json)
                    .ignore()
                    .zadd(keys.presence_leases(channel), client, expiry)
                    .ignore()
                    .sadd(
                        keys.node_presence(node),
                        presence_member(entry.announce, channel, client),
                    )
                    .ignore();
            }
            pipe.pexpire(keys.presence(channel), lease_ms)
                .ignore()
                .pexpire(keys.presence_leases(channel), lease_ms)
                .ignore();
        }
        for (client, user) in &local.slots {
            pipe.zadd(keys.connections(user), client, expiry)
                .ignore()
                .pexpire(keys.connections(user), lease_ms)
                .ignore();
        }
    }
    // The set outlives the node's lease, so whoever removes the node still finds it.
    pipe.pexpire(keys.node_presence(node), lease_ms * 10)
        .ignore();
    if let Ok(text) = serde_json::to_string(&NodeMessage::Heartbeat { node: node.clone() }) {
        pipe.publish(keys.control(), text).ignore();
    }
    pipe.cmd("GETDEL").arg(keys.node_removed(node));
    let (removed,): (Option<String>,) = pipe.query_async(&mut conn).await?;
    if engine.tracks_lifecycle() {
        // In order with this node's other writes, so what it checks is what it has written.
        engine.enqueue(super::presence::Op::Lifecycle(
            super::lifecycle::LifecycleOp::Check,
        ));
    }
    if let Some(by) = removed {
        announce_again(engine, &by, &mut conn).await?;
    }
    Ok(())
}

/// Another node took this one for dead and sent `leave` for its clients; the heartbeat has
/// just written their entries back, so the others now hear `join` for them.
async fn announce_again(
    engine: &RedisEngine,
    by: &str,
    conn: &mut super::Commands,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let mut announced = 0usize;
    {
        let local = engine.lock();
        for (channel, clients) in &local.presence {
            for entry in clients.values().filter(|e| e.announce) {
                let frame = ServerFrame::Join {
                    channel,
                    client: &entry.info,
                }
                .encode()
                .to_string();
                pipe.publish(engine.keys.topic(channel), frame).ignore();
                announced += 1;
            }
        }
    }
    tracing::warn!(
        removed_by = by,
        announced = announced,
        "this node had been taken for dead: announcing its clients again"
    );
    if announced == 0 {
        return Ok(());
    }
    pipe.query_async::<()>(conn).await
}

/// Removes every node whose lease expired (its expiry at or before now: the complement of
/// [`node_lease_live`]). Exactly one live node wins each removal (ZREM
/// answers 1 once) and sends the `leave` pushes for the dead node's presence entries.
async fn remove_dead_nodes(engine: &RedisEngine) -> redis::RedisResult<()> {
    let keys = &engine.keys;
    let mut conn = engine.conn();
    let now = engine.clock.sync(&mut conn).await?;
    let dead: Vec<String> = conn.zrangebyscore(keys.nodes(), "-inf", now).await?;
    for node in dead.into_iter().filter(|n| *n != engine.settings.node_id) {
        let won: i64 = conn.zrem(keys.nodes(), &node).await?;
        if won != 1 {
            continue;
        }
        let members: Vec<String> = conn.smembers(keys.node_presence(&node)).await?;
        tracing::warn!(
            dead_node = node.as_str(),
            presence_entries = members.len(),
            "removing a node that stopped renewing"
        );
        for member in members {
            let mut parts = member.splitn(3, '\n');
            let (Some(announce), Some(channel), Some(client)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let stored: Option<String> = conn.hget(keys.presence(channel), client).await?;
            let frame = match (announce, stored.as_deref().and_then(StoredClient::parse)) {
                ("1", Some(info)) => ServerFrame::Leave {
                    channel,
                    client: &info,
                }
                .encode()
                .to_string(),
                _ => String::new(),
            };
            engine
                .scripts
                .leave
                .key(keys.presence(channel))
                .key(keys.presence_leases(channel))
                .arg(client)
                .arg(keys.topic(channel))
                .arg(frame)
                .invoke_async::<i64>(&mut conn)
                .await?;
        }
        engine.lifecycle_node_lost(&node, &mut conn).await?;
        let tombstone_ms = engine.settings.lease().as_millis() as u64 * 10;
        let _: () = redis::pipe()
            .del(keys.node_presence(&node))
            .ignore()
            .del(keys.node_info(&node))
            .ignore()
            .del(keys.node_channels(&node))
            .ignore()
            .cmd("SET")
            .arg(keys.node_removed(&node))
            .arg(&engine.settings.node_id)
            .arg("PX")
            .arg(tombstone_ms)
            .ignore()
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

/// Whether `node` holds a live lease in `nodes` (the sorted set of [`super::Keys::nodes`]):
/// its expiry is later than the Redis server's clock now. For those without the engine at
/// hand (the Streams readers, deciding whether a consumer's node is gone); the engine's own
/// views ask the same of the whole set at once (`other_live_nodes`, `remove_dead_nodes`).
pub async fn node_lease_live(
    conn: &mut impl ConnectionLike,
    nodes: &str,
    node: &str,
) -> redis::RedisResult<bool> {
    let expiry: Option<f64> = redis::cmd("ZSCORE")
        .arg(nodes)
        .arg(node)
        .query_async(conn)
        .await?;
    let Some(expiry) = expiry else {
        return Ok(false);
    };
    Ok(expiry > server_ms(conn).await? as f64)
}

/// The live nodes other than this one: leases expiring after now (exclusive, as in
/// [`node_lease_live`]).
async fn other_live_nodes(engine: &RedisEngine) -> Result<Vec<String>, EngineError> {
    let mut conn = engine.conn();
    let live: Vec<String> = engine
        .answered(
            conn.zrangebyscore(
                engine.keys.nodes(),
                format!("({}", engine.clock.now_ms()),
                "+inf",
            )
            .await,
        )
        .await?;
    Ok(live
        .into_iter()
        .filter(|n| *n != engine.settings.node_id)
        .collect())
}

/// The other live nodes' figures, as of their last heartbeat.
pub async fn other_nodes(engine: &RedisEngine) -> Result<Vec<NodeInfo>, EngineError> {
    let names = other_live_nodes(engine).await?;
    let mut conn = engine.conn();
    let mut nodes = Vec::with_capacity(names.len());
    for node in names {
        let info: BTreeMap<String, String> = engine
            .answered(conn.hgetall(engine.keys.node_info(&node)).await)
            .await?;
        let field = |name: &str| {
            info.get(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        nodes.push(NodeInfo {
            connections: field("connections") as usize,
            subscriptions: field("subscriptions") as usize,
            uptime_s: unix_millis().saturating_sub(field("started_ms")) / 1000,
            version: info.get("version").cloned().unwrap_or_default(),
            node,
        });
    }
    Ok(nodes)
}

/// Every channel with subscribers on another live node, with their total there.
pub async fn other_channels(engine: &RedisEngine) -> Result<Vec<(String, usize)>, EngineError> {
    let names = other_live_nodes(engine).await?;
    let mut conn = engine.conn();
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for node in names {
        let counts: BTreeMap<String, usize> = engine
            .answered(conn.hgetall(engine.keys.node_channels(&node)).await)
            .await?;
        for (channel, n) in counts {
            *totals.entry(channel).or_default() += n;
        }
    }
    Ok(totals.into_iter().collect())
}
