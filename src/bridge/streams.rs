//! Service events through Redis Streams (docs/events.md): one reader task per stream of
//! `HUB_STREAMS`, all in one consumer group (`HUB_STREAM_GROUP`), this node a consumer named
//! after its node id. It owns the ingestion: reading in batches, publishing each entry through
//! the engine (history, fan-out and `event_id` dedup are the engine's), acknowledging in
//! batches only what was published, dead-lettering what cannot be, claiming what dead nodes
//! left pending and removing their consumers. It knows nothing about sessions or the wire; the
//! HTTP layer reaches the dead letters and the figures through [`Streams`].
//!
//! Each reader works through its stream in order, one batch at a time:
//!
//! 1. At start (and after a reconnect or a claim) it re-reads its own pending entries (`0`),
//!    so a node restarted with the same `HUB_NODE_ID` finishes what it had taken; then it
//!    blocks for new ones (`>`).
//! 2. An entry that can never succeed (see [`entry::classify`]) goes to `<stream>:dlq` at
//!    once. A publish that fails (the engine is unavailable) stops the batch there: that entry
//!    and the ones behind it stay pending, and the reader retries the entry alone with backoff
//!    (so a channel's entries keep their stream order) until it succeeds or has been delivered
//!    `HUB_STREAM_MAX_DELIVERIES` times, when it is dead-lettered and the rest follow.
//! 3. Dead letters and acknowledgements of a batch are written in one `MULTI`: an entry is
//!    never both dead-lettered and left pending.
//! 4. Every `HUB_STREAM_CLAIM_IDLE_MS / 2` (at most 5 s) it claims entries idle that long
//!    (`XAUTOCLAIM`), removes the consumers of dead nodes that hold nothing pending, and
//!    refreshes the stream's `hub_stream_pending` and `hub_stream_lag` gauges.
//!
//! Each reader counts what becomes of its entries (`hub_stream_entries_total{result}`: acked,
//! retried, dead) once the batch is settled, and each new publication
//! (`hub_publications_total{source="stream"}`) once it is published.
//!
//! On shutdown a reader stops reading (a blocked read is released with `CLIENT UNBLOCK`),
//! finishes the batch in hand and leaves anything else pending for the next owner.

mod dead_letters;
pub mod entry;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use dead_letters::StreamInfo;
use entry::{Entry, Verdict};

use super::backoff::Backoff;
use crate::clock::unix_millis;
use crate::config::Config;
use crate::engine::redis::{node_lease_live, Commands, Keys};
use crate::engine::{Engine, StreamAck};
use crate::metrics::{Metrics, Source, StreamResult};

/// Most entries read, and acknowledged, at once.
const BATCH: usize = 500;
/// Most `data` bytes published in one engine call: one script call on Redis holds the server
/// for as long as it takes, and must answer within the engine's deadline.
const MAX_CALL_BYTES: usize = 1 << 20;
/// Longest blocking read; a stop releases it at once.
const MAX_BLOCK: Duration = Duration::from_secs(1);
/// How long one non-blocking command, or a connection attempt, may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(2);
/// Longest pause between two claim rounds, whatever `HUB_STREAM_CLAIM_IDLE_MS`.
const MAX_MAINTENANCE_PERIOD: Duration = Duration::from_secs(5);
/// `XAUTOCLAIM` calls per claim round (each scans at most ten times `BATCH` pending entries).
const CLAIM_CALLS_PER_ROUND: usize = 10;

/// Removes a consumer only if nothing is pending on it, in one step: `XGROUP DELCONSUMER`
/// discards the pending entries of the consumer it removes, and between a check and a
/// separate delete a restarted node of that name could have read some.
/// KEYS: stream. ARGV: group, consumer. Returns the entries discarded (0) or -1 when kept.
static DELETE_IDLE_CONSUMER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
",
    )
});

/// The settings ingestion runs with.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub streams: Vec<String>,
    pub group: String,
    /// This node's consumer name: its node id.
    pub consumer: String,
    pub max_deliveries: u64,
    pub claim_idle: Duration,
    /// `HUB_MAX_PUBLICATION_BYTES`: larger `data` is poison.
    pub max_data_bytes: usize,
    /// The sorted set of live nodes' leases: the consumer of a node holding one is never removed.
    pub nodes_key: String,
}

impl StreamSettings {
    pub fn from_config(config: &Config, keys: &Keys) -> Self {
        StreamSettings {
            streams: config.streams.clone(),
            group: config.stream_group.clone(),
            consumer: config.node_id.clone(),
            max_deliveries: u64::from(config.stream_max_deliveries.max(1)),
            claim_idle: config.stream_claim_idle,
            max_data_bytes: config.max_publication_bytes,
            nodes_key: keys.nodes(),
        }
    }

    /// How often a reader claims idle entries and looks for dead consumers.
    fn maintenance_period(&self) -> Duration {
        (self.claim_idle / 2).clamp(Duration::from_millis(50), MAX_MAINTENANCE_PERIOD)
    }

    /// How long a consumer with nothing pending must have been idle (and its node gone) before
    /// it is removed from the group.
    fn dead_consumer_idle(&self) -> Duration {
        (self.claim_idle * 2).max(Duration::from_secs(1))
    }
}

/// The dead-letter stream of `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}:dlq")
}

/// This node's Streams ingestion: the readers and the dead-letter operations of the server API.
/// Held by the app state; [`Streams::stop`] ends the readers.
pub struct Streams {
    settings: Arc<StreamSettings>,
    /// For the server API and for releasing blocked readers; the readers read on their own
    /// connections, because a blocking read holds its connection.
    conn: Commands,
    /// Set to `true` once the node shuts down; every reader watches it.
    stop: watch::Sender<bool>,
    /// The reader tasks, taken (and awaited) by [`Streams::stop`].
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl Streams {
    /// Starts one reader per stream; each counts what it does into `metrics`. Connects lazily:
    /// readers retry with backoff until Redis answers. Must be called inside the actix system.
    pub fn start(
        client: &redis::Client,
        settings: StreamSettings,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Streams>, String> {
        let conn = Commands::lazy(client, COMMAND_DEADLINE, COMMAND_DEADLINE)
            .map_err(|e| format!("HUB_REDIS_URL: {e}"))?;
        let settings = Arc::new(settings);
        let (stop, _) = watch::channel(false);
        let readers = settings
            .streams
            .iter()
            .map(|stream| {
                let reader = Reader {
                    stream: stream.clone(),
                    dlq: dead_letter_stream(stream),
                    settings: Arc::clone(&settings),
                    client: client.clone(),
                    control: conn.clone(),
                    engine: Arc::clone(&engine),
                    metrics: Arc::clone(&metrics),
                    stop: stop.subscribe(),
                };
                actix::spawn(reader.run())
            })
            .collect();
        tracing::info!(
            streams = settings.streams.join(","),
            group = settings.group.as_str(),
            "reading service events"
        );
        Ok(Arc::new(Streams {
            settings,
            conn,
            stop,
            readers: Mutex::new(readers),
        }))
    }

    /// Stops reading; each reader finishes the batch in hand (acknowledging what it
    /// published). Waits for them at most `within`: what is still in flight then stays
    /// pending, for this node after a restart or for the others after the claim idle time.
    pub async fn stop(&self, within: Duration) {
        self.stop.send_replace(true);
        let readers = std::mem::take(
            &mut *self
                .readers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        if readers.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(readers);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!(
                "stream readers still busy at the shutdown timeout; their entries stay pending"
            );
        }
    }
}

/// A reader's own connection and its Redis client id (to release it from a blocking read).
struct Link {
    conn: MultiplexedConnection,
    client_id: i64,
}

/// Why a reader's time on one connection ended.
enum Ended {
    Stopped,
    Failed(redis::RedisError),
}

impl From<redis::RedisError> for Ended {
    fn from(e: redis::RedisError) -> Self {
        Ended::Failed(e)
    }
}

/// An entry on its way to the dead letters.
struct Dead<'a> {
    entry: &'a Entry,
    reason: String,
    deliveries: u64,
}

/// What handling a batch came to.
#[derive(Default)]
struct Outcome<'a> {
    /// Published (or already published, or gone): acknowledge.
    acked: Vec<&'a str>,
    /// Published and acknowledged in the same step by the engine: nothing left to do.
    acknowledged: u64,
    /// Dead-letter, then acknowledge.
    dead: Vec<Dead<'a>>,
    /// The entry whose publish failed for a passing reason, with the error; it and everything
    /// after it in the batch stay pending.
    failed: Option<(&'a str, String)>,
    /// Entries after the first failure were left as read (pending, not tried): read them again
    /// from the pending list before anything new.
    unfinished: bool,
}

/// One stream's reader task.
struct Reader {
    stream: String,
    dlq: String,
    settings: Arc<StreamSettings>,
    client: redis::Client,
    /// The shared connection, used to release this reader's blocking read on stop.
    control: Commands,
    engine: Arc<dyn Engine>,
    /// The node's metrics: entries by result, stream publications, pending and lag.
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl Reader {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let ended = match self.connect().await {
                Ok(link) => self.consume(link, &mut backoff).await,
                Err(e) => Ended::Failed(e),
            };
            let Ended::Failed(e) = ended else {
                break;
            };
            let wait = backoff.next_delay();
            tracing::warn!(
                stream = self.stream.as_str(),
                error = %e,
                retry_in_ms = wait.as_millis() as u64,
                "stream reader cannot reach redis"
            );
            if self.pause(wait).await {
                break;
            }
        }
        tracing::info!(stream = self.stream.as_str(), "stream reader stopped");
    }

    /// Whether the node is stopping (or the handle is gone).
    fn stopped(&mut self) -> bool {
        *self.stop.borrow_and_update() || self.stop.has_changed().is_err()
    }

    /// Sleeps for `wait` unless stopped first; `true` when stopped.
    async fn pause(&mut self, wait: Duration) -> bool {
        if self.stopped() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => self.stopped(),
            _ = self.stop.changed() => true,
        }
    }

    async fn connect(&self) -> RedisResult<Link> {
        // A blocking read must not be cut short by the response timeout.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_DEADLINE))
            .set_response_timeout(Some(MAX_BLOCK + COMMAND_DEADLINE));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let client_id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await?;
        self.ensure_group(&mut conn).await?;
        Ok(Link { conn, client_id })
    }

    /// Creates the group (and the stream) unless it exists. The group starts at the stream's
    /// beginning, so entries a service appended before any node ran are not skipped.
    async fn ensure_group(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.settings.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(conn)
            .await;
        match created {
            Ok(()) => {
                tracing::info!(
                    stream = self.stream.as_str(),
                    group = self.settings.group.as_str(),
                    "consumer group created"
                );
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads and handles batches until stopped or the connection fails.
    async fn consume(&mut self, mut link: Link, backoff: &mut Backoff) -> Ended {
        // Own pending entries first: whatever this consumer took before and never acknowledged.
        let mut cursor: Option<String> = Some("0".to_owned());
        let mut retrying = false;
        let mut retry_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let period = self.settings.maintenance_period();
        let mut next_maintenance = Instant::now();
        // New entries read while the previous batch was being published.
        let mut prefetched: Option<Vec<Entry>> = None;
        loop {
            // A batch read ahead is in hand too: finished before stopping, like the one before.
            if self.stopped() && prefetched.is_none() {
                return Ended::Stopped;
            }
            if Instant::now() >= next_maintenance {
                match self.claim(&mut link.conn).await {
                    Ok(0) => {}
                    // Claimed entries are now ours: read them with our own pending ones (and
                    // the entries read ahead with them, in order).
                    Ok(_) => {
                        cursor = Some("0".to_owned());
                        prefetched = None;
                    }
                    Err(e) => return Ended::Failed(e),
                }
                if let Err(e) = self.remove_dead_consumers(&mut link.conn).await {
                    tracing::debug!(
                        stream = self.stream.as_str(),
                        error = %e,
                        "dead consumer check failed"
                    );
                }
                self.refresh_figures(&mut link.conn).await;
                next_maintenance = Instant::now() + period;
            }
            let batch = match &cursor {
                Some(after) => {
                    let count = if retrying { 1 } else { BATCH };
                    self.read_pending(&mut link.conn, after, count).await
                }
                None => match prefetched.take() {
                    Some(batch) => Ok(batch),
                    None => self.read_new(&link, period.min(MAX_BLOCK)).await,
                },
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => return Ended::Failed(e),
            };
            backoff.reset();
            let Some(last) = batch.last() else {
                // Nothing (more) pending on us: on to new entries.
                cursor = None;
                retrying = false;
                continue;
            };
            let deliveries = if cursor.is_some() {
                match self.delivery_counts(&mut link.conn, &batch).await {
                    Ok(d) => d,
                    Err(e) => return Ended::Failed(e),
                }
            } else {
                HashMap::new()
            };
            let mut prefetch = None;
            let outcome = if cursor.is_none() && batch.len() == BATCH && !self.stopped() {
                // A full batch: more is likely waiting. Read it while this one is published,
                // so Redis reads and the hub's handling overlap instead of taking turns.
                // Reading without BLOCK answers at once, with nothing if nothing is there.
                let mut conn = link.conn.clone();
                let (outcome, next) = tokio::join!(
                    self.handle(&batch, &deliveries),
                    self.read_pending(&mut conn, ">", BATCH)
                );
                prefetch = Some(next);
                outcome
            } else {
                self.handle(&batch, &deliveries).await
            };
            if let Err(e) = self.settle(&mut link.conn, &outcome).await {
                // Unacknowledged entries are read again; the engine's dedup makes that harmless.
                return Ended::Failed(e);
            }
            match prefetch {
                Some(Ok(next)) if !next.is_empty() => prefetched = Some(next),
                Some(Ok(_)) => {}
                // What it may have read is pending on us, and is read again after a reconnect.
                Some(Err(e)) => return Ended::Failed(e),
                None => {}
            }
            match outcome.failed {
                Some((id, error)) => {
                    self.metrics
                        .stream_entries(&self.stream, StreamResult::Retried, 1);
                    let wait = retry_backoff.next_delay();
                    tracing::warn!(
                        stream = self.stream.as_str(),
                        entry = id,
                        deliveries = deliveries.get(id).copied().unwrap_or(1),
                        error = error.as_str(),
                        retry_in_ms = wait.as_millis() as u64,
                        "publish failed; the entry stays pending and is retried"
                    );
                    cursor = Some("0".to_owned());
                    retrying = true;
                    // Entries read ahead are pending on us now: re-read in order after the
                    // failed one.
                    prefetched = None;
                    if self.pause(wait).await {
                        return Ended::Stopped;
                    }
                }
                None => {
                    if retrying {
                        retrying = false;
                        retry_backoff.reset();
                    }
                    if outcome.unfinished {
                        cursor = Some("0".to_owned());
                        prefetched = None;
                    } else if let Some(c) = cursor.as_mut() {
                        c.clone_from(&last.id);
                    }
                }
            }
        }
    }

    /// Own pending entries after `after`, oldest first, or with `after` = `>` new ones; never
    /// blocks.
    async fn read_pending(
        &self,
        conn: &mut MultiplexedConnection,
        after: &str,
        count: usize,
    ) -> RedisResult<Vec<Entry>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.settings.group)
            .arg(&self.settings.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(after)
            .query_async(conn)
            .await?;
        Ok(entry::read_reply(&reply))
    }

    /// New entries, blocking up to `block`. A stop releases the read at once (as if it timed
    /// out) and whatever it still got is returned, so nothing read is stranded.
    async fn read_new(&mut self, link: &Link, block: Duration) -> RedisResult<Vec<Entry>> {
        let mut conn = link.conn.clone();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.settings.group)
            .arg(&self.settings.consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">");
        let read = async move { cmd.query_async::<Value>(&mut conn).await };
        tokio::pin!(read);
        let reply = tokio::select! {
            reply = &mut read => reply?,
            _ = self.stop.changed() => {
                let mut control = self.control.clone();
                let mut release = redis::cmd("CLIENT");
                release.arg("UNBLOCK").arg(link.client_id).arg("TIMEOUT");
                let _ = tokio::time::timeout(
                    COMMAND_DEADLINE,
                    release.query_async::<i64>(&mut control),
                )
                .await;
                read.await?
            }
        };
        Ok(entry::read_reply(&reply))
    }

    /// How often each entry of a batch of own pending entries has been delivered (this read
    /// included), from `XPENDING`.
    async fn delivery_counts(
        &self,
        conn: &mut MultiplexedConnection,
        batch: &[Entry],
    ) -> RedisResult<HashMap<String, u64>> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(HashMap::new());
        };
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.settings.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(batch.len())
            .arg(&self.settings.consumer)
            .query_async(conn)
            .await?;
        let Value::Array(rows) = reply else {
            return Ok(HashMap::new());
        };
        Ok(rows
            .iter()
            .filter_map(|row| {
                let Value::Array(cols) = row else {
                    return None;
                };
                let id = entry::text(cols.first()?)?;
                let count = u64::try_from(entry::int(cols.get(3)?)?).ok()?;
                Some((id, count))
            })
            .collect())
    }

    /// Publishes a batch in stream order, in as few engine calls as [`MAX_CALL_BYTES`] allows
    /// (one script call each on Redis). The first passing failure stops it: that entry and
    /// everything after it stay pending, and the reader retries the failed one alone before
    /// reading on. Only an entry whose own publish failed can be dead-lettered, never one
    /// that was not tried.
    async fn handle<'a>(
        &self,
        batch: &'a [Entry],
        deliveries: &HashMap<String, u64>,
    ) -> Outcome<'a> {
        let max = self.settings.max_deliveries;
        let delivered = |entry: &Entry| deliveries.get(&entry.id).copied().unwrap_or(1);
        let mut outcome = Outcome::default();
        let mut to_publish = Vec::new();
        for entry in batch {
            let dead = |reason: String| Dead {
                entry,
                reason,
                deliveries: delivered(entry),
            };
            match entry::classify(&self.stream, entry, self.settings.max_data_bytes) {
                Verdict::Gone => {
                    tracing::warn!(
                        stream = self.stream.as_str(),
                        entry = entry.id.as_str(),
                        "the entry was deleted before it was published"
                    );
                    outcome.acked.push(&entry.id);
                }
                Verdict::Poison(reason) => outcome.dead.push(dead(reason)),
                // Delivered that often without an acknowledgement: whatever took it before
                // never finished (a node that keeps dying on it, say).
                Verdict::Publish(_) if delivered(entry) > max => outcome.dead.push(dead(format!(
                    "delivered {} times without being acknowledged",
                    delivered(entry)
                ))),
                Verdict::Publish(request) => to_publish.push((entry, request)),
            }
        }
        let mut rest = to_publish.into_iter().peekable();
        while rest.peek().is_some() {
            // One call: as many entries as fit in MAX_CALL_BYTES of data (at least one).
            let mut call = Vec::new();
            let mut bytes = 0;
            while let Some((_, next)) = rest.peek() {
                let len = next.data.get().len();
                if !call.is_empty() && bytes + len > MAX_CALL_BYTES {
                    break;
                }
                bytes += len;
                call.extend(rest.next());
            }
            let (entries, requests): (Vec<&Entry>, Vec<_>) = call.into_iter().unzip();
            let channels: Vec<String> = requests.iter().map(|r| r.channel.clone()).collect();
            let ack = StreamAck {
                stream: &self.stream,
                group: &self.settings.group,
                ids: entries.iter().map(|e| e.id.as_str()).collect(),
            };
            let (answers, acknowledged) = self.engine.publish_acked(requests, ack).await;
            let mut answers = answers.into_iter();
            for (entry, channel) in entries.into_iter().zip(channels) {
                match answers.next() {
                    Some(Ok(published)) => {
                        // Counted when published, not when acknowledged: if the
                        // acknowledgement fails, the re-read finds a duplicate, which is not
                        // counted again.
                        if !published.duplicate {
                            self.metrics.published(Source::Stream);
                        }
                        tracing::debug!(
                            stream = self.stream.as_str(),
                            entry = entry.id.as_str(),
                            channel = channel.as_str(),
                            event_id = published.event_id.as_str(),
                            offset = published.position.offset,
                            duplicate = published.duplicate,
                            "published by stream"
                        );
                        if acknowledged {
                            outcome.acknowledged += 1;
                        } else {
                            outcome.acked.push(&entry.id);
                        }
                        continue;
                    }
                    Some(Err(e)) if delivered(entry) >= max => outcome.dead.push(Dead {
                        entry,
                        reason: format!(
                            "publish failed on each of {} deliveries, last: {e}",
                            delivered(entry)
                        ),
                        deliveries: delivered(entry),
                    }),
                    Some(Err(e)) => outcome.failed = Some((&entry.id, e.to_string())),
                    None => outcome.failed = Some((&entry.id, "no answer".to_owned())),
                }
                // The first failure ends the batch: what comes after it was not tried, or is
                // not known to have been, and stays pending as it was read.
                outcome.unfinished = true;
                return outcome;
            }
        }
        outcome
    }

    /// Writes a batch's dead letters and acknowledges everything handled, in one `MULTI`.
    async fn settle(
        &self,
        conn: &mut MultiplexedConnection,
        outcome: &Outcome<'_>,
    ) -> RedisResult<()> {
        // Acknowledged with their publication: counted whatever happens to the rest.
        self.metrics
            .stream_entries(&self.stream, StreamResult::Acked, outcome.acknowledged);
        if outcome.acked.is_empty() && outcome.dead.is_empty() {
            return Ok(());
        }
        let failed_at = unix_millis().to_string();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for dead in &outcome.dead {
            let xadd = pipe.cmd("XADD").arg(&self.dlq).arg("*");
            for (name, value) in dead.entry.fields.iter().flatten() {
                xadd.arg(name).arg(value);
            }
            xadd.arg("stream")
                .arg(&self.stream)
                .arg("original_id")
                .arg(&dead.entry.id)
                .arg("reason")
                .arg(&dead.reason)
                .arg("deliveries")
                .arg(dead.deliveries)
                .arg("failed_at")
                .arg(&failed_at)
                .ignore();
        }
        let xack = pipe.cmd("XACK").arg(&self.stream).arg(&self.settings.group);
        for id in outcome
            .acked
            .iter()
            .copied()
            .chain(outcome.dead.iter().map(|d| d.entry.id.as_str()))
        {
            xack.arg(id);
        }
        xack.ignore();
        pipe.query_async::<()>(conn).await?;
        self.metrics.stream_entries(
            &self.stream,
            StreamResult::Acked,
            outcome.acked.len() as u64,
        );
        self.metrics
            .stream_entries(&self.stream, StreamResult::Dead, outcome.dead.len() as u64);
        for dead in &outcome.dead {
            // An operator has to look at it (and may replay it): the one ERROR of ingestion.
            tracing::error!(
                stream = self.stream.as_str(),
                entry = dead.entry.id.as_str(),
                deliveries = dead.deliveries,
                reason = dead.reason.as_str(),
                dead_letters = self.dlq.as_str(),
                "entry moved to the dead letters"
            );
        }
        Ok(())
    }

    /// Sets `hub_stream_pending` and `hub_stream_lag` from the figures `/api/info` shows. A
    /// failure leaves the last figures; the reader's next Redis call notices the outage.
    async fn refresh_figures(&self, conn: &mut MultiplexedConnection) {
        match dead_letters::stream_info(conn, &self.stream, &self.settings.group).await {
            Ok(info) => self
                .metrics
                .stream_figures(&self.stream, info.pending, info.lag),
            Err(e) => tracing::debug!(
                stream = self.stream.as_str(),
                error = %e,
                "stream figures not refreshed"
            ),
        }
    }

    /// Takes over entries pending on any consumer for longer than the claim idle time (a dead
    /// node's, typically). `JUSTID` leaves their delivery count alone: the read that follows
    /// counts the delivery. Returns how many were claimed.
    async fn claim(&self, conn: &mut MultiplexedConnection) -> RedisResult<usize> {
        let mut start = "0-0".to_owned();
        let mut claimed = 0;
        for _ in 0..CLAIM_CALLS_PER_ROUND {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.settings.group)
                .arg(&self.settings.consumer)
                .arg(self.settings.claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(BATCH)
                .arg("JUSTID")
                .query_async(conn)
                .await?;
            let Value::Array(parts) = reply else {
                break;
            };
            claimed += match parts.get(1) {
                Some(Value::Array(ids)) => ids.len(),
                _ => 0,
            };
            match parts.first().and_then(entry::text) {
                Some(next) if next != "0-0" => start = next,
                _ => break,
            }
        }
        if claimed > 0 {
            tracing::debug!(
                stream = self.stream.as_str(),
                claimed = claimed,
                "took over entries idle for the claim time"
            );
        }
        Ok(claimed)
    }

    /// Removes the consumers of nodes that are gone (no live lease), idle for a while, with
    /// nothing pending (checked again atomically by the removal).
    async fn remove_dead_consumers(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(&self.settings.group)
            .query_async(conn)
            .await?;
        let Value::Array(consumers) = reply else {
            return Ok(());
        };
        let min_idle = self.settings.dead_consumer_idle().as_millis() as i64;
        for consumer in &consumers {
            let mut name = None;
            let (mut pending, mut idle) = (None, None);
            for (k, v) in entry::pairs(consumer) {
                match entry::text(k).as_deref() {
                    Some("name") => name = entry::text(v),
                    Some("pending") => pending = entry::int(v),
                    Some("idle") => idle = entry::int(v),
                    _ => {}
                }
            }
            let (Some(name), Some(0), Some(idle)) = (name, pending, idle) else {
                continue;
            };
            if name == self.settings.consumer || idle < min_idle {
                continue;
            }
            if node_lease_live(conn, &self.settings.nodes_key, &name).await? {
                continue;
            }
            let removed: i64 = DELETE_IDLE_CONSUMER
                .key(&self.stream)
                .arg(&self.settings.group)
                .arg(&name)
                .invoke_async(conn)
                .await?;
            if removed >= 0 {
                tracing::info!(
                    stream = self.stream.as_str(),
                    consumer = name.as_str(),
                    idle_ms = idle,
                    "removed the consumer of a node that is gone"
                );
            }
        }
        Ok(())
    }
}
