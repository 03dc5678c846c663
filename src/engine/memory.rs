//! The memory engine: one node, no dependencies. All state sits behind one lock, and a
//! publication is handed to the Hub while that lock is held, so two publishers can never get
//! their offsets delivered out of order. Idle channels and old dedup entries are swept in the
//! background. Restarting the process starts every channel in a new epoch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use actix::Recipient;
use async_trait::async_trait;
use futures_util::future::BoxFuture;

use super::{Engine, EngineError, HistoryPage, NodeInfo, PublishRequest, Published, Subscribed};
use crate::clock::{random_token, unix_micros};
use crate::config::MAX_DURATION;
use crate::hub::Deliver;
use crate::lifecycle::tracker::{Tracker, Transition};
use crate::lifecycle::{Emitter, Reason, Subject};
use crate::protocol::server::message;
use crate::protocol::{ClientInfo, Message, Position};

/// How often expired channels and dedup entries are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How often lifecycle graces are checked: an `offline` comes at most this late.
const LIFECYCLE_SWEEP_EVERY: Duration = Duration::from_millis(100);

pub struct MemoryEngine {
    state: Mutex<State>,
    /// The node's Hub: every publication and join/leave goes there, in order.
    hub: Recipient<Deliver>,
    history_size: usize,
    history_ttl: Duration,
    dedup_window: Duration,
    /// Lifecycle events, when on: the rules' state lives in `State::lifecycle`.
    emitter: Option<Emitter>,
}

#[derive(Default)]
struct State {
    /// `Some` when lifecycle events are on.
    lifecycle: Option<Tracker>,
    channels: HashMap<String, ChannelState>,
    /// channel → event_id → where it was published.
    dedup: HashMap<String, HashMap<String, DedupEntry>>,
    /// channel → client → who.
    presence: HashMap<String, HashMap<String, ClientInfo>>,
    /// user → their connections.
    connections: HashMap<String, HashSet<String>>,
}

struct ChannelState {
    /// Shared by every publication of this life of the channel, so sessions compare epochs by
    /// pointer first.
    epoch: Arc<str>,
    offset: u64,
    /// The newest publications; the last one has offset `offset`, and offsets are consecutive.
    history: VecDeque<Message>,
    /// History is forgotten (and a new epoch begins) this long after the last publication.
    expires_at: Instant,
}

struct DedupEntry {
    position: Position,
    expires_at: Instant,
}

impl MemoryEngine {
    pub fn new(
        hub: Recipient<Deliver>,
        history_size: usize,
        history_ttl: Duration,
        dedup_window: Duration,
    ) -> Self {
        MemoryEngine {
            state: Mutex::new(State::default()),
            hub,
            history_size,
            // Deadlines are `now + duration`: capped so that no setting can overflow them.
            history_ttl: history_ttl.min(MAX_DURATION),
            dedup_window: dedup_window.min(MAX_DURATION),
            emitter: None,
        }
    }

    /// With lifecycle events: users, channels and members are tracked from now on, and their
    /// transitions emitted through `emitter`.
    pub fn with_lifecycle(mut self, grace: Duration, emitter: Emitter) -> Self {
        self.state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .lifecycle = Some(Tracker::new(grace));
        self.emitter = Some(emitter);
        self
    }

    /// Applies `rule` to the tracker (when lifecycle events are on) and emits what it decided,
    /// under the state lock: events leave in the order the rules decided them.
    fn lifecycle(&self, st: &mut State, rule: impl FnOnce(&mut Tracker) -> Vec<Transition>) {
        if let (Some(tracker), Some(emitter)) = (st.lifecycle.as_mut(), &self.emitter) {
            emitter.emit(rule(tracker));
        }
    }

    /// Starts the background sweeps; they end when the engine is dropped.
    pub fn start_sweeper(self: &Arc<Self>) {
        if self.emitter.is_some() {
            let weak: Weak<Self> = Arc::downgrade(self);
            actix::spawn(async move {
                let mut tick = tokio::time::interval(LIFECYCLE_SWEEP_EVERY);
                loop {
                    tick.tick().await;
                    let Some(engine) = weak.upgrade() else {
                        break;
                    };
                    let mut st = engine.lock();
                    engine.lifecycle(&mut st, |t| t.sweep(Instant::now()));
                }
            });
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        actix::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(engine) => engine.sweep(Instant::now()),
                    None => break,
                }
            }
        });
    }

    fn sweep(&self, now: Instant) {
        let mut st = self.lock();
        st.channels.retain(|_, ch| ch.expires_at > now);
        st.dedup.retain(|_, ids| {
            ids.retain(|_, e| e.expires_at > now);
            !ids.is_empty()
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this file; the state itself stays
        // consistent between statements, so keep serving rather than poison every later call.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// The channel's live state, starting a new epoch if there is none or its history expired.
    fn channel(&mut self, name: &str, now: Instant, ttl: Duration) -> &mut ChannelState {
        let expired = self
            .channels
            .get(name)
            .is_some_and(|ch| ch.expires_at <= now);
        if expired {
            self.channels.remove(name);
        }
        self.channels
            .entry(name.to_owned())
            .or_insert_with(|| ChannelState {
                epoch: Arc::from(random_token(8)),
                offset: 0,
                history: VecDeque::new(),
                expires_at: now + ttl,
            })
    }
}

impl ChannelState {
    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.to_string(),
        }
    }

    /// Every publication after `offset`, if history still holds all of them.
    fn after(&self, offset: u64) -> Option<Vec<Message>> {
        if offset > self.offset {
            return None;
        }
        let oldest = self.offset + 1 - self.history.len() as u64;
        if offset + 1 < oldest {
            return None;
        }
        let skip = (offset + 1 - oldest) as usize;
        Some(self.history.iter().skip(skip).cloned().collect())
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn publish_many(&self, reqs: Vec<PublishRequest>) -> Vec<Result<Published, EngineError>> {
        let mut answers = Vec::with_capacity(reqs.len());
        let mut failed = false;
        for req in reqs {
            let answer = if failed {
                Err(super::not_tried())
            } else {
                self.publish(req).await
            };
            failed |= answer.is_err();
            answers.push(answer);
        }
        answers
    }

    async fn publish(&self, req: PublishRequest) -> Result<Published, EngineError> {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(id) = &req.event_id {
            if let Some(seen) = st.dedup.get(&req.channel).and_then(|ids| ids.get(id)) {
                if seen.expires_at > now {
                    return Ok(Published {
                        position: seen.position.clone(),
                        event_id: id.clone(),
                        duplicate: true,
                    });
                }
            }
        }
        let event_id = req.event_id_or_new();
        let accepted_us = unix_micros();
        let template = req.template(&event_id, accepted_us / 1000);
        let ch = st.channel(&req.channel, now, self.history_ttl);
        let offset = ch.offset + 1;
        let text = template.complete(offset, &ch.epoch);
        let frame = message(text.clone())
            .map_err(|e| EngineError::Internal(format!("message frame: {e}")))?;
        ch.offset = offset;
        ch.expires_at = now + self.history_ttl;
        ch.history.push_back(frame);
        while ch.history.len() > self.history_size {
            ch.history.pop_front();
        }
        let position = ch.position();
        let ch_epoch = Arc::clone(&ch.epoch);
        // Still under the lock: the Hub receives offsets in the order they were assigned.
        self.hub.do_send(Deliver::Message {
            channel: req.channel.clone(),
            offset,
            epoch: Arc::clone(&ch_epoch),
            frame: text.into(),
            event_id: event_id.clone(),
            accepted_us,
        });
        if req.event_id.is_some() {
            st.dedup.entry(req.channel).or_default().insert(
                event_id.clone(),
                DedupEntry {
                    position: position.clone(),
                    expires_at: now + self.dedup_window,
                },
            );
        }
        drop(st);
        Ok(Published {
            position,
            event_id,
            duplicate: false,
        })
    }

    async fn subscribe(
        &self,
        channel: &str,
        recover: Option<&Position>,
    ) -> Result<Subscribed, EngineError> {
        let mut st = self.lock();
        let ch = st.channel(channel, Instant::now(), self.history_ttl);
        let recovered = recover.and_then(|since| {
            if *since.epoch == *ch.epoch {
                ch.after(since.offset)
            } else {
                None
            }
        });
        Ok(Subscribed {
            position: ch.position(),
            recovered,
        })
    }

    async fn history(
        &self,
        channel: &str,
        limit: usize,
        since: Option<&Position>,
    ) -> Result<HistoryPage, EngineError> {
        let mut st = self.lock();
        let ch = st.channel(channel, Instant::now(), self.history_ttl);
        let publications = match since.filter(|s| *s.epoch == *ch.epoch) {
            // Offsets in history are consecutive, so the first one after `since` is found by
            // arithmetic; a `since` older than history gives what remains.
            Some(since) => {
                let oldest = ch.offset + 1 - ch.history.len() as u64;
                let skip = since.offset.saturating_add(1).saturating_sub(oldest);
                ch.history
                    .iter()
                    .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                    .take(limit)
                    .cloned()
                    .collect()
            }
            None => {
                let skip = ch.history.len().saturating_sub(limit);
                ch.history.iter().skip(skip).cloned().collect()
            }
        };
        Ok(HistoryPage {
            position: ch.position(),
            publications,
        })
    }

    fn join(
        &self,
        channel: &str,
        client: ClientInfo,
        announce: bool,
    ) -> BoxFuture<'static, Result<(), EngineError>> {
        let mut st = self.lock();
        st.presence
            .entry(channel.to_owned())
            .or_default()
            .insert(client.client.clone(), client.clone());
        self.lifecycle(&mut st, |t| {
            let mut out: Vec<Transition> = t
                .add(Subject::Channel(channel.to_owned()), &client.client, None)
                .into_iter()
                .collect();
            if announce {
                let member = Subject::Member {
                    channel: channel.to_owned(),
                    user: client.user.clone(),
                };
                out.extend(t.add(member, &client.client, client.info.clone()));
            }
            out
        });
        if announce {
            self.hub.do_send(Deliver::presence(channel, &client, true));
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn leave(&self, channel: &str, client: &str, announce: bool, reason: Reason) {
        let mut st = self.lock();
        let Some(clients) = st.presence.get_mut(channel) else {
            return;
        };
        let removed = clients.remove(client);
        if clients.is_empty() {
            st.presence.remove(channel);
        }
        if let Some(info) = &removed {
            let now = Instant::now();
            self.lifecycle(&mut st, |t| {
                let mut out: Vec<Transition> = t
                    .remove(&Subject::Channel(channel.to_owned()), client, reason, now)
                    .into_iter()
                    .collect();
                let member = Subject::Member {
                    channel: channel.to_owned(),
                    user: info.user.clone(),
                };
                out.extend(t.remove(&member, client, reason, now));
                out
            });
        }
        if let (Some(client), true) = (removed, announce) {
            self.hub.do_send(Deliver::presence(channel, &client, false));
        }
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, EngineError> {
        let st = self.lock();
        Ok(st
            .presence
            .get(channel)
            .map(|clients| clients.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn acquire_connection(
        &self,
        user: &str,
        client: &str,
        limit: u32,
    ) -> Result<bool, EngineError> {
        let mut st = self.lock();
        let conns = st.connections.entry(user.to_owned()).or_default();
        if conns.len() >= limit as usize {
            if conns.is_empty() {
                st.connections.remove(user);
            }
            return Ok(false);
        }
        conns.insert(client.to_owned());
        self.lifecycle(&mut st, |t| {
            t.add(Subject::User(user.to_owned()), client, None)
                .into_iter()
                .collect()
        });
        Ok(true)
    }

    fn release_connection(&self, user: &str, client: &str, reason: Reason) {
        let mut st = self.lock();
        if let Some(conns) = st.connections.get_mut(user) {
            conns.remove(client);
            if conns.is_empty() {
                st.connections.remove(user);
            }
        }
        let now = Instant::now();
        self.lifecycle(&mut st, |t| {
            t.remove(&Subject::User(user.to_owned()), client, reason, now)
                .into_iter()
                .collect()
        });
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    async fn other_nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        Ok(Vec::new())
    }

    async fn other_channels(&self) -> Result<Vec<(String, usize)>, EngineError> {
        Ok(Vec::new())
    }

    /// One node: there is nobody else to tell.
    fn disconnect_user(&self, _user: &str) {}

    /// Writes are applied as they are made; what is left is the lifecycle graces. The one
    /// node is stopping, so nobody can come back within them: their down events go out now.
    fn flush(&self) -> BoxFuture<'static, ()> {
        let mut st = self.lock();
        self.lifecycle(&mut st, |t| t.end_graces());
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{Actor, Context, Handler};

    /// Stands in for the Hub.
    struct Sink;

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for Sink {
        type Result = ();
        fn handle(&mut self, _: Deliver, _: &mut Context<Self>) {}
    }

    /// A history TTL or dedup window too long to add to `Instant::now()` is capped, not a
    /// panic (embedders may build the engine without the config's validation).
    #[actix_rt::test]
    async fn huge_durations_do_not_overflow_deadlines() {
        let engine = MemoryEngine::new(Sink.start().recipient(), 10, Duration::MAX, Duration::MAX);
        let request = || PublishRequest {
            channel: "c".into(),
            data: serde_json::value::RawValue::from_string("1".into()).expect("raw json"),
            event_id: Some("e".into()),
            event_type: None,
            from: None,
        };
        let first = engine.publish(request()).await.expect("published");
        let again = engine.publish(request()).await.expect("answered");
        assert!(again.duplicate);
        assert_eq!(again.position, first.position);
        engine.sweep(Instant::now());
        assert_eq!(
            engine
                .subscribe("c", None)
                .await
                .expect("position")
                .position
                .offset,
            1
        );
    }
}
