//! The Hub actor, one per node: routes each publication (and join/leave) to the local sessions
//! subscribed to its channel, serialising it once and sharing those bytes. It owns no durable
//! state and never waits on the network; it knows nothing about Redis or tokens.
//!
//! It also enforces the node-wide outbound bound: when all sessions' backlogs together exceed
//! `HUB_NODE_QUEUE_BYTES`, the most-lagging sessions are dropped as slow consumers first.
//!
//! Here: the actor, its state and its session-lifecycle handlers. `registry` is the routing
//! table (a plain struct); `fanout` gathers and flushes pushes; `watch` asks the watcher (the
//! Redis bridge) for other nodes' publications; `push` holds what the Hub hands to sessions.
//! Nothing here imports the session module: sessions depend on the Hub, not the other way.

mod fanout;
mod push;
mod registry;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

pub use fanout::Deliver;
use fanout::NODE_SCAN_IDLE;
pub use push::{frame_cost, ChannelPushes, Control, Outbound, Push, PushKind, Pushes};
use registry::Conn;
pub use registry::{Registry, SubOutcome, UnsubOutcome};
use watch::WatchState;
pub use watch::{Unwatch, UseWatcher, Watch, Watcher};

use crate::error::HubError;
use crate::metrics::Metrics;
use crate::protocol::Close;

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
    /// [`fanout::FLUSH_GAP_PER_SESSION`]).
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
        self.watch_for(outcome, msg.channel, ctx)
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
