//! Decoders of the Redis engine's replies: script answers (positions, history pages, publish
//! outcomes) and presence entries as stored. Each turns a reply of the wrong shape into
//! `internal` (a fault, never a panic); none knows where the reply came from.

use std::sync::Arc;

use redis::Value;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::{EngineError, Published};
use crate::protocol::server::message;
use crate::protocol::{ClientInfo, Message, Position};

/// A presence entry as stored in Redis.
#[derive(Deserialize)]
pub(super) struct StoredClient {
    client: String,
    user: String,
    info: Option<Box<RawValue>>,
}

impl StoredClient {
    pub(super) fn parse(json: &str) -> Option<ClientInfo> {
        let s: StoredClient = serde_json::from_str(json).ok()?;
        Some(ClientInfo {
            client: s.client,
            user: s.user,
            info: s.info.map(Arc::from),
        })
    }
}

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(super) fn frames(v: &Value) -> Result<Vec<Message>, EngineError> {
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

pub(super) fn position(items: &[Value]) -> Result<Position, EngineError> {
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
pub(super) fn published(
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
pub(super) fn failed_step(answer: &Value) -> Option<String> {
    let Value::Array(parts) = answer else {
        return None;
    };
    (parts.first().and_then(int) == Some(-1))
        .then(|| parts.get(1).and_then(text).unwrap_or_default())
}
