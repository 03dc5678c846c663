//! What one webhook request carries and when it is tried again: batches of at most
//! [`MAX_BATCH`] events, oldest first, their body, the retry schedule, and the event facts a
//! dead letter needs. Plain functions, no I/O: both engines build their batches through here.

use std::collections::VecDeque;
use std::time::Duration;

/// Most events one request carries (contract §6).
pub const MAX_BATCH: usize = 100;

/// The wait after the first failed attempt; it doubles after each further one.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// One batch of events for one URL. Its `delivery` id is made once and sent on every attempt,
/// so a receiver that got a batch whose answer was lost sees the retry as the same delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `X-Hub-Delivery`.
    pub delivery: String,
    /// The events' JSON texts, oldest first, as they were queued.
    pub events: Vec<String>,
}

impl Batch {
    /// A new batch with a new delivery id.
    pub fn new(events: Vec<String>) -> Batch {
        Batch {
            delivery: uuid::Uuid::new_v4().to_string(),
            events,
        }
    }

    /// The request body.
    pub fn body(&self) -> String {
        body(&self.events)
    }
}

/// `{"events":[<event>,...]}` with each event's JSON text inserted verbatim: the receiver
/// verifies the signature over these exact bytes, so nothing is parsed and written again.
pub fn body(events: &[String]) -> String {
    let len = events.iter().map(|e| e.len() + 1).sum::<usize>() + 12;
    let mut body = String::with_capacity(len);
    body.push_str(r#"{"events":["#);
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(event);
    }
    body.push_str("]}");
    body
}

/// Takes the next batch off the front of `queue`: its oldest events, at most [`MAX_BATCH`].
pub fn take(queue: &mut VecDeque<String>) -> Vec<String> {
    let n = queue.len().min(MAX_BATCH);
    queue.drain(..n).collect()
}

/// The wait before the attempt that follows failed attempt number `failed` (from 1): 1 s,
/// 2 s, 4 s, … at most [`MAX_RETRY`].
pub fn retry_delay(failed: u32) -> Duration {
    // 2^6 s already exceeds the cap, so larger exponents need not be computed (nor overflow).
    let doublings = failed.saturating_sub(1).min(6);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY)
}

/// The `id` of an event given as its JSON text; empty when the text has none (the dead letter
/// is kept all the same: its `fields.event` holds the whole text).
pub fn event_id(event: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_str::<Id>(event)
        .map(|e| e.id)
        .unwrap_or_default()
}

/// `url` as it may be shown in logs and dead letters: with a password in its userinfo
/// replaced by `redacted` (a receiver's basic-auth credential is a secret too).
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            if parsed.set_password(Some("redacted")).is_ok() {
                parsed.to_string()
            } else {
                "<url with unprintable password>".to_owned()
            }
        }
        Ok(_) => url.to_owned(),
        // Start-up checks make every URL parse; a string that does not is printed as nothing
        // rather than risk printing a secret.
        Err(_) => "<unparsable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_at_most_a_hundred_events_oldest_first() {
        let mut queue: VecDeque<String> = (0..250).map(|i| format!(r#"{{"id":"{i}"}}"#)).collect();
        let first = take(&mut queue);
        assert_eq!(first.len(), 100);
        assert_eq!(first[0], r#"{"id":"0"}"#);
        assert_eq!(first[99], r#"{"id":"99"}"#);
        assert_eq!(take(&mut queue).len(), 100);
        let last = take(&mut queue);
        assert_eq!(last.len(), 50);
        assert_eq!(last[49], r#"{"id":"249"}"#);
        assert!(take(&mut queue).is_empty());
    }

    #[test]
    fn the_body_holds_the_events_verbatim_in_order() {
        let events = vec![
            r#"{"id":"a", "x":1}"#.to_owned(),
            r#"{"id":"b"}"#.to_owned(),
        ];
        let body = body(&events);
        assert_eq!(body, r#"{"events":[{"id":"a", "x":1},{"id":"b"}]}"#);
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(parsed["events"][1]["id"], "b");
        assert_eq!(super::body(&[]), r#"{"events":[]}"#);
    }

    #[test]
    fn each_batch_has_its_own_delivery_id() {
        let a = Batch::new(vec!["{}".into()]);
        let b = Batch::new(vec!["{}".into()]);
        assert_ne!(a.delivery, b.delivery);
        assert_eq!(a.delivery.len(), 36);
    }

    #[test]
    fn retries_wait_one_second_doubling_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
        assert_eq!(retry_delay(0), FIRST_RETRY);
    }

    #[test]
    fn the_event_id_is_read_from_the_json() {
        assert_eq!(event_id(r#"{"id":"ev-1","type":"user.online"}"#), "ev-1");
        assert_eq!(event_id("not json"), "");
        assert_eq!(event_id(r#"{"type":"x"}"#), "");
    }

    #[test]
    fn a_password_in_the_url_is_redacted() {
        assert_eq!(
            redacted("https://hook:s3cret@example.com/in?x=1"),
            "https://hook:redacted@example.com/in?x=1"
        );
        assert_eq!(redacted("http://example.com/in"), "http://example.com/in");
        assert_eq!(
            redacted("https://user@example.com/"),
            "https://user@example.com/"
        );
    }
}
