//! One WebSocket connection as an actor: parses the client's frames, checks permissions, the
//! request rate and message sizes, answers requests, writes pushes, pings, and keeps its
//! outbound backlog counted (see [`outbound`]). It tells the Hub when it subscribes,
//! unsubscribes and goes; engine calls run as spawned futures, so a slow call never holds up
//! pushes or other replies.
//!
//! Subscribing is gapless: the rules (holding pushes while the position is read, recovery,
//! repeats, catch-ups) live in [`subscription`], a plain state machine; this actor performs the
//! actions it returns. A session needs only [`SessionHandles`], not the whole node state.

mod handles;
mod outbound;
mod rate;
pub mod subscription;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::web::BytesMut;
use actix_web_actors::ws::{CloseReason, Message as WsMessage, ProtocolError, WebsocketContext};
use bytestring::ByteString;

// The Hub's messages, re-exported where sessions (and tests driving them) have always found them.
pub use crate::hub::{frame_cost, ChannelPushes, Control, Outbound, Push, PushKind, Pushes};
pub use handles::{SessionHandles, SessionSettings};
pub use outbound::{Frames, Metered};
use rate::TokenBucket;
use subscription::{Action, HistoryRead, PushOutcome, Subscriptions};

use crate::auth::{AuthError, Identity, LEEWAY_S};
use crate::clock::unix_seconds;
use crate::engine::{PublishRequest, Reason, ENGINE_DEADLINE};
use crate::error::HubError;
use crate::hub;
use crate::metrics::{Disconnect, Source};
use crate::protocol::client::FrameError;
use crate::protocol::server::{Sender, ServerFrame};
use crate::protocol::{parse_frame, ClientInfo, Close, Position, Request};

/// A message arriving in several frames.
struct Fragments {
    buf: BytesMut,
    binary: bool,
}

pub struct WsSession {
    client: Arc<str>,
    identity: Identity,
    /// The node's handles; shared by every session of the node.
    app: Arc<SessionHandles>,
    /// Shared with the Hub (which counts pushes in) and the response stream (which counts out).
    outbound: Arc<Outbound>,
    /// Where this session's text frames are written; the response stream yields them.
    frames: Frames,
    /// Every channel's subscription state; the rules live there, this actor performs them.
    subs: Subscriptions,
    rate: TokenBucket,
    /// Last time the peer showed it is alive (a pong or any frame).
    last_heard: Instant,
    /// The timer that closes the connection when the token expires; replaced on `refresh`.
    expiry: Option<SpawnHandle>,
    fragments: Option<Fragments>,
    closing: bool,
    /// How the connection ended, for the disconnect metric.
    close_code: Option<Disconnect>,
    /// Gives every line this session logs (`parent: &self.span`) its `client` and `user`.
    span: tracing::Span,
}

impl WsSession {
    /// A session for an authenticated user who already holds a connection slot under `client`.
    pub fn new(
        client: Arc<str>,
        identity: Identity,
        app: Arc<SessionHandles>,
        outbound: Arc<Outbound>,
        frames: Frames,
    ) -> Self {
        let now = Instant::now();
        WsSession {
            rate: TokenBucket::new(app.settings.client_rate, now),
            subs: Subscriptions::new(Arc::clone(&client), app.settings.max_subscriptions),
            span: crate::logging::session_span(&client, &identity.user),
            client,
            identity,
            app,
            outbound,
            frames,
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
            tracing::info!(
                parent: &self.span,
                queued_bytes = self.outbound.queued(),
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
        tracing::debug!(
            parent: &self.span,
            code = error.code.as_str(),
            "request failed: {}",
            error.message
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
        tracing::info!(
            parent: &self.span,
            code = close.code(),
            reason = close.label(),
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
        let actions = self.subs.subscribe(id, &channel, recover);
        self.perform(actions, ctx);
    }

    /// Carries out what the subscription rules decided.
    fn perform(&mut self, actions: Vec<Action>, ctx: &mut WebsocketContext<Self>) {
        for action in actions {
            match action {
                Action::Write(text) => self.write(ctx, text),
                Action::Deliver(push) => self.frames.text(push.frame.as_bytes()),
                Action::Release(cost) => self.outbound.release(cost),
                Action::Error { id, error } => self.reply_error(ctx, id, &error),
                Action::Subscribe {
                    id,
                    channel,
                    generation,
                    register,
                    read_from,
                } => self.start_subscribe(id, channel, generation, register, read_from, ctx),
                Action::Join {
                    id,
                    channel,
                    generation,
                    sub,
                } => self.join(id, channel, generation, sub, ctx),
                Action::Unregister(channel) => self.app.hub.do_send(hub::Unsubscribe {
                    client: Arc::clone(&self.client),
                    channel: channel.to_string(),
                }),
                Action::Leave(channel) => self.app.engine.leave(
                    &channel,
                    &self.client,
                    self.app.settings.announces(&channel),
                    Reason::Closed,
                ),
                Action::ReadHistory { read, delay: None } => self.read_history(read, ctx),
                Action::ReadHistory {
                    read,
                    delay: Some(wait),
                } => {
                    ctx.run_later(wait, move |act, ctx| act.read_history(read, ctx));
                }
            }
        }
    }

    /// Registers with the Hub (for a new subscription), and only then, with the Hub routing
    /// the channel to us, reads the position.
    fn start_subscribe(
        &mut self,
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        register: bool,
        read_from: Option<Position>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        let hub = self.app.hub.clone();
        let engine = Arc::clone(&self.app.engine);
        let client = Arc::clone(&self.client);
        let name = Arc::clone(&channel);
        let fut = async move {
            if register {
                let subscribe = hub.send(hub::Subscribe {
                    client,
                    channel: name.to_string(),
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
            engine
                .subscribe(&name, read_from.as_ref())
                .await
                .map_err(HubError::from)
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let actions = act.subs.answered(id, channel, generation, register, result);
            act.perform(actions, ctx)
        }));
    }

    /// Joins the channel's presence before the `subscribed` reply goes out.
    fn join(
        &mut self,
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        sub: crate::engine::Subscribed,
        ctx: &mut WebsocketContext<Self>,
    ) {
        let info = ClientInfo {
            client: self.client.to_string(),
            user: self.identity.user.clone(),
            info: self.identity.info.clone(),
        };
        let joined = self
            .app
            .engine
            .join(&channel, info, self.app.settings.announces(&channel));
        ctx.spawn(joined.into_actor(self).map(move |joined, act, ctx| {
            if let Err(e) = joined {
                // The subscription itself holds; presence catches up at the next heartbeat.
                tracing::warn!(
                    parent: &act.span,
                    channel = &*channel,
                    error = %e,
                    "presence join failed"
                );
            }
            let actions = act.subs.joined(id, channel, generation, sub);
            act.perform(actions, ctx)
        }));
    }

    /// One history read for a catch-up.
    fn read_history(&mut self, read: HistoryRead, ctx: &mut WebsocketContext<Self>) {
        let engine = Arc::clone(&self.app.engine);
        let limit = self.app.settings.history_size;
        let since = Position {
            offset: read.offset,
            epoch: read.epoch.to_string(),
        };
        let name = Arc::clone(&read.channel);
        let fut = async move { engine.history(&name, limit, Some(&since)).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let actions = act.subs.history_answered(read, result);
            act.perform(actions, ctx)
        }));
    }

    fn unsubscribe(&mut self, channel: &str, ctx: &mut WebsocketContext<Self>) {
        let actions = self.subs.unsubscribe(channel);
        self.perform(actions, ctx);
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
        if let Err(e) = request.validate(self.app.settings.max_publication_bytes) {
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
                        tracing::debug!(
                            parent: &act.span,
                            channel = channel.as_str(),
                            event_id = p.event_id.as_str(),
                            offset = p.position.offset,
                            duplicate = p.duplicate,
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
        let cap = self.app.settings.history_size;
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
        let max = self.app.settings.max_frame_bytes;
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

impl Actor for WsSession {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Pushes are bounded by bytes (see `Outbound`); the message count bound only keeps a
        // flood of tiny frames from growing the mailbox's own bookkeeping without limit.
        ctx.set_mailbox_capacity((self.app.settings.client_queue_bytes / 128).clamp(64, 16_384));
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
            node: &self.app.settings.node_id,
            expires_at: self.identity.expires_at,
        }
        .encode();
        self.write(ctx, welcome);
        self.schedule_expiry(ctx);
        let interval = self.app.settings.ping_interval;
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_heard.elapsed() > interval.saturating_mul(2) {
                tracing::info!(
                    parent: &act.span,
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
        tracing::debug!(parent: &self.span, "connected");
    }
}

impl Drop for WsSession {
    /// Cleanup lives here rather than in `stopped`: when the connection dies, the HTTP
    /// dispatcher drops the context, and only `Drop` is sure to run for every session.
    fn drop(&mut self) {
        // For lifecycle events: the server API's disconnect, or the client (or its network).
        let reason = if self.close_code == Some(Disconnect::Server(Close::Disconnected)) {
            Reason::Disconnected
        } else {
            Reason::Closed
        };
        for channel in self.subs.channels() {
            self.app.engine.leave(
                channel,
                &self.client,
                self.app.settings.announces(channel),
                reason,
            );
        }
        self.app
            .engine
            .release_connection(&self.identity.user, &self.client, reason);
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
        tracing::debug!(parent: &self.span, how = ?how, "disconnected");
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
        if self.closing {
            return self.outbound.release(push.cost);
        }
        match self.subs.on_push(push) {
            PushOutcome::Deliver => self.frames.text(push.frame.as_bytes()),
            PushOutcome::Drop => self.outbound.release(push.cost),
            PushOutcome::Held => {}
            PushOutcome::CatchUp(read) => self.read_history(read, ctx),
        }
    }
}

impl Handler<Control> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Self::Context) {
        match msg {
            Control::Close(close) => self.close(ctx, close),
            Control::Resync(channel) => {
                if let Some(read) = self.subs.resync(channel) {
                    self.read_history(read, ctx);
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
                tracing::debug!(parent: &self.span, error = %e, "websocket protocol error");
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{Codec, OpCode, Parser};
    use actix_web::web::Bytes;
    use futures_util::StreamExt;

    use crate::auth::{mint_hs256, MintClaims, Verifier};
    use crate::config::ServeArgs;
    use crate::engine::memory::MemoryEngine;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    /// A client frame as a browser sends it (masked).
    fn client_text(text: &str) -> Bytes {
        let mut buf = BytesMut::new();
        Parser::write_message(&mut buf, text, OpCode::Text, true, true);
        buf.freeze()
    }

    /// Reads the session's output into `seen` (decoded text frames) until one of type
    /// `until` arrives; fails after 10 s.
    async fn read_until<S, E>(
        output: &mut S,
        buf: &mut BytesMut,
        seen: &mut Vec<serde_json::Value>,
        until: &str,
    ) where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Debug,
    {
        let read = async {
            while !seen.iter().any(|f| f["type"] == until) {
                let Some(chunk) = output.next().await else {
                    break;
                };
                buf.extend_from_slice(&chunk.expect("the session's output"));
                while let Ok(Some((_, OpCode::Text, Some(payload)))) =
                    Parser::parse(buf, false, 1 << 20)
                {
                    seen.push(serde_json::from_slice(&payload).expect("JSON frames"));
                }
            }
        };
        let arrived = tokio::time::timeout(Duration::from_secs(10), read).await;
        assert!(arrived.is_ok(), "no {until} within 10 s: {seen:?}");
    }

    /// A session needs only its handles, not the node's whole state: one built from a real
    /// Hub and memory engine in a unit test greets, subscribes and gets its own publication.
    #[actix_rt::test]
    async fn a_session_built_from_its_handles_subscribes_and_delivers() {
        let config = ServeArgs::from_args(["realtime-hub", "--jwt-secret", "s"])
            .and_then(ServeArgs::into_config)
            .expect("the defaults are a valid config");
        let metrics = Metrics::new();
        let hub = Hub::new(config.node_queue_bytes, Arc::clone(&metrics)).start();
        let engine = Arc::new(MemoryEngine::new(
            hub.clone().recipient(),
            config.history_size,
            config.history_ttl,
            config.dedup_window,
        ));
        let verifier = Arc::new(Verifier::new(&config).expect("an HS256 verifier"));
        let chat = Some(vec!["chat:*".to_owned()]);
        let token = mint_hs256(&MintClaims::new("alice", 60, chat.clone(), chat), b"s")
            .expect("a signed token");
        let identity = verifier.verify(&token).expect("a valid token");
        let handles = Arc::new(SessionHandles {
            engine,
            hub,
            verifier,
            metrics,
            settings: SessionSettings::from_config(&config),
        });
        let outbound = Outbound::new(config.client_queue_bytes);
        let frames = Frames::default();
        let session = WsSession::new(
            Arc::from("c1"),
            identity,
            handles,
            Arc::clone(&outbound),
            frames.clone(),
        );
        // The input stays open (the sender is kept) so the session outlives its requests.
        let (input, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let payload = futures_util::stream::unfold(rx, |mut rx| async move {
            let next = rx.recv().await?;
            Some((Ok::<_, actix_http::error::PayloadError>(next), rx))
        });
        let context = WebsocketContext::with_codec(session, payload, Codec::new());
        let mut output = Metered::new(context, outbound, frames);
        let send = |text: &str| {
            input
                .send(client_text(text))
                .expect("the session reads its input")
        };
        let mut seen = Vec::new();
        let mut buf = BytesMut::new();
        send(r#"{"type":"subscribe","id":1,"channel":"chat:a"}"#);
        read_until(&mut output, &mut buf, &mut seen, "subscribed").await;
        send(r#"{"type":"publish","id":2,"channel":"chat:a","data":{"n":1}}"#);
        read_until(&mut output, &mut buf, &mut seen, "message").await;
        let types: Vec<_> = seen.iter().map(|f| f["type"].as_str()).collect();
        assert_eq!(types[0], Some("welcome"));
        let subscribed = seen
            .iter()
            .position(|f| f["type"] == "subscribed")
            .expect("a subscribed reply");
        let message = seen
            .iter()
            .position(|f| f["type"] == "message")
            .expect("the publication");
        assert!(subscribed < message, "no push before subscribed: {seen:?}");
        assert_eq!(seen[message]["offset"], 1);
    }
}
