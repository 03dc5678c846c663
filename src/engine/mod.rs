//! The engine: what makes publications durable and shared. It owns offsets, epochs, history,
//! `event_id` dedup, presence and per-user connection slots, and sees that every publication
//! (and join/leave) reaches the Hubs for routing. Two implementations sit behind [`Engine`]:
//! [`memory`] (one node, the default), which hands them to its node's Hub itself, and
//! [`redis`] (many nodes on one Redis, with `HUB_REDIS_URL`), which publishes them on Redis
//! for every node's [`crate::bridge::RedisBridge`] to hand to its Hub. Every call may fail with
//! [`EngineError::Unavailable`]; [`Deadline`] bounds every call in time.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

pub use crate::error::EngineError;
use crate::error::HubError;
pub use crate::lifecycle::Reason;
use crate::protocol::client::event_field;
use crate::protocol::server::Sender;
use crate::protocol::{json_depth, valid_channel, MAX_DATA_DEPTH};
use crate::protocol::{ClientInfo, Message, MessageTemplate, Position};

/// How long any engine call may take before the caller answers `unavailable`.
pub const ENGINE_DEADLINE: Duration = Duration::from_secs(2);

/// A publication to make.
#[derive(Debug)]
pub struct PublishRequest {
    pub channel: String,
    pub data: Box<RawValue>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The publishing client; `None` for services.
    pub from: Option<Sender>,
}

impl PublishRequest {
    /// The publication's event id: the request's, or a new one.
    pub fn event_id_or_new(&self) -> String {
        self.event_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }

    /// The publication's `message` frame but for its offset and epoch (the engine's to give),
    /// stamped `ts_ms`.
    pub fn template(&self, event_id: &str, ts_ms: u64) -> MessageTemplate {
        MessageTemplate::new(
            &self.channel,
            event_id,
            self.event_type.as_deref(),
            &self.data,
            self.from.as_ref(),
            ts_ms,
        )
    }

    /// The checks every publication passes, whoever makes it: a valid channel name, bounded
    /// `event_id`/`event_type`, and `data` (as JSON) within `max_data_bytes`.
    pub fn validate(&self, max_data_bytes: usize) -> Result<(), HubError> {
        if !valid_channel(&self.channel) {
            return Err(HubError::bad_request(format!(
                "invalid channel name `{}`",
                self.channel
            )));
        }
        event_field(self.event_id.clone(), "event_id")?;
        event_field(self.event_type.clone(), "event_type")?;
        if self.data.get().len() > max_data_bytes {
            return Err(HubError::too_large(format!(
                "`data` is over {max_data_bytes} bytes"
            )));
        }
        if json_depth(self.data.get()) > MAX_DATA_DEPTH {
            return Err(HubError::bad_request(format!(
                "`data` is nested deeper than {MAX_DATA_DEPTH} levels"
            )));
        }
        Ok(())
    }
}

/// Stream entries to acknowledge together with their publication (see
/// [`Engine::publish_acked`]): `ids[i]` is the entry of the `i`-th request.
#[derive(Debug)]
pub struct StreamAck<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub ids: Vec<&'a str>,
}

/// Where a publication landed. For a duplicate `event_id`, the original's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub position: Position,
    pub event_id: String,
    pub duplicate: bool,
}

/// A channel's position at subscribe time and, when recovery was asked for and possible, every
/// publication after the given offset.
#[derive(Debug)]
pub struct Subscribed {
    pub position: Position,
    /// `Some` only when every publication after the client's offset is in it.
    pub recovered: Option<Vec<Message>>,
}

/// One node's figures, as `/api/info` shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeInfo {
    pub node: String,
    pub connections: usize,
    pub subscriptions: usize,
    pub uptime_s: u64,
    pub version: String,
}

/// A page of history, oldest first, with the channel's current position.
#[derive(Debug)]
pub struct HistoryPage {
    pub position: Position,
    pub publications: Vec<Message>,
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Assigns the next offset, keeps the publication in history and hands it to every node's
    /// Hub, in offset order. A repeated `event_id` within the dedup window is not published again.
    async fn publish(&self, req: PublishRequest) -> Result<Published, EngineError>;

    /// Publishes `reqs` in their order, with one answer each, in the same order. A failure
    /// ends the batch: the ones after it are not tried (they answer `unavailable`), so nothing
    /// overtakes it. The Redis engine sends the whole batch in one script call.
    async fn publish_many(&self, reqs: Vec<PublishRequest>) -> Vec<Result<Published, EngineError>>;

    /// Publishes stream entries as [`Engine::publish_many`] does and, where the engine can,
    /// acknowledges in the same step each entry answered as published (or as a duplicate):
    /// then no entry is published and left pending or the other way round, and a lost answer
    /// cannot have an entry published twice. The second value says whether that was done;
    /// when `false` the caller acknowledges them itself.
    async fn publish_acked(
        &self,
        reqs: Vec<PublishRequest>,
        _ack: StreamAck<'_>,
    ) -> (Vec<Result<Published, EngineError>>, bool) {
        (self.publish_many(reqs).await, false)
    }

    /// The channel's current position, read after the caller registered with its Hub, and the
    /// recovery gap from `recover` when history still holds all of it.
    async fn subscribe(
        &self,
        channel: &str,
        recover: Option<&Position>,
    ) -> Result<Subscribed, EngineError>;

    /// At most `limit` publications: the newest, or the first ones after `since` (same epoch).
    async fn history(
        &self,
        channel: &str,
        limit: usize,
        since: Option<&Position>,
    ) -> Result<HistoryPage, EngineError>;

    /// Adds a connection to a channel's presence; with `announce`, other subscribers get `join`.
    /// Takes effect in call order with [`Engine::leave`] (the call itself queues it, so a quick
    /// unsubscribe never leaves a stale entry behind); the returned future resolves once the
    /// entry is visible to presence queries, so `subscribed` can wait for it.
    fn join(
        &self,
        channel: &str,
        client: ClientInfo,
        announce: bool,
    ) -> BoxFuture<'static, Result<(), EngineError>>;

    /// Removes a connection from a channel's presence (see [`Engine::join`]); `reason` is
    /// why, for the lifecycle events it may cause.
    fn leave(&self, channel: &str, client: &str, announce: bool, reason: Reason);

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, EngineError>;

    /// Takes one of the user's connection slots; `false` when all `limit` are taken.
    async fn acquire_connection(
        &self,
        user: &str,
        client: &str,
        limit: u32,
    ) -> Result<bool, EngineError>;

    /// Gives a slot back; fire and forget, like [`Engine::leave`].
    fn release_connection(&self, user: &str, client: &str, reason: Reason);

    /// `Err(reason)` while the engine cannot serve (drives `/ready`).
    fn health(&self) -> Result<(), String>;

    /// The other live nodes' figures, as of their last heartbeat (the caller adds its own,
    /// which it knows better); empty when this node is the whole hub.
    async fn other_nodes(&self) -> Result<Vec<NodeInfo>, EngineError>;

    /// The other live nodes' channels with their subscriber counts, as for
    /// [`Engine::other_nodes`].
    async fn other_channels(&self) -> Result<Vec<(String, usize)>, EngineError>;

    /// Tells the other nodes to close `user`'s connections (this node closes its own).
    fn disconnect_user(&self, user: &str);

    /// Resolves once every fire-and-forget write made before the call was applied (or given
    /// up): the shutdown waits for it, so that the leaves and releases of the sessions it
    /// closed reach Redis before the process exits.
    fn flush(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Wraps an engine so that no call outlives [`ENGINE_DEADLINE`]: a late answer becomes
/// `unavailable` rather than a stuck session.
pub struct Deadline<E>(pub Arc<E>);

async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(ENGINE_DEADLINE, fut)
        .await
        .unwrap_or_else(|_| Err(too_late()))
}

/// What a call answers when [`ENGINE_DEADLINE`] passed first.
fn too_late() -> EngineError {
    EngineError::Unavailable("no answer within the deadline".into())
}

/// The answers for a batch that failed as a whole.
pub fn all_failed(n: usize, error: &EngineError) -> Vec<Result<Published, EngineError>> {
    (0..n).map(|_| Err(error.clone())).collect()
}

/// Why a publication after a failed one in the same batch was not tried.
pub fn not_tried() -> EngineError {
    EngineError::Unavailable("not tried after an earlier publication in its batch failed".into())
}

#[async_trait]
impl<E: Engine> Engine for Deadline<E> {
    async fn publish(&self, req: PublishRequest) -> Result<Published, EngineError> {
        bounded(self.0.publish(req)).await
    }
    async fn publish_many(&self, reqs: Vec<PublishRequest>) -> Vec<Result<Published, EngineError>> {
        let n = reqs.len();
        match tokio::time::timeout(ENGINE_DEADLINE, self.0.publish_many(reqs)).await {
            Ok(answers) => answers,
            // Some may have gone through: the caller retries them all, and dedup by
            // `event_id` makes that harmless.
            Err(_) => all_failed(n, &too_late()),
        }
    }
    async fn publish_acked(
        &self,
        reqs: Vec<PublishRequest>,
        ack: StreamAck<'_>,
    ) -> (Vec<Result<Published, EngineError>>, bool) {
        let n = reqs.len();
        match tokio::time::timeout(ENGINE_DEADLINE, self.0.publish_acked(reqs, ack)).await {
            Ok(answers) => answers,
            // As for `publish_many`; what did go through was acknowledged with it, so it is
            // not read again.
            Err(_) => (all_failed(n, &too_late()), false),
        }
    }
    async fn subscribe(
        &self,
        channel: &str,
        recover: Option<&Position>,
    ) -> Result<Subscribed, EngineError> {
        bounded(self.0.subscribe(channel, recover)).await
    }
    async fn history(
        &self,
        channel: &str,
        limit: usize,
        since: Option<&Position>,
    ) -> Result<HistoryPage, EngineError> {
        bounded(self.0.history(channel, limit, since)).await
    }
    fn join(
        &self,
        channel: &str,
        client: ClientInfo,
        announce: bool,
    ) -> BoxFuture<'static, Result<(), EngineError>> {
        Box::pin(bounded(self.0.join(channel, client, announce)))
    }
    fn leave(&self, channel: &str, client: &str, announce: bool, reason: Reason) {
        self.0.leave(channel, client, announce, reason)
    }
    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, EngineError> {
        bounded(self.0.presence(channel)).await
    }
    async fn acquire_connection(
        &self,
        user: &str,
        client: &str,
        limit: u32,
    ) -> Result<bool, EngineError> {
        bounded(self.0.acquire_connection(user, client, limit)).await
    }
    fn release_connection(&self, user: &str, client: &str, reason: Reason) {
        self.0.release_connection(user, client, reason)
    }
    fn health(&self) -> Result<(), String> {
        self.0.health()
    }
    async fn other_nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        bounded(self.0.other_nodes()).await
    }
    async fn other_channels(&self) -> Result<Vec<(String, usize)>, EngineError> {
        bounded(self.0.other_channels()).await
    }
    fn disconnect_user(&self, user: &str) {
        self.0.disconnect_user(user)
    }
    fn flush(&self) -> BoxFuture<'static, ()> {
        self.0.flush()
    }
}
