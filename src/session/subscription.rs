//! The subscription rules of one connection, as a plain state machine: which channels it is
//! subscribed to, where each stands (epoch and last offset written), and what happens to a push
//! while a subscribe or a catch-up is under way. No actix here: the session actor feeds it
//! events (a subscribe requested, the engine answered, a push arrived, history answered, an
//! unsubscribe, a resync) and performs the [`Action`]s it returns.
//!
//! The guarantee it keeps (docs/protocol.md §3.12): no push for a channel before its `subscribed` reply;
//! after it, pushes start at the reply's offset + 1, none missing, none repeated, in order. The
//! session registers with the Hub first and holds the channel's pushes while the engine reads
//! the position; once the position is known the held pushes go through the same rule as live
//! ones ([`advance`]), so there is one replay rule, not one per path.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use rustc_hash::FxHashMap;

use crate::engine::{HistoryPage, Subscribed};
use crate::error::HubError;
use crate::hub::{Push, PushKind};
use crate::protocol::server::{Message, ServerFrame};
use crate::protocol::Position;

/// How many history reads a catch-up makes before it lets the held pushes go with the gap.
const CATCH_UP_ATTEMPTS: u32 = 5;

/// What the session actor does for the state machine.
pub enum Action {
    /// Write a frame of the session's own (a reply, or a publication from history), counted
    /// against the backlog bound.
    Write(ByteString),
    /// Write a push the Hub already counted in the backlog.
    Deliver(Push),
    /// Bytes of a push dropped unsent, to take out of the backlog.
    Release(usize),
    /// Answer request `id` with an error.
    Error { id: Option<u64>, error: HubError },
    /// Register with the Hub for the channel (when `register`), then read its position from
    /// the engine (recovering from `read_from`); feed the result to
    /// [`Subscriptions::answered`].
    Subscribe {
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        register: bool,
        read_from: Option<Position>,
    },
    /// Join the channel's presence, then feed `sub` to [`Subscriptions::joined`].
    Join {
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        sub: Subscribed,
    },
    /// Tell the Hub to stop routing the channel to this session.
    Unregister(Arc<str>),
    /// Leave the channel's presence.
    Leave(Arc<str>),
    /// Read history for a catch-up (after `delay`, when set); feed the result to
    /// [`Subscriptions::history_answered`].
    ReadHistory {
        read: HistoryRead,
        delay: Option<Duration>,
    },
}

/// One history read of a catch-up: the publications of `channel` after `offset` in `epoch`.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    generation: u64,
    attempt: u32,
}

/// What the session does with one push, on the hot path (no allocation).
pub enum PushOutcome {
    /// Write it.
    Deliver,
    /// Drop it (stale, repeated, about this session, or for a channel it left): release its cost.
    Drop,
    /// Kept until the channel's position is known.
    Held,
    /// It showed a gap: it is held, and history is read to fill the gap first.
    CatchUp(HistoryRead),
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

/// What one push does to a position, in order: the one replay rule, for live pushes and held
/// ones alike.
enum Step {
    /// Write it; the position moved to it.
    Deliver,
    /// At or before the position in the same epoch: already written (or older).
    Stale,
    /// Past the next offset in the same epoch: something is missing before it.
    Gap,
}

/// Applies the replay rule to `push` at position (`epoch`, `offset`). A message of another
/// epoch starts a new life of the channel and is written. With `fill_gaps` false a gap is
/// accepted (history could not fill it; the client sees it in the offsets).
fn advance(epoch: &mut Arc<str>, offset: &mut u64, push: &Push, fill_gaps: bool) -> Step {
    if let PushKind::Message {
        offset: o,
        epoch: e,
    } = &push.kind
    {
        // Engines share one epoch Arc per channel life: pointers usually decide.
        let same = Arc::ptr_eq(e, epoch);
        if same || **e == **epoch {
            if *o <= *offset {
                return Step::Stale;
            }
            if fill_gaps && *o > *offset + 1 {
                return Step::Gap;
            }
        }
        if !same {
            *epoch = Arc::clone(e);
        }
        *offset = *o;
    }
    Step::Deliver
}

/// Writes the publications from history that come after `offset`, oldest first, and moves
/// `offset` to the last one written.
fn replay_history(publications: &[Message], offset: &mut u64, out: &mut Vec<Action>) {
    for frame in publications {
        let Some(o) = message_offset(frame) else {
            continue;
        };
        if o <= *offset {
            continue;
        }
        out.push(Action::Write(ByteString::from(frame.get().to_owned())));
        *offset = o;
    }
}

/// The offset of an encoded `message` frame (read without parsing the rest of it).
fn message_offset(frame: &Message) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct OffsetOnly {
        offset: u64,
    }
    serde_json::from_str::<OffsetOnly>(frame.get())
        .ok()
        .map(|m| m.offset)
}

fn unsubscribed_meanwhile() -> HubError {
    HubError::bad_request("unsubscribed before the subscription completed")
}

/// Every subscription of one connection.
pub struct Subscriptions {
    /// The connection itself: presence pushes about it are not for it.
    client: Arc<str>,
    /// `HUB_MAX_SUBSCRIPTIONS`.
    max: usize,
    /// Looked up for every push: FxHash rather than SipHash, safe here because the map holds
    /// at most `max` entries of this one connection.
    subs: FxHashMap<Arc<str>, SubState>,
    next_generation: u64,
}

impl Subscriptions {
    pub fn new(client: Arc<str>, max: usize) -> Self {
        Subscriptions {
            client,
            max,
            subs: FxHashMap::default(),
            next_generation: 0,
        }
    }

    /// The channels this connection is subscribed to (or subscribing to).
    pub fn channels(&self) -> impl Iterator<Item = &Arc<str>> {
        self.subs.keys()
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// A `subscribe` request (permission already checked).
    pub fn subscribe(
        &mut self,
        id: Option<u64>,
        channel: &str,
        recover: Option<Position>,
    ) -> Vec<Action> {
        let subscriptions = self.subs.len();
        match self.subs.get_mut(channel) {
            Some(SubState::Pending { waiters, .. }) => {
                waiters.push((id, recover));
                return Vec::new();
            }
            Some(_) => {}
            None if subscriptions >= self.max => {
                let error = HubError::limit_exceeded(format!(
                    "at most {} subscriptions per connection",
                    self.max
                ));
                return vec![Action::Error { id, error }];
            }
            None => {}
        }
        let generation = self.generation();
        // Pushes held by a catch-up in progress move over; the new answer decides which stay.
        let (key, held, resume) = match self.subs.remove_entry(channel) {
            Some((
                key,
                SubState::CatchingUp {
                    held,
                    epoch,
                    offset,
                    ..
                },
            )) => (
                key,
                held,
                Some(Resume {
                    epoch,
                    offset,
                    catching_up: true,
                }),
            ),
            Some((key, SubState::Active { epoch, offset })) => (
                key,
                Vec::new(),
                Some(Resume {
                    epoch,
                    offset,
                    catching_up: false,
                }),
            ),
            _ => (Arc::from(channel), Vec::new(), None),
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
                recover,
                waiters: Vec::new(),
                resume,
            },
        );
        vec![Action::Subscribe {
            id,
            channel: key,
            generation,
            register,
            read_from,
        }]
    }

    fn is_pending(&self, channel: &str, generation: u64) -> bool {
        matches!(self.subs.get(channel), Some(SubState::Pending { generation: g, .. }) if *g == generation)
    }

    /// The Hub and the engine answered a subscribe. On success a new subscription joins the
    /// channel's presence first, so that once `subscribed` is out, presence queries anywhere
    /// list it.
    pub fn answered(
        &mut self,
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        registered: bool,
        result: Result<Subscribed, HubError>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.is_pending(&channel, generation) {
            // Unsubscribed while the engine answered. Our Hub registration may have reached
            // the Hub after the unsubscribe did: take it back, unless a newer subscribe to the
            // same channel is using it.
            if registered && !self.subs.contains_key(&*channel) {
                out.push(Action::Unregister(channel));
            }
            out.push(Action::Error {
                id,
                error: unsubscribed_meanwhile(),
            });
            return out;
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
                        out.push(Action::Error {
                            id: waiter,
                            error: error.clone(),
                        });
                    }
                    match resume {
                        Some(resume) => self.resume(Arc::clone(&channel), resume, held, &mut out),
                        None => out.extend(held.into_iter().map(|p| Action::Release(p.cost))),
                    }
                }
                if registered {
                    out.push(Action::Unregister(channel));
                }
                out.push(Action::Error { id, error });
                return out;
            }
        };
        if !registered {
            return self.joined(id, channel, generation, sub);
        }
        vec![Action::Join {
            id,
            channel,
            generation,
            sub,
        }]
    }

    /// Presence was joined (or failed to be; the subscription holds either way): answers the
    /// subscribe and the repeats that waited on it, then lets pushes flow from the answer's
    /// position.
    pub fn joined(
        &mut self,
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        sub: Subscribed,
    ) -> Vec<Action> {
        let mut out = Vec::new();
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
                out.push(Action::Error {
                    id,
                    error: unsubscribed_meanwhile(),
                });
                return out;
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
                    let mut written = resume.offset;
                    replay_history(&frames, &mut written, &mut out);
                    resume.offset = sub.position.offset;
                    resume.catching_up = false;
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
                    out.push(Action::Write(text));
                }
                self.resume(channel, resume, held, &mut out);
                return out;
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
            let text = ServerFrame::Subscribed {
                id: waiter,
                channel: &channel,
                offset: sub.position.offset,
                epoch: &sub.position.epoch,
                recovered: recovered && same,
                publications: if same { &publications } else { &[] },
            }
            .encode();
            out.push(Action::Write(text));
        }
        let epoch: Arc<str> = Arc::from(sub.position.epoch.as_str());
        self.settle(channel, epoch, sub.position.offset, held, &mut out);
        out
    }

    /// Writes the held pushes that come after a position just learnt (a gap among them is
    /// accepted: it was already there when the position was read) and lets pushes flow.
    fn settle(
        &mut self,
        channel: Arc<str>,
        mut epoch: Arc<str>,
        mut offset: u64,
        held: Vec<Push>,
        out: &mut Vec<Action>,
    ) {
        for push in held {
            match advance(&mut epoch, &mut offset, &push, false) {
                Step::Stale => out.push(Action::Release(push.cost)),
                Step::Deliver | Step::Gap => out.push(Action::Deliver(push)),
            }
        }
        self.subs
            .insert(channel, SubState::Active { epoch, offset });
    }

    /// Goes back to the subscription a failed repeated `subscribe` found. The pushes held
    /// meanwhile go through the usual checks (a gap among them starts a catch-up), and a
    /// catch-up that was under way starts again.
    fn resume(
        &mut self,
        channel: Arc<str>,
        resume: Resume,
        held: Vec<Push>,
        out: &mut Vec<Action>,
    ) {
        if resume.catching_up {
            let read = self.catch_up(channel, resume.epoch, resume.offset, held);
            out.push(Action::ReadHistory { read, delay: None });
            return;
        }
        self.subs.insert(
            channel,
            SubState::Active {
                epoch: resume.epoch,
                offset: resume.offset,
            },
        );
        for push in held {
            match self.on_push(&push) {
                PushOutcome::Deliver => out.push(Action::Deliver(push)),
                PushOutcome::Drop => out.push(Action::Release(push.cost)),
                PushOutcome::Held => {}
                PushOutcome::CatchUp(read) => out.push(Action::ReadHistory { read, delay: None }),
            }
        }
    }

    /// A push from the Hub. The hot path: one map lookup, no allocation unless it is held.
    pub fn on_push(&mut self, push: &Push) -> PushOutcome {
        if push.skip.as_deref() == Some(&*self.client) {
            // A presence push about this very session: the others get it.
            return PushOutcome::Drop;
        }
        let Some(state) = self.subs.get_mut(&*push.channel) else {
            // Unsubscribed while this push was on its way.
            return PushOutcome::Drop;
        };
        match state {
            SubState::Pending { held, .. } | SubState::CatchingUp { held, .. } => {
                held.push(push.clone());
                PushOutcome::Held
            }
            SubState::Active { epoch, offset } => match advance(epoch, offset, push, true) {
                Step::Deliver => PushOutcome::Deliver,
                Step::Stale => PushOutcome::Drop,
                Step::Gap => {
                    // Only a lost link between nodes makes a gap; history fills it.
                    let (epoch, offset) = (Arc::clone(epoch), *offset);
                    let channel = Arc::clone(&push.channel);
                    PushOutcome::CatchUp(self.catch_up(channel, epoch, offset, vec![push.clone()]))
                }
            },
        }
    }

    /// Publications of `channel` may have been missed (the node's link came back): fill any
    /// gap from history before more pushes go out.
    pub fn resync(&mut self, channel: Arc<str>) -> Option<HistoryRead> {
        let Some(SubState::Active { epoch, offset }) = self.subs.get(&*channel) else {
            return None;
        };
        let (epoch, offset) = (Arc::clone(epoch), *offset);
        Some(self.catch_up(channel, epoch, offset, Vec::new()))
    }

    /// Holds the channel's pushes while history is read after `offset`, so the client still
    /// sees every offset once, in order.
    fn catch_up(
        &mut self,
        channel: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
        held: Vec<Push>,
    ) -> HistoryRead {
        let generation = self.generation();
        self.subs.insert(
            Arc::clone(&channel),
            SubState::CatchingUp {
                generation,
                held,
                epoch: Arc::clone(&epoch),
                offset,
            },
        );
        HistoryRead {
            channel,
            epoch,
            offset,
            generation,
            attempt: 0,
        }
    }

    /// History answered a catch-up read. A failed read (the engine's link may just be coming
    /// back) is retried a few times with backoff while the pushes stay held; after that the
    /// held pushes go out as they are and the client sees the gap in the offsets, and
    /// recovers as after `recovered:false`.
    pub fn history_answered(
        &mut self,
        read: HistoryRead,
        result: Result<HistoryPage, impl std::fmt::Display>,
    ) -> Vec<Action> {
        let current = matches!(
            self.subs.get(&*read.channel),
            Some(SubState::CatchingUp { generation: g, .. }) if *g == read.generation
        );
        if !current {
            return Vec::new();
        }
        let mut out = Vec::new();
        let HistoryRead {
            channel,
            mut epoch,
            mut offset,
            attempt,
            ..
        } = read;
        match result {
            Ok(page) => {
                if *page.position.epoch != *epoch {
                    // A new life of the channel: its offsets start again at 1.
                    epoch = Arc::from(page.position.epoch.as_str());
                    offset = 0;
                }
                replay_history(&page.publications, &mut offset, &mut out);
            }
            Err(e) if attempt + 1 < CATCH_UP_ATTEMPTS => {
                let wait = Duration::from_millis(200 << attempt);
                tracing::debug!(
                    client = &*self.client,
                    channel = &*channel,
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "history read for a catch-up failed; retrying"
                );
                out.push(Action::ReadHistory {
                    read: HistoryRead {
                        channel,
                        epoch,
                        offset,
                        generation: read.generation,
                        attempt: attempt + 1,
                    },
                    delay: Some(wait),
                });
                return out;
            }
            Err(e) => tracing::warn!(
                client = &*self.client,
                channel = &*channel,
                error = %e,
                "cannot fill a gap from history"
            ),
        }
        let held = match self.subs.get_mut(&*channel) {
            Some(SubState::CatchingUp { held, .. }) => std::mem::take(held),
            _ => Vec::new(),
        };
        self.settle(channel, epoch, offset, held, &mut out);
        out
    }

    /// An `unsubscribe` request (answered by the session whatever this returns).
    pub fn unsubscribe(&mut self, channel: &str) -> Vec<Action> {
        let Some((key, state)) = self.subs.remove_entry(channel) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match state {
            SubState::Pending { held, waiters, .. } => {
                out.extend(held.into_iter().map(|p| Action::Release(p.cost)));
                // The first request is answered when the engine's answer comes; these now.
                for (waiter, _) in waiters {
                    out.push(Action::Error {
                        id: waiter,
                        error: unsubscribed_meanwhile(),
                    });
                }
            }
            SubState::CatchingUp { held, .. } => {
                out.extend(held.into_iter().map(|p| Action::Release(p.cost)));
            }
            SubState::Active { .. } => {}
        }
        out.push(Action::Unregister(Arc::clone(&key)));
        out.push(Action::Leave(key));
        out
    }
}

#[cfg(test)]
mod tests {
    //! The rules of docs/protocol.md §3 (§3.2, §3.11–§3.13), one behaviour each, driven through the events a session sees.
    use super::*;
    use serde_json::Value;

    const ME: &str = "me";

    fn subs() -> Subscriptions {
        Subscriptions::new(Arc::from(ME), 8)
    }

    fn epoch(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn message_text(channel: &str, epoch: &str, offset: u64) -> String {
        format!(r#"{{"type":"message","channel":"{channel}","offset":{offset},"epoch":"{epoch}"}}"#)
    }

    /// A `message` push as the Hub hands it on.
    fn msg(channel: &str, epoch: &Arc<str>, offset: u64) -> Push {
        let frame = ByteString::from(message_text(channel, epoch, offset));
        Push {
            channel: Arc::from(channel),
            kind: PushKind::Message {
                offset,
                epoch: Arc::clone(epoch),
            },
            cost: frame.len(),
            frame,
            skip: None,
        }
    }

    /// A `join` push about `client`.
    fn join_of(channel: &str, client: &str) -> Push {
        let frame = ByteString::from(format!(
            r#"{{"type":"join","channel":"{channel}","client":"{client}"}}"#
        ));
        Push {
            channel: Arc::from(channel),
            kind: PushKind::Presence,
            cost: frame.len(),
            frame,
            skip: Some(Arc::from(client)),
        }
    }

    /// Publications as history or recovery hands them back.
    fn publications(
        channel: &str,
        epoch: &str,
        offsets: std::ops::RangeInclusive<u64>,
    ) -> Vec<Message> {
        offsets
            .map(|o| {
                let raw = serde_json::value::RawValue::from_string(message_text(channel, epoch, o));
                Arc::from(raw.expect("valid JSON"))
            })
            .collect()
    }

    fn at(epoch: &str, offset: u64, recovered: Option<Vec<Message>>) -> Subscribed {
        Subscribed {
            position: Position {
                offset,
                epoch: epoch.to_owned(),
            },
            recovered,
        }
    }

    fn page(epoch: &str, offset: u64, publications: Vec<Message>) -> HistoryPage {
        HistoryPage {
            position: Position {
                offset,
                epoch: epoch.to_owned(),
            },
            publications,
        }
    }

    /// What the client would read from these actions, in order.
    fn seen(actions: &[Action]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Write(text) => Some(text.to_string()),
                Action::Deliver(push) => Some(push.frame.to_string()),
                _ => None,
            })
            .map(|t| serde_json::from_str(&t).expect("frames are JSON"))
            .collect()
    }

    /// The offsets of the `message` frames the client would read.
    fn offsets(actions: &[Action]) -> Vec<u64> {
        seen(actions)
            .iter()
            .filter(|f| f["type"] == "message")
            .filter_map(|f| f["offset"].as_u64())
            .collect()
    }

    /// The `subscribed` replies among the frames.
    fn replies(actions: &[Action]) -> Vec<Value> {
        seen(actions)
            .into_iter()
            .filter(|f| f["type"] == "subscribed")
            .collect()
    }

    /// The engine call a subscribe asked for: (generation, register, read_from).
    fn started(actions: &[Action]) -> (u64, bool, Option<Position>) {
        match actions {
            [Action::Subscribe {
                generation,
                register,
                read_from,
                ..
            }] => (*generation, *register, read_from.clone()),
            _ => panic!("expected exactly one engine call"),
        }
    }

    fn errors(actions: &[Action]) -> Vec<(Option<u64>, HubError)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Error { id, error } => Some((*id, error.clone())),
                _ => None,
            })
            .collect()
    }

    fn unregisters(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Unregister(_)))
            .count()
    }

    fn released(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Release(cost) => Some(*cost),
                _ => None,
            })
            .sum()
    }

    /// Runs a first subscribe through to its answer at (`epoch`, `offset`); returns the answer's actions.
    fn subscribe_at(s: &mut Subscriptions, channel: &str, epoch: &str, offset: u64) -> Vec<Action> {
        let (generation, register, _) = started(&s.subscribe(Some(1), channel, None));
        assert!(register);
        let joined = match s
            .answered(
                Some(1),
                Arc::from(channel),
                generation,
                true,
                Ok(at(epoch, offset, None)),
            )
            .pop()
        {
            Some(Action::Join { sub, .. }) => sub,
            _ => panic!("a new subscription joins presence first"),
        };
        s.joined(Some(1), Arc::from(channel), generation, joined)
    }

    fn deliver(s: &mut Subscriptions, push: &Push) -> &'static str {
        match s.on_push(push) {
            PushOutcome::Deliver => "deliver",
            PushOutcome::Drop => "drop",
            PushOutcome::Held => "held",
            PushOutcome::CatchUp(_) => "catch-up",
        }
    }

    /// `subscribed` carries the channel's latest offset and epoch as the engine read them.
    #[test]
    fn subscribed_gives_the_latest_offset() {
        let mut s = subs();
        let out = subscribe_at(&mut s, "chat:a", "e1", 17);
        let reply = &replies(&out)[0];
        assert_eq!(reply["offset"], 17);
        assert_eq!(reply["epoch"], "e1");
        assert_eq!(reply["id"], 1);
    }

    /// No push reaches the client before its `subscribed` reply: pushes are held meanwhile.
    #[test]
    fn pushes_are_held_until_subscribed() {
        let mut s = subs();
        let e = epoch("e1");
        let (generation, _, _) = started(&s.subscribe(Some(1), "chat:a", None));
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 5)), "held");
        let out = s.answered(
            Some(1),
            Arc::from("chat:a"),
            generation,
            true,
            Ok(at("e1", 4, None)),
        );
        assert!(
            seen(&out).is_empty(),
            "nothing is written before presence is joined"
        );
        let Some(Action::Join { sub, .. }) = out.into_iter().next() else {
            panic!("expected a join");
        };
        let out = s.joined(Some(1), Arc::from("chat:a"), generation, sub);
        let frames = seen(&out);
        assert_eq!(frames[0]["type"], "subscribed");
        assert_eq!(offsets(&out), vec![5]);
    }

    /// Held pushes at or before the answer's offset are dropped (and released), the rest
    /// written in order: pushes start at offset + 1.
    #[test]
    fn held_pushes_start_after_the_offset() {
        let mut s = subs();
        let e = epoch("e1");
        let (generation, _, _) = started(&s.subscribe(Some(1), "chat:a", None));
        for o in 3..=6 {
            s.on_push(&msg("chat:a", &e, o));
        }
        let sub = at("e1", 4, None);
        let out = s.joined(Some(1), Arc::from("chat:a"), generation, sub);
        assert_eq!(offsets(&out), vec![5, 6]);
        assert_eq!(released(&out), msg("chat:a", &e, 3).cost * 2);
    }

    /// After `subscribed`, a repeated or older push is dropped and the next one written.
    #[test]
    fn live_pushes_are_never_repeated() {
        let mut s = subs();
        let e = epoch("e1");
        subscribe_at(&mut s, "chat:a", "e1", 4);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 4)), "drop");
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 5)), "deliver");
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 5)), "drop");
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 3)), "drop");
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 6)), "deliver");
    }

    /// A gap in the offsets holds pushes while history fills it: none missing, in order.
    #[test]
    fn a_gap_is_filled_from_history_before_later_pushes() {
        let mut s = subs();
        let e = epoch("e1");
        subscribe_at(&mut s, "chat:a", "e1", 4);
        let PushOutcome::CatchUp(read) = s.on_push(&msg("chat:a", &e, 7)) else {
            panic!("a gap starts a catch-up");
        };
        assert_eq!(read.offset, 4);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 8)), "held");
        let out = s.history_answered(
            read,
            Ok::<_, String>(page("e1", 7, publications("chat:a", "e1", 5..=7))),
        );
        assert_eq!(offsets(&out), vec![5, 6, 7, 8]);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 9)), "deliver");
    }

    /// A push of a new epoch is written even though its offset starts again, and offsets then
    /// count in the new epoch.
    #[test]
    fn a_new_epoch_starts_the_offsets_again() {
        let mut s = subs();
        subscribe_at(&mut s, "chat:a", "e1", 40);
        let e2 = epoch("e2");
        assert_eq!(deliver(&mut s, &msg("chat:a", &e2, 1)), "deliver");
        assert_eq!(deliver(&mut s, &msg("chat:a", &e2, 1)), "drop");
        assert_eq!(deliver(&mut s, &msg("chat:a", &e2, 2)), "deliver");
    }

    /// A catch-up that finds a new epoch writes that life's history from its start.
    #[test]
    fn a_catch_up_into_a_new_epoch_writes_it_from_the_start() {
        let mut s = subs();
        subscribe_at(&mut s, "chat:a", "e1", 40);
        let read = s
            .resync(Arc::from("chat:a"))
            .expect("an active subscription resyncs");
        let out = s.history_answered(
            read,
            Ok::<_, String>(page("e2", 2, publications("chat:a", "e2", 1..=2))),
        );
        assert_eq!(offsets(&out), vec![1, 2]);
        assert_eq!(deliver(&mut s, &msg("chat:a", &epoch("e2"), 2)), "drop");
        assert_eq!(deliver(&mut s, &msg("chat:a", &epoch("e2"), 3)), "deliver");
    }

    /// `recovered:true` carries every missed publication, and pushes go on after them.
    #[test]
    fn recovery_carries_the_missed_publications() {
        let mut s = subs();
        let asked = Position {
            offset: 2,
            epoch: "e1".into(),
        };
        let (generation, _, read_from) =
            started(&s.subscribe(Some(1), "chat:a", Some(asked.clone())));
        assert_eq!(read_from, Some(asked));
        let sub = at("e1", 4, Some(publications("chat:a", "e1", 3..=4)));
        let out = s.joined(Some(1), Arc::from("chat:a"), generation, sub);
        let reply = &replies(&out)[0];
        assert_eq!(reply["recovered"], true);
        let recovered: Vec<_> = reply["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| p["offset"].as_u64())
            .collect();
        assert_eq!(recovered, vec![Some(3), Some(4)]);
        assert_eq!(deliver(&mut s, &msg("chat:a", &epoch("e1"), 5)), "deliver");
    }

    /// When the engine cannot recover, the reply says `recovered:false` with no publications.
    #[test]
    fn unrecoverable_gap_says_recovered_false() {
        let mut s = subs();
        let asked = Position {
            offset: 2,
            epoch: "old".into(),
        };
        let (generation, _, _) = started(&s.subscribe(Some(1), "chat:a", Some(asked)));
        let out = s.joined(Some(1), Arc::from("chat:a"), generation, at("e1", 4, None));
        let reply = &replies(&out)[0];
        assert_eq!(reply["recovered"], false);
        assert_eq!(reply["publications"], serde_json::json!([]));
    }

    /// A subscribe repeated while the first is pending waits for it, makes no second engine
    /// call or registration, and gets the same answer.
    #[test]
    fn a_repeat_while_pending_shares_the_answer() {
        let mut s = subs();
        let (generation, _, _) = started(&s.subscribe(Some(1), "chat:a", None));
        assert!(s.subscribe(Some(2), "chat:a", None).is_empty());
        let out = s.joined(Some(1), Arc::from("chat:a"), generation, at("e1", 9, None));
        let ids: Vec<_> = replies(&out).iter().map(|r| r["id"].clone()).collect();
        assert_eq!(ids, vec![serde_json::json!(1), serde_json::json!(2)]);
        assert!(replies(&out).iter().all(|r| r["offset"] == 9));
    }

    /// A repeat while pending that asked to recover from elsewhere cannot share the first
    /// one's publications: it is told to reload.
    #[test]
    fn a_pending_repeat_with_another_recover_is_told_to_reload() {
        let mut s = subs();
        let asked = Position {
            offset: 2,
            epoch: "e1".into(),
        };
        let (generation, _, _) = started(&s.subscribe(Some(1), "chat:a", Some(asked)));
        s.subscribe(Some(2), "chat:a", None);
        let sub = at("e1", 4, Some(publications("chat:a", "e1", 3..=4)));
        let out = s.joined(Some(1), Arc::from("chat:a"), generation, sub);
        let r = replies(&out);
        assert_eq!(r[0]["recovered"], true);
        assert_eq!(r[1]["recovered"], false);
        assert_eq!(r[1]["publications"], serde_json::json!([]));
    }

    /// A repeat of an active subscription reads from this session's own position without
    /// registering again; what it missed goes out once and pushes go on without doubles.
    #[test]
    fn a_repeat_when_active_never_doubles_deliveries() {
        let mut s = subs();
        let e = epoch("e1");
        subscribe_at(&mut s, "chat:a", "e1", 4);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 5)), "deliver");
        let (generation, register, read_from) = started(&s.subscribe(Some(2), "chat:a", None));
        assert!(!register, "a repeat is already registered");
        assert_eq!(read_from.map(|p| p.offset), Some(5));
        // 6 and 7 were published meanwhile; 6 is still on its way as a push.
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 6)), "held");
        let sub = at("e1", 7, Some(publications("chat:a", "e1", 6..=7)));
        let out = s.answered(Some(2), Arc::from("chat:a"), generation, false, Ok(sub));
        assert!(
            !out.iter().any(|a| matches!(a, Action::Join { .. })),
            "no second join"
        );
        assert_eq!(offsets(&out), vec![6, 7]);
        assert_eq!(replies(&out)[0]["offset"], 7);
        assert_eq!(replies(&out)[0]["recovered"], false);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 7)), "drop");
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 8)), "deliver");
    }

    /// A repeat whose gap history cannot fill answers with this session's own position, so
    /// the pushes still on their way arrive and none is skipped.
    #[test]
    fn a_repeat_with_an_unfillable_gap_keeps_its_own_position() {
        let mut s = subs();
        let e = epoch("e1");
        subscribe_at(&mut s, "chat:a", "e1", 4);
        let (generation, _, _) = started(&s.subscribe(Some(2), "chat:a", None));
        let out = s.answered(
            Some(2),
            Arc::from("chat:a"),
            generation,
            false,
            Ok(at("e1", 900, None)),
        );
        assert_eq!(replies(&out)[0]["offset"], 4);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 5)), "deliver");
    }

    /// A repeat that fails leaves the subscription as it was: still registered, pushes flowing.
    #[test]
    fn a_failed_repeat_keeps_the_subscription() {
        let mut s = subs();
        let e = epoch("e1");
        subscribe_at(&mut s, "chat:a", "e1", 4);
        let (generation, _, _) = started(&s.subscribe(Some(2), "chat:a", None));
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 5)), "held");
        let out = s.answered(
            Some(2),
            Arc::from("chat:a"),
            generation,
            false,
            Err(HubError::unavailable("down")),
        );
        assert_eq!(unregisters(&out), 0);
        assert_eq!(errors(&out).len(), 1);
        assert_eq!(offsets(&out), vec![5]);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 6)), "deliver");
    }

    /// A first subscribe that fails takes back its Hub registration and drops what it held.
    #[test]
    fn a_failed_first_subscribe_unregisters() {
        let mut s = subs();
        let e = epoch("e1");
        let (generation, _, _) = started(&s.subscribe(Some(1), "chat:a", None));
        s.on_push(&msg("chat:a", &e, 5));
        let out = s.answered(
            Some(1),
            Arc::from("chat:a"),
            generation,
            true,
            Err(HubError::unavailable("down")),
        );
        assert_eq!(unregisters(&out), 1);
        assert_eq!(released(&out), msg("chat:a", &e, 5).cost);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 6)), "drop");
    }

    /// Unsubscribing while the subscribe is pending: the late answer takes back the Hub
    /// registration (it may have reached the Hub after the unsubscribe) and fails the request.
    #[test]
    fn unsubscribe_while_pending_fails_the_subscribe() {
        let mut s = subs();
        let (generation, _, _) = started(&s.subscribe(Some(1), "chat:a", None));
        s.subscribe(Some(2), "chat:a", None);
        let out = s.unsubscribe("chat:a");
        assert_eq!(unregisters(&out), 1);
        assert_eq!(
            errors(&out).iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![Some(2)]
        );
        let out = s.answered(
            Some(1),
            Arc::from("chat:a"),
            generation,
            true,
            Ok(at("e1", 1, None)),
        );
        assert_eq!(unregisters(&out), 1);
        assert_eq!(
            errors(&out).iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![Some(1)]
        );
        assert!(replies(&out).is_empty());
    }

    /// A stale answer after unsubscribe and a new subscribe leaves the new registration alone.
    #[test]
    fn a_stale_answer_keeps_a_newer_subscribe_registered() {
        let mut s = subs();
        let (first, _, _) = started(&s.subscribe(Some(1), "chat:a", None));
        s.unsubscribe("chat:a");
        let (second, _, _) = started(&s.subscribe(Some(2), "chat:a", None));
        let out = s.answered(
            Some(1),
            Arc::from("chat:a"),
            first,
            true,
            Ok(at("e1", 1, None)),
        );
        assert_eq!(unregisters(&out), 0);
        assert!(matches!(
            s.answered(
                Some(2),
                Arc::from("chat:a"),
                second,
                true,
                Ok(at("e1", 1, None))
            )
            .as_slice(),
            [Action::Join { .. }]
        ));
    }

    /// Unsubscribed while joining presence: the subscribe is failed, not answered.
    #[test]
    fn unsubscribe_while_joining_fails_the_subscribe() {
        let mut s = subs();
        let (generation, _, _) = started(&s.subscribe(Some(1), "chat:a", None));
        s.unsubscribe("chat:a");
        let out = s.joined(Some(1), Arc::from("chat:a"), generation, at("e1", 1, None));
        assert!(replies(&out).is_empty());
        assert_eq!(errors(&out).len(), 1);
    }

    /// Join/leave pushes about this very session are not for it; the others' are.
    #[test]
    fn presence_pushes_about_self_are_dropped() {
        let mut s = subs();
        subscribe_at(&mut s, "chat:a", "e1", 0);
        assert_eq!(deliver(&mut s, &join_of("chat:a", ME)), "drop");
        assert_eq!(deliver(&mut s, &join_of("chat:a", "other")), "deliver");
    }

    /// A subscribe past `HUB_MAX_SUBSCRIPTIONS` is refused; a repeat of one held is not.
    #[test]
    fn subscriptions_are_capped_per_connection() {
        let mut s = Subscriptions::new(Arc::from(ME), 1);
        subscribe_at(&mut s, "chat:a", "e1", 0);
        let out = s.subscribe(Some(2), "chat:b", None);
        assert_eq!(
            errors(&out)[0].1.code,
            crate::error::ErrorCode::LimitExceeded
        );
        assert!(matches!(
            s.subscribe(Some(3), "chat:a", None).as_slice(),
            [Action::Subscribe { .. }]
        ));
    }

    /// A catch-up whose history reads keep failing lets the held pushes go with the gap
    /// after its retries, rather than holding them forever.
    #[test]
    fn a_failing_catch_up_lets_held_pushes_go() {
        let mut s = subs();
        let e = epoch("e1");
        subscribe_at(&mut s, "chat:a", "e1", 4);
        let PushOutcome::CatchUp(mut read) = s.on_push(&msg("chat:a", &e, 7)) else {
            panic!("a gap starts a catch-up");
        };
        for _ in 1..CATCH_UP_ATTEMPTS {
            let out = s.history_answered(read, Err("down"));
            read = match out.into_iter().next() {
                Some(Action::ReadHistory {
                    read,
                    delay: Some(_),
                }) => read,
                _ => panic!("a failed read is retried after a delay"),
            };
        }
        let out = s.history_answered(read, Err("down"));
        assert_eq!(offsets(&out), vec![7]);
        assert_eq!(deliver(&mut s, &msg("chat:a", &e, 8)), "deliver");
    }

    /// A subscribe during a catch-up takes over its held pushes and decides which stay.
    #[test]
    fn a_repeat_during_a_catch_up_keeps_the_held_pushes() {
        let mut s = subs();
        let e = epoch("e1");
        subscribe_at(&mut s, "chat:a", "e1", 4);
        let PushOutcome::CatchUp(read) = s.on_push(&msg("chat:a", &e, 7)) else {
            panic!("a gap starts a catch-up");
        };
        let (generation, _, read_from) = started(&s.subscribe(Some(2), "chat:a", None));
        assert_eq!(read_from.map(|p| p.offset), Some(4));
        // The abandoned catch-up's answer no longer counts.
        assert!(s.history_answered(read, Err("late")).is_empty());
        let sub = at("e1", 6, Some(publications("chat:a", "e1", 5..=6)));
        let out = s.answered(Some(2), Arc::from("chat:a"), generation, false, Ok(sub));
        assert_eq!(offsets(&out), vec![5, 6, 7]);
    }

    /// Unsubscribing stops pushes for the channel and leaves its presence.
    #[test]
    fn unsubscribe_stops_pushes_and_leaves() {
        let mut s = subs();
        subscribe_at(&mut s, "chat:a", "e1", 0);
        let out = s.unsubscribe("chat:a");
        assert!(matches!(
            out.as_slice(),
            [Action::Unregister(_), Action::Leave(_)]
        ));
        assert_eq!(deliver(&mut s, &msg("chat:a", &epoch("e1"), 1)), "drop");
        assert!(s.unsubscribe("chat:a").is_empty());
    }
}
