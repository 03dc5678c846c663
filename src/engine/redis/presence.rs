//! What this node holds in Redis and must keep renewing (its presence entries and connection
//! slots, kept here as well so that the heartbeat can re-assert them), and the ordered writer
//! of the writes nobody waits for: joins, leaves, slot releases and control messages. Reads
//! and slot acquisitions are ordinary commands of the engine; the renewal is the heartbeat's
//! ([`super::cluster`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::health::{classify, Failure};
use super::lifecycle::{Holding, LifecycleOp};
use super::RedisEngine;
use crate::engine::EngineError;
use crate::lifecycle::{Reason, Subject};
use crate::protocol::{ClientInfo, ServerFrame};

/// A presence entry of this node, re-asserted at every heartbeat.
pub(super) struct LocalPresence {
    pub(super) info: ClientInfo,
    pub(super) announce: bool,
}

/// What this node holds in Redis and must keep renewing.
#[derive(Default)]
pub(super) struct Local {
    /// channel → client → entry.
    pub(super) presence: HashMap<String, HashMap<String, LocalPresence>>,
    /// client → user, for every connection slot held.
    pub(super) slots: HashMap<String, String>,
    /// `<subject>\t<client>` → what of it the heartbeat may need to write back (lifecycle
    /// events only).
    pub(super) holdings: HashMap<String, Holding>,
}

/// Most fire-and-forget writes waiting at once. Past it a `join` fails at once (`unavailable`)
/// and other writes are dropped: the heartbeat re-asserts every entry this node still holds,
/// and the leases of those it let go expire by themselves.
pub(super) const OPS_QUEUE: usize = 65_536;

/// How long the writer waits before trying again while Redis is unreachable, at most.
const OPS_RETRY_CAP: Duration = Duration::from_millis(500);

/// A write and when it was made: it is worth applying for one lease from then, no longer.
pub(super) struct Queued {
    op: Op,
    made: Instant,
}

/// Writes nobody waits for, applied in the order they were made.
pub(super) enum Op {
    Join {
        channel: String,
        client: String,
        entry: String,
        announce: bool,
        frame: Option<String>,
        /// Told once the entry is written (or the write was given up).
        ack: Option<oneshot::Sender<Result<(), EngineError>>>,
    },
    Leave {
        channel: String,
        client: String,
        announce: bool,
        frame: Option<String>,
    },
    Release {
        user: String,
        client: String,
    },
    Control(String),
    Lifecycle(LifecycleOp),
    /// Writes nothing: told once every write queued before it is done.
    Flush(oneshot::Sender<()>),
}

impl RedisEngine {
    pub(super) fn lock(&self) -> MutexGuard<'_, Local> {
        self.local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds `client`'s presence entry in `channel` (renewed from now on) and queues its
    /// write; the future tells once it is written.
    pub(super) fn join_presence(
        &self,
        channel: &str,
        client: ClientInfo,
        announce: bool,
    ) -> BoxFuture<'static, Result<(), EngineError>> {
        let entry = serde_json::to_string(&client).unwrap_or_default();
        let frame = announce.then(|| {
            ServerFrame::Join {
                channel,
                client: &client,
            }
            .encode()
            .to_string()
        });
        let id = client.client.clone();
        let (user, info) = (client.user.clone(), client.info.clone());
        self.lock()
            .presence
            .entry(channel.to_owned())
            .or_default()
            .insert(
                id.clone(),
                LocalPresence {
                    info: client,
                    announce,
                },
            );
        let (ack, done) = oneshot::channel();
        let queued = self.enqueue(Op::Join {
            channel: channel.to_owned(),
            client: id.clone(),
            entry,
            announce,
            frame,
            ack: Some(ack),
        });
        self.hold(Subject::Channel(channel.to_owned()), &id, None);
        if announce {
            let member = Subject::Member {
                channel: channel.to_owned(),
                user: user.clone(),
            };
            self.hold(member, &id, info.as_ref().map(|i| i.get()));
        }
        Box::pin(async move {
            if !queued {
                // The heartbeat writes the entry (it is in `local`), without the `join` push.
                return Err(EngineError::Unavailable(
                    "too many presence writes waiting".into(),
                ));
            }
            done.await
                .unwrap_or_else(|_| Err(EngineError::Unavailable("the engine is stopping".into())))
        })
    }

    /// Lets go of `client`'s presence entry in `channel`, if this node holds it, and queues
    /// its removal.
    pub(super) fn leave_presence(
        &self,
        channel: &str,
        client: &str,
        announce: bool,
        reason: Reason,
    ) {
        let removed = {
            let mut local = self.lock();
            let removed = local
                .presence
                .get_mut(channel)
                .and_then(|c| c.remove(client));
            if local.presence.get(channel).is_some_and(HashMap::is_empty) {
                local.presence.remove(channel);
            }
            removed
        };
        let Some(entry) = removed else {
            return;
        };
        self.unhold(Subject::Channel(channel.to_owned()), client, reason);
        self.unhold(
            Subject::Member {
                channel: channel.to_owned(),
                user: entry.info.user.clone(),
            },
            client,
            reason,
        );
        let frame = announce.then(|| {
            ServerFrame::Leave {
                channel,
                client: &entry.info,
            }
            .encode()
            .to_string()
        });
        self.enqueue(Op::Leave {
            channel: channel.to_owned(),
            client: client.to_owned(),
            announce: entry.announce,
            frame,
        });
    }

    /// Lets go of `client`'s connection slot, if this node holds it, and queues its removal.
    pub(super) fn release_slot(&self, user: &str, client: &str, reason: Reason) {
        self.unhold(Subject::User(user.to_owned()), client, reason);
        if self.lock().slots.remove(client).is_some() {
            self.enqueue(Op::Release {
                user: user.to_owned(),
                client: client.to_owned(),
            });
        }
    }

    /// Resolves once every write queued before it was applied or given up.
    pub(super) fn flush_ops(&self) -> BoxFuture<'static, ()> {
        let (done, flushed) = oneshot::channel();
        self.enqueue(Op::Flush(done));
        Box::pin(async move {
            let _ = flushed.await;
        })
    }

    /// Queues a fire-and-forget write; `false` when the queue is full (the write is dropped).
    pub(super) fn enqueue(&self, op: Op) -> bool {
        let queued = Queued {
            op,
            made: Instant::now(),
        };
        match self.ops.try_send(queued) {
            Ok(()) => {
                self.ops_full.store(false, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.ops_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        queued = OPS_QUEUE,
                        "presence and slot writes are not keeping up: dropping new ones"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Applies one fire-and-forget write.
    async fn apply(&self, op: &Op) -> redis::RedisResult<()> {
        let mut conn = self.conn();
        let lease_ms = self.settings.lease().as_millis() as u64;
        match op {
            Op::Join {
                channel,
                client,
                entry,
                announce,
                frame,
                ..
            } => {
                let mut pipe = redis::pipe();
                pipe.hset(self.keys.presence(channel), client, entry)
                    .ignore()
                    .zadd(
                        self.keys.presence_leases(channel),
                        client,
                        self.lease_expiry(),
                    )
                    .ignore()
                    .pexpire(self.keys.presence(channel), lease_ms as i64)
                    .ignore()
                    .pexpire(self.keys.presence_leases(channel), lease_ms as i64)
                    .ignore()
                    .sadd(
                        self.keys.node_presence(&self.settings.node_id),
                        presence_member(*announce, channel, client),
                    )
                    .ignore();
                if let Some(frame) = frame {
                    pipe.publish(self.keys.topic(channel), frame).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            }
            Op::Leave {
                channel,
                client,
                announce,
                frame,
            } => {
                self.scripts
                    .leave
                    .key(self.keys.presence(channel))
                    .key(self.keys.presence_leases(channel))
                    .arg(client)
                    .arg(self.keys.topic(channel))
                    .arg(frame.as_deref().unwrap_or(""))
                    .invoke_async::<i64>(&mut conn)
                    .await?;
                redis::cmd("SREM")
                    .arg(self.keys.node_presence(&self.settings.node_id))
                    .arg(presence_member(*announce, channel, client))
                    .query_async::<()>(&mut conn)
                    .await
            }
            Op::Release { user, client } => {
                redis::cmd("ZREM")
                    .arg(self.keys.connections(user))
                    .arg(client)
                    .query_async::<()>(&mut conn)
                    .await
            }
            Op::Control(message) => {
                redis::cmd("PUBLISH")
                    .arg(self.keys.control())
                    .arg(message)
                    .query_async::<()>(&mut conn)
                    .await
            }
            Op::Lifecycle(op) => self.apply_lifecycle(op).await,
            Op::Flush(_) => Ok(()),
        }
    }
}

/// `<announce>\n<channel>\n<client>`: what a node's presence set records of each entry.
pub(super) fn presence_member(announce: bool, channel: &str, client: &str) -> String {
    format!("{}\n{channel}\n{client}", u8::from(announce))
}

/// The ordered writer of fire-and-forget operations. Each write is worth applying for one
/// lease after it was made (after that the heartbeat's re-assertion or lease expiry has settled
/// the state anyway): while Redis is unreachable the writer retries the oldest write with
/// backoff, and a write whose lease has passed is dropped without another try, so after an
/// outage of any length the backlog is at most one lease old (the same holds while Redis is
/// full). A write Redis refuses (a server error) is not retried: it would fail again, and hold
/// up every write behind it.
pub(super) async fn apply_ops(engine: Weak<RedisEngine>, mut rx: mpsc::Receiver<Queued>) {
    // Writes given up since the last one that succeeded: one warning per outage, not per write.
    let mut given_up = 0u64;
    while let Some(Queued { op, made }) = rx.recv().await {
        let Some(e) = engine.upgrade() else {
            return;
        };
        let until = made + e.settings.lease();
        let mut delay = Duration::from_millis(50);
        let outcome = loop {
            if Instant::now() >= until {
                break Err(EngineError::Unavailable(
                    "redis stayed unreachable for a lease".into(),
                ));
            }
            match e.apply(&op).await {
                Ok(()) => {
                    e.health.ok();
                    break Ok(());
                }
                Err(err) if classify(&err) != Failure::Refused => {
                    e.failure(&err);
                    let left = until.saturating_duration_since(Instant::now());
                    tokio::time::sleep(delay.min(left)).await;
                    delay = (delay * 2).min(OPS_RETRY_CAP);
                }
                Err(err) => {
                    e.health.ok();
                    tracing::warn!(
                        error = %err,
                        write = op.name(),
                        "redis refused a presence or slot write; dropped"
                    );
                    break Err(EngineError::Internal(err.to_string()));
                }
            }
        };
        match &outcome {
            Ok(()) if given_up > 0 => {
                tracing::info!(given_up = given_up, "presence and slot writes resumed");
                given_up = 0;
            }
            Err(EngineError::Unavailable(why)) => {
                if given_up == 0 {
                    tracing::warn!(
                        error = why.as_str(),
                        write = op.name(),
                        "presence or slot write given up; the heartbeat settles it later"
                    );
                }
                given_up += 1;
            }
            _ => {}
        }
        match op {
            Op::Lifecycle(LifecycleOp::Remove {
                subject, client, ..
            }) if outcome.is_err() => e.forget(&subject, &client),
            Op::Join { ack: Some(ack), .. } => {
                let _ = ack.send(outcome);
            }
            Op::Flush(done) => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
}

impl Op {
    /// For logs.
    fn name(&self) -> &'static str {
        match self {
            Op::Join { .. } => "join",
            Op::Leave { .. } => "leave",
            Op::Release { .. } => "release",
            Op::Control(_) => "control",
            Op::Lifecycle(_) => "lifecycle",
            Op::Flush(_) => "flush",
        }
    }
}
