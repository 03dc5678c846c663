//! What the server API asks of the Streams ingestion: each stream's figures for `/api/info`, and
//! the dead letters (list, replay, delete). A dead letter's id is `<dead-letter stream>/<entry
//! id>`; only the dead-letter streams of `HUB_STREAMS` are ever read or changed here, and a
//! replay goes back to the stream the dead-letter stream belongs to.

use std::sync::LazyLock;

use redis::Value;
use serde::Serialize;

use super::entry::{self, id_order, split_dead};
use super::{dead_letter_stream, Streams};
use crate::engine::EngineError;

/// Most dead letters one listing returns.
pub const MAX_LIST: usize = 1000;

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

/// One dead letter, as `/api/deadletters` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// `<dead-letter stream>/<entry id>`.
    pub id: String,
    pub stream: String,
    pub original_id: String,
    pub reason: String,
    pub deliveries: u64,
    /// Unix ms.
    pub failed_at: u64,
    /// The entry's fields as the service wrote them (bytes that are not UTF-8 shown lossily).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

fn unavailable(e: redis::RedisError) -> EngineError {
    EngineError::Unavailable(e.to_string())
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
        let mut conn = self.conn.clone();
        let mut infos = Vec::with_capacity(self.settings.streams.len());
        for stream in &self.settings.streams {
            let (length, dead_letters): (u64, u64) = redis::pipe()
                .cmd("XLEN")
                .arg(stream)
                .cmd("XLEN")
                .arg(dead_letter_stream(stream))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let groups: Value = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query_async(&mut conn)
                .await
            {
                Ok(v) => v,
                // No stream (yet): no group either.
                Err(e) if e.code() == Some("ERR") => Value::Nil,
                Err(e) => return Err(unavailable(e)),
            };
            let (pending, lag) = self.group_figures(&groups);
            infos.push(StreamInfo {
                stream: stream.clone(),
                length,
                pending,
                lag,
                dead_letters,
            });
        }
        Ok(infos)
    }

    /// Pending and lag of our group in an `XINFO GROUPS` answer.
    fn group_figures(&self, groups: &Value) -> (u64, Option<u64>) {
        let items: Vec<&Value> = match groups {
            Value::Array(items) | Value::Set(items) => items.iter().collect(),
            _ => Vec::new(),
        };
        for group in items {
            let fields = entry::pairs(group);
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| entry::text(k).as_deref() == Some(name))
                    .map(|(_, v)| *v)
            };
            if get("name").and_then(entry::text).as_deref() != Some(self.settings.group.as_str()) {
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

    /// The newest `limit` dead letters across every configured stream, newest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        let limit = limit.min(MAX_LIST);
        if limit == 0 {
            return Ok(Vec::new());
        }
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
    pub async fn replay(&self, ids: &[String]) -> Result<usize, EngineError> {
        let mut conn = self.conn.clone();
        let mut replayed = 0;
        for id in ids {
            let Some((stream, entry_id)) = self.locate(id) else {
                continue;
            };
            let dlq = dead_letter_stream(stream);
            let reply: Value = redis::cmd("XRANGE")
                .arg(&dlq)
                .arg(entry_id)
                .arg(entry_id)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let Some(fields) = entry::entries(&reply)
                .into_iter()
                .next()
                .and_then(|e| e.fields)
            else {
                continue;
            };
            let original = split_dead(&fields).original;
            if original.is_empty() {
                continue;
            }
            let mut invocation = REPLAY.key(&dlq);
            invocation.key(stream).arg(entry_id);
            for (name, value) in original {
                invocation.arg(name).arg(value);
            }
            let done: i64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if done == 1 {
                replayed += 1;
                log::info!(stream = stream, dead_letter = id.as_str(); "dead letter replayed");
            }
        }
        Ok(replayed)
    }

    /// Deletes one dead letter; `false` when there is no such dead letter.
    pub async fn delete(&self, id: &str) -> Result<bool, EngineError> {
        let Some((stream, entry_id)) = self.locate(id) else {
            return Ok(false);
        };
        let deleted: i64 = redis::cmd("XDEL")
            .arg(dead_letter_stream(stream))
            .arg(entry_id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::entry_id_shape;

    #[test]
    fn only_entry_ids_are_accepted() {
        assert!(entry_id_shape("1767225600000-0"));
        assert!(!entry_id_shape("1767225600000"));
        assert!(!entry_id_shape("+"));
        assert!(!entry_id_shape("1-x"));
        assert!(!entry_id_shape("-1"));
    }
}
