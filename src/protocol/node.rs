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

/// The frames of one message on a channel's topic: a single frame (it starts with `{`), or a
/// bundle of one channel's consecutive frames published together, each preceded by its length
/// in bytes and a colon (`57:{…}61:{…}`). The publish script sends a run of a channel's
/// messages as one bundle, so a burst costs Redis one `PUBLISH` instead of one per message;
/// a length prefix rather than a separator, because a frame's `data` is the publisher's JSON
/// verbatim and may contain any byte sequence JSON allows.
pub fn frames(payload: &[u8]) -> Frames<'_> {
    Frames { rest: payload }
}

/// The iterator of [`frames`]. Yields `Err` once, and then nothing, where a bundle is malformed.
pub struct Frames<'a> {
    rest: &'a [u8],
}

/// A bundle whose length prefix is missing, unreadable or longer than what is left.
#[derive(Debug, PartialEq, Eq)]
pub struct MalformedBundle;

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], MalformedBundle>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = std::mem::take(&mut self.rest);
        match rest.first()? {
            b'{' => Some(Ok(rest)),
            _ => {
                let colon = rest.iter().position(|&b| b == b':');
                let len = colon
                    .and_then(|at| std::str::from_utf8(&rest[..at]).ok())
                    .and_then(|digits| digits.parse::<usize>().ok());
                let (Some(at), Some(len)) = (colon, len) else {
                    return Some(Err(MalformedBundle));
                };
                let body = &rest[at + 1..];
                if len == 0 || len > body.len() {
                    return Some(Err(MalformedBundle));
                }
                let (frame, after) = body.split_at(len);
                self.rest = after;
                Some(Ok(frame))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_frame_is_one_frame() {
        let got: Vec<_> = frames(br#"{"type":"message","x":"3:{"}"#).collect();
        assert_eq!(got, vec![Ok(&br#"{"type":"message","x":"3:{"}"#[..])]);
    }

    #[test]
    fn a_bundle_splits_into_its_frames_in_order() {
        let got: Vec<_> = frames(b"7:{\"a\":1}12:{\"b\":\"5:{}\"}").collect();
        assert_eq!(
            got,
            vec![Ok(&b"{\"a\":1}"[..]), Ok(&b"{\"b\":\"5:{}\"}"[..])]
        );
    }

    #[test]
    fn a_malformed_bundle_yields_its_good_frames_then_one_error() {
        for bad in [
            &b"7:{\"a\":1}x:{}"[..],
            b"7:{\"a\":1}99:{}",
            b"7:{\"a\":1}5",
            b"7:{\"a\":1}0:",
        ] {
            let got: Vec<_> = frames(bad).collect();
            assert_eq!(
                got,
                vec![Ok(&b"{\"a\":1}"[..]), Err(MalformedBundle)],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_empty_message_has_no_frames() {
        assert_eq!(frames(b"").count(), 0);
    }

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
