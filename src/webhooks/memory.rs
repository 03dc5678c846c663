//! The memory engine's webhook queues: per URL a `VecDeque` of event texts behind a mutex and
//! a `Notify` that wakes its sender, bounded (the oldest events dropped, and counted, when
//! full); and the dead letters, in memory as well (the newest [`MAX_DEAD`]). All of it lives
//! and dies with this process: what is still queued at stop is counted as lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use super::batch::{self, event_id, Batch};
use super::send::Outcome;
use super::{lock, stopped, Context};
use crate::deadletters::DeadLetter;

/// The dead-letter queue's name: `stream` of each dead letter, and its ids' prefix.
pub const DLQ: &str = "webhooks:dlq";

/// Most dead letters kept; beyond it the oldest are dropped (and counted as dropped).
pub const MAX_DEAD: usize = 10_000;

pub struct MemoryStore {
    context: Arc<Context>,
    /// Events each queue holds at most (`HUB_WEBHOOK_QUEUE`).
    capacity: usize,
    /// One per URL, in the order of the URLs.
    queues: Vec<UrlQueue>,
    dead: Mutex<DeadList>,
}

struct UrlQueue {
    state: Mutex<QueueState>,
    /// Woken by `push` and `replay`; waited on by this URL's sender only, so one stored
    /// permit is enough for a push that comes while the sender is busy.
    wake: Notify,
}

#[derive(Default)]
struct QueueState {
    /// Events not yet in a batch, oldest first.
    waiting: VecDeque<String>,
    /// Events of the batch being delivered (taken off `waiting`): lost if the process stops
    /// before it succeeds or is dead-lettered.
    in_flight: usize,
    /// Dropping events now: the overflow is logged when it begins, not for every push.
    overflowing: bool,
}

impl QueueState {
    /// Appends `events`, dropping the oldest waiting ones beyond `capacity`; returns how many
    /// were dropped.
    fn append<'a>(&mut self, events: impl IntoIterator<Item = &'a String>, capacity: usize) -> u64 {
        let capacity = capacity.max(1);
        let mut dropped = 0;
        for event in events {
            if self.waiting.len() >= capacity {
                self.waiting.pop_front();
                dropped += 1;
            }
            self.waiting.push_back(event.clone());
        }
        dropped
    }

    fn events(&self) -> usize {
        self.waiting.len() + self.in_flight
    }
}

#[derive(Default)]
struct DeadList {
    /// The number the next dead letter gets (`webhooks:dlq/<n>`); never reused.
    next: u64,
    /// Oldest first.
    entries: VecDeque<Dead>,
}

struct Dead {
    n: u64,
    url: usize,
    event: String,
    original_id: String,
    reason: String,
    deliveries: u64,
    failed_at: u64,
}

impl MemoryStore {
    pub fn new(context: Arc<Context>, capacity: usize) -> MemoryStore {
        let queues = (0..context.urls.len())
            .map(|_| UrlQueue {
                state: Mutex::new(QueueState::default()),
                wake: Notify::new(),
            })
            .collect();
        MemoryStore {
            context,
            capacity,
            queues,
            dead: Mutex::new(DeadList::default()),
        }
    }

    pub fn urls(&self) -> usize {
        self.queues.len()
    }

    pub fn push(&self, events: &[String]) {
        if events.is_empty() {
            return;
        }
        for url in 0..self.queues.len() {
            self.append(url, events.iter());
        }
    }

    /// Appends to one URL's queue, counting and logging what overflows, and wakes its sender.
    fn append<'a>(&self, url: usize, events: impl IntoIterator<Item = &'a String>) {
        let Some(queue) = self.queues.get(url) else {
            return;
        };
        let (dropped, began, now) = {
            let mut state = lock(&queue.state);
            let dropped = state.append(events, self.capacity);
            let began = dropped > 0 && !state.overflowing;
            state.overflowing = dropped > 0;
            (dropped, began, state.events())
        };
        self.context.gauge.set(url, now);
        if dropped > 0 {
            self.context.metrics.webhook_dropped.inc_by(dropped);
            if began {
                tracing::warn!(
                    url = %batch::redacted(&self.context.urls[url]),
                    capacity = self.capacity,
                    dropped,
                    "webhook queue full: dropping its oldest events (counted in hub_webhook_dropped_total)"
                );
            }
        }
        queue.wake.notify_one();
    }

    /// The delivery loop of URL number `url`: a batch at a time, each until it is delivered
    /// or dead-lettered, until stopped.
    pub async fn run(self: Arc<Self>, url: usize, mut shutdown: watch::Receiver<bool>) {
        let context = self.context.clone();
        let Some(target) = context.urls.get(url) else {
            return;
        };
        let sender = &context.sender;
        while let Some(events) = self.next_batch(url, &mut shutdown).await {
            let batch = Batch::new(events);
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result = tokio::select! {
                    biased;
                    () = stopped(&mut shutdown) => return,
                    result = sender.attempt(target, &batch) => result,
                };
                match sender.judge(target, &batch, attempt, result) {
                    Outcome::Delivered => break,
                    Outcome::Retry { after, .. } => tokio::select! {
                        biased;
                        () = stopped(&mut shutdown) => return,
                        () = tokio::time::sleep(after) => {}
                    },
                    Outcome::GiveUp { reason } => {
                        self.dead_letter(url, &batch, &reason, attempt);
                        break;
                    }
                }
            }
            let now = {
                let mut state = lock(&self.queues[url].state);
                state.in_flight = 0;
                state.events()
            };
            context.gauge.set(url, now);
        }
    }

    /// The next batch of URL number `url`, waiting for events; `None` once stopped.
    async fn next_batch(
        &self,
        url: usize,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Vec<String>> {
        let queue = self.queues.get(url)?;
        loop {
            {
                let mut state = lock(&queue.state);
                if !state.waiting.is_empty() {
                    let events = batch::take(&mut state.waiting);
                    state.in_flight = events.len();
                    if state.waiting.is_empty() {
                        state.overflowing = false;
                    }
                    return Some(events);
                }
            }
            tokio::select! {
                biased;
                () = stopped(shutdown) => return None,
                () = queue.wake.notified() => {}
            }
        }
    }

    /// Sets the events of `batch` aside, one dead letter each.
    fn dead_letter(&self, url: usize, batch: &Batch, reason: &str, attempts: u32) {
        let failed_at = crate::clock::unix_millis();
        let mut dropped = 0;
        {
            let mut dead = lock(&self.dead);
            for event in &batch.events {
                let n = dead.next;
                dead.next += 1;
                dead.entries.push_back(Dead {
                    n,
                    url,
                    event: event.clone(),
                    original_id: event_id(event),
                    reason: reason.to_owned(),
                    deliveries: u64::from(attempts),
                    failed_at,
                });
                if dead.entries.len() > MAX_DEAD {
                    dead.entries.pop_front();
                    dropped += 1;
                }
            }
        }
        let metrics = &self.context.metrics;
        metrics.webhook_dead.inc_by(batch.events.len() as u64);
        if dropped > 0 {
            metrics.webhook_dropped.inc_by(dropped);
            tracing::warn!(
                dropped,
                kept = MAX_DEAD,
                "webhook dead letters full: the oldest were dropped (counted in hub_webhook_dropped_total)"
            );
        }
    }

    /// The newest `limit` dead letters, newest first.
    pub fn list(&self, limit: usize) -> Vec<DeadLetter> {
        let dead = lock(&self.dead);
        dead.entries
            .iter()
            .rev()
            .take(limit)
            .map(|d| {
                let mut fields = serde_json::Map::new();
                fields.insert("event".into(), d.event.clone().into());
                fields.insert(
                    "url".into(),
                    batch::redacted(&self.context.urls[d.url]).into(),
                );
                DeadLetter {
                    id: format!("{DLQ}/{}", d.n),
                    stream: DLQ.to_owned(),
                    original_id: d.original_id.clone(),
                    reason: d.reason.clone(),
                    deliveries: d.deliveries,
                    failed_at: d.failed_at,
                    fields,
                }
            })
            .collect()
    }

    /// Puts the events of those `ids` that are ours back at the end of their URL's queue, in
    /// the order asked, and forgets them; returns how many.
    pub fn replay(&self, ids: &[String]) -> usize {
        let mut replayed = 0;
        for id in ids {
            // Taken out under the lock, so a second replay of the same id finds nothing.
            let Some(dead) = self.take(id) else {
                continue;
            };
            self.append(dead.url, std::iter::once(&dead.event));
            replayed += 1;
            tracing::info!(dead_letter = id.as_str(), "webhook dead letter replayed");
        }
        replayed
    }

    pub fn delete(&self, id: &str) -> bool {
        self.take(id).is_some()
    }

    fn take(&self, id: &str) -> Option<Dead> {
        let n: u64 = id.strip_prefix(DLQ)?.strip_prefix('/')?.parse().ok()?;
        let mut dead = lock(&self.dead);
        let at = dead.entries.iter().position(|d| d.n == n)?;
        dead.entries.remove(at)
    }

    /// Counts (and empties) what is still queued, as lost: called once the senders stopped.
    pub fn count_lost(&self) {
        let mut lost = 0;
        for (url, queue) in self.queues.iter().enumerate() {
            let mut state = lock(&queue.state);
            lost += state.events() as u64;
            *state = QueueState::default();
            drop(state);
            self.context.gauge.set(url, 0);
        }
        self.context.metrics.webhook_lost.inc_by(lost);
        if lost > 0 {
            tracing::error!(
                events = lost,
                "webhook queues stopped with events undelivered: lost (counted in hub_webhook_lost_total)"
            );
        } else {
            tracing::info!(events = 0, "webhook queues stopped empty");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::WebhookConfig;
    use crate::metrics::Metrics;
    use crate::webhooks::Webhooks;

    fn events(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!(r#"{{"id":"e{i}"}}"#)).collect()
    }

    fn config(urls: &[&str], queue_events: usize) -> WebhookConfig {
        WebhookConfig {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            secret: b"s".to_vec(),
            timeout: Duration::from_secs(1),
            max_attempts: 2,
            queue_events,
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_events() {
        let mut state = QueueState::default();
        let dropped = state.append(&events(0..7), 5);
        assert_eq!(dropped, 2);
        let ids: Vec<&str> = state.waiting.iter().map(String::as_str).collect();
        assert_eq!(ids, events(2..7));
    }

    #[test]
    fn overflow_is_counted_per_url_and_the_gauge_shows_what_waits() {
        let metrics = Metrics::new();
        let hooks = Webhooks::memory(
            config(&["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"], 3),
            metrics.clone(),
        )
        .expect("a webhook service");
        hooks.push(&events(0..2));
        hooks.push(&events(2..5));
        // Each URL keeps e2..e4 and dropped e0, e1.
        assert_eq!(metrics.webhook_dropped.get(), 4);
        assert_eq!(metrics.webhook_queue_events.get(), 6);
    }

    #[test]
    fn a_url_listed_twice_gets_one_queue() {
        let metrics = Metrics::new();
        let hooks = Webhooks::memory(
            config(&["http://127.0.0.1:9/a", "http://127.0.0.1:9/a"], 10),
            metrics.clone(),
        )
        .expect("a webhook service");
        hooks.push(&events(0..2));
        assert_eq!(metrics.webhook_queue_events.get(), 2);
    }

    #[test]
    fn the_dead_letters_keep_the_newest_and_count_what_they_drop() {
        let metrics = Metrics::new();
        let hooks = Webhooks::memory(config(&["http://127.0.0.1:9/a"], 10), metrics.clone())
            .expect("a webhook service");
        let super::super::Store::Memory(store) = &hooks.store else {
            unreachable!("a memory service has a memory store")
        };
        let batch = Batch::new(events(0..100));
        for _ in 0..=MAX_DEAD / 100 {
            store.dead_letter(0, &batch, "HTTP 500", 1);
        }
        assert_eq!(metrics.webhook_dead.get(), MAX_DEAD as u64 + 100);
        assert_eq!(metrics.webhook_dropped.get(), 100);
        let newest = store.list(MAX_DEAD + 1);
        assert_eq!(newest.len(), MAX_DEAD);
        assert_eq!(newest[0].id, format!("webhooks:dlq/{}", MAX_DEAD + 99));
        assert_eq!(newest[MAX_DEAD - 1].id, "webhooks:dlq/100");
    }

    #[test]
    fn dead_letters_are_listed_newest_first_and_replayed_once() {
        let metrics = Metrics::new();
        let hooks = Webhooks::memory(config(&["http://u:pw@127.0.0.1:9/a"], 10), metrics.clone())
            .expect("a webhook service");
        let super::super::Store::Memory(store) = &hooks.store else {
            unreachable!("a memory service has a memory store")
        };
        let batch = Batch::new(events(0..3));
        store.dead_letter(0, &batch, "HTTP 500", 2);
        assert_eq!(metrics.webhook_dead.get(), 3);
        let listed = store.list(10);
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].id, "webhooks:dlq/2");
        assert_eq!(listed[0].original_id, "e2");
        assert_eq!(listed[0].stream, "webhooks:dlq");
        assert_eq!(listed[0].fields["url"], "http://u:redacted@127.0.0.1:9/a");
        assert_eq!(listed[0].fields["event"], r#"{"id":"e2"}"#);
        assert_eq!(listed[0].deliveries, 2);
        let ids = vec!["webhooks:dlq/0".to_owned(), "webhooks:dlq/0".to_owned()];
        assert_eq!(store.replay(&ids), 1);
        assert_eq!(store.list(10).len(), 2);
        assert!(store.delete("webhooks:dlq/1"));
        assert!(!store.delete("webhooks:dlq/1"));
        assert!(!store.delete("streams:dlq/2"));
        let waiting: Vec<String> = lock(&store.queues[0].state)
            .waiting
            .iter()
            .cloned()
            .collect();
        assert_eq!(waiting, events(0..1));
    }
}
