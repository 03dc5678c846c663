//! Whether this node can reach Redis, as `/ready` reports it: the two signals it is made of
//! (the bridge's pub/sub link, and whether commands get answers), what a Redis error means for
//! them ([`Failure`]), and the probe that brings the commands' signal back once Redis answers
//! again. It knows nothing about what the commands were for.
//!
//! The commands' signal changes only when a command runs. A busy node runs many, but an idle
//! one runs only its heartbeat (every `HUB_NODE_HEARTBEAT_S`, 5 s by default), so after an
//! outage it would stay not ready, with the outage's last error as its reason, until its next
//! beat. While commands fail, the probe sends a `PING` at most [`PROBE_CAP`] apart instead, and
//! the first answer marks the node ready again (docs/scaling.md, "While Redis is away": back
//! within about 2 s).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use redis::{ErrorKind, ServerErrorKind};
use tokio::sync::Notify;

use super::RedisEngine;

/// The first probe after commands started failing; each next one waits twice as long.
const PROBE_FIRST: Duration = Duration::from_millis(100);

/// The longest wait between two probes while Redis is unreachable: how late, at most, an idle
/// node learns that Redis is back.
const PROBE_CAP: Duration = Duration::from_millis(500);

/// Whether this node can reach Redis, for `/ready`. Shared by the engine (commands), its
/// heartbeat and probe, and the bridge (the link).
#[derive(Debug, Default)]
pub struct Health {
    /// The bridge's pub/sub connection is up; set by the bridge alone.
    pub link_up: AtomicBool,
    /// The last command got an answer.
    commands_ok: AtomicBool,
    /// Why the last command failed, for `/ready`'s reason.
    last_error: Mutex<String>,
    /// Heartbeats this node published on the control topic so far (counted by the heartbeat
    /// task): the bridge expects each to come back over its link, and replaces a link that
    /// stopped delivering them.
    beats: AtomicU64,
    /// Woken when a command fails, so that the probe starts; it holds a permit if the probe is
    /// busy, so no failure goes unprobed.
    commands_failed: Notify,
}

impl Health {
    /// Redis answered a command (an error reply included).
    pub(super) fn ok(&self) {
        self.commands_ok.store(true, Ordering::Release);
    }

    pub(super) fn beat_published(&self) {
        self.beats.fetch_add(1, Ordering::AcqRel);
    }

    /// How many heartbeats this node has published on the control topic.
    pub fn beats_published(&self) -> u64 {
        self.beats.load(Ordering::Acquire)
    }

    /// A command found Redis unreachable.
    pub(super) fn failed(&self, e: &redis::RedisError) {
        self.commands_ok.store(false, Ordering::Release);
        if let Ok(mut last) = self.last_error.lock() {
            *last = e.to_string();
        }
        self.commands_failed.notify_one();
    }

    fn commands_ok(&self) -> bool {
        self.commands_ok.load(Ordering::Acquire)
    }

    /// `Ok` when the node is ready; otherwise the reason `/ready` gives.
    pub fn check(&self) -> Result<(), String> {
        if !self.link_up.load(Ordering::Acquire) {
            return Err("redis unreachable: the pub/sub link is down".to_owned());
        }
        if !self.commands_ok() {
            let last = self
                .last_error
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            return Err(format!("redis unreachable: {last}"));
        }
        Ok(())
    }
}

/// What a Redis error means for the caller and for `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Redis cannot be reached now: the connection failed, timed out or dropped, or the server
    /// is loading its data, busy with a script or failing over. Retrying later may work; the
    /// node is not ready meanwhile; callers hear `unavailable`.
    Unreachable,
    /// Redis answered but takes no writes now (out of memory under `noeviction`). Retrying
    /// later may work; callers hear `unavailable`, but the node stays ready: reads still work,
    /// and every node would be taken out of its load balancer at once.
    Full,
    /// Redis refused the command itself (a key of the wrong type, a script error): a fault
    /// that retrying will not fix, answered `internal`.
    Refused,
}

pub(super) fn classify(e: &redis::RedisError) -> Failure {
    let unreachable = e.is_io_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
            ) | ErrorKind::ClusterConnectionNotFound
        )
        || e.code() == Some("BUSY");
    if unreachable {
        return Failure::Unreachable;
    }
    // A pipeline's error carries each failed command's own.
    let out_of_memory = e.code() == Some("OOM")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, err)| err.code() == "OOM"));
    if out_of_memory {
        Failure::Full
    } else {
        Failure::Refused
    }
}

/// While commands fail, `PING`s Redis over the engine's command link with backoff capped at
/// [`PROBE_CAP`], until one is answered (which marks commands answered again, and leaves the
/// link connected for the next request). Ends with the engine.
pub(super) async fn probe(engine: Weak<RedisEngine>) {
    loop {
        let Some(health) = engine.upgrade().map(|e| std::sync::Arc::clone(&e.health)) else {
            return;
        };
        // Woken by a failure; now and then regardless, only to notice that the engine is gone.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), health.commands_failed.notified()).await;
        drop(health);
        let mut delay = PROBE_FIRST;
        loop {
            // The command that failed has just found Redis away: wait before asking again.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(PROBE_CAP);
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if engine.health.commands_ok() {
                break;
            }
            let mut conn = engine.conn();
            // Through `answered`, as any command: an answer marks the node ready, a failure
            // refreshes the reason `/ready` gives.
            let ping = redis::cmd("PING").query_async::<()>(&mut conn).await;
            if engine.answered(ping).await.is_ok() {
                break;
            }
        }
    }
}
