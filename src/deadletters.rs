//! Dead letters from every source, behind one interface: what could not be delivered and was
//! set aside with its reason rather than dropped (docs/protocol.md §6.9). Each source (the
//! Streams ingestion, the webhook queues, the outbox) owns its dead letters' ids and storage;
//! [`DeadLetters`] lists them together and sends each replay or delete to every source, each
//! acting only on the ids it owns.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::engine::EngineError;

/// Most dead letters one listing returns.
pub const MAX_LIST: usize = 1000;

/// One dead letter, as `/api/deadletters` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Unique across sources: each source's ids start with its own prefix.
    pub id: String,
    /// Where it came from: a stream, the webhook dead-letter queue, the outbox table.
    pub stream: String,
    pub original_id: String,
    pub reason: String,
    pub deliveries: u64,
    /// Unix ms.
    pub failed_at: u64,
    /// What was to be delivered, as text (bytes that are not UTF-8 shown lossily).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// One kind of dead letters.
#[async_trait]
pub trait DeadLetterSource: Send + Sync + 'static {
    /// Its newest `limit` dead letters, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError>;

    /// Replays those of `ids` it owns (each at most once, however often asked), skipping the
    /// rest; returns how many it replayed.
    async fn replay(&self, ids: &[String]) -> Result<usize, EngineError>;

    /// Deletes the dead letter `id`; `false` when it owns no such id.
    async fn delete(&self, id: &str) -> Result<bool, EngineError>;
}

/// Every dead-letter source this node has; none with the memory engine and no webhooks.
#[derive(Default, Clone)]
pub struct DeadLetters {
    sources: Vec<Arc<dyn DeadLetterSource>>,
}

impl DeadLetters {
    pub fn add(&mut self, source: Arc<dyn DeadLetterSource>) {
        self.sources.push(source);
    }

    /// The newest `limit` (at most [`MAX_LIST`]) across every source, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        let limit = limit.min(MAX_LIST);
        let mut all = Vec::new();
        if limit == 0 {
            return Ok(all);
        }
        for source in &self.sources {
            all.extend(source.list(limit).await?);
        }
        // Stable: within one source its own order (newest first) stands.
        all.sort_by_key(|d| std::cmp::Reverse(d.failed_at));
        all.truncate(limit);
        Ok(all)
    }

    pub async fn replay(&self, ids: &[String]) -> Result<usize, EngineError> {
        let mut replayed = 0;
        for source in &self.sources {
            replayed += source.replay(ids).await?;
        }
        Ok(replayed)
    }

    pub async fn delete(&self, id: &str) -> Result<bool, EngineError> {
        for source in &self.sources {
            if source.delete(id).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
