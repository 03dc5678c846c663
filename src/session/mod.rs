//! One WebSocket connection as an actor: parses the client's frames, checks permissions, the
//! request rate and message sizes, answers requests, writes pushes, pings, and keeps its
//! outbound backlog counted (see [`outbound`]). It tells the Hub when it subscribes,
//! unsubscribes and goes; engine calls run as spawned futures, so a slow call never holds up
//! pushes or other replies.
//!
//! Subscribing is gapless: the session registers with the Hub first and holds the channel's
//! pushes while the engine reads the channel's position; after `subscribed` it writes the held
//! pushes that come after that position and drops the rest.

mod outbound;
mod rate;

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::web::BytesMut;
use actix_web_actors::ws::{CloseReason, Message as WsMessage, ProtocolError, WebsocketContext};
use bytestring::ByteString;

pub use outbound::{frame_cost, Frames, Metered, Outbound};
use rate::TokenBucket;

use crate::app::AppState;
use crate::auth::{unix_seconds, AuthError, Identity, LEEWAY_S};
use crate::engine::{PublishRequest, ENGINE_DEADLINE};
use crate::error::HubError;
use crate::hub;
use crate::metrics::{Disconnect, Source};
use crate::protocol::client::FrameError;
use crate::protocol::server::{Sender, ServerFrame};
use crate::protocol::{parse_frame, ClientInfo, Close, Position, Request};

/// A frame for one channel, routed by the Hub. Its bytes are shared by every subscriber.
#[derive(Clone)]
pub struct Push {
    pub channel: Arc<str>,
    pub kind: PushKind,
    pub frame: ByteString,
    /// What it counts in a session's backlog: the frame's size on the wire.
    pub cost: usize,
    /// The client a presence push is about, which does not get it.
    pub skip: Option<Arc<str>>,
}

/// One channel's pushes from one Hub flush, in order, shared by all its local subscribers:
/// fan-out costs one reference count per subscriber and flush, not one per push.
pub struct ChannelPushes {
    pub pushes: Vec<Push>,
    /// The pushes' costs together: what the Hub reserves in each subscriber's backlog.
    pub cost: usize,
}

impl ChannelPushes {
    pub fn new(pushes: Vec<Push>) -> Self {
        let cost = pushes.iter().map(|p| p.cost).sum();
        ChannelPushes { pushes, cost }
    }

    /// How many of the pushes `client` gets (all but those about itself).
    pub fn deliveries_to(&self, client: &str) -> u64 {
        self.pushes
            .iter()
            .filter(|p| p.skip.as_deref() != Some(client))
            .count() as u64
    }
}

/// The pushes the Hub gathered for this session since its last flush, one batch per channel:
/// one mailbox message and one wake-up for all of them, and the context writes them in one go.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pushes(pub Vec<Arc<ChannelPushes>>);

#[derive(Clone)]
pub enum PushKind {
    Message { offset: u64, epoch: Arc<str> },
    Presence,
}

/// Orders from the node to a session.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Control {
    Close(Close),
    /// Publications of this channel may have been missed: fill any gap from history.
    Resync(Arc<str>),
}

/// One channel's subscription as this session sees it.
enum SubState {
    /// Registered with the Hub, position not known yet: pushes are held.
    Pending {
        /// Tells this attempt from a later one for the same channel.
        generation: u64,
        held: Vec<Push>,
        /// What the first `subscribe` asked to recover.
        recover: Option<Position>,
        /// Repeated `subscribe` requests that arrived meanwhile, with what each asked to
        /// recover; each gets an answer when the first one's comes.
        waiters: Vec<(Option<u64>, Option<Position>)>,
        /// Set when this `subscribe` repeats one that was already through: what to go back
        /// to if it fails.
        resume: Option<Resume>,
    },
    /// Pushes flow; the last message written, to drop repeats and stale ones.
    Active { epoch: Arc<str>, offset: u64 },
    /// A gap showed after `offset` (or may have, after the node's Redis link came back):
    /// pushes are held while history fills it.
    CatchingUp {
        generation: u64,
        held: Vec<Push>,
        epoch: Arc<str>,
        offset: u64,
    },
}

/// Where a repeated `subscribe` found its channel. The repeat does not register with the Hub
/// or join presence again, so when it fails the subscription must go on from here: dropping
/// it would leave the Hub registration and the presence entry behind, with every push
/// dropped and `unsubscribe` unable to find them.
struct Resume {
    epoch: Arc<str>,
    offset: u64,
    /// A catch-up was under way (and was abandoned for the new subscribe): start it again.
    catching_up: bool,
}

/// A message arriving in several frames.
struct Fragments {
    buf: BytesMut,
    binary: bool,
}

pub struct WsSession {
    client: Arc<str>,
    identity: Identity,
    app: Arc<AppState>,
    /// Shared with the Hub (which counts pushes in) and the response stream (which counts out).
    outbound: Arc<Outbound>,
    /// Where this session's text frames are written; the response stream yields them.
    frames: Frames,
    /// Looked up for every push: FxHash rather than SipHash, safe here because the map holds
    /// at most `HUB_MAX_SUBSCRIPTIONS` entries of this one connection.
    subs: FxHashMap<Arc<str>, SubState>,
    next_generation: u64,
    rate: TokenBucket,
    /// Last time the peer showed it is alive (a pong or any frame).
    last_heard: Instant,
    /// The timer that closes the connection when the token expires; replaced on `refresh`.
    expiry: Option<SpawnHandle>,
    fragments: Option<Fragments>,
    closing: bool,
    /// How the connection ended, for the disconnect metric.
    close_code: Option<Disconnect>,
}

impl WsSession {
    /// A session for an authenticated user who already holds a connection slot under `client`.
    pub fn new(
        client: Arc<str>,
        identity: Identity,
        app: Arc<AppState>,
        outbound: Arc<Outbound>,
        frames: Frames,
    ) -> Self {
        let now = Instant::now();
        WsSession {
            rate: TokenBucket::new(app.config.client_rate, now),
            client,
            identity,
            app,
            outbound,
            frames,
            subs: FxHashMap::default(),
            next_generation: 0,
            last_heard: now,
            expiry: None,
            fragments: None,
            closing: false,
            close_code: None,
        }
    }

    /// Writes a frame of the session's own (a reply), within the same bound as pushes: a
    /// client that requests without reading is as slow as one that only receives.
    fn write(&mut self, ctx: &mut WebsocketContext<Self>, text: ByteString) {
        if self.closing {
            return;
        }
        if self.outbound.try_reserve(frame_cost(text.len())) {
            self.frames.text(text.as_bytes());
        } else {
            self.drop_slow(ctx);
        }
    }

    /// Ends the session as a slow consumer: its response stream writes 4000 next and ends.
    fn drop_slow(&mut self, ctx: &mut WebsocketContext<Self>) {
        if self.outbound.abort_slow() {
            self.app.metrics.slow_consumer_disconnects.inc();
            log::info!(
                client = &*self.client, user = self.identity.user.as_str(), queued_bytes = self.outbound.queued();
                "slow consumer: closing with 4000"
            );
        }
        self.close_code = Some(Disconnect::Server(Close::SlowConsumer));
        self.closing = true;
        ctx.stop();
    }

    fn reply(&mut self, ctx: &mut WebsocketContext<Self>, frame: ServerFrame<'_>) {
        self.write(ctx, frame.encode());
    }

    fn reply_error(&mut self, ctx: &mut WebsocketContext<Self>, id: Option<u64>, error: &HubError) {
        self.app.metrics.error(error.code.as_str());
        log::debug!(
            client = &*self.client, user = self.identity.user.as_str(), code = error.code.as_str();
            "request failed: {}", error.message
        );
        self.reply(
            ctx,
            ServerFrame::Error {
                id,
                code: error.code.as_str(),
                message: &error.message,
            },
        );
    }

    fn close(&mut self, ctx: &mut WebsocketContext<Self>, close: Close) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.close_code = Some(Disconnect::Server(close));
        log::info!(
            client = &*self.client, user = self.identity.user.as_str(), code = close.code(), reason = close.label();
            "closing connection"
        );
        self.outbound.add(4 + close.reason().len());
        ctx.close(Some(close.to_reason()));
        ctx.stop();
    }

    fn schedule_expiry(&mut self, ctx: &mut WebsocketContext<Self>) {
        if let Some(handle) = self.expiry.take() {
            ctx.cancel_future(handle);
        }
        let deadline = self.identity.expires_at.saturating_add(LEEWAY_S);
        // Capped so a far-future `exp` cannot overflow the timer.
        let wait =
            Duration::from_secs(deadline.saturating_sub(unix_seconds()).min(365 * 24 * 3600));
        self.expiry = Some(ctx.run_later(wait, |act, ctx| act.close(ctx, Close::TokenExpired)));
    }

    fn on_text(&mut self, text: &str, ctx: &mut WebsocketContext<Self>) {
        let parsed = parse_frame(text);
        if !self.rate.take(Instant::now()) {
            let id = match &parsed {
                Ok((id, _)) => *id,
                Err(e) => e.id,
            };
            self.reply_error(
                ctx,
                id,
                &HubError::rate_limited("over the request rate; request dropped"),
            );
            return;
        }
        match parsed {
            Ok((id, request)) => self.on_request(id, request, ctx),
            Err(FrameError { id, error }) => self.reply_error(ctx, id, &error),
        }
    }

    /// A binary message is a request the contract refuses; it takes a token like any other, so
    /// a flood of them is rate limited too (one reply per message either way).
    fn on_binary(&mut self, ctx: &mut WebsocketContext<Self>) {
        let error = if self.rate.take(Instant::now()) {
            HubError::bad_request("binary frames are not supported; send JSON text")
        } else {
            HubError::rate_limited("over the request rate; request dropped")
        };
        self.reply_error(ctx, None, &error);
    }

    fn on_request(&mut self, id: Option<u64>, request: Request, ctx: &mut WebsocketContext<Self>) {
        match request {
            Request::Ping => self.reply(ctx, ServerFrame::Pong { id }),
            Request::Subscribe { channel, recover } => self.subscribe(id, channel, recover, ctx),
            Request::Unsubscribe { channel } => {
                self.unsubscribe(&channel, ctx);
                self.reply(
                    ctx,
                    ServerFrame::Unsubscribed {
                        id,
                        channel: &channel,
                    },
                );
            }
            Request::Publish {
                channel,
                data,
                event_id,
                event_type,
            } => self.publish(id, channel, data, event_id, event_type, ctx),
            Request::History {
                channel,
                limit,
                since,
            } => self.history(id, channel, limit, since, ctx),
            Request::Presence { channel } => self.presence(id, channel, ctx),
            Request::Refresh { token } => self.refresh(id, &token, ctx),
        }
    }

    fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: String,
        recover: Option<Position>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        if !self.identity.can_subscribe(&channel) {
            return self.reply_error(
                ctx,
                id,
                &HubError::forbidden(format!("no permission to subscribe to {channel}")),
            );
        }
        let subscriptions = self.subs.len();
        match self.subs.get_mut(channel.as_str()) {
            Some(SubState::Pending { waiters, .. }) => {
                waiters.push((id, recover));
                return;
            }
            Some(_) => {}
            None if subscriptions >= self.app.config.max_subscriptions => {
                return self.reply_error(
                    ctx,
                    id,
                    &HubError::limit_exceeded(format!(
                        "at most {} subscriptions per connection",
                        self.app.config.max_subscriptions
                    )),
                );
            }
            None => {}
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let key: Arc<str> = Arc::from(channel.as_str());
        // Pushes held by a catch-up in progress move over; the new answer decides which stay.
        let (held, resume) = match self.subs.remove(&*key) {
            Some(SubState::CatchingUp {
                held,
                epoch,
                offset,
                ..
            }) => (
                held,
                Some(Resume {
                    epoch,
                    offset,
                    catching_up: true,
                }),
            ),
            Some(SubState::Active { epoch, offset }) => (
                Vec::new(),
                Some(Resume {
                    epoch,
                    offset,
                    catching_up: false,
                }),
            ),
            _ => (Vec::new(), None),
        };
        // A new subscription registers with the Hub; a repeat already is.
        let register = resume.is_none();
        // A repeat that asks for nothing still reads from where this session stands: the
        // answer gives the channel's latest offset, and what this session has not delivered
        // yet (a publication still on its way, e.g. over Redis pub/sub) goes out as pushes
        // ahead of it, so pushes go on after the answer's offset with none missed or doubled.
        let read_from = match (&recover, &resume) {
            (None, Some(r)) => Some(Position {
                offset: r.offset,
                epoch: r.epoch.to_string(),
            }),
            _ => recover.clone(),
        };
        self.subs.insert(
            Arc::clone(&key),
            SubState::Pending {
                generation,
                held,
                recover: recover.clone(),
                waiters: Vec::new(),
                resume,
            },
        );
        let hub = self.app.hub.clone();
        let engine = Arc::clone(&self.app.engine);
        let client = Arc::clone(&self.client);
        let fut = async move {
            if register {
                let subscribe = hub.send(hub::Subscribe {
                    client,
                    channel: channel.clone(),
                });
                match tokio::time::timeout(ENGINE_DEADLINE, subscribe).await {
                    Ok(Ok(Ok(_))) => {}
                    Ok(Ok(Err(e))) => return Err(e),
                    Ok(Err(_)) => return Err(HubError::internal("hub unavailable")),
                    Err(_) => {
                        return Err(HubError::unavailable("the hub is overloaded; retry later"))
                    }
                }
            }
            // Only now, with the Hub routing the channel to us, is the position read.
            engine
                .subscribe(&channel, read_from.as_ref())
                .await
                .map_err(HubError::from)
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.subscribed(id, key, generation, register, result, ctx)
        }));
    }

    /// The engine answered a subscribe. On success the connection joins the channel's
    /// presence first (when it is new to the channel), so that once `subscribed` is out,
    /// presence queries anywhere list it.
    fn subscribed(
        &mut self,
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        registered: bool,
        result: Result<crate::engine::Subscribed, HubError>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        if !self.is_pending(&channel, generation) {
            // Unsubscribed while the engine answered. Our Hub registration may have reached
            // the Hub after the unsubscribe did: take it back, unless a newer subscribe to the
            // same channel is using it.
            if registered && !self.subs.contains_key(&*channel) {
                self.app.hub.do_send(hub::Unsubscribe {
                    client: Arc::clone(&self.client),
                    channel: channel.to_string(),
                });
            }
            return self.reply_error(
                ctx,
                id,
                &HubError::bad_request("unsubscribed before the subscription completed"),
            );
        }
        let sub = match result {
            Ok(sub) => sub,
            Err(error) => {
                if let Some(SubState::Pending {
                    held,
                    waiters,
                    resume,
                    ..
                }) = self.subs.remove(&*channel)
                {
                    for (waiter, _) in waiters {
                        self.reply_error(ctx, waiter, &error);
                    }
                    match resume {
                        Some(resume) => self.resume(Arc::clone(&channel), resume, held, ctx),
                        None => {
                            for push in held {
                                self.outbound.release(push.cost);
                            }
                        }
                    }
                }
                if registered {
                    self.app.hub.do_send(hub::Unsubscribe {
                        client: Arc::clone(&self.client),
                        channel: channel.to_string(),
                    });
                }
                return self.reply_error(ctx, id, &error);
            }
        };
        if !registered {
            return self.complete_subscribe(id, channel, generation, sub, ctx);
        }
        let info = ClientInfo {
            client: self.client.to_string(),
            user: self.identity.user.clone(),
            info: self.identity.info.clone(),
        };
        let joined = self
            .app
            .engine
            .join(&channel, info, self.app.announces(&channel));
        ctx.spawn(joined.into_actor(self).map(move |joined, act, ctx| {
            if let Err(e) = joined {
                // The subscription itself holds; presence catches up at the next heartbeat.
                log::warn!(
                    client = &*act.client, channel = &*channel, error:% = e;
                    "presence join failed"
                );
            }
            act.complete_subscribe(id, channel, generation, sub, ctx)
        }));
    }

    /// Goes back to the subscription a failed repeated `subscribe` found. The pushes held
    /// meanwhile go through the usual checks (a gap among them starts a catch-up), and a
    /// catch-up that was under way starts again.
    fn resume(
        &mut self,
        channel: Arc<str>,
        resume: Resume,
        held: Vec<Push>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        if resume.catching_up {
            return self.catch_up(channel, resume.epoch, resume.offset, held, ctx);
        }
        self.subs.insert(
            channel,
            SubState::Active {
                epoch: resume.epoch,
                offset: resume.offset,
            },
        );
        for push in held {
            self.on_push(&push, ctx);
        }
    }

    fn is_pending(&self, channel: &str, generation: u64) -> bool {
        matches!(self.subs.get(channel), Some(SubState::Pending { generation: g, .. }) if *g == generation)
    }

    /// Answers a subscribe (and the repeats that waited on it), then writes the held pushes
    /// that come after the answer's position and lets pushes flow.
    fn complete_subscribe(
        &mut self,
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        sub: crate::engine::Subscribed,
        ctx: &mut WebsocketContext<Self>,
    ) {
        let (held, waiters, asked, resume) = match self.subs.get_mut(&*channel) {
            Some(SubState::Pending {
                generation: g,
                held,
                recover,
                waiters,
                resume,
            }) if *g == generation => (
                std::mem::take(held),
                std::mem::take(waiters),
                recover.take(),
                resume.take(),
            ),
            // Unsubscribed while joining presence: the leave was queued after the join.
            _ => {
                return self.reply_error(
                    ctx,
                    id,
                    &HubError::bad_request("unsubscribed before the subscription completed"),
                )
            }
        };
        if let (None, Some(mut resume)) = (&asked, resume) {
            if *resume.epoch == *sub.position.epoch {
                // A repeat that asked for nothing, in the same life of the channel: what the
                // engine read after this session's own position goes out as pushes and the
                // answer gives the latest offset. When history no longer holds all of that gap
                // (more than a history's worth still on its way), the answer gives this
                // session's own position instead, so that what is in transit still arrives.
                // Either way the subscription goes on as before the repeat.
                if let Some(frames) = sub.recovered {
                    for frame in frames {
                        if message_offset(&frame).is_some_and(|o| o > resume.offset) {
                            self.write(ctx, ByteString::from(frame.get().to_owned()));
                        }
                    }
                    resume = Resume {
                        epoch: resume.epoch,
                        offset: sub.position.offset,
                        catching_up: false,
                    };
                }
                let answers = std::iter::once(id).chain(waiters.into_iter().map(|(w, _)| w));
                for waiter in answers {
                    let text = ServerFrame::Subscribed {
                        id: waiter,
                        channel: &channel,
                        offset: resume.offset,
                        epoch: &resume.epoch,
                        recovered: false,
                        publications: &[],
                    }
                    .encode();
                    self.write(ctx, text);
                }
                return self.resume(channel, resume, held, ctx);
            }
        }
        // A repeat in a new life of the channel cannot have recovered anything either.
        let recovered = sub.recovered.is_some();
        let publications = sub.recovered.unwrap_or_default();
        let answers = std::iter::once((id, asked.clone())).chain(waiters);
        for (waiter, wanted) in answers {
            // A repeated subscribe that asked to recover from elsewhere cannot share the first
            // one's publications: it is told to reload instead.
            let same = wanted == asked;
            let frame = ServerFrame::Subscribed {
                id: waiter,
                channel: &channel,
                offset: sub.position.offset,
                epoch: &sub.position.epoch,
                recovered: recovered && same,
                publications: if same { &publications } else { &[] },
            };
            let text = frame.encode();
            self.write(ctx, text);
        }
        let mut epoch: Arc<str> = Arc::from(sub.position.epoch.as_str());
        let mut offset = sub.position.offset;
        for push in held {
            match &push.kind {
                PushKind::Message {
                    offset: o,
                    epoch: e,
                } if **e == *epoch && *o <= offset => {
                    self.outbound.release(push.cost);
                    continue;
                }
                PushKind::Message {
                    offset: o,
                    epoch: e,
                } => {
                    epoch = Arc::clone(e);
                    offset = *o;
                }
                PushKind::Presence => {}
            }
            self.frames.text(push.frame.as_bytes());
        }
        self.subs
            .insert(Arc::clone(&channel), SubState::Active { epoch, offset });
    }

    /// Holds the channel's pushes and writes what history has after `offset` first, so the
    /// client still sees every offset once, in order. A gap history cannot fill stays visible
    /// in the offsets, and the client recovers as after `recovered:false`.
    fn catch_up(
        &mut self,
        channel: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
        held: Vec<Push>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.subs.insert(
            Arc::clone(&channel),
            SubState::CatchingUp {
                generation,
                held,
                epoch: Arc::clone(&epoch),
                offset,
            },
        );
        self.catch_up_attempt(channel, epoch, offset, generation, 0, ctx);
    }

    /// One history read for a catch-up. A failed read (the engine's link may just be coming
    /// back) is retried a few times with backoff while the pushes stay held; after that the
    /// held pushes go out as they are and the client sees the gap in the offsets.
    fn catch_up_attempt(
        &mut self,
        channel: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
        generation: u64,
        attempt: u32,
        ctx: &mut WebsocketContext<Self>,
    ) {
        const ATTEMPTS: u32 = 5;
        let engine = Arc::clone(&self.app.engine);
        let limit = self.app.config.history_size;
        let since = Position {
            offset,
            epoch: epoch.to_string(),
        };
        let name = Arc::clone(&channel);
        let fut = async move { engine.history(&name, limit, Some(&since)).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let current = matches!(
                act.subs.get(&*channel),
                Some(SubState::CatchingUp { generation: g, .. }) if *g == generation
            );
            if !current {
                return;
            }
            let (mut epoch, mut offset) = (epoch, offset);
            match result {
                Ok(page) => {
                    if *page.position.epoch != *epoch {
                        // A new life of the channel: its offsets start again at 1.
                        epoch = Arc::from(page.position.epoch.as_str());
                        offset = 0;
                    }
                    for frame in &page.publications {
                        let Some(o) = message_offset(frame) else {
                            continue;
                        };
                        if o <= offset {
                            continue;
                        }
                        act.write(ctx, ByteString::from(frame.get().to_owned()));
                        offset = o;
                    }
                }
                Err(e) if attempt + 1 < ATTEMPTS => {
                    let wait = Duration::from_millis(200 << attempt);
                    log::debug!(
                        client = &*act.client, channel = &*channel, error:% = e, retry_in_ms = wait.as_millis() as u64;
                        "history read for a catch-up failed; retrying"
                    );
                    ctx.run_later(wait, move |act, ctx| {
                        act.catch_up_attempt(channel, epoch, offset, generation, attempt + 1, ctx)
                    });
                    return;
                }
                Err(e) => log::warn!(
                    client = &*act.client, channel = &*channel, error:% = e;
                    "cannot fill a gap from history"
                ),
            }
            let held = match act.subs.get_mut(&*channel) {
                Some(SubState::CatchingUp { held, .. }) => std::mem::take(held),
                _ => Vec::new(),
            };
            for push in held {
                if let PushKind::Message {
                    offset: o,
                    epoch: e,
                } = &push.kind
                {
                    if **e == *epoch && *o <= offset {
                        act.outbound.release(push.cost);
                        continue;
                    }
                    epoch = Arc::clone(e);
                    offset = *o;
                }
                act.frames.text(push.frame.as_bytes());
            }
            act.subs.insert(channel, SubState::Active { epoch, offset });
        }));
    }

    fn unsubscribe(&mut self, channel: &str, ctx: &mut WebsocketContext<Self>) {
        let Some(state) = self.subs.remove(channel) else {
            return;
        };
        match state {
            SubState::Pending { held, waiters, .. } => {
                for push in held {
                    self.outbound.release(push.cost);
                }
                // The first request is answered when the engine's answer comes; these now.
                let error = HubError::bad_request("unsubscribed before the subscription completed");
                for (waiter, _) in waiters {
                    self.reply_error(ctx, waiter, &error);
                }
            }
            SubState::CatchingUp { held, .. } => {
                for push in held {
                    self.outbound.release(push.cost);
                }
            }
            SubState::Active { .. } => {}
        }
        self.app.hub.do_send(hub::Unsubscribe {
            client: Arc::clone(&self.client),
            channel: channel.to_owned(),
        });
        self.app
            .engine
            .leave(channel, &self.client, self.app.announces(channel));
    }

    fn publish(
        &mut self,
        id: Option<u64>,
        channel: String,
        data: Box<serde_json::value::RawValue>,
        event_id: Option<String>,
        event_type: Option<String>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        if !self.identity.can_publish(&channel) {
            return self.reply_error(
                ctx,
                id,
                &HubError::forbidden(format!("no permission to publish to {channel}")),
            );
        }
        let request = PublishRequest {
            channel: channel.clone(),
            data,
            event_id,
            event_type,
            from: Some(Sender {
                user: self.identity.user.clone(),
                client: self.client.to_string(),
            }),
        };
        if let Err(e) = request.validate(self.app.config.max_publication_bytes) {
            return self.reply_error(ctx, id, &e);
        }
        let engine = Arc::clone(&self.app.engine);
        let fut = async move { engine.publish(request).await };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(p) => {
                        if !p.duplicate {
                            act.app.metrics.published(Source::Client);
                        }
                        log::debug!(
                            client = &*act.client, user = act.identity.user.as_str(), channel = channel.as_str(),
                            event_id = p.event_id.as_str(), offset = p.position.offset, duplicate = p.duplicate;
                            "published by client"
                        );
                        act.reply(
                            ctx,
                            ServerFrame::Published {
                                id,
                                channel: &channel,
                                offset: p.position.offset,
                                epoch: &p.position.epoch,
                                event_id: &p.event_id,
                            },
                        )
                    }
                    Err(e) => act.reply_error(ctx, id, &e.into()),
                }),
        );
    }

    fn history(
        &mut self,
        id: Option<u64>,
        channel: String,
        limit: Option<u64>,
        since: Option<Position>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        if !self.identity.can_subscribe(&channel) {
            return self.reply_error(
                ctx,
                id,
                &HubError::forbidden(format!("no permission for the history of {channel}")),
            );
        }
        let cap = self.app.config.history_size;
        let limit = limit.map_or(cap, |l| usize::try_from(l).unwrap_or(usize::MAX).min(cap));
        let engine = Arc::clone(&self.app.engine);
        let fut = async move {
            let page = engine.history(&channel, limit, since.as_ref()).await;
            (channel, page)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |(channel, result), act, ctx| match result {
                    Ok(page) => act.reply(
                        ctx,
                        ServerFrame::History {
                            id,
                            channel: &channel,
                            offset: page.position.offset,
                            epoch: &page.position.epoch,
                            publications: &page.publications,
                        },
                    ),
                    Err(e) => act.reply_error(ctx, id, &e.into()),
                }),
        );
    }

    fn presence(&mut self, id: Option<u64>, channel: String, ctx: &mut WebsocketContext<Self>) {
        if !self.identity.can_subscribe(&channel) {
            return self.reply_error(
                ctx,
                id,
                &HubError::forbidden(format!("no permission for the presence of {channel}")),
            );
        }
        let engine = Arc::clone(&self.app.engine);
        let fut = async move {
            let clients = engine.presence(&channel).await;
            (channel, clients)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |(channel, result), act, ctx| match result {
                    Ok(clients) => act.reply(
                        ctx,
                        ServerFrame::Presence {
                            id,
                            channel: &channel,
                            clients: &clients,
                        },
                    ),
                    Err(e) => act.reply_error(ctx, id, &e.into()),
                }),
        );
    }

    fn refresh(&mut self, id: Option<u64>, token: &str, ctx: &mut WebsocketContext<Self>) {
        let identity = match self.app.verifier.verify(token) {
            Ok(identity) => identity,
            Err(AuthError::Expired) => {
                return self.reply_error(ctx, id, &HubError::forbidden("token expired"))
            }
            Err(AuthError::Invalid(why)) => {
                return self.reply_error(
                    ctx,
                    id,
                    &HubError::forbidden(format!("invalid token: {why}")),
                )
            }
        };
        if identity.user != self.identity.user {
            return self.reply_error(
                ctx,
                id,
                &HubError::forbidden("refresh must keep the same `sub`"),
            );
        }
        self.identity = identity;
        self.schedule_expiry(ctx);
        let expires_at = self.identity.expires_at;
        self.reply(ctx, ServerFrame::Refreshed { id, expires_at });
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut WebsocketContext<Self>) {
        let max = self.app.config.max_frame_bytes;
        let (chunk, last) = match item {
            Item::FirstText(b) | Item::FirstBinary(b) if self.fragments.is_some() => {
                drop(b);
                return self.close(ctx, Close::ProtocolError);
            }
            Item::FirstText(b) => {
                self.fragments = Some(Fragments {
                    buf: BytesMut::new(),
                    binary: false,
                });
                (b, false)
            }
            Item::FirstBinary(b) => {
                self.fragments = Some(Fragments {
                    buf: BytesMut::new(),
                    binary: true,
                });
                (b, false)
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let Some(frags) = self.fragments.as_mut() else {
            return self.close(ctx, Close::ProtocolError);
        };
        if frags.buf.len() + chunk.len() > max {
            self.fragments = None;
            return self.close(ctx, Close::MessageTooBig);
        }
        frags.buf.extend_from_slice(&chunk);
        if !last {
            return;
        }
        let Some(frags) = self.fragments.take() else {
            return;
        };
        if frags.binary {
            return self.on_binary(ctx);
        }
        match std::str::from_utf8(&frags.buf) {
            Ok(text) => {
                let text = text.to_owned();
                self.on_text(&text, ctx);
            }
            Err(_) => self.close(ctx, Close::InvalidUtf8),
        }
    }
}

/// actix-web-actors hands on the end of the connection's input as an I/O error carrying only
/// the text of actix-http's `PayloadError::Incomplete(None)`.
fn is_peer_gone(e: &std::io::Error) -> bool {
    thread_local! {
        static ENDED: String = actix_http::error::PayloadError::Incomplete(None).to_string();
    }
    ENDED.with(|ended| e.to_string() == *ended)
}

/// The offset of an encoded `message` frame (read without parsing the rest of it).
fn message_offset(frame: &crate::protocol::Message) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct OffsetOnly {
        offset: u64,
    }
    serde_json::from_str::<OffsetOnly>(frame.get())
        .ok()
        .map(|m| m.offset)
}

impl Actor for WsSession {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Pushes are bounded by bytes (see `Outbound`); the message count bound only keeps a
        // flood of tiny frames from growing the mailbox's own bookkeeping without limit.
        ctx.set_mailbox_capacity((self.app.config.client_queue_bytes / 128).clamp(64, 16_384));
        let addr = ctx.address();
        self.app.hub.do_send(hub::Connect {
            client: Arc::clone(&self.client),
            user: self.identity.user.clone(),
            push: addr.clone().recipient(),
            control: addr.recipient(),
            outbound: Arc::clone(&self.outbound),
        });
        let welcome = ServerFrame::Welcome {
            client: &self.client,
            user: &self.identity.user,
            node: self.app.node_id(),
            expires_at: self.identity.expires_at,
        }
        .encode();
        self.write(ctx, welcome);
        self.schedule_expiry(ctx);
        let interval = self.app.config.ping_interval;
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_heard.elapsed() > interval.saturating_mul(2) {
                log::info!(
                    client = &*act.client, user = act.identity.user.as_str();
                    "no pong for two intervals: dropping the connection"
                );
                act.close_code = Some(Disconnect::Dropped);
                act.closing = true;
                ctx.stop();
            } else {
                act.outbound.add(2);
                ctx.ping(b"");
            }
        });
        log::debug!(client = &*self.client, user = self.identity.user.as_str(); "connected");
    }
}

impl Drop for WsSession {
    /// Cleanup lives here rather than in `stopped`: when the connection dies, the HTTP
    /// dispatcher drops the context, and only `Drop` is sure to run for every session.
    fn drop(&mut self) {
        for channel in self.subs.keys() {
            self.app
                .engine
                .leave(channel, &self.client, self.app.announces(channel));
        }
        self.app
            .engine
            .release_connection(&self.identity.user, &self.client);
        self.app.hub.do_send(hub::Disconnect {
            client: Arc::clone(&self.client),
        });
        // A connection that ended without a close from either side counts as 1006.
        let how = if self.outbound.is_aborted() {
            Disconnect::Server(Close::SlowConsumer)
        } else {
            self.close_code.unwrap_or(Disconnect::Dropped)
        };
        self.app.metrics.disconnected(how);
        log::debug!(client = &*self.client, user = self.identity.user.as_str(), how:? = how; "disconnected");
    }
}

impl Handler<Pushes> for WsSession {
    type Result = ();

    fn handle(&mut self, pushes: Pushes, ctx: &mut Self::Context) {
        for batch in &pushes.0 {
            for push in &batch.pushes {
                self.on_push(push, ctx);
            }
        }
    }
}

impl WsSession {
    fn on_push(&mut self, push: &Push, ctx: &mut WebsocketContext<Self>) {
        if self.closing || push.skip.as_deref() == Some(&*self.client) {
            // A presence push about this very session: the others get it.
            return self.outbound.release(push.cost);
        }
        let Some(state) = self.subs.get_mut(&*push.channel) else {
            // Unsubscribed while this push was on its way.
            return self.outbound.release(push.cost);
        };
        match state {
            SubState::Pending { held, .. } | SubState::CatchingUp { held, .. } => {
                held.push(push.clone())
            }
            SubState::Active { epoch, offset } => {
                if let PushKind::Message {
                    offset: o,
                    epoch: e,
                } = &push.kind
                {
                    // Engines share one epoch Arc per channel life: pointers usually decide.
                    if Arc::ptr_eq(e, epoch) || **e == **epoch {
                        if *o <= *offset {
                            return self.outbound.release(push.cost);
                        }
                        if *o > *offset + 1 {
                            // Only a lost link between nodes makes a gap; history fills it.
                            let (epoch, offset) = (Arc::clone(epoch), *offset);
                            let channel = Arc::clone(&push.channel);
                            return self.catch_up(channel, epoch, offset, vec![push.clone()], ctx);
                        }
                    }
                    if !Arc::ptr_eq(e, epoch) {
                        *epoch = Arc::clone(e);
                    }
                    *offset = *o;
                }
                self.frames.text(push.frame.as_bytes());
            }
        }
    }
}

impl Handler<Control> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Self::Context) {
        match msg {
            Control::Close(close) => self.close(ctx, close),
            Control::Resync(channel) => {
                if let Some(SubState::Active { epoch, offset }) = self.subs.get(&*channel) {
                    let (epoch, offset) = (Arc::clone(epoch), *offset);
                    self.catch_up(channel, epoch, offset, Vec::new(), ctx);
                }
            }
        }
    }
}

impl StreamHandler<Result<WsMessage, ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<WsMessage, ProtocolError>, ctx: &mut Self::Context) {
        if self.closing {
            return;
        }
        self.last_heard = Instant::now();
        match msg {
            Ok(WsMessage::Text(text)) => {
                if self.fragments.is_some() {
                    return self.close(ctx, Close::ProtocolError);
                }
                self.on_text(&text, ctx)
            }
            Ok(WsMessage::Binary(_)) => self.on_binary(ctx),
            Ok(WsMessage::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(WsMessage::Ping(payload)) => {
                self.outbound.add(frame_cost(payload.len()));
                ctx.pong(&payload);
            }
            Ok(WsMessage::Pong(_)) | Ok(WsMessage::Nop) => {}
            Ok(WsMessage::Close(reason)) => {
                self.closing = true;
                self.close_code = Some(Disconnect::Client);
                ctx.close(reason.map(|r| CloseReason {
                    code: r.code,
                    description: None,
                }));
                ctx.stop();
            }
            Err(ProtocolError::Io(e)) if is_peer_gone(&e) => {
                // The TCP connection ended without a close frame (a killed tab, a lost
                // network): nobody is left to tell, and it is no protocol error of the peer.
                self.closing = true;
                self.close_code = Some(Disconnect::Dropped);
                ctx.stop();
            }
            Err(ProtocolError::Overflow) => self.close(ctx, Close::MessageTooBig),
            Err(ProtocolError::Io(e)) if e.to_string().to_ascii_lowercase().contains("utf") => {
                self.close(ctx, Close::InvalidUtf8)
            }
            Err(e) => {
                log::debug!(client = &*self.client, error:% = e; "websocket protocol error");
                self.close(ctx, Close::ProtocolError)
            }
        }
    }

    /// The peer's side ended (TCP closed): nothing more to say to it.
    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Used by the upgrade handler for connections refused before a session exists: it completes
/// the upgrade and closes at once with the reason, so a browser can tell why.
pub struct Refused(pub Close);

impl Actor for Refused {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.close(Some(self.0.to_reason()));
        ctx.stop();
    }
}

impl StreamHandler<Result<WsMessage, ProtocolError>> for Refused {
    fn handle(&mut self, _: Result<WsMessage, ProtocolError>, _: &mut Self::Context) {}
}
