//! The `ingest` scenario's producer: appends numbered, timestamped entries to the hub's Redis
//! stream in pipelined `XADD` batches, as fast as Redis takes them, and watches the hub's
//! consumer group acknowledge them.
//!
//! Entries follow docs/events.md "The entry": `channel`, `data` (the same JSON as an HTTP publication, see
//! [`crate::frame::write_data`]) and optionally `event_id`. Every pipeline is written on one
//! connection in sequence order, so the stream holds the entries in sequence order and a
//! single consuming node must deliver them in that order too.
//!
//! Acknowledgement is read from Redis, not inferred: an entry of ours is acknowledged once the
//! group has delivered it (its id is at most the group's `last-delivered-id`, from `XINFO
//! GROUPS`) and it is no longer pending (`XPENDING` over our id range). Another producer
//! appending to the same stream at the same time could make pending entries of its own count
//! against ours; a stream used only by the benchmark has no such noise.
//!
//! Like the HTTP publisher, this runs on a thread and runtime of its own, so the subscribers'
//! work on the main runtime cannot slow the appends or the acknowledgement clock.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use serde_json::{json, Value as Json};

use crate::frame;
use crate::report::round3;
use crate::stats::{self, SeqSet};

/// How long one command or pipeline may take before it is given up on.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
pub type EntryId = (u64, u64);

pub fn parse_id(s: &str) -> Option<EntryId> {
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub fn format_id(id: EntryId) -> String {
    format!("{}-{}", id.0, id.1)
}

/// Opens a multiplexed connection with a response timeout fit for large pipelines.
pub async fn connect(client: &redis::Client) -> Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting to Redis")
}

/// A value as text, whichever way the protocol version encoded it.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// Field/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|kv| Some((text(&kv[0])?, &kv[1])))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// One consumer group as `XINFO GROUPS` describes it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub consumers: u64,
    pub pending: u64,
    pub last_delivered: Option<EntryId>,
    /// Entries not yet delivered to the group (Redis 7; `None` when Redis cannot tell).
    pub lag: Option<u64>,
}

impl GroupInfo {
    pub fn to_json(&self) -> Json {
        json!({
            "consumers": self.consumers,
            "pending": self.pending,
            "last_delivered_id": self.last_delivered.map(format_id),
            "lag": self.lag,
        })
    }
}

/// `group` of `stream`, or `None` when the stream or the group does not exist.
pub async fn group_info(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Result<Option<GroupInfo>> {
    let reply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async::<Value>(conn)
        .await;
    let reply = match reply {
        Ok(r) => r,
        // "ERR no such key"
        Err(e) if e.to_string().contains("no such key") => return Ok(None),
        Err(e) => return Err(e).context("XINFO GROUPS"),
    };
    let Value::Array(groups) = reply else {
        return Ok(None);
    };
    for g in &groups {
        let fields = pairs(g);
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if get("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        return Ok(Some(GroupInfo {
            consumers: get("consumers").and_then(int).unwrap_or(0),
            pending: get("pending").and_then(int).unwrap_or(0),
            last_delivered: get("last-delivered-id")
                .and_then(text)
                .and_then(|s| parse_id(&s)),
            lag: get("lag").and_then(int),
        }));
    }
    Ok(None)
}

/// `XLEN key` (0 for a missing key).
pub async fn xlen(conn: &mut MultiplexedConnection, key: &str) -> Result<u64> {
    redis::cmd("XLEN")
        .arg(key)
        .query_async::<u64>(conn)
        .await
        .context("XLEN")
}

/// What to append, where, and how long to wait for the acknowledgements.
#[derive(Debug, Clone)]
pub struct Burst {
    pub stream: String,
    pub group: String,
    pub channel: String,
    pub entries: u64,
    pub batch: u64,
    pub in_flight: u64,
    pub payload: usize,
    /// `event_id` prefix; `None`: no `event_id` field.
    pub event_id_prefix: Option<String>,
    /// Wait for acknowledgements at most this long after the last append.
    pub drain: Duration,
    pub poll: Duration,
}

/// Counters the progress ticker reads.
#[derive(Debug, Default)]
pub struct BurstProgress {
    pub appended: Arc<AtomicU64>,
    pub acked: Arc<AtomicU64>,
}

/// What the producer and the acknowledgement watcher saw.
pub struct BurstOutcome {
    /// Entries Redis confirmed appending: every subscriber must receive exactly these.
    pub accepted: SeqSet,
    /// Entries of pipelines that failed: perhaps appended.
    pub unknown: SeqSet,
    pub accepted_count: u64,
    pub unknown_count: u64,
    pub failures: BTreeMap<String, u64>,
    /// Unix µs when the first pipeline was sent.
    pub start_us: u64,
    /// From the first pipeline sent to the last one answered.
    pub append_elapsed: Duration,
    /// Pipeline round trips.
    pub pipeline: Histogram<u64>,
    pub first_id: Option<EntryId>,
    pub last_id: Option<EntryId>,
    /// Our entries acknowledged when the last append was answered, and at the end.
    pub acked_at_append_end: u64,
    pub acked: u64,
    /// Of ours, delivered to the group but still pending at the end.
    pub pending: u64,
    /// From the first pipeline sent until every appended entry was acknowledged.
    pub all_acked_after: Option<Duration>,
    pub group_end: Option<GroupInfo>,
    pub polls: u64,
    pub poll_errors: BTreeMap<String, u64>,
    /// Our ids in stream order (for `--delete-after`).
    pub ids: Vec<EntryId>,
}

impl BurstOutcome {
    pub fn to_json(&self) -> Json {
        let append_s = self.append_elapsed.as_secs_f64().max(1e-9);
        json!({
            "appended": self.accepted_count,
            "unknown": self.unknown_count,
            "failures": self.failures,
            "append_s": round3(append_s),
            "appended_per_s": round3(self.accepted_count as f64 / append_s),
            "pipeline_ms": stats::summary_ms(&self.pipeline),
            "first_id": self.first_id.map(format_id),
            "last_id": self.last_id.map(format_id),
        })
    }

    pub fn acks_json(&self) -> Json {
        json!({
            "acked": self.acked,
            "acked_at_append_end": self.acked_at_append_end,
            "pending_at_end": self.pending,
            "all_acked_s": self.all_acked_after.map(|d| round3(d.as_secs_f64())),
            "acked_per_s": self.all_acked_after
                .map(|d| round3(self.acked as f64 / d.as_secs_f64().max(1e-9))),
            "group_at_end": self.group_end.as_ref().map(GroupInfo::to_json),
            "polls": self.polls,
            "poll_errors": self.poll_errors,
        })
    }
}

/// Runs `burst` against `client` on a thread of its own.
pub async fn run(
    client: redis::Client,
    burst: Burst,
    progress: BurstProgress,
    sigfig: u8,
) -> Result<BurstOutcome> {
    let (done, outcome) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stream-producer".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the producer's runtime")
                .and_then(|rt| rt.block_on(run_here(client, burst, progress, sigfig)));
            let _ = done.send(result);
        })
        .context("starting the producer thread")?;
    outcome
        .await
        .context("the producer thread ended without a result")?
}

/// State the pipelines and the watcher share on the producer's one thread.
struct Shared {
    /// Next batch to send.
    next_batch: Cell<u64>,
    /// Our appended ids, kept sorted.
    ids: RefCell<Vec<EntryId>>,
    accepted: RefCell<SeqSet>,
    unknown: RefCell<SeqSet>,
    failures: RefCell<BTreeMap<String, u64>>,
    pipeline: RefCell<Histogram<u64>>,
    /// Set once every pipeline has been answered.
    appended_at: Cell<Option<Instant>>,
}

async fn run_here(
    client: redis::Client,
    burst: Burst,
    progress: BurstProgress,
    sigfig: u8,
) -> Result<BurstOutcome> {
    if burst.entries == 0 || burst.batch == 0 {
        bail!("nothing to append");
    }
    let conn = connect(&client).await?;
    // The watcher's commands must not queue behind 1000-command pipelines.
    let watch_conn = connect(&client).await?;
    let shared = Shared {
        next_batch: Cell::new(0),
        ids: RefCell::new(Vec::with_capacity(burst.entries as usize)),
        accepted: RefCell::new(SeqSet::new(burst.entries)),
        unknown: RefCell::new(SeqSet::new(burst.entries)),
        failures: RefCell::new(BTreeMap::new()),
        pipeline: RefCell::new(stats::latency_histogram(sigfig)),
        appended_at: Cell::new(None),
    };
    let start = Instant::now();
    let start_us = frame::now_us();
    let lanes = (0..burst.in_flight.max(1)).map(|_| lane(conn.clone(), &burst, &shared, &progress));
    let appending = async {
        futures_util::future::join_all(lanes).await;
        shared.appended_at.set(Some(Instant::now()));
    };
    let (_, watched) = tokio::join!(
        appending,
        watch(watch_conn, &burst, &shared, &progress, start)
    );
    let appended_at = shared.appended_at.get().unwrap_or_else(Instant::now);
    let accepted = shared.accepted.into_inner();
    let unknown = shared.unknown.into_inner();
    let ids = shared.ids.into_inner();
    Ok(BurstOutcome {
        accepted_count: accepted.count(),
        unknown_count: unknown.count(),
        accepted,
        unknown,
        failures: shared.failures.into_inner(),
        start_us,
        append_elapsed: appended_at.duration_since(start),
        pipeline: shared.pipeline.into_inner(),
        first_id: ids.first().copied(),
        last_id: ids.last().copied(),
        acked_at_append_end: watched.acked_at_append_end,
        acked: watched.acked,
        pending: watched.pending,
        all_acked_after: watched.all_acked_after,
        group_end: watched.group_end,
        polls: watched.polls,
        poll_errors: watched.errors,
        ids,
    })
}

/// One pipeline in flight at a time: takes the next batch, sends it, records the ids.
async fn lane(
    mut conn: MultiplexedConnection,
    burst: &Burst,
    shared: &Shared,
    progress: &BurstProgress,
) {
    let mut data = Vec::with_capacity(burst.payload + 64);
    loop {
        let batch = shared.next_batch.get();
        let first = batch * burst.batch;
        if first >= burst.entries {
            return;
        }
        shared.next_batch.set(batch + 1);
        let last = (first + burst.batch).min(burst.entries);
        // Built and sent with no await in between: pipelines reach the connection, and so
        // the stream, in batch order.
        let mut pipe = redis::pipe();
        for seq in first..last {
            frame::write_data(&mut data, seq, frame::now_us(), burst.payload);
            let xadd = pipe
                .cmd("XADD")
                .arg(&burst.stream)
                .arg("*")
                .arg("channel")
                .arg(&burst.channel)
                .arg("data")
                .arg(&data[..]);
            if let Some(prefix) = &burst.event_id_prefix {
                xadd.arg("event_id").arg(format!("{prefix}{seq}"));
            }
        }
        let sent = Instant::now();
        let reply = pipe.query_async::<Vec<String>>(&mut conn).await;
        stats::record(
            &mut shared.pipeline.borrow_mut(),
            sent.elapsed().as_micros() as u64,
        );
        match reply {
            Ok(ids) if ids.len() as u64 == last - first => {
                let parsed: Vec<EntryId> = ids.iter().filter_map(|s| parse_id(s)).collect();
                let mut all = shared.ids.borrow_mut();
                // Pipelines answer in the order they were sent, so this is an append at the end
                // unless an earlier one failed; keep the list sorted either way.
                let at = parsed
                    .first()
                    .map_or(all.len(), |f| all.partition_point(|id| id < f));
                all.splice(at..at, parsed);
                let mut accepted = shared.accepted.borrow_mut();
                for seq in first..last {
                    accepted.insert(seq);
                }
                progress.appended.fetch_add(last - first, Ordering::Relaxed);
            }
            other => {
                let why = match other {
                    Ok(ids) => format!("{} ids for {} entries", ids.len(), last - first),
                    Err(e) => format!("pipeline failed: {}", kind_label(&e)),
                };
                *shared.failures.borrow_mut().entry(why).or_default() += last - first;
                let mut unknown = shared.unknown.borrow_mut();
                for seq in first..last {
                    unknown.insert(seq);
                }
            }
        }
    }
}

/// A short label for a Redis error that groups well.
fn kind_label(e: &redis::RedisError) -> String {
    match e.code() {
        Some(code) => code.to_string(),
        None => format!("{:?}", e.kind()),
    }
}

struct Watched {
    acked_at_append_end: u64,
    acked: u64,
    pending: u64,
    all_acked_after: Option<Duration>,
    group_end: Option<GroupInfo>,
    polls: u64,
    errors: BTreeMap<String, u64>,
}

/// Polls the group until every appended entry is acknowledged, or `drain` after the last
/// append.
async fn watch(
    mut conn: MultiplexedConnection,
    burst: &Burst,
    shared: &Shared,
    progress: &BurstProgress,
    start: Instant,
) -> Watched {
    let mut w = Watched {
        acked_at_append_end: 0,
        acked: 0,
        pending: 0,
        all_acked_after: None,
        group_end: None,
        polls: 0,
        errors: BTreeMap::new(),
    };
    let mut seen_append_end = false;
    loop {
        // Read before polling: whether this poll saw everything appended.
        let appended_at = shared.appended_at.get();
        match poll_acks(&mut conn, burst, shared).await {
            Ok((acked, pending, group)) => {
                w.polls += 1;
                w.acked = acked;
                w.pending = pending;
                w.group_end = Some(group);
                progress.acked.store(acked, Ordering::Relaxed);
            }
            Err(e) => {
                *w.errors.entry(format!("{e:#}")).or_default() += 1;
            }
        }
        if let Some(at) = appended_at {
            if !seen_append_end {
                seen_append_end = true;
                w.acked_at_append_end = w.acked;
            }
            let total = shared.ids.borrow().len() as u64;
            if w.acked >= total && w.pending == 0 {
                w.all_acked_after = Some(start.elapsed());
                return w;
            }
            if at.elapsed() >= burst.drain {
                return w;
            }
        }
        tokio::time::sleep(burst.poll).await;
    }
}

/// Our entries acknowledged and pending now, with the group's figures.
async fn poll_acks(
    conn: &mut MultiplexedConnection,
    burst: &Burst,
    shared: &Shared,
) -> Result<(u64, u64, GroupInfo)> {
    let group = group_info(conn, &burst.stream, &burst.group)
        .await?
        .with_context(|| format!("group {} of {} is gone", burst.group, burst.stream))?;
    let (first, delivered, upto) = {
        let ids = shared.ids.borrow();
        let Some(first) = ids.first().copied() else {
            return Ok((0, 0, group));
        };
        let Some(last_delivered) = group.last_delivered else {
            return Ok((0, 0, group));
        };
        let delivered = ids.partition_point(|id| *id <= last_delivered);
        if delivered == 0 {
            return Ok((0, 0, group));
        }
        (first, delivered as u64, ids[delivered - 1])
    };
    let rows = redis::cmd("XPENDING")
        .arg(&burst.stream)
        .arg(&burst.group)
        .arg(format_id(first))
        .arg(format_id(upto))
        .arg(delivered)
        .query_async::<Vec<Value>>(conn)
        .await
        .context("XPENDING")?;
    let pending = rows.len() as u64;
    Ok((delivered.saturating_sub(pending), pending, group))
}

/// Deletes `ids` from `stream` (in chunks); answers how many Redis removed.
pub async fn delete(client: &redis::Client, stream: &str, ids: &[EntryId]) -> Result<u64> {
    let mut conn = connect(client).await?;
    let mut removed = 0;
    for chunk in ids.chunks(1000) {
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(stream);
        for id in chunk {
            cmd.arg(format_id(*id));
        }
        removed += cmd.query_async::<u64>(&mut conn).await.context("XDEL")?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_order_like_redis() {
        let a = parse_id("1767225612345-0").expect("id");
        let b = parse_id("1767225612345-10").expect("id");
        let c = parse_id("1767225612346-2").expect("id");
        assert!(a < b && b < c);
        assert_eq!(format_id(b), "1767225612345-10");
        assert_eq!(parse_id("x-1"), None);
        assert_eq!(parse_id("12"), None);
    }

    #[test]
    fn xinfo_groups_fields_are_read_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            bulk("name"),
            bulk("hub"),
            bulk("pending"),
            Value::Int(3),
            bulk("last-delivered-id"),
            bulk("5-1"),
        ]);
        let fields = pairs(&resp2);
        assert_eq!(fields.len(), 3);
        assert_eq!(int(fields[1].1), Some(3));
        let resp3 = Value::Map(vec![(bulk("lag"), Value::Nil), (bulk("name"), bulk("hub"))]);
        let fields = pairs(&resp3);
        assert_eq!(fields[0].0, "lag");
        assert_eq!(int(fields[0].1), None);
        assert_eq!(text(fields[1].1).as_deref(), Some("hub"));
    }
}
