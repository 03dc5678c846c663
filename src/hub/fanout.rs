//! Fan-out: publications and join/leave frames gathered per channel, flushed to each local
//! subscriber as one shared batch per channel and one mailbox message per session, within
//! each session's backlog bound and the node's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;

use super::push::{frame_cost, ChannelPushes, Control, Outbound, Push, PushKind, Pushes};
use super::Hub;
use crate::clock::unix_micros;
use crate::protocol::Close;

/// Most publications gathered before a flush, so a busy Hub never holds pushes back for long.
const MAX_BATCH: usize = 64;

/// How long the next flush waits per session the last one wrote to. Every flush costs each
/// session it reaches one mailbox message, one wake-up and one socket write (and its client
/// one read), about 10 µs of CPU whatever the write carries; spacing flushes by twice that per
/// session keeps those costs under half the node's time, and publications that come in
/// between ride along. A narrow fan-out is hardly delayed (10 sessions: 0.2 ms); an idle Hub
/// flushes at once.
pub(super) const FLUSH_GAP_PER_SESSION: Duration = Duration::from_micros(20);

/// The longest a publication waits for a flush, however wide the fan-out.
const MAX_FLUSH_GAP: Duration = Duration::from_millis(10);

/// How often, at most, fan-out re-checks the node-wide backlog.
const NODE_SCAN_EVERY: Duration = Duration::from_millis(10);

/// How often the node-wide backlog is checked when no fan-out does it.
pub(super) const NODE_SCAN_IDLE: Duration = Duration::from_millis(100);

impl Hub {
    /// Drops one session for slowness: its stream ends with 4000 at once, its actor stops.
    fn drop_slow(&self, client: &str) {
        let Some(conn) = self.registry.conn(client) else {
            return;
        };
        if conn.outbound.abort_slow() {
            self.metrics.slow_consumer_disconnects.inc();
            tracing::info!(
                client = client,
                user = conn.user.as_str(),
                queued_bytes = conn.outbound.queued(),
                "slow consumer: closing with 4000"
            );
            // do_send on purpose: the session's mailbox may be the very thing that is full.
            conn.control.do_send(Control::Close(Close::SlowConsumer));
        }
    }

    /// Closes the most-lagging sessions until the node's backlog fits its bound again. The sum
    /// is taken without allocating; only a node over its bound collects and sorts.
    pub(super) fn enforce_node_bound(&mut self) {
        self.last_scan = Instant::now();
        let live = || {
            self.registry
                .conns()
                .filter(|(_, c)| !c.outbound.is_aborted())
        };
        let mut total: usize = live().map(|(_, c)| c.outbound.queued()).sum();
        if total <= self.node_queue_bytes {
            return;
        }
        let mut backlogs: Vec<(usize, Arc<str>)> = live()
            .map(|(id, c)| (c.outbound.queued(), Arc::clone(id)))
            .collect();
        backlogs.sort_unstable_by_key(|(queued, _)| std::cmp::Reverse(*queued));
        for (queued, client) in backlogs {
            if total <= self.node_queue_bytes || queued == 0 {
                break;
            }
            tracing::warn!(
                client = &*client,
                queued_bytes = queued,
                node_queued_bytes = total,
                "node outbound bound exceeded: closing the most lagging session"
            );
            self.drop_slow(&client);
            total -= queued;
        }
    }

    /// Hands every channel's gathered pushes to its subscribers as one shared batch (one
    /// reference count and one backlog reservation per subscriber, whatever the batch holds),
    /// then sends every session its batches in one message. A session over its bound, or whose
    /// mailbox is full, is too slow and goes.
    fn flush(&mut self) {
        self.flush_scheduled = false;
        self.buffered = 0;
        self.last_flush = Instant::now();
        let mut slow = Vec::new();
        let mut delivered = 0u64;
        for (channel, pushes) in self.gathered.drain() {
            // Subscribers are read now, not when the pushes came: one that left since gets
            // nothing, one that came since drops what precedes its `subscribed` position.
            let Some((_, subs)) = self.registry.subscribers(&channel) else {
                continue;
            };
            let batch = Arc::new(ChannelPushes::new(pushes));
            for (client, sub) in subs {
                if sub.outbound.is_aborted() {
                    continue;
                }
                if !sub.outbound.try_reserve(batch.cost) {
                    slow.push(Arc::clone(client));
                    continue;
                }
                if self.batches.len() <= sub.slot {
                    self.batches
                        .resize_with(self.registry.slot_count().max(sub.slot + 1), Vec::new);
                }
                let share = &mut self.batches[sub.slot];
                if share.is_empty() {
                    self.dirty.push(sub.slot);
                }
                share.push(Arc::clone(&batch));
                delivered += batch.deliveries_to(client);
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        let written = u32::try_from(self.dirty.len()).unwrap_or(u32::MAX);
        self.flush_gap = (FLUSH_GAP_PER_SESSION * written).min(MAX_FLUSH_GAP);
        for slot in std::mem::take(&mut self.dirty) {
            let Some(batches) = self.batches.get_mut(slot).map(std::mem::take) else {
                continue;
            };
            if batches.is_empty() {
                continue;
            }
            let Some(target) = self.registry.slot(slot) else {
                // The session left; its pushes are dropped with it.
                continue;
            };
            match target.push.try_send(Pushes(batches)) {
                Ok(()) => {}
                Err(SendError::Full(Pushes(batches))) => {
                    release_all(
                        &batches,
                        self.registry.conn(&target.client).map(|c| &c.outbound),
                    );
                    slow.push(Arc::clone(&target.client));
                }
                // The session is stopping; its Disconnect is on the way.
                Err(SendError::Closed(_)) => {}
            }
        }
        let now = unix_micros();
        for accepted_us in self.accepted.drain(..) {
            // Once per publication, after the hand-off to its last local subscriber.
            let latency_us = now.saturating_sub(accepted_us);
            self.metrics
                .delivery_latency
                .observe(latency_us as f64 / 1e6);
        }
        for client in slow {
            self.drop_slow(&client);
        }
        if self.last_scan.elapsed() >= NODE_SCAN_EVERY {
            self.enforce_node_bound();
        }
    }

    /// Flushes now if enough is gathered; else once the Hub's mailbox is drained (actix polls
    /// spawned futures only after it has handled every queued message), and no sooner than
    /// the gap the previous flush set (see [`FLUSH_GAP_PER_SESSION`]). So under load one flush carries many
    /// publications to each session (one wake-up and one socket write for all), and when idle
    /// a publication waits for nothing.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        self.buffered += 1;
        if self.buffered >= MAX_BATCH {
            self.flush();
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            let flush = |hub: &mut Hub| {
                if hub.flush_scheduled {
                    hub.flush();
                }
            };
            let wait = self.flush_gap.saturating_sub(self.last_flush.elapsed());
            if wait.is_zero() {
                ctx.spawn(actix::fut::ready(()).map(move |(), hub: &mut Hub, _| flush(hub)));
            } else {
                ctx.run_later(wait, move |hub, _| flush(hub));
            }
        }
    }

    /// Gathers one frame for every local subscriber of `channel` (except `skip`, the client a
    /// presence push is about) until the next flush; answers how many will get it.
    fn gather(
        &mut self,
        channel: &str,
        kind: PushKind,
        frame: bytestring::ByteString,
        skip: Option<Arc<str>>,
    ) -> usize {
        let Some((channel, subs)) = self.registry.subscribers(channel) else {
            return 0;
        };
        let receivers =
            subs.len() - usize::from(skip.as_ref().is_some_and(|s| subs.contains_key(s)));
        if receivers == 0 {
            return 0;
        }
        let push = Push {
            channel: Arc::clone(channel),
            kind,
            cost: frame_cost(frame.len()),
            frame,
            skip,
        };
        match self.gathered.get_mut(channel) {
            Some(pushes) => pushes.push(push),
            None => {
                self.gathered.insert(Arc::clone(channel), vec![push]);
            }
        }
        receivers
    }
}

/// Gives back the backlog counted for pushes that will not be sent.
fn release_all(batches: &[Arc<ChannelPushes>], outbound: Option<&Arc<Outbound>>) {
    if let Some(outbound) = outbound {
        outbound.release(batches.iter().map(|b| b.cost).sum());
    }
}

/// Something the engine routes to this node's subscribers.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum Deliver {
    /// A publication's finished `message` frame, with what routing and ordering need.
    Message {
        channel: String,
        offset: u64,
        epoch: Arc<str>,
        frame: bytestring::ByteString,
        /// For following one publication through the logs.
        event_id: String,
        /// When the engine accepted it (Unix µs), for the delivery latency.
        accepted_us: u64,
    },
    /// A `join` or `leave` frame; it goes to the channel's other subscribers, not to the
    /// connection it is about.
    Presence {
        channel: String,
        client: String,
        frame: bytestring::ByteString,
    },
}

impl Deliver {
    /// The `join` (or `leave`) push about `client` in `channel`.
    pub fn presence(channel: &str, client: &crate::protocol::ClientInfo, joined: bool) -> Self {
        let frame = if joined {
            crate::protocol::ServerFrame::Join { channel, client }
        } else {
            crate::protocol::ServerFrame::Leave { channel, client }
        };
        Deliver::Presence {
            channel: channel.to_owned(),
            client: client.client.clone(),
            frame: frame.encode(),
        }
    }
}

impl Handler<Deliver> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        match msg {
            Deliver::Message {
                channel,
                offset,
                epoch,
                frame,
                event_id,
                accepted_us,
            } => {
                let kind = PushKind::Message { offset, epoch };
                let delivered = self.gather(&channel, kind, frame, None);
                tracing::debug!(
                    channel = channel.as_str(),
                    event_id = event_id.as_str(),
                    offset = offset,
                    deliveries = delivered,
                    "fanned out"
                );
                if delivered > 0 {
                    self.accepted.push(accepted_us);
                    self.schedule_flush(ctx);
                }
            }
            Deliver::Presence {
                channel,
                client,
                frame,
            } => {
                let about = Some(Arc::from(client));
                if self.gather(&channel, PushKind::Presence, frame, about) > 0 {
                    self.schedule_flush(ctx);
                }
            }
        }
    }
}
