//! What the server API asks of the Streams ingestion: each stream's figures for `/api/info`, and
//! the dead letters (list, replay, delete). A dead letter's id is `<dead-letter stream>/<entry
//! id>`; only the dead-letter streams of `HUB_STREAMS` are ever read or changed here, and a
//! replay goes back to the stream the dead-letter stream belongs to.
//!
//! Each operation as a whole gets [`API_DEADLINE`]: during a Redis outage the server API answers
//! `unavailable` promptly instead of waiting out reconnect attempts command by command.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Value;
use serde::Serialize;

use super::entry::{self, id_order, split_dead};
use super::{dead_letter_stream, Streams};
use crate::deadletters::{DeadLetter, DeadLetterSource, MAX_LIST};
use crate::engine::EngineError;

/// Longest an API operation (figures, list, replay, delete) may take, all its commands together.
pub const API_DEADLINE: Duration = Duration::from_secs(2);

/// Moves one dead letter back to its stream, once: only the call that deletes it re-adds it, so
/// two replays of the same id never add it twice.
/// KEYS: dead-letter stream, source stream. ARGV: entry id, then the original fields.
static REPLAY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
return 1
",
    )
});

/// One stream's figures, as `/api/info` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    pub stream: String,
    pub length: u64,
    /// Entries delivered to the group and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group; `None` where Redis cannot tell.
    pub lag: Option<u64>,
    pub dead_letters: u64,
}

fn unavailable(e: redis::RedisError) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

/// Runs one whole API operation within [`API_DEADLINE`]; a late one is `unavailable`. A replay
/// cut short has replayed some ids and not others: each id is replayed at most once (see
/// [`REPLAY`]), so the caller can simply send the same ids again.
async fn within<T>(
    what: &str,
    operation: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(API_DEADLINE, operation)
        .await
        .unwrap_or_else(|_| {
            Err(EngineError::Unavailable(format!(
                "{what}: no answer from redis within {API_DEADLINE:?}"
            )))
        })
}

/// One stream's length, pending, lag and dead letters (for `/api/info` and the reader's gauges).
pub async fn stream_info<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> redis::RedisResult<StreamInfo> {
    let (length, dead_letters): (u64, u64) = redis::pipe()
        .cmd("XLEN")
        .arg(stream)
        .cmd("XLEN")
        .arg(dead_letter_stream(stream))
        .query_async(conn)
        .await?;
    let groups: Value = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        // No stream (yet): no group either.
        Err(e) if e.code() == Some("ERR") => Value::Nil,
        Err(e) => return Err(e),
    };
    let (pending, lag) = group_figures(&groups, group);
    Ok(StreamInfo {
        stream: stream.to_owned(),
        length,
        pending,
        lag,
        dead_letters,
    })
}

/// Pending and lag of `group` in an `XINFO GROUPS` answer. `lag` is absent (`None`) where
/// Redis cannot tell: before 7.0, or after entries were deleted from the stream between the
/// group's position and its end.
fn group_figures(groups: &Value, group: &str) -> (u64, Option<u64>) {
    let items: Vec<&Value> = match groups {
        Value::Array(items) | Value::Set(items) => items.iter().collect(),
        _ => Vec::new(),
    };
    for info in items {
        let fields = entry::pairs(info);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| entry::text(k).as_deref() == Some(name))
                .map(|(_, v)| *v)
        };
        if get("name").and_then(entry::text).as_deref() != Some(group) {
            continue;
        }
        let number = |name: &str| {
            get(name)
                .and_then(entry::int)
                .and_then(|n| u64::try_from(n).ok())
        };
        return (number("pending").unwrap_or(0), number("lag"));
    }
    (0, None)
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

impl Streams {
    /// The stream a dead-letter id belongs to and its entry id, if it names an entry of one of
    /// our dead-letter streams.
    fn locate<'a>(&'a self, id: &'a str) -> Option<(&'a str, &'a str)> {
        let (dlq, entry_id) = id.rsplit_once('/')?;
        let stream = self
            .settings
            .streams
            .iter()
            .find(|s| dead_letter_stream(s) == dlq)?;
        entry_id_shape(entry_id).then_some((stream.as_str(), entry_id))
    }

    /// Length, pending, lag and dead letters of every configured stream.
    pub async fn info(&self) -> Result<Vec<StreamInfo>, EngineError> {
        within("stream figures", async {
            let mut conn = self.conn.clone();
            let mut infos = Vec::with_capacity(self.settings.streams.len());
            for stream in &self.settings.streams {
                infos.push(
                    stream_info(&mut conn, stream, &self.settings.group)
                        .await
                        .map_err(unavailable)?,
                );
            }
            Ok(infos)
        })
        .await
    }

    /// The newest `limit` dead letters across every configured stream, newest first.
    async fn stream_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        let limit = limit.min(MAX_LIST);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut all = within("dead letters", async {
            let mut conn = self.conn.clone();
            let mut all = Vec::new();
            for stream in &self.settings.streams {
                let dlq = dead_letter_stream(stream);
                let reply: Value = redis::cmd("XREVRANGE")
                    .arg(&dlq)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                all.extend(
                    entry::entries(&reply)
                        .into_iter()
                        .map(|e| (dlq.clone(), stream, e)),
                );
            }
            Ok(all)
        })
        .await?;
        all.sort_by_key(|(_, _, e)| std::cmp::Reverse(id_order(&e.id)));
        all.truncate(limit);
        Ok(all
            .into_iter()
            .map(|(dlq, stream, e)| {
                let fields = e.fields.unwrap_or_default();
                let split = split_dead(&fields);
                let [source, original_id, reason, deliveries, failed_at] = split.meta;
                DeadLetter {
                    id: format!("{dlq}/{}", e.id),
                    stream: if source.is_empty() {
                        stream.clone()
                    } else {
                        source
                    },
                    original_id,
                    reason,
                    deliveries: deliveries.parse().unwrap_or(0),
                    failed_at: failed_at.parse().unwrap_or(0),
                    fields: split
                        .original
                        .iter()
                        .map(|(k, v)| {
                            (
                                String::from_utf8_lossy(k).into_owned(),
                                serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                            )
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// Puts each listed dead letter's original fields back on its stream (as a new entry) and
    /// removes it from the dead letters. Ids that name no dead letter are skipped. Returns how
    /// many were replayed.
    async fn replay_ids(&self, ids: &[String]) -> Result<usize, EngineError> {
        within("replay", async {
            let mut conn = self.conn.clone();
            let mut replayed = 0;
            for id in ids {
                let Some((stream, entry_id)) = self.locate(id) else {
                    continue;
                };
                if self.replay_one(&mut conn, stream, entry_id).await? {
                    replayed += 1;
                    tracing::info!(
                        stream = stream,
                        dead_letter = id.as_str(),
                        "dead letter replayed"
                    );
                }
            }
            Ok(replayed)
        })
        .await
    }

    /// Replays one dead letter; `false` when there is no such dead letter (any more).
    async fn replay_one(
        &self,
        conn: &mut crate::engine::redis::Commands,
        stream: &str,
        entry_id: &str,
    ) -> Result<bool, EngineError> {
        let dlq = dead_letter_stream(stream);
        let reply: Value = redis::cmd("XRANGE")
            .arg(&dlq)
            .arg(entry_id)
            .arg(entry_id)
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        let Some(fields) = entry::entries(&reply)
            .into_iter()
            .next()
            .and_then(|e| e.fields)
        else {
            return Ok(false);
        };
        let split = split_dead(&fields);
        if split.original.is_empty() {
            return Ok(false);
        }
        let original_id = &split.meta[1];
        let mut invocation = REPLAY.key(&dlq);
        invocation.key(stream).arg(entry_id);
        for (name, value) in replay_fields(split.original, stream, original_id) {
            invocation.arg(name).arg(value);
        }
        let done: i64 = invocation.invoke_async(conn).await.map_err(unavailable)?;
        Ok(done == 1)
    }

    /// Deletes one dead letter; `false` when there is no such dead letter.
    async fn delete_id(&self, id: &str) -> Result<bool, EngineError> {
        let Some((stream, entry_id)) = self.locate(id) else {
            return Ok(false);
        };
        within("delete", async {
            let deleted: i64 = redis::cmd("XDEL")
                .arg(dead_letter_stream(stream))
                .arg(entry_id)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            Ok(deleted == 1)
        })
        .await
    }
}

/// The dead letters of `HUB_STREAMS`: ids `<dead-letter stream>/<entry id>`.
#[async_trait::async_trait]
impl DeadLetterSource for Streams {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        self.stream_dead_letters(limit).await
    }
    async fn replay(&self, ids: &[String]) -> Result<usize, EngineError> {
        self.replay_ids(ids).await
    }
    async fn delete(&self, id: &str) -> Result<bool, EngineError> {
        self.delete_id(id).await
    }
}

/// The fields a replay re-adds: the original ones, plus `event_id=<stream>/<original id>` where
/// the entry had none. Without it the re-added entry would get the idempotency key of its new
/// id, and a replay of an entry whose publish did go through (its acknowledgement was what
/// failed) would publish it a second time.
fn replay_fields<'a>(
    original: &'a [(Vec<u8>, Vec<u8>)],
    stream: &str,
    original_id: &str,
) -> Vec<(&'a [u8], Vec<u8>)> {
    let mut fields: Vec<(&[u8], Vec<u8>)> = original
        .iter()
        .map(|(k, v)| (k.as_slice(), v.clone()))
        .collect();
    let has_event_id = original.iter().any(|(k, _)| k == b"event_id");
    if !has_event_id && !original_id.is_empty() {
        fields.push((b"event_id", format!("{stream}/{original_id}").into_bytes()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::{entry_id_shape, replay_fields};

    fn owned(fields: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_replay_keeps_the_original_idempotency_key() {
        let without = owned(&[("channel", "c"), ("data", "1")]);
        let replayed = replay_fields(&without, "s", "5-1");
        assert_eq!(
            replayed.last(),
            Some(&(&b"event_id"[..], b"s/5-1".to_vec()))
        );
        assert_eq!(replayed.len(), 3);
        let with = owned(&[("channel", "c"), ("event_id", "e"), ("data", "1")]);
        let kept: Vec<_> = replay_fields(&with, "s", "5-1");
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[1], (&b"event_id"[..], b"e".to_vec()));
    }

    #[test]
    fn only_entry_ids_are_accepted() {
        assert!(entry_id_shape("1767225600000-0"));
        assert!(!entry_id_shape("1767225600000"));
        assert!(!entry_id_shape("+"));
        assert!(!entry_id_shape("1-x"));
        assert!(!entry_id_shape("-1"));
    }
}
