//! The routing table of one node: which local sessions are connected and which channels each
//! one is subscribed to. A plain struct with no actix in it, so it is tested directly; the Hub
//! actor acts on the outcomes it returns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::Recipient;

use super::push::{Control, Outbound, Pushes};

/// What the Hub keeps of one local session.
pub struct Conn {
    /// The connection id, interned once and shared by every channel entry.
    pub id: Arc<str>,
    pub user: String,
    pub push: Recipient<Pushes>,
    pub control: Recipient<Control>,
    /// This connection's index in the Hub's per-session batches (set by the registry).
    pub slot: usize,
    pub outbound: Arc<Outbound>,
    pub channels: HashSet<Arc<str>>,
}

/// What fan-out needs of one subscriber, kept per channel so delivery needs no second lookup.
#[derive(Clone)]
pub struct Subscriber {
    /// Where the Hub batches this session's pushes until its next flush.
    pub slot: usize,
    pub outbound: Arc<Outbound>,
}

/// What a flush needs of one session, by slot.
pub struct Slot {
    pub client: Arc<str>,
    pub push: Recipient<Pushes>,
}

/// A channel's local subscribers, by connection id.
pub type Subscribers = HashMap<Arc<str>, Subscriber>;

/// What a subscription change meant for this node.
#[derive(Debug, PartialEq, Eq)]
pub enum SubOutcome {
    /// The channel's first local subscriber: the node now needs its publications.
    FirstOnNode,
    Added,
    AlreadySubscribed,
    UnknownConnection,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UnsubOutcome {
    /// The channel's last local subscriber left: the node no longer needs its publications.
    LastOnNode,
    Removed,
    NotSubscribed,
}

#[derive(Default)]
pub struct Registry {
    conns: HashMap<Arc<str>, Conn>,
    channels: HashMap<Arc<str>, Subscribers>,
    subscriptions: usize,
    /// Connections by slot; slots are reused after a disconnect.
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
}

impl Registry {
    /// Registers a session and gives it a slot; answers the slot.
    pub fn connect(&mut self, mut conn: Conn) -> usize {
        let slot_entry = Slot {
            client: Arc::clone(&conn.id),
            push: conn.push.clone(),
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot] = Some(slot_entry);
                slot
            }
            None => {
                self.slots.push(Some(slot_entry));
                self.slots.len() - 1
            }
        };
        conn.slot = slot;
        if let Some(old) = self.conns.insert(Arc::clone(&conn.id), conn) {
            // The same id twice (never expected): keep the slot table consistent.
            self.slots[old.slot] = None;
            self.free_slots.push(old.slot);
        }
        slot
    }

    /// The session holding `slot`, if any.
    pub fn slot(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// How many slots exist (the Hub sizes its batches by it).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Forgets a session and all its subscriptions; returns the channels it left that now have
    /// no local subscriber.
    pub fn disconnect(&mut self, client: &str) -> Vec<Arc<str>> {
        let Some(conn) = self.conns.remove(client) else {
            return Vec::new();
        };
        self.slots[conn.slot] = None;
        self.free_slots.push(conn.slot);
        let mut emptied = Vec::new();
        for channel in conn.channels {
            self.subscriptions -= 1;
            if let Some(subs) = self.channels.get_mut(&channel) {
                subs.remove(client);
                if subs.is_empty() {
                    self.channels.remove(&channel);
                    emptied.push(channel);
                }
            }
        }
        emptied
    }

    pub fn subscribe(&mut self, client: &str, channel: &str) -> SubOutcome {
        let Some(conn) = self.conns.get_mut(client) else {
            return SubOutcome::UnknownConnection;
        };
        if conn.channels.contains(channel) {
            return SubOutcome::AlreadySubscribed;
        }
        let (channel, first) = match self.channels.get_key_value(channel) {
            Some((key, _)) => (Arc::clone(key), false),
            None => (Arc::<str>::from(channel), true),
        };
        conn.channels.insert(Arc::clone(&channel));
        let sub = Subscriber {
            slot: conn.slot,
            outbound: Arc::clone(&conn.outbound),
        };
        self.channels
            .entry(channel)
            .or_default()
            .insert(Arc::clone(&conn.id), sub);
        self.subscriptions += 1;
        if first {
            SubOutcome::FirstOnNode
        } else {
            SubOutcome::Added
        }
    }

    pub fn unsubscribe(&mut self, client: &str, channel: &str) -> UnsubOutcome {
        let Some(conn) = self.conns.get_mut(client) else {
            return UnsubOutcome::NotSubscribed;
        };
        if !conn.channels.remove(channel) {
            return UnsubOutcome::NotSubscribed;
        }
        self.subscriptions -= 1;
        match self.channels.get_mut(channel) {
            Some(subs) => {
                subs.remove(client);
                if subs.is_empty() {
                    self.channels.remove(channel);
                    UnsubOutcome::LastOnNode
                } else {
                    UnsubOutcome::Removed
                }
            }
            None => UnsubOutcome::Removed,
        }
    }

    /// The channel's interned name and its local subscribers.
    pub fn subscribers(&self, channel: &str) -> Option<(&Arc<str>, &Subscribers)> {
        self.channels.get_key_value(channel)
    }

    pub fn conn(&self, client: &str) -> Option<&Conn> {
        self.conns.get(client)
    }

    pub fn conns(&self) -> impl Iterator<Item = (&Arc<str>, &Conn)> {
        self.conns.iter()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Every channel with local subscribers and how many.
    pub fn channel_counts(&self) -> Vec<(String, usize)> {
        self.channels
            .iter()
            .map(|(c, s)| (c.to_string(), s.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{Actor, Context, Handler};

    struct Probe;
    impl Actor for Probe {
        type Context = Context<Self>;
    }
    impl Handler<Pushes> for Probe {
        type Result = ();
        fn handle(&mut self, _: Pushes, _: &mut Context<Self>) {}
    }
    impl Handler<Control> for Probe {
        type Result = ();
        fn handle(&mut self, _: Control, _: &mut Context<Self>) {}
    }

    fn conn(id: &str) -> Conn {
        let addr = Probe.start();
        Conn {
            id: Arc::from(id),
            user: "u".into(),
            push: addr.clone().recipient(),
            control: addr.recipient(),
            outbound: Outbound::new(1 << 20),
            channels: HashSet::new(),
            slot: 0,
        }
    }

    #[actix_rt::test]
    async fn slots_are_distinct_and_reused_after_a_disconnect() {
        let mut r = Registry::default();
        let a = r.connect(conn("a"));
        let b = r.connect(conn("b"));
        assert_ne!(a, b);
        r.disconnect("a");
        assert_eq!(r.connect(conn("c")), a);
        assert_eq!(r.slot(a).map(|s| &*s.client), Some("c"));
        assert_eq!(r.slot_count(), 2);
    }

    #[actix_rt::test]
    async fn first_and_last_subscriber_on_node_are_reported() {
        let mut r = Registry::default();
        r.connect(conn("a"));
        r.connect(conn("b"));
        assert_eq!(r.subscribe("a", "ch"), SubOutcome::FirstOnNode);
        assert_eq!(r.subscribe("b", "ch"), SubOutcome::Added);
        assert_eq!(r.subscribe("b", "ch"), SubOutcome::AlreadySubscribed);
        assert_eq!(r.subscriptions(), 2);
        assert_eq!(r.unsubscribe("a", "ch"), UnsubOutcome::Removed);
        assert_eq!(r.unsubscribe("a", "ch"), UnsubOutcome::NotSubscribed);
        assert_eq!(r.unsubscribe("b", "ch"), UnsubOutcome::LastOnNode);
        assert!(r.subscribers("ch").is_none());
        assert_eq!(r.subscribe("zz", "ch"), SubOutcome::UnknownConnection);
    }

    #[actix_rt::test]
    async fn disconnect_removes_every_subscription_and_reports_emptied_channels() {
        let mut r = Registry::default();
        r.connect(conn("a"));
        r.connect(conn("b"));
        r.subscribe("a", "x");
        r.subscribe("a", "y");
        r.subscribe("b", "y");
        let slot_a = r.conn("a").map(|c| c.slot);
        let mut emptied = r.disconnect("a");
        assert!(
            slot_a.is_some_and(|s| r.slot(s).is_none()),
            "the slot is freed"
        );
        emptied.sort();
        assert_eq!(emptied, vec![Arc::<str>::from("x")]);
        assert_eq!(r.subscriptions(), 1);
        assert_eq!(r.connections(), 1);
        assert_eq!(r.channel_counts(), vec![("y".to_owned(), 1)]);
    }
}
