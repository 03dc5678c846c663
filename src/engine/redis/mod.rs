//! The Redis engine: any number of nodes on one Redis act as one hub. Offsets, epochs,
//! history and dedup live in per-channel keys changed only by server-side scripts (one per
//! operation, so every node sees one order); each publication is PUBLISHed, finished, on its
//! channel's topic, where every node's [`crate::bridge::RedisBridge`] picks it up for its Hub.
//!
//! Presence entries, connection slots and the node list are leases that this node renews every
//! `HUB_NODE_HEARTBEAT_S` (see [`cluster`]); Redis 7.0 has no per-field expiry, so leases are
//! sorted sets scored by expiry time, on the Redis server's clock (nodes' own clocks may
//! disagree). A node that stops renewing is removed by the others, its presence entries with
//! `leave` pushes.
//!
//! Redis errors come in three kinds (see [`Failure`]): Redis unreachable (I/O, timeouts, a
//! server still loading), which marks the node not ready and answers `unavailable`; Redis full
//! (out of memory under `noeviction`), answered `unavailable` while the node stays ready for
//! what still works; and Redis refusing a command (a wrong-typed key, a script error), a fault
//! answered `internal` while the node stays ready.

mod cluster;
mod commands;
mod keys;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use redis::{ErrorKind, ServerErrorKind, Value};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

pub use cluster::start_heartbeat;
pub use commands::Commands;
pub use keys::Keys;
use scripts::Scripts;

use super::{
    Engine, EngineError, HistoryPage, NodeInfo, PublishRequest, Published, StreamAck, Subscribed,
};
use crate::clock::{random_token, unix_millis};
use crate::config::Config;
use crate::protocol::node::NodeMessage;
use crate::protocol::server::message;
use crate::protocol::{ClientInfo, Message, Position, ServerFrame};

/// Whether this node can reach Redis, for `/ready`.
#[derive(Debug, Default)]
pub struct Health {
    /// The bridge's pub/sub connection is up.
    pub link_up: AtomicBool,
    /// The last command got an answer.
    commands_ok: AtomicBool,
    last_error: Mutex<String>,
    /// Heartbeats this node published on the control topic so far (counted by the heartbeat
    /// task): the bridge expects each to come back over its link, and replaces a link that
    /// stopped delivering them.
    beats: AtomicU64,
}

impl Health {
    fn ok(&self) {
        self.commands_ok.store(true, Ordering::Release);
    }

    fn beat_published(&self) {
        self.beats.fetch_add(1, Ordering::AcqRel);
    }

    /// How many heartbeats this node has published on the control topic.
    pub fn beats_published(&self) -> u64 {
        self.beats.load(Ordering::Acquire)
    }

    fn failed(&self, e: &redis::RedisError) {
        self.commands_ok.store(false, Ordering::Release);
        if let Ok(mut last) = self.last_error.lock() {
            *last = e.to_string();
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if !self.link_up.load(Ordering::Acquire) {
            return Err("redis unreachable: the pub/sub link is down".to_owned());
        }
        if !self.commands_ok.load(Ordering::Acquire) {
            let last = self
                .last_error
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            return Err(format!("redis unreachable: {last}"));
        }
        Ok(())
    }
}

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

/// This node's reading of the Redis server's clock. Lease scores are written and compared in
/// server time, so nodes whose own clocks disagree still agree on whose lease ran out; the
/// heartbeat sets the offset from `TIME` at every beat (until the first, the local clock).
#[derive(Debug, Default)]
struct ServerClock {
    /// Server time minus local time, in ms.
    offset_ms: AtomicI64,
}

impl ServerClock {
    /// Unix ms on the server's clock, as well as this node can tell.
    fn now_ms(&self) -> u64 {
        let local = i64::try_from(unix_millis()).unwrap_or(i64::MAX);
        u64::try_from(local.saturating_add(self.offset_ms.load(Ordering::Acquire))).unwrap_or(0)
    }

    /// Reads `TIME` and takes the offset, assuming the answer was made halfway through the
    /// round trip. Answers the server's time.
    async fn sync(&self, conn: &mut Commands) -> redis::RedisResult<u64> {
        let sent = unix_millis();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
        let received = unix_millis();
        let server = secs * 1000 + micros / 1000;
        let local = sent / 2 + received / 2;
        let offset =
            i64::try_from(server).unwrap_or(i64::MAX) - i64::try_from(local).unwrap_or(i64::MAX);
        self.offset_ms.store(offset, Ordering::Release);
        Ok(server)
    }
}

/// What a Redis error means for the caller and for `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Redis cannot be reached now: the connection failed, timed out or dropped, or the server
    /// is loading its data, busy with a script or failing over. Retrying later may work; the
    /// node is not ready meanwhile; callers hear `unavailable`.
    Unreachable,
    /// Redis answered but takes no writes now (out of memory under `noeviction`). Retrying
    /// later may work; callers hear `unavailable`, but the node stays ready: reads still work,
    /// and every node would be taken out of its load balancer at once.
    Full,
    /// Redis refused the command itself (a key of the wrong type, a script error): a fault
    /// that retrying will not fix, answered `internal`.
    Refused,
}

fn classify(e: &redis::RedisError) -> Failure {
    let unreachable = e.is_io_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
            ) | ErrorKind::ClusterConnectionNotFound
        )
        || e.code() == Some("BUSY");
    if unreachable {
        return Failure::Unreachable;
    }
    // A pipeline's error carries each failed command's own.
    let out_of_memory = e.code() == Some("OOM")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, err)| err.code() == "OOM"));
    if out_of_memory {
        Failure::Full
    } else {
        Failure::Refused
    }
}

/// A presence entry of this node, re-asserted at every heartbeat.
struct LocalPresence {
    info: ClientInfo,
    announce: bool,
}

/// What this node holds in Redis and must keep renewing.
#[derive(Default)]
struct Local {
    /// channel → client → entry.
    presence: HashMap<String, HashMap<String, LocalPresence>>,
    /// client → user, for every connection slot held.
    slots: HashMap<String, String>,
}

/// Most fire-and-forget writes waiting at once. Past it a `join` fails at once (`unavailable`)
/// and other writes are dropped: the heartbeat re-asserts every entry this node still holds,
/// and the leases of those it let go expire by themselves.
const OPS_QUEUE: usize = 65_536;

/// How long the writer waits before trying again while Redis is unreachable, at most.
const OPS_RETRY_CAP: Duration = Duration::from_millis(500);

/// A write and when it was made: it is worth applying for one lease from then, no longer.
struct Queued {
    op: Op,
    made: Instant,
}

/// Writes nobody waits for, applied in the order they were made.
enum Op {
    Join {
        channel: String,
        client: String,
        entry: String,
        announce: bool,
        frame: Option<String>,
        /// Told once the entry is written (or the write was given up).
        ack: Option<oneshot::Sender<Result<(), EngineError>>>,
    },
    Leave {
        channel: String,
        client: String,
        announce: bool,
        frame: Option<String>,
    },
    Release {
        user: String,
        client: String,
    },
    Control(String),
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
}

/// A presence entry as stored in Redis.
#[derive(Deserialize)]
struct StoredClient {
    client: String,
    user: String,
    info: Option<Box<RawValue>>,
}

impl StoredClient {
    fn parse(json: &str) -> Option<ClientInfo> {
        let s: StoredClient = serde_json::from_str(json).ok()?;
        Some(ClientInfo {
            client: s.client,
            user: s.user,
            info: s.info.map(Arc::from),
        })
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn frames(v: &Value) -> Result<Vec<Message>, EngineError> {
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|item| {
            text(item)
                .and_then(|t| message(t).ok())
                .ok_or_else(|| EngineError::Internal("a history entry is not a JSON frame".into()))
        })
        .collect()
}

fn position(items: &[Value]) -> Result<Position, EngineError> {
    match (items.first().and_then(int), items.get(1).and_then(text)) {
        (Some(offset), Some(epoch)) => Ok(Position {
            offset: u64::try_from(offset).unwrap_or(0),
            epoch,
        }),
        _ => Err(EngineError::Internal("unexpected script answer".into())),
    }
}

/// One message's answer from the publish script, with the epoch of its channel (if the script
/// reached the channel): its offset, or `"offset:epoch"` for a duplicate.
fn published(
    answer: &Value,
    epoch: Option<&Value>,
    event_id: String,
) -> Result<Published, EngineError> {
    if let Some(offset) = int(answer) {
        let epoch = epoch
            .and_then(text)
            .ok_or_else(|| EngineError::Internal("publish answer without an epoch".into()))?;
        return Ok(Published {
            position: Position {
                offset: u64::try_from(offset).unwrap_or(0),
                epoch,
            },
            event_id,
            duplicate: false,
        });
    }
    let seen = text(answer).unwrap_or_default();
    let Some((Ok(offset), epoch)) = seen
        .split_once(':')
        .map(|(offset, epoch)| (offset.parse::<u64>(), epoch))
    else {
        return Err(EngineError::Internal("unexpected publish answer".into()));
    };
    Ok(Published {
        position: Position {
            offset,
            epoch: epoch.to_owned(),
        },
        event_id,
        duplicate: true,
    })
}

/// A publish script's failure answer, `{-1, error}`: the error's text.
fn failed_step(answer: &Value) -> Option<String> {
    let Value::Array(parts) = answer else {
        return None;
    };
    (parts.first().and_then(int) == Some(-1))
        .then(|| parts.get(1).and_then(text).unwrap_or_default())
}

impl RedisEngine {
    /// Connects lazily: a node starts while Redis is down and reports not ready until it is up.
    pub fn new(
        client: &redis::Client,
        keys: Keys,
        settings: RedisSettings,
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
        });
        actix::spawn(apply_ops(Arc::downgrade(&engine), rx));
        Ok(engine)
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// Queues a fire-and-forget write; `false` when the queue is full (the write is dropped).
    fn enqueue(&self, op: Op) -> bool {
        let queued = Queued {
            op,
            made: Instant::now(),
        };
        match self.ops.try_send(queued) {
            Ok(()) => {
                self.ops_full.store(false, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.ops_full.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        queued = OPS_QUEUE;
                        "presence and slot writes are not keeping up: dropping new ones"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
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

    /// Applies one fire-and-forget write.
    async fn apply(&self, op: &Op) -> redis::RedisResult<()> {
        let mut conn = self.conn();
        let lease_ms = self.settings.lease().as_millis() as u64;
        match op {
            Op::Join {
                channel,
                client,
                entry,
                announce,
                frame,
                ..
            } => {
                let mut pipe = redis::pipe();
                pipe.hset(self.keys.presence(channel), client, entry)
                    .ignore()
                    .zadd(
                        self.keys.presence_leases(channel),
                        client,
                        self.lease_expiry(),
                    )
                    .ignore()
                    .pexpire(self.keys.presence(channel), lease_ms as i64)
                    .ignore()
                    .pexpire(self.keys.presence_leases(channel), lease_ms as i64)
                    .ignore()
                    .sadd(
                        self.keys.node_presence(&self.settings.node_id),
                        presence_member(*announce, channel, client),
                    )
                    .ignore();
                if let Some(frame) = frame {
                    pipe.publish(self.keys.topic(channel), frame).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            }
            Op::Leave {
                channel,
                client,
                announce,
                frame,
            } => {
                self.scripts
                    .leave
                    .key(self.keys.presence(channel))
                    .key(self.keys.presence_leases(channel))
                    .arg(client)
                    .arg(self.keys.topic(channel))
                    .arg(frame.as_deref().unwrap_or(""))
                    .invoke_async::<i64>(&mut conn)
                    .await?;
                redis::cmd("SREM")
                    .arg(self.keys.node_presence(&self.settings.node_id))
                    .arg(presence_member(*announce, channel, client))
                    .query_async::<()>(&mut conn)
                    .await
            }
            Op::Release { user, client } => {
                redis::cmd("ZREM")
                    .arg(self.keys.connections(user))
                    .arg(client)
                    .query_async::<()>(&mut conn)
                    .await
            }
            Op::Control(message) => {
                redis::cmd("PUBLISH")
                    .arg(self.keys.control())
                    .arg(message)
                    .query_async::<()>(&mut conn)
                    .await
            }
        }
    }
}

/// `<announce>\n<channel>\n<client>`: what a node's presence set records of each entry.
fn presence_member(announce: bool, channel: &str, client: &str) -> String {
    format!("{}\n{channel}\n{client}", u8::from(announce))
}

/// The ordered writer of fire-and-forget operations. Each write is worth applying for one
/// lease after it was made (after that the heartbeat's re-assertion or lease expiry has settled
/// the state anyway): while Redis is unreachable the writer retries the oldest write with
/// backoff, and a write whose lease has passed is dropped without another try, so after an
/// outage of any length the backlog is at most one lease old (the same holds while Redis is
/// full). A write Redis refuses (a server error) is not retried: it would fail again, and hold
/// up every write behind it.
async fn apply_ops(engine: std::sync::Weak<RedisEngine>, mut rx: mpsc::Receiver<Queued>) {
    // Writes given up since the last one that succeeded: one warning per outage, not per write.
    let mut given_up = 0u64;
    while let Some(Queued { mut op, made }) = rx.recv().await {
        let Some(e) = engine.upgrade() else {
            return;
        };
        let until = made + e.settings.lease();
        let mut delay = Duration::from_millis(50);
        let outcome = loop {
            if Instant::now() >= until {
                break Err(EngineError::Unavailable(
                    "redis stayed unreachable for a lease".into(),
                ));
            }
            match e.apply(&op).await {
                Ok(()) => {
                    e.health.ok();
                    break Ok(());
                }
                Err(err) if classify(&err) != Failure::Refused => {
                    e.failure(&err);
                    let left = until.saturating_duration_since(Instant::now());
                    tokio::time::sleep(delay.min(left)).await;
                    delay = (delay * 2).min(OPS_RETRY_CAP);
                }
                Err(err) => {
                    e.health.ok();
                    log::warn!(
                        error:% = err, write = op.name();
                        "redis refused a presence or slot write; dropped"
                    );
                    break Err(EngineError::Internal(err.to_string()));
                }
            }
        };
        match &outcome {
            Ok(()) if given_up > 0 => {
                log::info!(given_up = given_up; "presence and slot writes resumed");
                given_up = 0;
            }
            Err(EngineError::Unavailable(why)) => {
                if given_up == 0 {
                    log::warn!(
                        error = why.as_str(), write = op.name();
                        "presence or slot write given up; the heartbeat settles it later"
                    );
                }
                given_up += 1;
            }
            _ => {}
        }
        if let Op::Join { ack, .. } = &mut op {
            if let Some(ack) = ack.take() {
                let _ = ack.send(outcome);
            }
        }
    }
}

impl Op {
    /// For logs.
    fn name(&self) -> &'static str {
        match self {
            Op::Join { .. } => "join",
            Op::Leave { .. } => "leave",
            Op::Release { .. } => "release",
            Op::Control(_) => "control",
        }
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
        let entry = serde_json::to_string(&client).unwrap_or_default();
        let frame = announce.then(|| {
            ServerFrame::Join {
                channel,
                client: &client,
            }
            .encode()
            .to_string()
        });
        let id = client.client.clone();
        self.lock()
            .presence
            .entry(channel.to_owned())
            .or_default()
            .insert(
                id.clone(),
                LocalPresence {
                    info: client,
                    announce,
                },
            );
        let (ack, done) = oneshot::channel();
        let queued = self.enqueue(Op::Join {
            channel: channel.to_owned(),
            client: id,
            entry,
            announce,
            frame,
            ack: Some(ack),
        });
        Box::pin(async move {
            if !queued {
                // The heartbeat writes the entry (it is in `local`), without the `join` push.
                return Err(EngineError::Unavailable(
                    "too many presence writes waiting".into(),
                ));
            }
            done.await
                .unwrap_or_else(|_| Err(EngineError::Unavailable("the engine is stopping".into())))
        })
    }

    fn leave(&self, channel: &str, client: &str, announce: bool) {
        let removed = {
            let mut local = self.lock();
            let removed = local
                .presence
                .get_mut(channel)
                .and_then(|c| c.remove(client));
            if local.presence.get(channel).is_some_and(HashMap::is_empty) {
                local.presence.remove(channel);
            }
            removed
        };
        let Some(entry) = removed else {
            return;
        };
        let frame = announce.then(|| {
            ServerFrame::Leave {
                channel,
                client: &entry.info,
            }
            .encode()
            .to_string()
        });
        self.enqueue(Op::Leave {
            channel: channel.to_owned(),
            client: client.to_owned(),
            announce: entry.announce,
            frame,
        });
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
        }
        Ok(taken == 1)
    }

    fn release_connection(&self, user: &str, client: &str) {
        if self.lock().slots.remove(client).is_some() {
            self.enqueue(Op::Release {
                user: user.to_owned(),
                client: client.to_owned(),
            });
        }
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
