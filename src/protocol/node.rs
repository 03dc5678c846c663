//! What nodes tell each other on the control topic (Redis engine only).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NodeMessage {
    /// Close every connection of `user` on every node (`POST /api/disconnect`).
    Disconnect { user: String, node: String },
    /// `node` is alive; sent every `HUB_NODE_HEARTBEAT_S`.
    Heartbeat { node: String },
}

/// What routing needs from a frame published on a channel's topic; the rest of the frame
/// is passed on untouched.
#[derive(Debug, Deserialize)]
pub struct Routing<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub channel: String,
    pub offset: Option<u64>,
    pub epoch: Option<String>,
    /// For `join`/`leave`: the connection it is about.
    pub client: Option<String>,
    /// For `message`: its event id and publish time (Unix ms), for logs and latency.
    pub event_id: Option<String>,
    pub ts: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        let m = NodeMessage::Disconnect {
            user: "u".into(),
            node: "n".into(),
        };
        let text = serde_json::to_string(&m).expect("json");
        assert_eq!(text, r#"{"type":"disconnect","user":"u","node":"n"}"#);
        assert_eq!(
            serde_json::from_str::<NodeMessage>(&text).expect("parse"),
            m
        );
    }

    #[test]
    fn routing_reads_message_and_presence_frames() {
        let r: Routing<'_> = serde_json::from_str(
            r#"{"type":"message","channel":"c","offset":3,"epoch":"e","data":{"x":[1]},"ts":1}"#,
        )
        .expect("parse");
        assert_eq!(
            (r.kind, r.offset, r.epoch.as_deref()),
            ("message", Some(3), Some("e"))
        );
        let r: Routing<'_> = serde_json::from_str(
            r#"{"type":"leave","channel":"c","client":"k","user":"u","info":{}}"#,
        )
        .expect("parse");
        assert_eq!((r.kind, r.client.as_deref()), ("leave", Some("k")));
    }
}
