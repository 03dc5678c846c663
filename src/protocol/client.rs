//! Frames a client sends, parsed in two steps so that every failure gets a precise error and the
//! request's `id` is echoed whenever the frame was an object with a valid `id`.
//!
//! First the frame is read as an object of known fields, each kept as raw JSON; then each field
//! the request type needs is checked and converted. A serde-tagged enum would do the second step
//! for us, but it cannot carry `data` through untouched as raw JSON and its errors name no field.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{valid_channel, Position, MAX_ID};
use crate::error::HubError;

/// Longest `event_id` or `event_type`, in bytes.
pub const MAX_EVENT_FIELD_LEN: usize = 255;

/// A request a client may make (docs/protocol.md §3).
#[derive(Debug)]
pub enum Request {
    Subscribe {
        channel: String,
        recover: Option<Position>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
        event_id: Option<String>,
        event_type: Option<String>,
    },
    History {
        channel: String,
        limit: Option<u64>,
        since: Option<Position>,
    },
    Presence {
        channel: String,
    },
    Refresh {
        token: String,
    },
    Ping,
}

/// A frame that could not be understood: the error to reply with, and the `id` to echo if the
/// frame had a valid one.
#[derive(Debug)]
pub struct FrameError {
    pub id: Option<u64>,
    pub error: HubError,
}

/// Every field any request uses, as raw JSON; unknown fields are ignored.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow, default, deserialize_with = "present", rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    recover: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    event_type: Option<&'a RawValue>,
}

/// Keeps a field that is present as `Some`, even when it is `null` (serde's `Option` would
/// read `null` as absent, and `"id": null` must be refused, not ignored).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame into its `id` and request.
pub fn parse_frame(text: &str) -> Result<(Option<u64>, Request), FrameError> {
    // serde reads a struct from an array too (fields by position): only objects are frames.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError {
            id: None,
            error: HubError::bad_request("a frame must be one JSON object"),
        });
    }
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| FrameError {
        id: id_only(text),
        error: HubError::bad_request(format!("malformed frame: {e}")),
    })?;
    let id = match raw.id {
        None => None,
        Some(v) => Some(parse_id(v).map_err(|error| FrameError { id: None, error })?),
    };
    raw.into_request()
        .map(|r| (id, r))
        .map_err(|error| FrameError { id, error })
}

/// The `id` of an object that failed to parse as a frame for another reason (a repeated
/// field, say), so the error can still be matched to its request.
fn id_only(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let raw: IdOnly<'_> = serde_json::from_str(text).ok()?;
    parse_id(raw.id?).ok()
}

/// A JSON integer without fraction or exponent, from 0 to 2^53 − 1.
fn parse_id(raw: &RawValue) -> Result<u64, HubError> {
    let text = raw.get();
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let canonical = text == "0" || !text.starts_with('0');
    match text.parse::<u64>() {
        Ok(id) if digits_only && canonical && id <= MAX_ID => Ok(id),
        _ => Err(HubError::bad_request(
            "`id` must be an integer from 0 to 2^53-1",
        )),
    }
}

fn required<T: DeserializeOwned>(
    raw: Option<&RawValue>,
    name: &str,
    what: &str,
) -> Result<T, HubError> {
    match raw {
        None => Err(HubError::bad_request(format!("missing `{name}`"))),
        Some(v) => typed(v, name, what),
    }
}

fn optional<T: DeserializeOwned>(
    raw: Option<&RawValue>,
    name: &str,
    what: &str,
) -> Result<Option<T>, HubError> {
    raw.map(|v| typed(v, name, what)).transpose()
}

fn typed<T: DeserializeOwned>(raw: &RawValue, name: &str, what: &str) -> Result<T, HubError> {
    serde_json::from_str(raw.get())
        .map_err(|_| HubError::bad_request(format!("`{name}` must be {what}")))
}

/// A channel name from the frame, checked against the contract's alphabet.
fn channel(raw: Option<&RawValue>) -> Result<String, HubError> {
    let name: String = required(raw, "channel", "a string")?;
    if valid_channel(&name) {
        Ok(name)
    } else {
        Err(HubError::bad_request("invalid channel name"))
    }
}

fn position(raw: Option<&RawValue>, name: &str) -> Result<Option<Position>, HubError> {
    optional(
        raw,
        name,
        "an object {\"offset\": integer, \"epoch\": string}",
    )
}

/// An optional short text field (`event_id`, `event_type`): a non-empty string of bounded length.
pub fn event_field(value: Option<String>, name: &str) -> Result<Option<String>, HubError> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_EVENT_FIELD_LEN => Err(HubError::bad_request(
            format!("`{name}` must be 1 to {MAX_EVENT_FIELD_LEN} bytes"),
        )),
        other => Ok(other),
    }
}

impl RawFrame<'_> {
    fn into_request(self) -> Result<Request, HubError> {
        let kind: String = required(self.kind, "type", "a string")?;
        Ok(match kind.as_str() {
            "subscribe" => Request::Subscribe {
                channel: channel(self.channel)?,
                recover: position(self.recover, "recover")?,
            },
            "unsubscribe" => Request::Unsubscribe {
                channel: channel(self.channel)?,
            },
            "publish" => {
                let channel = channel(self.channel)?;
                let data = self
                    .data
                    .ok_or_else(|| HubError::bad_request("missing `data`"))?
                    .to_owned();
                Request::Publish {
                    channel,
                    data,
                    event_id: event_field(
                        optional(self.event_id, "event_id", "a string")?,
                        "event_id",
                    )?,
                    event_type: event_field(
                        optional(self.event_type, "event_type", "a string")?,
                        "event_type",
                    )?,
                }
            }
            "history" => Request::History {
                channel: channel(self.channel)?,
                limit: optional(self.limit, "limit", "a non-negative integer")?,
                since: position(self.since, "since")?,
            },
            "presence" => Request::Presence {
                channel: channel(self.channel)?,
            },
            "refresh" => Request::Refresh {
                token: required(self.token, "token", "a string")?,
            },
            "ping" => Request::Ping,
            _ => {
                return Err(HubError::unknown_type(format!(
                    "unknown type `{}`",
                    truncate(&kind, 64)
                )))
            }
        })
    }
}

/// Cuts client text echoed in error messages to a bounded length, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn err(text: &str) -> FrameError {
        parse_frame(text).expect_err("frame should be refused")
    }

    #[test]
    fn subscribe_with_recover_parses() {
        let (id, req) = parse_frame(
            r#"{"type":"subscribe","id":1,"channel":"chat:a","recover":{"offset":3,"epoch":"e"}}"#,
        )
        .expect("valid");
        assert_eq!(id, Some(1));
        match req {
            Request::Subscribe { channel, recover } => {
                assert_eq!(channel, "chat:a");
                assert_eq!(
                    recover,
                    Some(Position {
                        offset: 3,
                        epoch: "e".into()
                    })
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn publish_keeps_data_byte_for_byte() {
        let (_, req) =
            parse_frame(r#"{"type":"publish","channel":"c","data":{"b":1, "a":[1.50,"\u00e9"]}}"#)
                .expect("valid");
        match req {
            Request::Publish { data, .. } => {
                assert_eq!(data.get(), r#"{"b":1, "a":[1.50,"\u00e9"]}"#)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ids_out_of_range_or_typed_wrong_are_bad_requests_without_id() {
        for id in [
            "-1",
            "1.0",
            "1e3",
            "9007199254740992",
            "\"1\"",
            "null",
            "01",
            "true",
        ] {
            let e = err(&format!(r#"{{"type":"ping","id":{id}}}"#));
            assert_eq!(e.id, None, "id {id}");
            assert_eq!(e.error.code, ErrorCode::BadRequest, "id {id}");
        }
        let (id, _) = parse_frame(r#"{"type":"ping","id":9007199254740991}"#).expect("max id");
        assert_eq!(id, Some(MAX_ID));
    }

    #[test]
    fn errors_after_a_valid_id_echo_it() {
        let e = err(r#"{"type":"subscribe","id":7,"channel":5}"#);
        assert_eq!(e.id, Some(7));
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        let e = err(r#"{"type":"ping","id":9,"channel":"a","channel":"b"}"#);
        assert_eq!((e.id, e.error.code), (Some(9), ErrorCode::BadRequest));
        let e = err(r#"{"type":"dance","id":8}"#);
        assert_eq!((e.id, e.error.code), (Some(8), ErrorCode::UnknownType));
    }

    #[test]
    fn non_objects_and_garbage_are_bad_requests() {
        for text in [
            "[]",
            "1",
            "\"x\"",
            "nonsense",
            "{",
            "",
            "{\"type\":\"ping\",\"type\":\"ping\"}",
        ] {
            assert_eq!(err(text).error.code, ErrorCode::BadRequest, "{text}");
        }
    }

    #[test]
    fn wildcard_channels_are_invalid_names() {
        let e = err(r#"{"type":"subscribe","id":1,"channel":"chat:*"}"#);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
    }
}
