//! Lifecycle events (docs/lifecycle.md): services learn when a user comes online or goes
//! offline, a channel becomes occupied or vacated, and a member joins or leaves a channel of a
//! join/leave namespace. This module owns what an event is ([`Event`]) and the rules that
//! decide when one is due ([`tracker`]); the engines apply those rules (the memory engine with
//! a [`tracker::Tracker`], the Redis engine in scripts, cluster-wide) and hand the events to
//! the stream and the webhook queues.

pub mod tracker;

use serde::Serialize;
use std::sync::Arc;

use serde_json::value::RawValue;

/// An event type of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    UserOnline,
    UserOffline,
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::UserOnline,
        Kind::UserOffline,
        Kind::ChannelOccupied,
        Kind::ChannelVacated,
        Kind::MemberAdded,
        Kind::MemberRemoved,
    ];

    /// The name on the wire and in `HUB_LIFECYCLE_EVENTS`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::UserOnline => "user.online",
            Kind::UserOffline => "user.offline",
            Kind::ChannelOccupied => "channel.occupied",
            Kind::ChannelVacated => "channel.vacated",
            Kind::MemberAdded => "member.added",
            Kind::MemberRemoved => "member.removed",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Why a user, channel or member went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The client closed the connection or unsubscribed.
    Closed,
    /// The server closed it: `/api/disconnect` (or Pusher's `terminate_connections`).
    Disconnected,
    /// The node holding it died; emitted by a survivor once its lease expired, without grace.
    NodeLost,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Closed => "closed",
            Reason::Disconnected => "disconnected",
            Reason::NodeLost => "node_lost",
        }
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        [Reason::Closed, Reason::Disconnected, Reason::NodeLost]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// What lifecycle state is kept for: a user's connections, a channel's subscribers, or one
/// user's connections subscribed to a channel (members, in join/leave namespaces only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    User(String),
    Channel(String),
    Member { channel: String, user: String },
}

impl Subject {
    /// The events of this subject: going up, going down.
    pub fn kinds(&self) -> (Kind, Kind) {
        match self {
            Subject::User(_) => (Kind::UserOnline, Kind::UserOffline),
            Subject::Channel(_) => (Kind::ChannelOccupied, Kind::ChannelVacated),
            Subject::Member { .. } => (Kind::MemberAdded, Kind::MemberRemoved),
        }
    }

    /// A stable text form (the Redis engine's key part): `u:<user>`, `c:<channel>`,
    /// `m:<channel>\n<user>` (channel names hold no newline).
    pub fn key(&self) -> String {
        match self {
            Subject::User(u) => format!("u:{u}"),
            Subject::Channel(c) => format!("c:{c}"),
            Subject::Member { channel, user } => format!("m:{channel}\n{user}"),
        }
    }
}

/// One lifecycle event, as the stream and the webhooks carry it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per event: receivers dedup by it (delivery is at least once).
    pub id: String,
    #[serde(rename = "type", serialize_with = "kind_name")]
    pub kind: Kind,
    /// Unix ms, when the event was emitted.
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// `member.added` only: the connection's `info` claim (or `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Arc<RawValue>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "reason_name"
    )]
    pub reason: Option<Reason>,
}

fn kind_name<S: serde::Serializer>(kind: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.name())
}

fn reason_name<S: serde::Serializer>(reason: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    match reason {
        Some(r) => s.serialize_str(r.name()),
        None => s.serialize_none(),
    }
}

impl Event {
    /// The event of `subject` going up (`reason: None`) or down.
    pub fn new(
        subject: &Subject,
        up: bool,
        reason: Option<Reason>,
        info: Option<Arc<RawValue>>,
        ts: u64,
    ) -> Event {
        let (on, off) = subject.kinds();
        let (user, channel) = match subject {
            Subject::User(u) => (Some(u.clone()), None),
            Subject::Channel(c) => (None, Some(c.clone())),
            Subject::Member { channel, user } => (Some(user.clone()), Some(channel.clone())),
        };
        let member_added = up && matches!(subject, Subject::Member { .. });
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            kind: if up { on } else { off },
            ts,
            user,
            channel,
            info: if member_added {
                Some(info.unwrap_or_else(null_info))
            } else {
                None
            },
            reason: if up {
                None
            } else {
                Some(reason.unwrap_or(Reason::Closed))
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn null_info() -> Arc<RawValue> {
    RawValue::from_string("null".into())
        .map(Arc::from)
        .unwrap_or_else(|_| unreachable!("`null` is JSON"))
}

/// Where emitted events go besides the metrics: the memory engine's webhook queues. (The Redis
/// engine's scripts append to the stream and the webhook queues themselves.)
pub trait Sink: Send + Sync + 'static {
    /// `events`: each one event's JSON text, in emission order.
    fn push(&self, events: &[String]);
}

/// Turns the transitions the rules decided into events: filtered by `HUB_LIFECYCLE_EVENTS`,
/// counted, and handed to the sink.
pub struct Emitter {
    kinds: Vec<Kind>,
    metrics: Arc<crate::metrics::Metrics>,
    sink: Option<Arc<dyn Sink>>,
}

impl Emitter {
    pub fn new(
        kinds: Vec<Kind>,
        metrics: Arc<crate::metrics::Metrics>,
        sink: Option<Arc<dyn Sink>>,
    ) -> Self {
        Emitter {
            kinds,
            metrics,
            sink,
        }
    }

    /// Emits what of `transitions` the settings ask for, in order.
    pub fn emit(&self, transitions: Vec<tracker::Transition>) {
        if transitions.is_empty() {
            return;
        }
        let ts = crate::clock::unix_millis();
        let mut texts = Vec::with_capacity(transitions.len());
        for t in transitions {
            let event = Event::new(&t.subject, t.up, t.reason, t.info, ts);
            if !self.kinds.contains(&event.kind) {
                continue;
            }
            self.metrics.lifecycle_event(event.kind);
            let text = event.to_json();
            tracing::debug!(event = text.as_str(), "lifecycle event");
            texts.push(text);
        }
        if let (Some(sink), false) = (&self.sink, texts.is_empty()) {
            sink.push(&texts);
        }
    }

    /// The types emitted, as the Redis scripts match them: `,user.online,channel.vacated,`.
    pub fn kinds_list(&self) -> String {
        let mut list = String::from(",");
        for k in &self.kinds {
            list.push_str(k.name());
            list.push(',');
        }
        list
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offline_event_carries_its_user_and_reason() {
        let e = Event::new(
            &Subject::User("alice".into()),
            false,
            Some(Reason::NodeLost),
            None,
            7,
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["type"], "user.offline");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["reason"], "node_lost");
        assert_eq!(v["ts"], 7);
        assert!(v.get("channel").is_none() && v.get("info").is_none());
        assert_eq!(v["id"].as_str().map(str::len), Some(36));
    }

    #[test]
    fn a_member_added_event_carries_channel_user_and_info() {
        let info = Arc::from(RawValue::from_string(r#"{"name":"A"}"#.into()).unwrap());
        let subject = Subject::Member {
            channel: "chat:x".into(),
            user: "alice".into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&Event::new(&subject, true, None, Some(info), 1).to_json())
                .unwrap();
        assert_eq!(v["type"], "member.added");
        assert_eq!(
            (&v["channel"], &v["user"]),
            (&"chat:x".into(), &"alice".into())
        );
        assert_eq!(v["info"]["name"], "A");
        assert!(v.get("reason").is_none());
        let plain = Event::new(&subject, true, None, None, 1).to_json();
        assert!(plain.contains(r#""info":null"#), "{plain}");
    }

    #[test]
    fn every_kind_round_trips_by_name() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("user.away"), None);
    }
}
