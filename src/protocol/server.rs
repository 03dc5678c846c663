//! Frames the server sends. Each is serialised exactly once: a publication's `message` frame once
//! per node, whatever the number of subscribers.

use std::sync::Arc;

use actix_web::web::Bytes;
use bytestring::ByteString;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// Who published: absent for services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Sender {
    pub user: String,
    pub client: String,
}

/// A `message` frame, encoded once at publish time and shared from then on: pushed to every
/// subscriber, kept in history, embedded in `subscribed` and `history` replies as it is.
pub type Message = Arc<RawValue>;

/// The fields of a `message` frame after its offset and epoch, serialised in wire order.
#[derive(Serialize)]
struct MessageRest<'a> {
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a Sender>,
    ts: u64,
}

/// A `message` frame before its offset and epoch are known: the engine that assigns them
/// completes it (in process, or inside a Redis script), so both engines produce the same bytes.
///
/// `head` ends just before the offset's digits; `tail` is the rest after the epoch.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    pub head: String,
    pub tail: String,
}

impl MessageTemplate {
    pub fn new(
        channel: &str,
        event_id: &str,
        event_type: Option<&str>,
        data: &RawValue,
        from: Option<&Sender>,
        ts: u64,
    ) -> Self {
        // Serialising strings and already-valid raw JSON cannot fail; the fallbacks only keep
        // this total.
        let channel = serde_json::to_string(channel).unwrap_or_else(|_| "\"\"".to_owned());
        let rest = serde_json::to_string(&MessageRest {
            event_id,
            event_type,
            data,
            from,
            ts,
        })
        .unwrap_or_else(|_| "{}".to_owned());
        MessageTemplate {
            head: format!(r#"{{"type":"message","channel":{channel},"offset":"#),
            // Drop the opening brace: the tail continues the frame's object.
            tail: rest[1..].to_owned(),
        }
    }

    /// The finished frame's text. `epoch` is one of the engine's own tokens (alphanumeric), so
    /// it needs no JSON escaping.
    pub fn complete(&self, offset: u64, epoch: &str) -> String {
        format!(r#"{}{offset},"epoch":"{epoch}",{}"#, self.head, self.tail)
    }
}

/// Parses a finished frame into a [`Message`] (a cheap validation pass over our own output).
pub fn message(text: String) -> Result<Message, serde_json::Error> {
    RawValue::from_string(text).map(Arc::from)
}

/// A connection as others see it in presence and join/leave.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    pub client: String,
    pub user: String,
    #[serde(serialize_with = "info_or_empty")]
    pub info: Option<Arc<RawValue>>,
}

fn info_or_empty<S: Serializer>(info: &Option<Arc<RawValue>>, s: S) -> Result<S::Ok, S::Error> {
    match info {
        Some(raw) => raw.serialize(s),
        None => serde_json::Map::new().serialize(s),
    }
}

/// Every frame the server sends, tagged by `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Welcome {
        client: &'a str,
        user: &'a str,
        node: &'a str,
        expires_at: u64,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        recovered: bool,
        publications: &'a [Message],
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
    },
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        event_id: &'a str,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        publications: &'a [Message],
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        channel: &'a str,
        clients: &'a [ClientInfo],
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        expires_at: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: &'a str,
        message: &'a str,
    },
    Join {
        channel: &'a str,
        #[serde(flatten)]
        client: &'a ClientInfo,
    },
    Leave {
        channel: &'a str,
        #[serde(flatten)]
        client: &'a ClientInfo,
    },
}

/// Serialises a frame to the text of one WebSocket message.
pub fn encode<T: Serialize + ?Sized>(frame: &T) -> ByteString {
    match serde_json::to_vec(frame) {
        // SAFETY-free conversion: serde_json only ever writes UTF-8.
        Ok(bytes) => {
            ByteString::try_from(Bytes::from(bytes)).unwrap_or_else(|_| internal_error_frame())
        }
        Err(e) => {
            // Our frames hold only strings, numbers and already-valid raw JSON; this is a bug.
            tracing::error!(error = %e, "cannot serialise a server frame");
            internal_error_frame()
        }
    }
}

fn internal_error_frame() -> ByteString {
    ByteString::from_static(r#"{"type":"error","code":"internal","message":"internal error"}"#)
}

impl ServerFrame<'_> {
    pub fn encode(&self) -> ByteString {
        encode(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> MessageTemplate {
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).expect("json");
        MessageTemplate::new(
            "chat:a",
            "e1",
            None,
            &data,
            Some(&Sender {
                user: "alice".into(),
                client: "c1".into(),
            }),
            5,
        )
    }

    #[test]
    fn message_frame_has_the_contract_fields_in_order() {
        assert_eq!(
            template().complete(18, "k3x9"),
            r#"{"type":"message","channel":"chat:a","offset":18,"epoch":"k3x9","event_id":"e1","data":{"text":"hi"},"from":{"user":"alice","client":"c1"},"ts":5}"#
        );
    }

    #[test]
    fn message_frame_with_event_type_and_no_sender() {
        let data = RawValue::from_string("[1]".into()).expect("json");
        let t = MessageTemplate::new("a\"b", "e", Some("t.x"), &data, None, 1);
        let v: serde_json::Value = serde_json::from_str(&t.complete(1, "e")).expect("valid JSON");
        assert_eq!(v["channel"], "a\"b");
        assert_eq!(v["event_type"], "t.x");
        assert!(v.get("from").is_none());
    }

    #[test]
    fn subscribed_embeds_message_frames_as_they_are() {
        let pubs = [message(template().complete(18, "k3x9")).expect("json")];
        let text = ServerFrame::Subscribed {
            id: Some(1),
            channel: "chat:a",
            offset: 18,
            epoch: "k3x9",
            recovered: true,
            publications: &pubs,
        }
        .encode();
        assert!(text.contains(&template().complete(18, "k3x9")));
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["type"], "subscribed");
        assert_eq!(v["publications"][0]["data"]["text"], "hi");
    }

    #[test]
    fn join_carries_client_fields_and_empty_info() {
        let info = ClientInfo {
            client: "c".into(),
            user: "bob".into(),
            info: None,
        };
        let text = ServerFrame::Join {
            channel: "chat:a",
            client: &info,
        }
        .encode();
        assert_eq!(
            &*text,
            r#"{"type":"join","channel":"chat:a","client":"c","user":"bob","info":{}}"#
        );
    }

    #[test]
    fn errors_without_id_omit_it() {
        let text = ServerFrame::Error {
            id: None,
            code: "bad_request",
            message: "x",
        }
        .encode();
        assert_eq!(
            &*text,
            r#"{"type":"error","code":"bad_request","message":"x"}"#
        );
    }
}
