//! The Hub actor, one per node: routes each publication (and join/leave) to the local sessions
//! subscribed to its channel, serialising it once and sharing those bytes. It owns no durable
//! state and never waits on the network; it knows nothing about Redis or tokens.
//!
//! It also enforces the node-wide outbound bound: when all sessions' backlogs together exceed
//! `HUB_NODE_QUEUE_BYTES`, the most-lagging sessions are dropped as slow consumers first.

mod push;
mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;
use tokio::sync::oneshot;

pub use push::{frame_cost, ChannelPushes, Control, Outbound, Push, PushKind, Pushes};
use registry::Conn;
pub use registry::{Registry, SubOutcome, UnsubOutcome};

use crate::auth::unix_micros;
use crate::error::{EngineError, HubError};
use crate::metrics::Metrics;
use crate::protocol::Close;

/// Most publications gathered before a flush, so a busy Hub never holds pushes back for long.
const MAX_BATCH: usize = 64;

/// How long the next flush waits per session the last one wrote to. Every flush costs each
/// session it reaches one mailbox message, one wake-up and one socket write (and its client
/// one read), about 10 µs of CPU whatever the write carries; spacing flushes by twice that per
/// session keeps those costs under half the node's time, and publications that come in
/// between ride along. A narrow fan-out is hardly delayed (10 sessions: 0.2 ms); an idle Hub
/// flushes at once.
const FLUSH_GAP_PER_SESSION: Duration = Duration::from_micros(20);

/// The longest a publication waits for a flush, however wide the fan-out.
const MAX_FLUSH_GAP: Duration = Duration::from_millis(10);

/// How often, at most, fan-out re-checks the node-wide backlog.
const NODE_SCAN_EVERY: Duration = Duration::from_millis(10);

/// How often the node-wide backlog is checked when no fan-out does it.
const NODE_SCAN_IDLE: Duration = Duration::from_millis(100);

/// Mailbox capacity for requests that await the Hub's answer.
const HUB_MAILBOX: usize = 65_536;

pub struct Hub {
    registry: Registry,
    /// The link that makes other nodes' publications arrive here (the Redis bridge); `None`
    /// with the memory engine, where every publication is local.
    watcher: Option<Watcher>,
    /// Channels whose publications the watcher delivers, or is being asked to. A channel with
    /// local subscribers but no entry here (its watch failed) gets a new watch with the next
    /// subscriber, so none is ever answered without the watcher behind it.
    watches: HashMap<Arc<str>, WatchState>,
    /// Tells one watch request from a later one for the same channel.
    watch_generation: u64,
    node_queue_bytes: usize,
    last_scan: Instant,
    metrics: Arc<Metrics>,
    /// Pushes gathered per channel since the last flush, in the order they came.
    gathered: HashMap<Arc<str>, Vec<Push>>,
    /// Each session's share of a flush (by registry slot): one shared batch per channel.
    batches: Vec<Vec<Arc<ChannelPushes>>>,
    /// Slots with gathered pushes, in the order they got their first.
    dirty: Vec<usize>,
    /// Acceptance times (Unix µs) of the publications gathered, for the latency histogram.
    accepted: Vec<u64>,
    /// Publications gathered since the last flush.
    buffered: usize,
    flush_scheduled: bool,
    /// When the last flush ran, and how long the next one waits after it (see
    /// [`FLUSH_GAP_PER_SESSION`]).
    last_flush: Instant,
    flush_gap: Duration,
}

impl Hub {
    pub fn new(node_queue_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            registry: Registry::default(),
            watcher: None,
            watches: HashMap::new(),
            watch_generation: 0,
            node_queue_bytes,
            last_scan: Instant::now(),
            metrics,
            gathered: HashMap::new(),
            batches: Vec::new(),
            dirty: Vec::new(),
            accepted: Vec::new(),
            buffered: 0,
            flush_scheduled: false,
            last_flush: Instant::now(),
            flush_gap: Duration::ZERO,
        }
    }

    /// Keeps the gauges equal to the registry's counts; called after every change.
    fn update_gauges(&self) {
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .connections
            .set(to_i64(self.registry.connections()));
        self.metrics
            .subscriptions
            .set(to_i64(self.registry.subscriptions()));
        self.metrics
            .channels
            .set(to_i64(self.registry.channel_count()));
    }

    /// The channel no longer has a local subscriber: stop receiving its publications.
    fn unwatch(&mut self, channel: &str) {
        if let Some(watcher) = &self.watcher {
            self.watches.remove(channel);
            watcher.unwatch.do_send(Unwatch {
                channel: channel.to_owned(),
            });
        }
    }

    /// A watch request was answered: release the subscribers waiting on it. On failure the
    /// channel is left without a watch state; its failed subscribers take their registrations
    /// back, and any subscriber that comes before they have asks for a new watch.
    fn watched(&mut self, channel: &str, generation: u64, result: Result<(), HubError>) {
        let current = matches!(
            self.watches.get(channel),
            Some(WatchState::Pending { generation: g, .. }) if *g == generation
        );
        if !current {
            return;
        }
        let waiters = match self.watches.remove(channel) {
            Some(WatchState::Pending { waiters, .. }) => waiters,
            _ => Vec::new(),
        };
        if result.is_ok() {
            self.watches.insert(Arc::from(channel), WatchState::Ready);
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }

    /// Drops one session for slowness: its stream ends with 4000 at once, its actor stops.
    fn drop_slow(&self, client: &str) {
        let Some(conn) = self.registry.conn(client) else {
            return;
        };
        if conn.outbound.abort_slow() {
            self.metrics.slow_consumer_disconnects.inc();
            log::info!(
                client = client, user = conn.user.as_str(), queued_bytes = conn.outbound.queued();
                "slow consumer: closing with 4000"
            );
            // do_send on purpose: the session's mailbox may be the very thing that is full.
            conn.control.do_send(Control::Close(Close::SlowConsumer));
        }
    }

    /// Closes the most-lagging sessions until the node's backlog fits its bound again. The sum
    /// is taken without allocating; only a node over its bound collects and sorts.
    fn enforce_node_bound(&mut self) {
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
            log::warn!(
                client = &*client, queued_bytes = queued, node_queued_bytes = total;
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

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Publications arrive with do_send (never refused); this capacity only paces callers
        // that wait for an answer (`send`), such as a subscribe, which must not queue behind
        // a default of 16.
        ctx.set_mailbox_capacity(HUB_MAILBOX);
        // Replies grow backlogs too, without any fan-out to trigger the check.
        ctx.run_interval(NODE_SCAN_IDLE, |hub, _| hub.enforce_node_bound());
    }
}

/// A session opened on this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub client: Arc<str>,
    pub user: String,
    pub push: Recipient<Pushes>,
    pub control: Recipient<Control>,
    pub outbound: Arc<Outbound>,
}

impl Handler<Connect> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        self.registry.connect(Conn {
            id: msg.client,
            user: msg.user,
            push: msg.push,
            control: msg.control,
            outbound: msg.outbound,
            channels: HashSet::new(),
            slot: 0,
        });
        self.update_gauges();
    }
}

/// What other nodes must do for this node's subscribers to see their publications.
pub struct Watcher {
    pub watch: Recipient<Watch>,
    pub unwatch: Recipient<Unwatch>,
}

enum WatchState {
    /// Asked; these subscribers wait for the answer before reading the channel's position.
    Pending {
        generation: u64,
        waiters: Vec<oneshot::Sender<Result<(), HubError>>>,
    },
    Ready,
}

/// Start delivering `channel`'s publications from other nodes to this node; answers once that
/// holds (e.g. Redis confirmed the SUBSCRIBE).
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub struct Watch {
    pub channel: String,
}

/// Stop delivering `channel`'s publications to this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unwatch {
    pub channel: String,
}

/// Installs the watcher; sent once, before any session connects.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseWatcher(pub Watcher);

impl Handler<UseWatcher> for Hub {
    type Result = ();
    fn handle(&mut self, msg: UseWatcher, _: &mut Context<Self>) {
        self.watcher = Some(msg.0);
    }
}

/// The watcher lost and regained its link: publications of these channels may have been
/// missed, so their subscribers check history for a gap.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync {
    pub channels: Vec<String>,
}

impl Handler<Resync> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Resync, _: &mut Context<Self>) {
        for channel in msg.channels {
            let Some((name, subs)) = self.registry.subscribers(&channel) else {
                continue;
            };
            for client in subs.keys() {
                if let Some(conn) = self.registry.conn(client) {
                    conn.control.do_send(Control::Resync(Arc::clone(name)));
                }
            }
        }
    }
}

/// A session ended; all its subscriptions go with it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub client: Arc<str>,
}

impl Handler<Disconnect> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        // Its gathered pushes go with it: the slot may be another session's by the next flush.
        if let Some(slot) = self.registry.conn(&msg.client).map(|c| c.slot) {
            if let Some(batch) = self.batches.get_mut(slot) {
                batch.clear();
            }
        }
        for channel in self.registry.disconnect(&msg.client) {
            self.unwatch(&channel);
        }
        self.update_gauges();
    }
}

/// Route `channel`'s publications to `client` from now on. The session awaits the answer before
/// it reads the channel's position, which is what makes subscribing gapless; with a watcher,
/// the answer waits until the channel's publications reach this node.
#[derive(Message)]
#[rtype(result = "Result<SubOutcome, HubError>")]
pub struct Subscribe {
    pub client: Arc<str>,
    pub channel: String,
}

impl Handler<Subscribe> for Hub {
    type Result = ResponseFuture<Result<SubOutcome, HubError>>;
    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        let outcome = self.registry.subscribe(&msg.client, &msg.channel);
        self.update_gauges();
        let Some(watcher) = &self.watcher else {
            return Box::pin(std::future::ready(Ok(outcome)));
        };
        let (tx, rx) = oneshot::channel();
        match (&outcome, self.watches.get_mut(msg.channel.as_str())) {
            (SubOutcome::UnknownConnection, _) => return Box::pin(std::future::ready(Ok(outcome))),
            // The first subscriber, or one that came after a failed watch while the failed
            // subscribers were still registered: either way nothing delivers the channel yet.
            (SubOutcome::FirstOnNode, _) | (_, None) => {
                self.watch_generation += 1;
                let generation = self.watch_generation;
                let channel: Arc<str> = Arc::from(msg.channel.as_str());
                self.watches.insert(
                    Arc::clone(&channel),
                    WatchState::Pending {
                        generation,
                        waiters: vec![tx],
                    },
                );
                let request = watcher.watch.send(Watch {
                    channel: msg.channel,
                });
                ctx.spawn(request.into_actor(self).map(move |answer, hub, _| {
                    let result = match answer {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(HubError::from(e)),
                        Err(_) => Err(HubError::unavailable("the node's Redis link is down")),
                    };
                    hub.watched(&channel, generation, result);
                }));
            }
            (_, Some(WatchState::Pending { waiters, .. })) => waiters.push(tx),
            (_, Some(WatchState::Ready)) => return Box::pin(std::future::ready(Ok(outcome))),
        }
        Box::pin(async move {
            match rx.await {
                Ok(result) => result.map(|()| outcome),
                // Everyone left the channel while the watch was pending.
                Err(_) => Err(HubError::unavailable(
                    "the subscription was cancelled; retry",
                )),
            }
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub client: Arc<str>,
    pub channel: String,
}

impl Handler<Unsubscribe> for Hub {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if self.registry.unsubscribe(&msg.client, &msg.channel) == UnsubOutcome::LastOnNode {
            self.unwatch(&msg.channel);
        }
        self.update_gauges();
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
                log::debug!(
                    channel = channel.as_str(), event_id = event_id.as_str(), offset = offset, deliveries = delivered;
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

/// Close every local connection of `user`; answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct DisconnectUser {
    pub user: String,
    pub close: Close,
}

impl Handler<DisconnectUser> for Hub {
    type Result = usize;
    fn handle(&mut self, msg: DisconnectUser, _: &mut Context<Self>) -> usize {
        let mut n = 0;
        for (_, conn) in self.registry.conns().filter(|(_, c)| c.user == msg.user) {
            conn.control.do_send(Control::Close(msg.close));
            n += 1;
        }
        n
    }
}

/// Close every local connection (shutdown); answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll {
    pub close: Close,
}

impl Handler<CloseAll> for Hub {
    type Result = usize;
    fn handle(&mut self, msg: CloseAll, _: &mut Context<Self>) -> usize {
        for (_, conn) in self.registry.conns() {
            conn.control.do_send(Control::Close(msg.close));
        }
        self.registry.connections()
    }
}

/// This node's figures.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    pub connections: usize,
    pub subscriptions: usize,
    /// Channels with local subscribers, and how many.
    pub channels: Vec<(String, usize)>,
}

#[derive(Message)]
#[rtype(result = "NodeStats")]
pub struct Stats {
    pub with_channels: bool,
}

impl Handler<Stats> for Hub {
    type Result = MessageResult<Stats>;
    fn handle(&mut self, msg: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(NodeStats {
            connections: self.registry.connections(),
            subscriptions: self.registry.subscriptions(),
            channels: if msg.with_channels {
                self.registry.channel_counts()
            } else {
                Vec::new()
            },
        })
    }
}
