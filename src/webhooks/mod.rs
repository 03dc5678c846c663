//! Webhook delivery of lifecycle events (contract §6): one queue per configured URL, each
//! delivered in order by one sender, in signed batches of at most 100 events, retried with
//! backoff, and set aside as dead letters after the last attempt. Owns the queues (in this
//! process with the memory engine, in Redis with the Redis engine), their senders, and the
//! webhook dead letters. Knows nothing about how events are decided: they arrive as the JSON
//! text of [`crate::lifecycle::Event`]s, pushed here (memory) or pushed onto the Redis lists by
//! the lifecycle scripts (Redis).
//!
//! - [`batch`]: batches, their body, the retry schedule.
//! - [`sign`]: the `X-Hub-Signature`.
//! - `send`: one request and what its result means for the batch.
//! - `memory`, `redis`: the two stores and their delivery loops.

pub mod batch;
mod memory;
mod redis;
mod send;
pub mod sign;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::WebhookConfig;
use crate::deadletters::{DeadLetter, DeadLetterSource};
use crate::engine::redis::Keys;
use crate::engine::EngineError;
use crate::metrics::Metrics;
use memory::MemoryStore;
use redis::RedisStore;
use send::Sender;

/// How long [`Webhooks::stop`] waits for a delivery task to end before aborting it. Tasks
/// leave at their next await point; only a Redis command already sent (its own reply timeout
/// bounds it) and the lock's release can hold one up.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// The webhook service of one node: the queues of every configured URL and their senders.
pub struct Webhooks {
    store: Store,
    /// `hub_webhook_queue_events`: what [`Webhooks::settle`] waits on.
    queued: Gauge,
    /// Set once by [`Webhooks::stop`]; every delivery task watches it at each await point.
    shutdown: watch::Sender<bool>,
    /// The delivery tasks [`Webhooks::start`] spawned; taken and awaited by `stop`.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Where the queues live.
enum Store {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

/// What both stores share: the URLs, the sender, the metrics and the queue gauge.
struct Context {
    /// The configured URLs, in order; a URL's index names its queue internally.
    urls: Vec<String>,
    sender: Sender,
    metrics: Arc<Metrics>,
    gauge: QueueGauge,
}

impl Context {
    fn new(config: &WebhookConfig, metrics: Arc<Metrics>) -> Result<Context, String> {
        // A URL named twice gets one queue: with Redis, two senders of one node would share
        // its lock's owner value, both believe they hold it, and trim each other's batches.
        let mut urls: Vec<String> = Vec::with_capacity(config.urls.len());
        for url in &config.urls {
            if urls.contains(url) {
                tracing::warn!(url = %batch::redacted(url), "webhook URL listed twice: it gets one queue");
            } else {
                urls.push(url.clone());
            }
        }
        Ok(Context {
            gauge: QueueGauge::new(urls.len(), metrics.webhook_queue_events.clone()),
            urls,
            sender: Sender::new(
                config.secret.clone(),
                config.timeout,
                config.max_attempts,
                metrics.clone(),
            )?,
            metrics,
        })
    }

    /// The configured URL whose redacted form (as dead letters keep it) is `shown`.
    fn url_index(&self, shown: &str) -> Option<usize> {
        self.urls.iter().position(|u| batch::redacted(u) == shown)
    }
}

/// `hub_webhook_queue_events`: each URL's waiting events (in-flight batches included), summed.
struct QueueGauge {
    per_url: Vec<AtomicI64>,
    gauge: Gauge,
}

impl QueueGauge {
    fn new(urls: usize, gauge: Gauge) -> QueueGauge {
        QueueGauge {
            per_url: (0..urls).map(|_| AtomicI64::new(0)).collect(),
            gauge,
        }
    }

    fn set(&self, url: usize, events: usize) {
        if let Some(slot) = self.per_url.get(url) {
            slot.store(i64::try_from(events).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
        let total = self
            .per_url
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .fold(0i64, i64::saturating_add);
        self.gauge.set(total);
    }
}

impl Webhooks {
    /// Memory engine: queues live in this process, bounded by `config.queue_events` per URL;
    /// overflow drops the OLDEST events, counted in `metrics.webhook_dropped`. A batch being
    /// delivered (at most 100 events) is held apart from its queue and does not count against
    /// the bound. Dead letters are kept in memory too, the newest 10,000.
    pub fn memory(config: WebhookConfig, metrics: Arc<Metrics>) -> Result<Arc<Webhooks>, String> {
        let queued = metrics.webhook_queue_events.clone();
        let context = Arc::new(Context::new(&config, metrics)?);
        Ok(Webhooks::with_store(
            Store::Memory(Arc::new(MemoryStore::new(context, config.queue_events))),
            queued,
        ))
    }

    /// Redis engine: queues live in Redis (lists `keys.webhook_queue(url)`), so a batch
    /// survives the node that made it; any node delivers. One node at a time sends to each
    /// URL (the lock `keys.webhook_lock(url)`, owned by `node_id` plus a random token); the
    /// batch in flight is recorded in `keys.webhook_batch(url)` before its first attempt, so
    /// the node that takes over sends the same batch with the same delivery id. Dead letters
    /// are the stream `keys.webhook_dlq()`. Connects lazily: Redis may be down at start.
    pub fn redis(
        config: WebhookConfig,
        client: &::redis::Client,
        keys: Keys,
        node_id: String,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Webhooks>, String> {
        let queued = metrics.webhook_queue_events.clone();
        let context = Arc::new(Context::new(&config, metrics)?);
        let store = RedisStore::new(context, client, keys, &node_id, config.timeout)?;
        Ok(Webhooks::with_store(Store::Redis(Arc::new(store)), queued))
    }

    fn with_store(store: Store, queued: Gauge) -> Arc<Webhooks> {
        Arc::new(Webhooks {
            store,
            queued,
            shutdown: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Memory engine: waits until every queue is delivered (or dead-lettered), at most until
    /// `until`; the shutdown calls it before [`Webhooks::stop`], which counts what is left as
    /// lost. With Redis it returns at once: the queues outlive the node.
    pub async fn settle(&self, until: std::time::Instant) {
        if matches!(self.store, Store::Redis(_)) {
            return;
        }
        while self.queued.get() > 0 && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Memory engine only: appends events (each the JSON text of one lifecycle event) to
    /// every URL's queue, in order, waking its sender. With the Redis engine this does
    /// nothing: the lifecycle scripts RPUSH the same JSON text onto every
    /// `keys.webhook_queue(url)` list themselves, atomically with their decision.
    pub fn push(&self, events: &[String]) {
        match &self.store {
            Store::Memory(store) => store.push(events),
            Store::Redis(_) => {}
        }
    }

    /// Starts one delivery task per URL (`tokio::spawn`). Must be called inside the actix
    /// system / tokio runtime. A second call does nothing; after [`Webhooks::stop`] the tasks
    /// would end at once.
    pub fn start(self: &Arc<Self>) {
        let mut tasks = lock(&self.tasks);
        if !tasks.is_empty() {
            return;
        }
        let urls = match &self.store {
            Store::Memory(store) => store.urls(),
            Store::Redis(store) => store.urls(),
        };
        for url in 0..urls {
            let shutdown = self.shutdown.subscribe();
            tasks.push(match &self.store {
                Store::Memory(store) => tokio::spawn(store.clone().run(url, shutdown)),
                Store::Redis(store) => tokio::spawn(store.clone().run(url, shutdown)),
            });
        }
    }

    /// Stops the tasks (a batch in flight is abandoned between attempts or mid-request).
    /// Memory engine: whatever is still queued, that batch included, is counted in
    /// `metrics.webhook_lost` and logged (one line, with the count). Redis engine: the queues
    /// stay in Redis and the locks are released, so another node carries on at once.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for mut task in tasks {
            if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
                task.abort();
            }
        }
        if let Store::Memory(store) = &self.store {
            store.count_lost();
        }
    }
}

/// The memory engine's emitter hands its events here.
impl crate::lifecycle::Sink for Webhooks {
    fn push(&self, events: &[String]) {
        Webhooks::push(self, events);
    }
}

/// The webhook dead letters: `<prefix>:webhooks:dlq/<entry id>` (Redis) or
/// `webhooks:dlq/<n>` (memory), one per event, `fields` `{"event", "url"}` (the URL with any
/// password redacted). A replay puts the events at the end of their URL's queue, so they go
/// out in a new batch with a new `X-Hub-Delivery`.
#[async_trait]
impl DeadLetterSource for Webhooks {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        match &self.store {
            Store::Memory(store) => Ok(store.list(limit)),
            Store::Redis(store) => store.list(limit).await,
        }
    }

    async fn replay(&self, ids: &[String]) -> Result<usize, EngineError> {
        match &self.store {
            Store::Memory(store) => Ok(store.replay(ids)),
            Store::Redis(store) => store.replay(ids).await,
        }
    }

    async fn delete(&self, id: &str) -> Result<bool, EngineError> {
        match &self.store {
            Store::Memory(store) => Ok(store.delete(id)),
            Store::Redis(store) => store.delete(id).await,
        }
    }
}

/// Resolves once [`Webhooks::stop`] was called (or the service is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A mutex whose holder panicked still guards consistent data here (each critical section
/// is a few plain assignments), so its poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
