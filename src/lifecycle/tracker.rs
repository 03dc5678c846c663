//! The lifecycle rules for one process (the memory engine): which connections hold each
//! subject, whether it is up, and when a grace runs out. The Redis engine applies the same
//! rules in its scripts (`engine/redis/lifecycle.lua`), cluster-wide.
//!
//! The rules:
//! - a subject goes up when its first holder arrives, unless it is still up (inside a grace,
//!   which the arrival cancels): never two `up`s in a row;
//! - when its last holder leaves it stays up for the grace; only if nobody arrived by then
//!   does it go down, with the reason of that last departure;
//! - a subject that is down emits nothing when a holder it does not have leaves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Reason, Subject};

/// A transition the rules decided: `subject` went up (`reason: None`) or down.
#[derive(Debug, Clone)]
pub struct Transition {
    pub subject: Subject,
    pub up: bool,
    pub reason: Option<Reason>,
    /// The arriving holder's `info`, for `member.added`.
    pub info: Option<Arc<RawValue>>,
}

#[derive(Debug, Default)]
struct State {
    holders: HashSet<String>,
    /// When the grace runs out and with which reason, while one runs.
    pending: Option<(Instant, Reason)>,
}

/// Every subject that is up (being held, or inside its grace). A subject that is down has no
/// entry.
#[derive(Debug)]
pub struct Tracker {
    grace: Duration,
    up: HashMap<Subject, State>,
    /// Grace deadlines in order, for [`Tracker::sweep`]; `(deadline, seq)` keeps them unique.
    deadlines: BTreeMap<(Instant, u64), Subject>,
    seq: u64,
}

impl Tracker {
    pub fn new(grace: Duration) -> Self {
        Tracker {
            grace,
            up: HashMap::new(),
            deadlines: BTreeMap::new(),
            seq: 0,
        }
    }

    /// `client` now holds `subject`; the subject goes up if it was down.
    pub fn add(
        &mut self,
        subject: Subject,
        client: &str,
        info: Option<Arc<RawValue>>,
    ) -> Option<Transition> {
        match self.up.get_mut(&subject) {
            Some(state) => {
                // Up already (held, or inside a grace that this arrival cancels); its
                // deadline entry stays behind and is skipped by `sweep`.
                state.pending = None;
                state.holders.insert(client.to_owned());
                None
            }
            None => {
                let mut state = State::default();
                state.holders.insert(client.to_owned());
                self.up.insert(subject.clone(), state);
                Some(Transition {
                    subject,
                    up: true,
                    reason: None,
                    info,
                })
            }
        }
    }

    /// `client` no longer holds `subject`. The last holder leaving starts the grace (or, with
    /// no grace or for `node_lost`, takes the subject down at once).
    pub fn remove(
        &mut self,
        subject: &Subject,
        client: &str,
        reason: Reason,
        now: Instant,
    ) -> Option<Transition> {
        let state = self.up.get_mut(subject)?;
        if !state.holders.remove(client) || !state.holders.is_empty() {
            return None;
        }
        if self.grace.is_zero() || reason == Reason::NodeLost {
            self.up.remove(subject);
            return Some(down(subject.clone(), reason));
        }
        let deadline = now + self.grace;
        state.pending = Some((deadline, reason));
        self.seq += 1;
        self.deadlines.insert((deadline, self.seq), subject.clone());
        None
    }

    /// Takes down every subject whose grace ran out by `now`.
    pub fn sweep(&mut self, now: Instant) -> Vec<Transition> {
        let mut due = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((deadline, _), subject) = entry.remove_entry();
            // Skip a deadline that a later arrival cancelled (or replaced with a later one).
            let expired = self
                .up
                .get(&subject)
                .and_then(|s| s.pending)
                .filter(|(d, _)| *d == deadline);
            if let Some((_, reason)) = expired {
                self.up.remove(&subject);
                due.push(down(subject, reason));
            }
        }
        due
    }

    /// Takes down every subject inside its grace, now (the process is stopping).
    pub fn end_graces(&mut self) -> Vec<Transition> {
        match self.deadlines.last_key_value() {
            Some(((last, _), _)) => {
                let last = *last;
                self.sweep(last)
            }
            None => Vec::new(),
        }
    }

    /// When the next grace runs out, if one runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(d, _)| *d)
    }

    /// Whether `subject` is up (held, or inside its grace).
    pub fn is_up(&self, subject: &Subject) -> bool {
        self.up.contains_key(subject)
    }
}

fn down(subject: Subject, reason: Reason) -> Transition {
    Transition {
        subject,
        up: false,
        reason: Some(reason),
        info: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(3);

    fn user(u: &str) -> Subject {
        Subject::User(u.into())
    }

    fn ups_and_downs(ts: &[Transition]) -> Vec<(bool, Option<Reason>)> {
        ts.iter().map(|t| (t.up, t.reason)).collect()
    }

    #[test]
    fn the_first_holder_takes_a_subject_up_and_later_ones_do_not() {
        let mut t = Tracker::new(GRACE);
        assert!(t.add(user("a"), "c1", None).is_some_and(|t| t.up));
        assert!(t.add(user("a"), "c2", None).is_none());
        assert!(t.add(user("b"), "c3", None).is_some());
    }

    #[test]
    fn the_last_holder_leaving_takes_it_down_after_the_grace() {
        let mut t = Tracker::new(GRACE);
        let now = Instant::now();
        t.add(user("a"), "c1", None);
        t.add(user("a"), "c2", None);
        assert!(t.remove(&user("a"), "c1", Reason::Closed, now).is_none());
        assert!(t.remove(&user("a"), "c2", Reason::Closed, now).is_none());
        assert!(t.sweep(now + GRACE - Duration::from_millis(1)).is_empty());
        let down = t.sweep(now + GRACE);
        assert_eq!(ups_and_downs(&down), [(false, Some(Reason::Closed))]);
        assert!(t.sweep(now + GRACE * 2).is_empty(), "emitted once");
        assert!(!t.is_up(&user("a")));
    }

    #[test]
    fn a_return_inside_the_grace_emits_nothing_at_all() {
        let mut t = Tracker::new(GRACE);
        let now = Instant::now();
        t.add(user("a"), "tab", None);
        t.remove(&user("a"), "tab", Reason::Closed, now);
        assert!(t.add(user("a"), "reloaded", None).is_none());
        assert!(t.sweep(now + GRACE * 2).is_empty());
        assert!(t.is_up(&user("a")));
    }

    #[test]
    fn a_later_grace_replaces_a_cancelled_one() {
        let mut t = Tracker::new(GRACE);
        let now = Instant::now();
        t.add(user("a"), "c1", None);
        t.remove(&user("a"), "c1", Reason::Closed, now);
        t.add(user("a"), "c2", None);
        let later = now + Duration::from_secs(2);
        t.remove(&user("a"), "c2", Reason::Disconnected, later);
        assert!(
            t.sweep(now + GRACE).is_empty(),
            "the first deadline was cancelled"
        );
        let down = t.sweep(later + GRACE);
        assert_eq!(ups_and_downs(&down), [(false, Some(Reason::Disconnected))]);
    }

    #[test]
    fn node_lost_and_a_zero_grace_skip_the_grace() {
        let mut t = Tracker::new(GRACE);
        let now = Instant::now();
        t.add(user("a"), "c1", None);
        let down = t.remove(&user("a"), "c1", Reason::NodeLost, now);
        assert!(down.is_some_and(|d| d.reason == Some(Reason::NodeLost)));
        let mut zero = Tracker::new(Duration::ZERO);
        zero.add(user("a"), "c1", None);
        assert!(zero.remove(&user("a"), "c1", Reason::Closed, now).is_some());
    }

    #[test]
    fn leaving_what_was_never_held_emits_nothing() {
        let mut t = Tracker::new(Duration::ZERO);
        let now = Instant::now();
        assert!(t.remove(&user("a"), "c1", Reason::Closed, now).is_none());
        t.add(user("a"), "c1", None);
        assert!(t.remove(&user("a"), "other", Reason::Closed, now).is_none());
        assert!(t.is_up(&user("a")));
    }

    /// Whatever the order of arrivals, departures and sweeps, the transitions of one subject
    /// alternate, starting with `up`.
    #[test]
    fn transitions_strictly_alternate() {
        let mut t = Tracker::new(GRACE);
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for step in 0..5000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let now = start + Duration::from_millis(step * 400);
            let client = format!("c{}", rng % 3);
            let out = match (rng >> 8) % 3 {
                0 => t.add(user("a"), &client, None).into_iter().collect(),
                1 => t
                    .remove(&user("a"), &client, Reason::Closed, now)
                    .into_iter()
                    .collect(),
                _ => t.sweep(now),
            };
            seen.extend(out.into_iter().map(|x| x.up));
        }
        assert!(seen.len() > 10, "the walk went up and down: {}", seen.len());
        for (i, up) in seen.iter().enumerate() {
            assert_eq!(*up, i % 2 == 0, "transition {i} of {seen:?}");
        }
    }

    #[test]
    fn ending_the_graces_takes_down_every_subject_inside_one() {
        let mut t = Tracker::new(GRACE);
        let now = Instant::now();
        t.add(user("a"), "c1", None);
        t.add(user("b"), "c2", None);
        t.add(user("held"), "c3", None);
        t.remove(&user("a"), "c1", Reason::Closed, now);
        t.remove(
            &user("b"),
            "c2",
            Reason::Closed,
            now + Duration::from_secs(1),
        );
        assert_eq!(t.end_graces().len(), 2);
        assert!(t.is_up(&user("held")));
        assert!(t.end_graces().is_empty());
    }

    #[test]
    fn next_deadline_is_the_earliest_grace() {
        let mut t = Tracker::new(GRACE);
        let now = Instant::now();
        assert_eq!(t.next_deadline(), None);
        t.add(user("a"), "c1", None);
        t.add(user("b"), "c2", None);
        t.remove(
            &user("b"),
            "c2",
            Reason::Closed,
            now + Duration::from_secs(1),
        );
        t.remove(&user("a"), "c1", Reason::Closed, now);
        assert_eq!(t.next_deadline(), Some(now + GRACE));
    }
}
