//! The RedisBridge actor: this node's pub/sub link to Redis. It subscribes the node to the
//! topic of every channel that has a local subscriber (answering the Hub's `Watch` only once
//! Redis confirmed), listens on the control topic, and turns every arrival into a message to
//! the Hub. When the link drops it reconnects with capped exponential backoff, resubscribes
//! everything by itself and has the Hub's sessions fill any gap from history.
//!
//! A link can also die without ending (a half-open TCP connection: no error, no data). Every
//! node publishes a heartbeat on the control topic, its own included; when this node's own
//! heartbeats stop coming back over the link, the bridge drops the link and reconnects.
//!
//! Its other part, [`streams`], is not on this path: the Streams readers feed service events
//! to the engine, which publishes them like any publication (and so back through this link).

mod backoff;
pub mod streams;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use redis::aio::PubSubSink;
use redis::Msg;

use backoff::Backoff;

use crate::engine::redis::{Health, Keys};
use crate::engine::{EngineError, ENGINE_DEADLINE};
use crate::hub::{self, Deliver, Hub, Resync, Unwatch, Watch};
use crate::metrics::Metrics;
use crate::protocol::node::{self, NodeMessage, Routing};
use crate::protocol::Close;

/// How long a connection attempt, or the SUBSCRIBE that follows it, may take.
const LINK_DEADLINE: Duration = Duration::from_secs(2);

/// How long a `Watch` may take in all: inside the subscriber's engine deadline, with room for
/// the Hub's round trips, so that the subscriber hears `unavailable` from here rather than
/// running into its own timeout.
const WATCH_DEADLINE: Duration = ENGINE_DEADLINE.saturating_sub(Duration::from_millis(500));

/// Of [`WATCH_DEADLINE`], how long a `Watch` waits for a link that is down (rather than fail a
/// subscribe that would succeed a moment later); the rest is for the SUBSCRIBE.
const LINK_WAIT: Duration = Duration::from_secs(1);

/// This node's own heartbeats that may go without coming back over the link before the link
/// is taken for dead (about three heartbeat periods).
const MISSED_ECHOES: u64 = 3;

/// How often the bridge compares heartbeats published with heartbeats come back.
const ECHO_CHECK: Duration = Duration::from_millis(250);

pub struct RedisBridge {
    client: redis::Client,
    keys: Keys,
    node_id: String,
    hub: Addr<Hub>,
    /// Shared with the engine: `/ready` reads it.
    health: Arc<Health>,
    /// Channels this node needs: subscribed now, or again after a reconnect.
    watched: HashSet<String>,
    /// Present while the link is up; clones subscribe while the stream is being read.
    sink: Option<PubSubSink>,
    /// The link's message stream being read, while the link is up; cancelled (which drops
    /// the connection) when the link went silent.
    stream: Option<SpawnHandle>,
    /// [`Health::beats_published`] when this node's own heartbeat last came back over the link,
    /// or when the link came up.
    echoed_at: u64,
    backoff: Backoff,
    /// Whether the link was up before, so a reconnect knows to resync.
    was_up: bool,
    metrics: Arc<Metrics>,
    /// `true` while the link is up with every watched topic subscribed; a `Watch` that arrives
    /// while it is down waits on it.
    link_ready: tokio::sync::watch::Sender<bool>,
}

impl RedisBridge {
    pub fn new(
        client: redis::Client,
        keys: Keys,
        node_id: String,
        hub: Addr<Hub>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Self {
        RedisBridge {
            client,
            keys,
            node_id,
            hub,
            health,
            watched: HashSet::new(),
            sink: None,
            stream: None,
            echoed_at: 0,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            was_up: false,
            metrics,
            link_ready: tokio::sync::watch::Sender::new(false),
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let mut topics: Vec<String> = self.watched.iter().map(|c| self.keys.topic(c)).collect();
        topics.push(self.keys.control());
        let attempt = async move {
            let pubsub = tokio::time::timeout(LINK_DEADLINE, client.get_async_pubsub())
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            let (mut sink, stream) = pubsub.split();
            tokio::time::timeout(LINK_DEADLINE, sink.subscribe(&topics))
                .await
                .map_err(|_| "subscribe timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((sink, stream))
        };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(|result, bridge, ctx| match result {
                    Ok((sink, stream)) => {
                        bridge.sink = Some(sink);
                        bridge.echoed_at = bridge.health.beats_published();
                        bridge.health.link_up.store(true, Ordering::Release);
                        bridge.link_ready.send_replace(true);
                        bridge.backoff.reset();
                        bridge.stream = Some(ctx.add_stream(stream));
                        tracing::info!(channels = bridge.watched.len(), "redis pub/sub link up");
                        if bridge.was_up {
                            bridge.metrics.redis_reconnects.inc();
                        }
                        if bridge.was_up && !bridge.watched.is_empty() {
                            bridge.hub.do_send(Resync {
                                channels: bridge.watched.iter().cloned().collect(),
                            });
                        }
                        bridge.was_up = true;
                    }
                    Err(e) => {
                        let wait = bridge.backoff.next_delay();
                        tracing::warn!(
                            error = e.as_str(),
                            retry_in_ms = wait.as_millis() as u64,
                            "redis pub/sub link down"
                        );
                        ctx.run_later(wait, |bridge, ctx| bridge.connect(ctx));
                    }
                }),
        );
    }

    fn on_control(&mut self, payload: &[u8]) {
        match serde_json::from_slice::<NodeMessage>(payload) {
            Ok(NodeMessage::Disconnect { user, node }) if node != self.node_id => {
                self.hub.do_send(hub::DisconnectUser {
                    user,
                    close: Close::Disconnected,
                });
            }
            Ok(NodeMessage::Heartbeat { node }) if node == self.node_id => {
                self.echoed_at = self.health.beats_published();
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "unreadable control message"),
        }
    }

    /// Drops a link that no longer delivers this node's own heartbeats, and reconnects.
    fn check_echo(&mut self, ctx: &mut Context<Self>) {
        if self.sink.is_none() {
            return;
        }
        let missed = self.health.beats_published().saturating_sub(self.echoed_at);
        if missed < MISSED_ECHOES {
            return;
        }
        tracing::warn!(
            missed_heartbeats = missed,
            "redis pub/sub link silent: this node's own heartbeats stopped coming back; reconnecting"
        );
        if let Some(stream) = self.stream.take() {
            // Dropping the stream ends the connection's task; `finished` is not called.
            ctx.cancel_future(stream);
        }
        self.link_lost(ctx);
    }

    /// The link is gone: mark it down and reconnect after a backoff.
    fn link_lost(&mut self, ctx: &mut Context<Self>) {
        self.sink = None;
        self.stream = None;
        self.health.link_up.store(false, Ordering::Release);
        self.link_ready.send_replace(false);
        let wait = self.backoff.next_delay();
        tracing::warn!(
            retry_in_ms = wait.as_millis() as u64,
            "redis pub/sub link lost"
        );
        ctx.run_later(wait, |bridge, ctx| bridge.connect(ctx));
    }

    /// A message on a channel's topic: one frame or a bundle of them, routed in order.
    fn on_channel(&self, payload: &[u8]) {
        for frame in node::frames(payload) {
            match frame {
                Ok(frame) => self.on_frame(frame),
                Err(node::MalformedBundle) => {
                    return tracing::warn!(
                        "a malformed bundle of frames arrived on a channel topic"
                    )
                }
            }
        }
    }

    fn on_frame(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return tracing::warn!("a non-UTF-8 frame arrived on a channel topic");
        };
        let routing: Routing<'_> = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => return tracing::warn!(error = %e, "unreadable frame on a channel topic"),
        };
        let delivery = match (routing.kind, routing.offset, routing.epoch, routing.client) {
            ("message", Some(offset), Some(epoch), _) => Deliver::Message {
                channel: routing.channel,
                offset,
                epoch: Arc::from(epoch),
                frame: text.to_owned().into(),
                event_id: routing.event_id.unwrap_or_default(),
                accepted_us: routing.ts.unwrap_or(0).saturating_mul(1000),
            },
            ("join" | "leave", _, _, Some(client)) => Deliver::Presence {
                channel: routing.channel,
                client,
                frame: text.to_owned().into(),
            },
            (kind, ..) => {
                return tracing::warn!(kind = kind, "unexpected frame on a channel topic")
            }
        };
        self.hub.do_send(delivery);
    }
}

impl Actor for RedisBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
        ctx.run_interval(ECHO_CHECK, |bridge, ctx| bridge.check_echo(ctx));
    }
}

impl StreamHandler<Msg> for RedisBridge {
    fn handle(&mut self, msg: Msg, _: &mut Context<Self>) {
        let topic = msg.get_channel_name();
        if topic == self.keys.control() {
            self.on_control(msg.get_payload_bytes());
        } else if self.keys.channel_of(topic).is_some() {
            self.on_channel(msg.get_payload_bytes());
        }
    }

    /// The link dropped (Redis restarted, network): keep the actor, reconnect.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.link_lost(ctx);
    }
}

impl Handler<Watch> for RedisBridge {
    type Result = ResponseActFuture<Self, Result<(), EngineError>>;

    fn handle(&mut self, msg: Watch, _: &mut Context<Self>) -> Self::Result {
        self.watched.insert(msg.channel.clone());
        let topic = self.keys.topic(&msg.channel);
        let deadline = tokio::time::Instant::now() + WATCH_DEADLINE;
        // With the link down (or not up yet, right after start), wait a little for it rather
        // than fail a subscribe that would succeed a moment later.
        let mut link = self.link_ready.subscribe();
        let link_up = async move {
            matches!(
                tokio::time::timeout(LINK_WAIT, link.wait_for(|up| *up)).await,
                Ok(Ok(_))
            )
        };
        Box::pin(link_up.into_actor(self).then(move |up, bridge, _| {
            // SUBSCRIBE is idempotent: issued again even if the reconnect already did it.
            let sink = bridge.sink.clone().filter(|_| up);
            async move {
                let Some(mut sink) = sink else {
                    return Err(EngineError::Unavailable("the redis link is down".into()));
                };
                match tokio::time::timeout_at(deadline, sink.subscribe(&topic)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(EngineError::Unavailable(e.to_string())),
                    Err(_) => Err(EngineError::Unavailable("subscribe timed out".into())),
                }
            }
            .into_actor(bridge)
        }))
    }
}

impl Handler<Unwatch> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: Unwatch, ctx: &mut Context<Self>) {
        self.watched.remove(&msg.channel);
        if let Some(mut sink) = self.sink.clone() {
            let topic = self.keys.topic(&msg.channel);
            // If this fails the link is down, and the reconnect will not subscribe it again.
            ctx.spawn(
                async move {
                    let _ = tokio::time::timeout(LINK_DEADLINE, sink.unsubscribe(&topic)).await;
                }
                .into_actor(self),
            );
        }
    }
}
