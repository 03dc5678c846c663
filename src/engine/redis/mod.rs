//! The Redis engine: any number of nodes on one Redis act as one hub. Offsets, epochs,
//! history and dedup live in per-channel keys changed only by server-side scripts (one per
//! operation, so every node sees one order); each publication is PUBLISHed, finished, on its
//! channel's topic, where every node's [`crate::bridge::RedisBridge`] picks it up for its Hub.
//! This module is the engine itself (its commands, and the publish call); around it:
//!
//! - `health`: whether Redis can be reached, for `/ready`, and what each error means;
//! - `presence`: the presence entries and connection slots this node holds, and the
//!   ordered writer of the writes nobody waits for;
//! - `cluster`: the heartbeat, dead-node removal, the views of other nodes, the lease check;
//! - `clock`: the Redis server's clock, on which leases are scored;
//! - `replies`: decoders of script answers and stored entries;
//! - `scripts`, `keys`, `commands`: the Lua scripts, key names, the command connection.
//!
//! Presence entries, connection slots and the node list are leases that this node renews every
//! `HUB_NODE_HEARTBEAT_S` (see `cluster`); Redis 7.0 has no per-field expiry, so leases are
//! sorted sets scored by expiry time, on the Redis server's clock (nodes' own clocks may
//! disagree). A node that stops renewing is removed by the others, its presence entries with
//! `leave` pushes.
//!
//! Redis errors come in three kinds (see `health::Failure`): Redis unreachable (I/O, timeouts, a
//! server still loading), which marks the node not ready and answers `unavailable`; Redis full
//! (out of memory under `noeviction`), answered `unavailable` while the node stays ready for
//! what still works; and Redis refusing a command (a wrong-typed key, a script error), a fault
//! answered `internal` while the node stays ready.

mod clock;
mod cluster;
mod commands;
mod health;
mod keys;
mod lifecycle;
mod presence;
mod replies;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use redis::Value;
use tokio::sync::mpsc;

pub use cluster::{node_lease_live, start_heartbeat};
pub use commands::Commands;
pub use health::Health;
pub use keys::Keys;
pub use lifecycle::LifecycleSettings;

use clock::ServerClock;
use health::{classify, Failure};
use presence::{apply_ops, Local, Op, Queued, OPS_QUEUE};
use replies::{failed_step, frames, int, position, published, StoredClient};
use scripts::Scripts;

use super::{
    Engine, EngineError, HistoryPage, NodeInfo, PublishRequest, Published, Reason, StreamAck,
    Subscribed,
};
use crate::clock::{random_token, unix_millis};
use crate::config::Config;
use crate::protocol::node::NodeMessage;
use crate::protocol::{ClientInfo, Position};

/// The settings the engine uses.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub node_id: String,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub dedup_window: Duration,
    pub heartbeat: Duration,
}

impl RedisSettings {
    pub fn from_config(config: &Config) -> Self {
        RedisSettings {
            node_id: config.node_id.clone(),
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            dedup_window: config.dedup_window,
            heartbeat: config.node_heartbeat,
        }
    }

    /// Leases expire after three missed renewals.
    fn lease(&self) -> Duration {
        self.heartbeat * 3
    }
}

pub struct RedisEngine {
    conn: Commands,
    keys: Keys,
    scripts: Arc<Scripts>,
    settings: RedisSettings,
    /// Fire-and-forget writes, to the one task that applies them in order; bounded by
    /// [`OPS_QUEUE`]. The task ends when the engine (this sender) is dropped.
    ops: mpsc::Sender<Queued>,
    /// Set once the ops queue overflowed, so that one warning covers the whole overflow.
    ops_full: AtomicBool,
    local: Mutex<Local>,
    clock: ServerClock,
    pub health: Arc<Health>,
    /// `Some` with lifecycle events on.
    lifecycle: Option<lifecycle::Lifecycle>,
}

impl RedisEngine {
    /// Connects lazily: a node starts while Redis is down and reports not ready until it is up.
    pub fn new(
        client: &redis::Client,
        keys: Keys,
        settings: RedisSettings,
    ) -> Result<Arc<Self>, String> {
        Self::with_lifecycle(client, keys, settings, None)
    }

    /// As [`RedisEngine::new`], tracking lifecycle events with `lifecycle`.
    pub fn with_lifecycle(
        client: &redis::Client,
        keys: Keys,
        settings: RedisSettings,
        lifecycle: Option<LifecycleSettings>,
    ) -> Result<Arc<Self>, String> {
        let conn = Commands::lazy(client, Duration::from_secs(1), Duration::from_secs(2))
            .map_err(|e| format!("HUB_REDIS_URL: {e}"))?;
        let (ops, rx) = mpsc::channel(OPS_QUEUE);
        let engine = Arc::new(RedisEngine {
            conn,
            keys,
            scripts: Arc::new(Scripts::new()),
            settings,
            ops,
            ops_full: AtomicBool::new(false),
            local: Mutex::new(Local::default()),
            clock: ServerClock::default(),
            health: Arc::new(Health::default()),
            lifecycle: lifecycle.map(lifecycle::Lifecycle::new),
        });
        actix::spawn(apply_ops(Arc::downgrade(&engine), rx));
        lifecycle::start_sweeper(&engine);
        actix::spawn(health::probe(Arc::downgrade(&engine)));
        Ok(engine)
    }

    fn conn(&self) -> Commands {
        self.conn.clone()
    }

    /// A command's answer, recording whether Redis answered at all.
    async fn answered<T>(&self, result: redis::RedisResult<T>) -> Result<T, EngineError> {
        result
            .inspect(|_| self.health.ok())
            .map_err(|e| self.failure(&e))
    }

    /// What a failed command means for the caller, and for `/ready`: only an unreachable
    /// Redis marks the node not ready; a command Redis refused is a fault of its own.
    fn failure(&self, e: &redis::RedisError) -> EngineError {
        match classify(e) {
            Failure::Unreachable => {
                self.health.failed(e);
                EngineError::Unavailable(e.to_string())
            }
            Failure::Full => {
                self.health.ok();
                EngineError::Unavailable(e.to_string())
            }
            Failure::Refused => {
                self.health.ok();
                EngineError::Internal(e.to_string())
            }
        }
    }

    /// A step of the publish script that Redis refused, from the error's text: out of memory
    /// is passing (`unavailable`), anything else a fault (`internal`). Redis answered, so the
    /// node stays ready either way.
    fn refused(&self, error: String) -> EngineError {
        self.health.ok();
        if error.contains("OOM") {
            EngineError::Unavailable(error)
        } else {
            EngineError::Internal(error)
        }
    }

    /// When a lease renewed now runs out, on the server's clock.
    fn lease_expiry(&self) -> u64 {
        self.clock.now_ms() + self.settings.lease().as_millis() as u64
    }

    /// One call of the publish script for `reqs`, acknowledging them in `ack`'s group when
    /// given; the second value says whether they were acknowledged.
    async fn publish_call(
        &self,
        reqs: Vec<PublishRequest>,
        ack: Option<StreamAck<'_>>,
    ) -> (Vec<Result<Published, EngineError>>, bool) {
        // The script takes each channel's keys, topic and frame head once, numbered in order of
        // first appearance, and per message only the channel's number, the frame's tail and
        // the entry id.
        let now = unix_millis();
        let mut numbers: HashMap<&str, usize> = HashMap::new();
        let mut channels = Vec::new();
        let mut messages = Vec::with_capacity(reqs.len());
        for req in &reqs {
            let event_id = req.event_id_or_new();
            let template = req.template(&event_id, now);
            let next = numbers.len() + 1;
            let number = *numbers.entry(req.channel.as_str()).or_insert_with(|| {
                channels.push((req.channel.as_str(), template.head));
                next
            });
            let dedup = req
                .event_id
                .is_some()
                .then(|| self.keys.dedup(&req.channel, &event_id));
            messages.push((number, template.tail, event_id, dedup));
        }
        let mut invocation = self.scripts.publish.prepare_invoke();
        invocation
            .arg(self.settings.history_size)
            .arg(self.ttl_s())
            .arg(self.settings.dedup_window.as_secs().max(1))
            .arg(channels.len())
            .arg(ack.as_ref().map_or("", |a| a.group));
        for (channel, head) in &channels {
            invocation
                .key(self.keys.meta(channel))
                .key(self.keys.history(channel))
                .arg(self.keys.topic(channel))
                .arg(random_token(8))
                .arg(head);
        }
        for (i, (number, tail, _, dedup)) in messages.iter().enumerate() {
            let number = i64::try_from(*number).unwrap_or(i64::MAX);
            if let Some(key) = dedup {
                invocation.key(key);
            }
            let id = ack.as_ref().and_then(|a| a.ids.get(i).copied());
            invocation
                .arg(if dedup.is_some() { -number } else { number })
                .arg(tail)
                .arg(id.unwrap_or(""));
        }
        if let Some(ack) = &ack {
            invocation.key(ack.stream);
        }
        let mut conn = self.conn();
        let reply: (Vec<Value>, Vec<Value>, i64) = match self
            .answered(invocation.invoke_async(&mut conn).await)
            .await
        {
            Ok(reply) => reply,
            Err(e) => return (super::all_failed(messages.len(), &e), false),
        };
        let (epochs, answers, acknowledged) = reply;
        let mut answers = answers.into_iter();
        let mut out = Vec::with_capacity(messages.len());
        let mut failed = false;
        for (number, _, event_id, _) in messages {
            out.push(match answers.next() {
                Some(answer) => match failed_step(&answer) {
                    Some(error) => {
                        failed = true;
                        Err(self.refused(error))
                    }
                    None => published(&answer, epochs.get(number - 1), event_id),
                },
                None if failed => Err(super::not_tried()),
                None => Err(EngineError::Internal("missing publish answer".into())),
            });
        }
        (out, acknowledged == 1)
    }

    fn ttl_s(&self) -> u64 {
        self.settings.history_ttl.as_secs().max(1)
    }
}

#[async_trait]
impl Engine for RedisEngine {
    async fn publish(&self, req: PublishRequest) -> Result<Published, EngineError> {
        let mut answers = self.publish_many(vec![req]).await;
        answers
            .pop()
            .unwrap_or_else(|| Err(EngineError::Internal("no publish answer".into())))
    }

    async fn publish_many(&self, reqs: Vec<PublishRequest>) -> Vec<Result<Published, EngineError>> {
        self.publish_call(reqs, None).await.0
    }

    async fn publish_acked(
        &self,
        reqs: Vec<PublishRequest>,
        ack: StreamAck<'_>,
    ) -> (Vec<Result<Published, EngineError>>, bool) {
        self.publish_call(reqs, Some(ack)).await
    }

    async fn subscribe(
        &self,
        channel: &str,
        recover: Option<&Position>,
    ) -> Result<Subscribed, EngineError> {
        let (since, since_epoch) = match recover {
            Some(p) => (
                i64::try_from(p.offset).unwrap_or(i64::MAX),
                p.epoch.as_str(),
            ),
            None => (-1, ""),
        };
        let mut conn = self.conn();
        let answer: Vec<Value> = self
            .answered(
                self.scripts
                    .position
                    .key(self.keys.meta(channel))
                    .key(self.keys.history(channel))
                    .arg(random_token(8))
                    .arg(self.ttl_s())
                    .arg(since)
                    .arg(since_epoch)
                    .invoke_async(&mut conn)
                    .await,
            )
            .await?;
        let recovered = match answer.get(2).and_then(int) {
            Some(1) => Some(frames(answer.get(3).unwrap_or(&Value::Nil))?),
            _ => None,
        };
        Ok(Subscribed {
            position: position(&answer)?,
            recovered,
        })
    }

    async fn history(
        &self,
        channel: &str,
        limit: usize,
        since: Option<&Position>,
    ) -> Result<HistoryPage, EngineError> {
        let (since_offset, since_epoch) = match since {
            Some(p) => (
                i64::try_from(p.offset).unwrap_or(i64::MAX),
                p.epoch.as_str(),
            ),
            None => (-1, ""),
        };
        let mut conn = self.conn();
        let answer: Vec<Value> = self
            .answered(
                self.scripts
                    .history
                    .key(self.keys.meta(channel))
                    .key(self.keys.history(channel))
                    .arg(random_token(8))
                    .arg(self.ttl_s())
                    .arg(limit)
                    .arg(since_offset)
                    .arg(since_epoch)
                    .invoke_async(&mut conn)
                    .await,
            )
            .await?;
        Ok(HistoryPage {
            position: position(&answer)?,
            publications: frames(answer.get(2).unwrap_or(&Value::Nil))?,
        })
    }

    fn join(
        &self,
        channel: &str,
        client: ClientInfo,
        announce: bool,
    ) -> BoxFuture<'static, Result<(), EngineError>> {
        self.join_presence(channel, client, announce)
    }

    fn leave(&self, channel: &str, client: &str, announce: bool, reason: Reason) {
        self.leave_presence(channel, client, announce, reason);
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, EngineError> {
        let mut conn = self.conn();
        let entries: Vec<String> = self
            .answered(
                self.scripts
                    .presence
                    .key(self.keys.presence(channel))
                    .key(self.keys.presence_leases(channel))
                    .invoke_async(&mut conn)
                    .await,
            )
            .await?;
        Ok(entries
            .iter()
            .filter_map(|e| StoredClient::parse(e))
            .collect())
    }

    async fn acquire_connection(
        &self,
        user: &str,
        client: &str,
        limit: u32,
    ) -> Result<bool, EngineError> {
        let mut conn = self.conn();
        let taken: i64 = self
            .answered(
                self.scripts
                    .acquire
                    .key(self.keys.connections(user))
                    .arg(client)
                    .arg(limit)
                    .arg(self.settings.lease().as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await,
            )
            .await?;
        if taken == 1 {
            self.lock().slots.insert(client.to_owned(), user.to_owned());
            self.hold(
                crate::lifecycle::Subject::User(user.to_owned()),
                client,
                None,
            );
        }
        Ok(taken == 1)
    }

    fn release_connection(&self, user: &str, client: &str, reason: Reason) {
        self.release_slot(user, client, reason);
    }

    fn flush(&self) -> BoxFuture<'static, ()> {
        self.flush_ops()
    }

    fn health(&self) -> Result<(), String> {
        self.health.check()
    }

    async fn other_nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        cluster::other_nodes(self).await
    }

    async fn other_channels(&self) -> Result<Vec<(String, usize)>, EngineError> {
        cluster::other_channels(self).await
    }

    fn disconnect_user(&self, user: &str) {
        let message = NodeMessage::Disconnect {
            user: user.to_owned(),
            node: self.settings.node_id.clone(),
        };
        if let Ok(text) = serde_json::to_string(&message) {
            self.enqueue(Op::Control(text));
        }
    }
}
