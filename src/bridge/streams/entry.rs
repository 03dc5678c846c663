//! Stream entries as Redis returns them, and what becomes of each: a publication, a dead letter
//! (with the reason), or nothing (the entry was deleted while pending). Plain functions over
//! `redis::Value`, no I/O: the consumer and the dead-letter API both read entries through here.

use redis::Value;
use serde_json::value::RawValue;

use crate::engine::PublishRequest;

/// The fields a dead letter adds after the original ones, in this order.
pub const META_FIELDS: [&str; 5] = ["stream", "original_id", "reason", "deliveries", "failed_at"];

/// One stream entry. Field names and values are kept as bytes and in their order, so that a
/// dead letter and a replay carry exactly what the producer wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    /// `None` for an entry that was deleted (or trimmed) while it was pending.
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Entry {
    /// The first value of field `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// What the consumer does with an entry.
#[derive(Debug)]
pub enum Verdict {
    /// Publish it (and acknowledge it once published).
    Publish(PublishRequest),
    /// It can never succeed: dead-letter it now, with this reason.
    Poison(String),
    /// It is no longer in the stream: acknowledge it, there is nothing to publish.
    Gone,
}

/// Reads an entry as docs/events.md ("The entry") describes it: `channel`, `data` (alias `payload`, JSON text passed through
/// untouched), optional `event_type` and `event_id`. Without an `event_id` the entry's own
/// `<stream>/<entry id>` is the idempotency key, so a redelivered entry is still recognised.
/// Everything a publication must satisfy (channel name, size, depth) is checked here, so a
/// publish failure afterwards is a passing one.
pub fn classify(stream: &str, entry: &Entry, max_data_bytes: usize) -> Verdict {
    if entry.fields.is_none() {
        return Verdict::Gone;
    }
    match request(stream, entry) {
        Ok(req) => match req.validate(max_data_bytes) {
            Ok(()) => Verdict::Publish(req),
            Err(e) => Verdict::Poison(e.message.into_owned()),
        },
        Err(reason) => Verdict::Poison(reason),
    }
}

fn request(stream: &str, entry: &Entry) -> Result<PublishRequest, String> {
    let text = |name: &str| -> Result<Option<String>, String> {
        entry
            .field(name)
            .map(|v| String::from_utf8(v.to_vec()).map_err(|_| format!("`{name}` is not UTF-8")))
            .transpose()
    };
    let channel = text("channel")?.ok_or("no `channel` field")?;
    let data = match text("data")? {
        Some(d) => d,
        None => text("payload")?.ok_or("no `data` (or `payload`) field")?,
    };
    let data: Box<RawValue> =
        serde_json::from_str(&data).map_err(|e| format!("`data` is not valid JSON: {e}"))?;
    let event_id = text("event_id")?.unwrap_or_else(|| format!("{stream}/{}", entry.id));
    Ok(PublishRequest {
        channel,
        data,
        event_id: Some(event_id),
        event_type: text("event_type")?,
        from: None,
    })
}

/// A value as bytes, whichever way the protocol version encoded it.
pub fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

pub fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// Key/value pairs from a RESP2 flat array or a RESP3 map.
pub fn pairs(v: &Value) -> Vec<(&Value, &Value)> {
    match v {
        Value::Array(items) => items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` answer, or of one stream in an `XREADGROUP` answer:
/// `[[id, [field, value, ...] | nil], ...]`.
pub fn entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let id = text(parts.first()?)?;
            let fields = match parts.get(1) {
                None | Some(Value::Nil) => None,
                Some(f) => Some(
                    pairs(f)
                        .into_iter()
                        .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                        .collect(),
                ),
            };
            Some(Entry { id, fields })
        })
        .collect()
}

/// The entries of the first (only) stream in an `XREADGROUP` answer; nil (a block that timed
/// out) gives none.
pub fn read_reply(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .first()
            .and_then(|s| match s {
                Value::Array(kv) => kv.get(1),
                _ => None,
            })
            .map(entries)
            .unwrap_or_default(),
        Value::Map(streams) => streams.first().map(|(_, e)| entries(e)).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// An entry id as `(ms, seq)`, for ordering entries of different streams.
pub fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The metadata of a dead letter and the original fields before it.
pub struct DeadFields<'a> {
    pub original: &'a [(Vec<u8>, Vec<u8>)],
    /// Values of [`META_FIELDS`], in order.
    pub meta: [String; 5],
}

/// Splits a dead letter into the original fields and the metadata appended after them (looked
/// for at the end, so an original field that happens to be called `reason` stays original).
pub fn split_dead(fields: &[(Vec<u8>, Vec<u8>)]) -> DeadFields<'_> {
    let n = META_FIELDS.len();
    let tail_is_meta = fields.len() >= n
        && fields[fields.len() - n..]
            .iter()
            .zip(META_FIELDS)
            .all(|((k, _), name)| k == name.as_bytes());
    if !tail_is_meta {
        return DeadFields {
            original: fields,
            meta: Default::default(),
        };
    }
    let (original, tail) = fields.split_at(fields.len() - n);
    let meta = std::array::from_fn(|i| String::from_utf8_lossy(&tail[i].1).into_owned());
    DeadFields { original, meta }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry {
            id: "5-1".into(),
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        }
    }

    fn poison(fields: &[(&str, &str)]) -> String {
        poison_within(fields, 64)
    }

    fn poison_within(fields: &[(&str, &str)], max_data_bytes: usize) -> String {
        match classify("s", &entry(fields), max_data_bytes) {
            Verdict::Poison(reason) => reason,
            other => panic!("expected poison, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_entry_keeps_its_data_verbatim_and_defaults_its_event_id() {
        let Verdict::Publish(req) = classify(
            "s",
            &entry(&[("channel", "a:b"), ("payload", r#"{"x": 1.50}"#)]),
            64,
        ) else {
            panic!("expected a publication");
        };
        assert_eq!(req.data.get(), r#"{"x": 1.50}"#);
        assert_eq!(req.event_id.as_deref(), Some("s/5-1"));
        assert_eq!(req.event_type, None);
        assert!(req.from.is_none());
    }

    #[test]
    fn data_wins_over_payload_and_given_ids_are_kept() {
        let Verdict::Publish(req) = classify(
            "s",
            &entry(&[
                ("channel", "c"),
                ("data", "1"),
                ("payload", "2"),
                ("event_id", "e"),
                ("event_type", "t"),
            ]),
            64,
        ) else {
            panic!("expected a publication");
        };
        assert_eq!(
            (
                req.data.get(),
                req.event_id.as_deref(),
                req.event_type.as_deref()
            ),
            ("1", Some("e"), Some("t"))
        );
    }

    #[test]
    fn entries_that_can_never_succeed_are_poison_with_a_reason() {
        assert!(poison(&[("data", "1")]).contains("no `channel`"));
        assert!(poison(&[("channel", "c")]).contains("no `data`"));
        assert!(poison(&[("channel", "c"), ("data", "{nope")]).contains("not valid JSON"));
        assert!(poison(&[("channel", "a b"), ("data", "1")]).contains("invalid channel name"));
        assert!(poison(&[
            ("channel", "c"),
            ("data", &format!("\"{}\"", "x".repeat(64)))
        ])
        .contains("over 64 bytes"));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(poison_within(&[("channel", "c"), ("data", &deep)], 1024).contains("nested deeper"));
        assert!(poison(&[("channel", "c"), ("data", "1"), ("event_id", "")]).contains("event_id"));
    }

    #[test]
    fn a_deleted_entry_is_gone() {
        let gone = Entry {
            id: "1-0".into(),
            fields: None,
        };
        assert!(matches!(classify("s", &gone, 64), Verdict::Gone));
    }

    #[test]
    fn replies_parse_in_both_protocol_versions() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let e = Value::Array(vec![
            Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("k"), bulk("v")])]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), e.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), e)]);
        for reply in [resp2, resp3] {
            let got = read_reply(&reply);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].field("k"), Some(&b"v"[..]));
            assert_eq!(got[1].fields, None);
        }
        assert!(read_reply(&Value::Nil).is_empty());
    }

    #[test]
    fn dead_letter_metadata_is_found_at_the_end() {
        let e = entry(&[
            ("reason", "mine"),
            ("channel", "c"),
            ("stream", "s"),
            ("original_id", "1-0"),
            ("reason", "why"),
            ("deliveries", "2"),
            ("failed_at", "9"),
        ]);
        let fields = e.fields.unwrap_or_default();
        let split = split_dead(&fields);
        assert_eq!(split.original.len(), 2);
        assert_eq!(split.meta[2], "why");
        assert_eq!(split_dead(&fields[..2]).meta[0], "");
        assert!(id_order("10-2") > id_order("9-99"));
    }
}
