//! Lifecycle events on the Redis engine, cluster-wide: the rules of [`crate::lifecycle`] run in
//! one script (`lifecycle.lua`), so each transition is decided, and appended to the stream and
//! the webhook queues, in one atomic step, whichever node saw it.
//!
//! This node keeps what it holds ([`Holding`]s, one per subject and connection) so that it
//! can put it back: each heartbeat queues a check, in order with the node's other writes; when
//! Redis lost the node's entries (a restart without persistence) they are written back without
//! events (the clients never left), and when another node took this one for dead (and emitted
//! its `node_lost` events) they are written back as arrivals, so services hear `online` again.
//! Grace deadlines live in Redis: every node sweeps them, so an `offline` is emitted even when
//! the node that started its grace has gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Script;

use super::presence::Op;
use super::RedisEngine;
use crate::lifecycle::{Emitter, Kind, Reason, Subject};

/// Most subjects one sweep takes down, most entries of a dead node one call handles, most
/// holdings one restore writes: each call stays short for Redis.
const BATCH: usize = 500;

/// How often the graces are swept: an `offline` comes at most this late.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Lifecycle stream entries kept (`MAXLEN ~`).
const STREAM_MAXLEN: u64 = 100_000;

/// The lifecycle settings of the Redis engine.
pub struct LifecycleSettings {
    pub emitter: Emitter,
    pub grace: Duration,
    /// The stream events are appended to, if any.
    pub stream: Option<String>,
    /// Every webhook URL's queue key ([`super::Keys::webhook_queue`]).
    pub webhook_queues: Vec<String>,
}

/// What the engine needs to run the rules.
pub(super) struct Lifecycle {
    settings: LifecycleSettings,
    kinds: String,
    script: Script,
}

impl Lifecycle {
    pub(super) fn new(settings: LifecycleSettings) -> Self {
        Lifecycle {
            kinds: settings.emitter.kinds_list(),
            settings,
            script: Script::new(include_str!("lifecycle.lua")),
        }
    }
}

/// One subject held by one of this node's connections.
pub(super) struct Holding {
    /// `member.added`'s `info` (JSON text), or empty.
    info: String,
    /// Whether Redis has it (its `add` was applied).
    applied: bool,
    /// When its `add` was queued: one that is not applied a lease later was given up.
    since: Instant,
    /// Let go of, its `remove` queued: Redis still has it until that is applied.
    removing: bool,
}

/// A lifecycle write, applied in order with the node's presence and slot writes.
pub(super) enum LifecycleOp {
    Add {
        subject: String,
        client: String,
        info: String,
    },
    Remove {
        subject: String,
        client: String,
        reason: Reason,
    },
    /// Whether Redis still has what this node holds; puts it back if not.
    Check,
}

/// `S\t<client>`: a holding's name, as the node's set in Redis has it.
fn entry(subject: &str, client: &str) -> String {
    format!("{subject}\t{client}")
}

impl RedisEngine {
    /// `client` holds `subject` from now on (a no-op with lifecycle events off).
    pub(super) fn hold(&self, subject: Subject, client: &str, info: Option<&str>) {
        if self.lifecycle.is_none() {
            return;
        }
        let subject = subject.key();
        let info = info.unwrap_or("").to_owned();
        self.lock().holdings.insert(
            entry(&subject, client),
            Holding {
                info: info.clone(),
                applied: false,
                since: Instant::now(),
                removing: false,
            },
        );
        self.enqueue(Op::Lifecycle(LifecycleOp::Add {
            subject,
            client: client.to_owned(),
            info,
        }));
    }

    /// `client` no longer holds `subject`, if it did.
    pub(super) fn unhold(&self, subject: Subject, client: &str, reason: Reason) {
        if self.lifecycle.is_none() {
            return;
        }
        let subject = subject.key();
        let let_go = match self.lock().holdings.get_mut(&entry(&subject, client)) {
            Some(h) if !h.removing => {
                h.removing = true;
                true
            }
            _ => false,
        };
        if let_go {
            self.enqueue(Op::Lifecycle(LifecycleOp::Remove {
                subject,
                client: client.to_owned(),
                reason,
            }));
        }
    }

    /// One call of the script: `op` with its own arguments after the common ones.
    fn lifecycle_call<'a>(&self, lc: &'a Lifecycle, op: &str) -> redis::ScriptInvocation<'a> {
        let mut call = lc.script.key(self.keys.lifecycle_grace());
        if let Some(stream) = &lc.settings.stream {
            call.key(stream);
        }
        for queue in &lc.settings.webhook_queues {
            call.key(queue);
        }
        call.arg(op)
            .arg(self.keys.prefix())
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(&lc.kinds)
            .arg(STREAM_MAXLEN)
            .arg(if lc.settings.stream.is_some() {
                "1"
            } else {
                "0"
            });
        call
    }

    /// Counts what a call emitted.
    fn count_emitted(&self, lc: &Lifecycle, types: &[String]) {
        for t in types {
            if let Some(kind) = Kind::from_name(t) {
                lc.settings.emitter.metrics().lifecycle_event(kind);
            }
        }
    }

    /// Applies one lifecycle write (from the ordered writer).
    pub(super) async fn apply_lifecycle(&self, op: &LifecycleOp) -> redis::RedisResult<()> {
        let Some(lc) = &self.lifecycle else {
            return Ok(());
        };
        let node = &self.settings.node_id;
        let mut conn = self.conn();
        match op {
            LifecycleOp::Add {
                subject,
                client,
                info,
            } => {
                let types: Vec<String> = self
                    .lifecycle_call(lc, "add")
                    .arg(subject)
                    .arg(client)
                    .arg(node)
                    .arg(info)
                    .invoke_async(&mut conn)
                    .await?;
                self.count_emitted(lc, &types);
                if let Some(h) = self.lock().holdings.get_mut(&entry(subject, client)) {
                    h.applied = true;
                }
                Ok(())
            }
            LifecycleOp::Remove {
                subject,
                client,
                reason,
            } => {
                let types: Vec<String> = self
                    .lifecycle_call(lc, "remove")
                    .arg(subject)
                    .arg(client)
                    .arg(node)
                    .arg(reason.name())
                    .arg(lc.settings.grace.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await?;
                self.count_emitted(lc, &types);
                self.forget(subject, client);
                Ok(())
            }
            LifecycleOp::Check => self.check_holdings(lc, &mut conn).await,
        }
    }

    /// Drops a holding whose `remove` was applied (or given up: Redis may still have it, and
    /// the next check removes it there), unless it was held again since.
    pub(super) fn forget(&self, subject: &str, client: &str) {
        let mut local = self.lock();
        let e = entry(subject, client);
        if local.holdings.get(&e).is_some_and(|h| h.removing) {
            local.holdings.remove(&e);
        }
    }

    /// Puts back what Redis lost of this node's holdings: without events when Redis lost
    /// them, as arrivals when another node took this one for dead; and takes out entries Redis
    /// holds for this node that it no longer has (a removal given up during an outage).
    async fn check_holdings(
        &self,
        lc: &Lifecycle,
        conn: &mut super::Commands,
    ) -> redis::RedisResult<()> {
        let node = &self.settings.node_id;
        let (lost, held): (i64, usize) = {
            let reply: Vec<i64> = self
                .lifecycle_call(lc, "check")
                .arg(node)
                .invoke_async(conn)
                .await?;
            (
                reply.first().copied().unwrap_or(0),
                reply.get(1).copied().unwrap_or(0).max(0) as usize,
            )
        };
        let lost = lost == 1;
        // Holdings being let go of are still in Redis; those just held are not yet, and their
        // queued `add` will write them: only one a lease old was given up.
        let (applied, pending) = {
            let local = self.lock();
            let lease = self.settings.lease();
            let applied = local.holdings.values().filter(|h| h.applied).count();
            let pending = local
                .holdings
                .values()
                .filter(|h| !h.applied && !h.removing && h.since.elapsed() >= lease)
                .count();
            (applied, pending)
        };
        if !lost && held == applied && pending == 0 {
            return Ok(());
        }
        if held > applied {
            self.remove_strays(lc, conn).await?;
        }
        // Everything when Redis lost some of it (or another node took this one for dead);
        // otherwise only what was never written (its `add` given up, or still queued).
        let everything = lost || held < applied;
        if everything || pending > 0 {
            self.restore(lc, conn, lost, everything).await?;
        }
        Ok(())
    }

    /// Writes holdings back (every one, or only those not yet written): applied ones are
    /// announced only when `lost` (another node emitted their `node_lost`), pending ones
    /// always (they were never announced).
    async fn restore(
        &self,
        lc: &Lifecycle,
        conn: &mut super::Commands,
        lost: bool,
        everything: bool,
    ) -> redis::RedisResult<()> {
        let snapshot: Vec<(String, String, bool)> = self
            .lock()
            .holdings
            .iter()
            .filter(|(_, h)| !h.removing && (everything || !h.applied))
            .map(|(e, h)| (e.clone(), h.info.clone(), h.applied))
            .collect();
        if lost {
            tracing::warn!(
                holdings = snapshot.len(),
                "this node had been taken for dead: announcing its users, channels and members again"
            );
        } else if snapshot.iter().any(|(_, _, applied)| *applied) {
            tracing::warn!(
                holdings = snapshot.len(),
                "redis lost this node's lifecycle entries: writing them back without events"
            );
        }
        for announce in [false, true] {
            let group: Vec<&(String, String, bool)> = snapshot
                .iter()
                .filter(|(_, _, applied)| (lost || !applied) == announce)
                .collect();
            for chunk in group.chunks(BATCH) {
                let mut call = self.lifecycle_call(lc, "restore");
                call.arg(&self.settings.node_id)
                    .arg(if announce { "1" } else { "0" });
                for (e, info, _) in chunk {
                    let Some((subject, client)) = e.rsplit_once('\t') else {
                        continue;
                    };
                    call.arg(subject).arg(client).arg(info);
                }
                let types: Vec<String> = call.invoke_async(conn).await?;
                self.count_emitted(lc, &types);
                let mut local = self.lock();
                for (e, _, _) in chunk {
                    if let Some(h) = local.holdings.get_mut(e) {
                        h.applied = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the entries Redis holds for this node that the node no longer has.
    async fn remove_strays(
        &self,
        lc: &Lifecycle,
        conn: &mut super::Commands,
    ) -> redis::RedisResult<()> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.lifecycle_node(&self.settings.node_id))
            .query_async(conn)
            .await?;
        let strays: Vec<String> = {
            let local = self.lock();
            members
                .into_iter()
                .filter(|m| !local.holdings.contains_key(m))
                .collect()
        };
        for stray in strays {
            let Some((subject, client)) = stray.rsplit_once('\t') else {
                continue;
            };
            let types: Vec<String> = self
                .lifecycle_call(lc, "remove")
                .arg(subject)
                .arg(client)
                .arg(&self.settings.node_id)
                .arg(Reason::Closed.name())
                .arg(lc.settings.grace.as_millis() as u64)
                .invoke_async(conn)
                .await?;
            self.count_emitted(lc, &types);
        }
        Ok(())
    }

    /// Takes down what `dead` held, with `node_lost`: called by the one node that removed it.
    pub(super) async fn lifecycle_node_lost(
        &self,
        dead: &str,
        conn: &mut super::Commands,
    ) -> redis::RedisResult<()> {
        let Some(lc) = &self.lifecycle else {
            return Ok(());
        };
        let tombstone_ms = self.settings.lease().as_millis() as u64 * 10;
        loop {
            let (types, left): (Vec<String>, i64) = self
                .lifecycle_call(lc, "lost")
                .arg(dead)
                .arg(BATCH)
                .arg(tombstone_ms)
                .invoke_async(conn)
                .await?;
            self.count_emitted(lc, &types);
            if left <= 0 {
                return Ok(());
            }
        }
    }

    /// Whether lifecycle events are on (the heartbeat then queues a check each beat).
    pub(super) fn tracks_lifecycle(&self) -> bool {
        self.lifecycle.is_some()
    }
}

/// Sweeps the graces every [`SWEEP_EVERY`]; ends with the engine. Every node sweeps: the
/// script takes each subject down once, whoever runs it.
pub(super) fn start_sweeper(engine: &Arc<RedisEngine>) {
    if engine.lifecycle.is_none() {
        return;
    }
    let weak = Arc::downgrade(engine);
    actix::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let Some(engine) = weak.upgrade() else {
                break;
            };
            let Some(lc) = &engine.lifecycle else {
                break;
            };
            let mut conn = engine.conn();
            loop {
                let swept: redis::RedisResult<Vec<String>> = engine
                    .lifecycle_call(lc, "sweep")
                    .arg(BATCH)
                    .invoke_async(&mut conn)
                    .await;
                match swept {
                    Ok(types) => {
                        if failing {
                            tracing::info!("lifecycle grace sweeps resumed");
                            failing = false;
                        }
                        engine.count_emitted(lc, &types);
                        if types.len() < BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "lifecycle grace sweep failed; retrying");
                            failing = true;
                        }
                        break;
                    }
                }
            }
        }
    });
}
