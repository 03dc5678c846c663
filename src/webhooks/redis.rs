//! The Redis engine's webhook queues: per URL the list `webhook_queue(url)` (the lifecycle
//! scripts RPUSH events onto it), the lock `webhook_lock(url)` that makes one node in the
//! cluster its sender, and the hash `webhook_batch(url)` recording the batch in flight; the
//! dead letters are the stream `webhook_dlq()`.
//!
//! Nothing leaves a queue before its batch succeeded or was dead-lettered: a batch is the
//! first `count` events of the list, recorded (with its delivery id and attempts) before its
//! first attempt, and removed with `LTRIM` only by a script that first checks the caller
//! still holds the lock. A node killed mid-batch leaves the record behind, and whichever
//! node takes the lock next sends the same batch with the same delivery id, continuing its
//! attempt count. A node that lost the lock (paused past its lease) changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{Script, Value};
use tokio::sync::watch;

use super::batch::{self, event_id, Batch, MAX_BATCH};
use super::send::Outcome;
use super::{stopped, Context};
use crate::bridge::streams::entry;
use crate::deadletters::{DeadLetter, MAX_LIST};
use crate::engine::redis::{Commands, Keys};
use crate::engine::EngineError;

/// How often a sender with nothing to do (an empty queue, or another node's lock) looks again.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// The lock's lease beyond `HUB_WEBHOOK_TIMEOUT_S`: it is renewed right before each attempt,
/// so it outlasts the longest request, and a dead node's lock passes on this soon after.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Bounds for the command link: connecting, and each answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits between tries while Redis is unreachable: the first, doubled up to the last.
const OUTAGE_FIRST_WAIT: Duration = Duration::from_millis(250);
const OUTAGE_MAX_WAIT: Duration = Duration::from_secs(5);

/// Longest a dead-letter API operation may take, all its commands together: during an outage
/// the server API answers `unavailable` promptly.
const API_DEADLINE: Duration = Duration::from_secs(2);

/// Takes or renews the lock: it is ours if free or already ours.
/// KEYS: lock. ARGV: owner, lease (ms). Returns 1 when we hold it.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// Lets the lock go, if still ours (at stop: another node carries on at once).
/// KEYS: lock. ARGV: owner.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Writes fields of the batch record, if the lock is still ours.
/// KEYS: lock, batch. ARGV: owner, then field, value, ... Returns 1 when written.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
",
    )
});

/// A delivered batch: its events leave the queue and its record goes, together, if the lock
/// is still ours (else the node that took over owns the batch now).
/// KEYS: lock, batch, queue. ARGV: owner, count. Returns 1 when done.
static DELIVERED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('LTRIM', KEYS[3], ARGV[2], -1) end
redis.call('DEL', KEYS[2])
return 1
",
    )
});

/// A batch given up: one dead letter per event, then its events leave the queue and its
/// record goes, all at once, if the lock is still ours.
/// The dead-letter stream is not in the queue's hash slot: under Redis Cluster (not supported
/// yet) this becomes two steps, the `XADD`s first, so that a crash between them repeats a dead
/// letter rather than losing one (settled point 12). The same holds for [`REPLAY`].
/// KEYS: lock, batch, queue, dead-letter stream. ARGV: owner, count, url, reason, deliveries,
/// failed_at, delivery, then per event its text and its id. Returns 1 when done.
static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 8, #ARGV, 2 do
  redis.call('XADD', KEYS[4], '*', 'event', ARGV[i], 'url', ARGV[3], 'reason', ARGV[4],
    'deliveries', ARGV[5], 'failed_at', ARGV[6], 'original_id', ARGV[i + 1],
    'delivery', ARGV[7])
end
redis.call('LTRIM', KEYS[3], ARGV[2], -1)
redis.call('DEL', KEYS[2])
return 1
",
    )
});

/// Moves one dead letter back to the end of its URL's queue, once: only the call that
/// deletes it pushes it, so two replays of one id never queue it twice.
/// KEYS: dead-letter stream, queue. ARGV: entry id, event. Returns 1 when replayed.
static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
",
    )
});

pub struct RedisStore {
    context: Arc<Context>,
    conn: Commands,
    keys: Keys,
    /// This node's lock value: its id (for an operator reading the key) and a random token
    /// (so a restarted node with the same id does not take its former self's lock for its own).
    owner: String,
    lease: Duration,
    /// `keys.webhook_dlq()`: the dead letters' stream, their `stream` and their ids' prefix.
    dlq: String,
}

/// The batch a sender is delivering, as recorded in Redis.
struct InFlight {
    batch: Batch,
    /// Attempts made so far, by any node.
    attempts: u32,
    /// Not before this (Unix ms).
    next_at: u64,
    /// The last attempt's failure.
    error: String,
}

/// How one pass of the delivery loop ended.
enum Step {
    /// Nothing to do now (an empty queue, or another node sends): look again after a pause.
    Idle,
    /// A batch was finished: look again at once.
    Busy,
    Stopped,
}

/// Whether the lock is still held after a wait.
enum Held {
    Yes,
    Lost,
    Stopped,
}

fn unavailable(e: redis::RedisError) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

impl RedisStore {
    pub fn new(
        context: Arc<Context>,
        client: &redis::Client,
        keys: Keys,
        node_id: &str,
        timeout: Duration,
    ) -> Result<RedisStore, String> {
        let conn = Commands::lazy(client, CONNECT_TIMEOUT, REPLY_TIMEOUT)
            .map_err(|e| format!("webhooks: cannot set up the redis link: {e}"))?;
        Ok(RedisStore {
            context,
            conn,
            dlq: keys.webhook_dlq(),
            keys,
            owner: format!("{node_id}:{}", crate::clock::random_token(12)),
            lease: timeout + LEASE_MARGIN,
        })
    }

    pub fn urls(&self) -> usize {
        self.context.urls.len()
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// The delivery loop of URL number `url`, until stopped. While Redis is unreachable it
    /// backs off (up to [`OUTAGE_MAX_WAIT`]) and logs once per outage.
    pub async fn run(self: Arc<Self>, url: usize, mut shutdown: watch::Receiver<bool>) {
        let Some(target) = self.context.urls.get(url) else {
            return;
        };
        let shown = batch::redacted(target);
        let mut outage: Option<Duration> = None;
        loop {
            let pause = match self.step(url, &mut shutdown).await {
                Ok(Step::Stopped) => break,
                Ok(step) => {
                    if outage.take().is_some() {
                        tracing::info!(url = %shown, "redis reachable again: webhook delivery resumes");
                    }
                    match step {
                        Step::Busy => continue,
                        _ => IDLE_POLL,
                    }
                }
                Err(e) => {
                    let wait = match outage {
                        None => {
                            tracing::warn!(
                                url = %shown,
                                error = %e,
                                "redis unreachable: webhook delivery waits for it"
                            );
                            OUTAGE_FIRST_WAIT
                        }
                        Some(last) => (last * 2).min(OUTAGE_MAX_WAIT),
                    };
                    outage = Some(wait);
                    wait
                }
            };
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        // Another node may take over at once rather than after the lease; a Redis that does not
        // answer here lets the lease run out instead.
        let mut conn = self.conn.clone();
        let mut invocation = RELEASE.key(self.keys.webhook_lock(target));
        invocation.arg(&self.owner);
        let release = invocation.invoke_async::<i64>(&mut conn);
        let _ = tokio::time::timeout(REPLY_TIMEOUT, release).await;
    }

    /// One pass: refresh the gauge, take (or keep) the lock, then deliver the batch in flight
    /// or a new one, until it is delivered, dead-lettered, the lock is lost, or stop.
    async fn step(
        &self,
        url: usize,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<Step> {
        if *shutdown.borrow() {
            return Ok(Step::Stopped);
        }
        let target = &self.context.urls[url];
        let mut conn = self.conn.clone();
        let waiting: usize = redis::cmd("LLEN")
            .arg(self.keys.webhook_queue(target))
            .query_async(&mut conn)
            .await?;
        self.context.gauge.set(url, waiting);
        if !self.hold(url).await? {
            return Ok(Step::Idle);
        }
        let Some(mut flight) = self.in_flight(url, waiting).await? else {
            return Ok(Step::Idle);
        };
        let sender = &self.context.sender;
        loop {
            if flight.attempts >= sender.max_attempts() {
                // The node that made the last attempt stopped before setting the events aside.
                let reason = if flight.error.is_empty() {
                    "no answer (the sending node stopped)".to_owned()
                } else {
                    flight.error.clone()
                };
                tracing::error!(
                    url = %batch::redacted(target),
                    delivery = %flight.batch.delivery,
                    events = flight.batch.events.len(),
                    attempts = flight.attempts,
                    reason = %reason,
                    "webhook batch given up: its events go to the dead letters"
                );
                return self.give_up(url, &flight, &reason).await;
            }
            match self.hold_until(url, flight.next_at, shutdown).await? {
                Held::Yes => {}
                Held::Lost => return Ok(Step::Idle),
                Held::Stopped => return Ok(Step::Stopped),
            }
            // Counted before the request: a node killed during it has used that attempt.
            let attempt = flight.attempts + 1;
            if !self
                .record(url, &[("attempts", attempt.to_string())])
                .await?
            {
                return Ok(Step::Idle);
            }
            flight.attempts = attempt;
            let result = tokio::select! {
                biased;
                () = stopped(shutdown) => return Ok(Step::Stopped),
                result = sender.attempt(target, &flight.batch) => result,
            };
            match sender.judge(target, &flight.batch, attempt, result) {
                Outcome::Delivered => return self.delivered(url, &flight).await,
                Outcome::Retry { after, reason } => {
                    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                    flight.next_at = crate::clock::unix_millis().saturating_add(after_ms);
                    let recorded = self
                        .record(
                            url,
                            &[
                                ("next_at", flight.next_at.to_string()),
                                ("error", reason.clone()),
                            ],
                        )
                        .await?;
                    flight.error = reason;
                    if !recorded {
                        return Ok(Step::Idle);
                    }
                }
                Outcome::GiveUp { reason } => return self.give_up(url, &flight, &reason).await,
            }
        }
    }

    /// Takes or renews the lock of URL number `url`; `true` when we hold it.
    async fn hold(&self, url: usize) -> redis::RedisResult<bool> {
        let held: i64 = ACQUIRE
            .key(self.keys.webhook_lock(&self.context.urls[url]))
            .arg(&self.owner)
            .arg(self.lease_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(held == 1)
    }

    /// Waits until `at` (Unix ms), renewing the lock as it goes, and renews it once more at
    /// the end so that the lease covers the attempt that follows.
    async fn hold_until(
        &self,
        url: usize,
        at: u64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<Held> {
        let renew_every = self.lease / 3;
        loop {
            if !self.hold(url).await? {
                return Ok(Held::Lost);
            }
            let now = crate::clock::unix_millis();
            if now >= at {
                return Ok(Held::Yes);
            }
            let nap = Duration::from_millis(at - now).min(renew_every);
            tokio::select! {
                biased;
                () = stopped(shutdown) => return Ok(Held::Stopped),
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// The batch in flight to URL number `url`: the recorded one if there is one, else a new
    /// one from the queue's head (recorded before it is returned); `None` when the queue is
    /// empty or the lock was lost.
    async fn in_flight(&self, url: usize, waiting: usize) -> redis::RedisResult<Option<InFlight>> {
        let target = &self.context.urls[url];
        let queue = self.keys.webhook_queue(target);
        let mut conn = self.conn.clone();
        let record: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.webhook_batch(target))
            .query_async(&mut conn)
            .await?;
        let number = |field: &str| record.get(field).and_then(|v| v.parse::<u64>().ok());
        let delivery = record.get("delivery").cloned().unwrap_or_default();
        let count = number("count").unwrap_or(0);
        if !delivery.is_empty() && count > 0 {
            let events = head(&mut conn, &queue, count).await?;
            if events.is_empty() {
                // The queue went while its batch was recorded (deleted by hand, or Redis lost
                // it): nothing is left to send, and what was is known lost.
                tracing::error!(
                    url = %batch::redacted(target),
                    delivery = %delivery,
                    events = count,
                    "webhook batch recorded but its queue is gone: events lost (counted in hub_webhook_lost_total)"
                );
                if self.finish_record(url, 0).await? {
                    self.context.metrics.webhook_lost.inc_by(count);
                }
                return Ok(None);
            }
            return Ok(Some(InFlight {
                batch: Batch { delivery, events },
                attempts: u32::try_from(number("attempts").unwrap_or(0)).unwrap_or(u32::MAX),
                next_at: number("next_at").unwrap_or(0),
                error: record.get("error").cloned().unwrap_or_default(),
            }));
        }
        if waiting == 0 {
            return Ok(None);
        }
        let events = head(&mut conn, &queue, MAX_BATCH as u64).await?;
        if events.is_empty() {
            return Ok(None);
        }
        let batch = Batch::new(events);
        let recorded = self
            .record(
                url,
                &[
                    ("delivery", batch.delivery.clone()),
                    ("count", batch.events.len().to_string()),
                    ("attempts", "0".to_owned()),
                    ("next_at", "0".to_owned()),
                    ("error", String::new()),
                ],
            )
            .await?;
        Ok(recorded.then_some(InFlight {
            batch,
            attempts: 0,
            next_at: 0,
            error: String::new(),
        }))
    }

    /// Writes fields of URL number `url`'s batch record if we still hold its lock.
    async fn record(&self, url: usize, fields: &[(&str, String)]) -> redis::RedisResult<bool> {
        let target = &self.context.urls[url];
        let mut invocation = RECORD.key(self.keys.webhook_lock(target));
        invocation
            .key(self.keys.webhook_batch(target))
            .arg(&self.owner);
        for (field, value) in fields {
            invocation.arg(*field).arg(value);
        }
        let written: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(written == 1)
    }

    /// Removes the first `count` events and the batch record of URL number `url`, if we still
    /// hold its lock.
    async fn finish_record(&self, url: usize, count: usize) -> redis::RedisResult<bool> {
        let target = &self.context.urls[url];
        let done: i64 = DELIVERED
            .key(self.keys.webhook_lock(target))
            .key(self.keys.webhook_batch(target))
            .key(self.keys.webhook_queue(target))
            .arg(&self.owner)
            .arg(count)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(done == 1)
    }

    async fn delivered(&self, url: usize, flight: &InFlight) -> redis::RedisResult<Step> {
        if !self.finish_record(url, flight.batch.events.len()).await? {
            self.lost_lock(url, flight);
        }
        Ok(Step::Busy)
    }

    /// Sets the events of the batch aside as dead letters and removes them from the queue.
    async fn give_up(
        &self,
        url: usize,
        flight: &InFlight,
        reason: &str,
    ) -> redis::RedisResult<Step> {
        let target = &self.context.urls[url];
        let mut invocation = DEAD.key(self.keys.webhook_lock(target));
        invocation
            .key(self.keys.webhook_batch(target))
            .key(self.keys.webhook_queue(target))
            .key(&self.dlq)
            .arg(&self.owner)
            .arg(flight.batch.events.len())
            .arg(batch::redacted(target))
            .arg(reason)
            .arg(flight.attempts)
            .arg(crate::clock::unix_millis())
            .arg(&flight.batch.delivery);
        for event in &flight.batch.events {
            invocation.arg(event).arg(event_id(event));
        }
        let done: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        if done == 1 {
            self.context
                .metrics
                .webhook_dead
                .inc_by(flight.batch.events.len() as u64);
        } else {
            self.lost_lock(url, flight);
        }
        Ok(Step::Busy)
    }

    fn lost_lock(&self, url: usize, flight: &InFlight) {
        tracing::warn!(
            url = %batch::redacted(&self.context.urls[url]),
            delivery = %flight.batch.delivery,
            "webhook lock lost mid-batch (this node was too slow): the node holding it now carries on"
        );
    }

    /// The newest `limit` dead letters, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        let limit = limit.min(MAX_LIST);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply: Value = within("webhook dead letters", async {
            redis::cmd("XREVRANGE")
                .arg(&self.dlq)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)
        })
        .await?;
        Ok(entry::entries(&reply)
            .iter()
            .map(|e| self.dead_letter(e))
            .collect())
    }

    fn dead_letter(&self, e: &entry::Entry) -> DeadLetter {
        let field = |name: &str| {
            e.field(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let mut fields = serde_json::Map::new();
        fields.insert("event".into(), field("event").into());
        fields.insert("url".into(), field("url").into());
        DeadLetter {
            id: format!("{}/{}", self.dlq, e.id),
            stream: self.dlq.clone(),
            original_id: field("original_id"),
            reason: field("reason"),
            deliveries: field("deliveries").parse().unwrap_or(0),
            failed_at: field("failed_at").parse().unwrap_or(0),
            fields,
        }
    }

    /// Puts the events of those `ids` that are ours back at the end of their URL's queue (a
    /// new batch, a new delivery id) and removes them from the dead letters; returns how
    /// many. A dead letter of a URL no longer configured is left where it is.
    pub async fn replay(&self, ids: &[String]) -> Result<usize, EngineError> {
        within("webhook replay", async {
            let mut conn = self.conn.clone();
            let mut replayed = 0;
            for id in ids {
                let Some(entry_id) = self.entry_id(id) else {
                    continue;
                };
                let reply: Value = redis::cmd("XRANGE")
                    .arg(&self.dlq)
                    .arg(entry_id)
                    .arg(entry_id)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                let Some(found) = entry::entries(&reply).into_iter().next() else {
                    continue;
                };
                let (Some(event), Some(shown)) = (found.field("event"), found.field("url")) else {
                    continue;
                };
                let shown = String::from_utf8_lossy(shown);
                let Some(url) = self.context.url_index(&shown) else {
                    tracing::warn!(
                        dead_letter = id.as_str(),
                        url = %shown,
                        "webhook dead letter not replayed: its URL is no longer configured"
                    );
                    continue;
                };
                let done: i64 = REPLAY
                    .key(&self.dlq)
                    .key(self.keys.webhook_queue(&self.context.urls[url]))
                    .arg(entry_id)
                    .arg(event)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                if done == 1 {
                    replayed += 1;
                    tracing::info!(dead_letter = id.as_str(), "webhook dead letter replayed");
                }
            }
            Ok(replayed)
        })
        .await
    }

    pub async fn delete(&self, id: &str) -> Result<bool, EngineError> {
        let Some(entry_id) = self.entry_id(id) else {
            return Ok(false);
        };
        within("webhook dead-letter delete", async {
            let deleted: i64 = redis::cmd("XDEL")
                .arg(&self.dlq)
                .arg(entry_id)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            Ok(deleted == 1)
        })
        .await
    }

    /// The entry id of one of our dead-letter ids (`<dlq>/<ms>-<seq>`).
    fn entry_id<'a>(&self, id: &'a str) -> Option<&'a str> {
        let entry_id = id.strip_prefix(self.dlq.as_str())?.strip_prefix('/')?;
        entry_id_shape(entry_id).then_some(entry_id)
    }
}

/// The first `count` events of `queue`, as text.
async fn head(conn: &mut Commands, queue: &str, count: u64) -> redis::RedisResult<Vec<String>> {
    // Read as bytes: an entry that is not UTF-8 (written by something other than the hub) is
    // sent lossily rather than stopping the queue for good.
    let events: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(queue)
        .arg(0)
        .arg(count.saturating_sub(1))
        .query_async(conn)
        .await?;
    Ok(events
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e).into_owned())
        .collect())
}

/// Runs one API operation within [`API_DEADLINE`]; a late one is `unavailable`. A replay cut
/// short replayed some ids and not others; each is replayed at most once, so the caller can
/// send the same ids again.
async fn within<T>(
    what: &str,
    operation: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(API_DEADLINE, operation)
        .await
        .unwrap_or_else(|_| {
            Err(EngineError::Unavailable(format!(
                "{what}: no answer from redis within {API_DEADLINE:?}"
            )))
        })
}

/// Whether `id` has the shape of a stream entry id (`<ms>-<seq>`).
fn entry_id_shape(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::entry_id_shape;

    #[test]
    fn only_entry_ids_name_dead_letters() {
        assert!(entry_id_shape("1767225600000-0"));
        assert!(!entry_id_shape("1767225600000"));
        assert!(!entry_id_shape("+"));
        assert!(!entry_id_shape("1-x"));
    }
}
