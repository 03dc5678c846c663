//! Log lines: fields first, then a sentence. Call sites pass fields as `log` key-values
//! (`client`, `user`, `channel`, `event_id`, `code`, ...); this module writes them either as
//! readable text or, with `HUB_LOG_FORMAT=json`, as one JSON object per line, and adds the
//! node id to every line. Tokens, secrets and API keys are never passed as fields.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use serde_json::{Map, Value as Json};

use crate::config::LogFormat;

/// Sets up the process-wide logger (levels from `RUST_LOG`, default `info`).
pub fn init(format: LogFormat, node: &str) {
    let node = node.to_owned();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        LogFormat::Json => builder.format(move |buf, record| {
            let mut line = Map::new();
            line.insert(
                "ts".into(),
                Json::String(buf.timestamp_millis().to_string()),
            );
            line.insert(
                "level".into(),
                Json::String(record.level().as_str().to_owned()),
            );
            line.insert("node".into(), Json::String(node.clone()));
            line.insert("target".into(), Json::String(record.target().to_owned()));
            line.insert("msg".into(), Json::String(record.args().to_string()));
            let _ = record.key_values().visit(&mut JsonFields(&mut line));
            writeln!(buf, "{}", Json::Object(line))
        }),
        LogFormat::Text => builder.format(move |buf, record| {
            let mut fields = String::new();
            let _ = record.key_values().visit(&mut TextFields(&mut fields));
            writeln!(
                buf,
                "{} {:5} node={node}{fields} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        }),
    };
    builder.init();
}

/// Fields as JSON values: numbers and booleans as such, everything else as text.
struct JsonFields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            Json::from(n)
        } else if let Some(n) = value.to_i64() {
            Json::from(n)
        } else if let Some(b) = value.to_bool() {
            Json::from(b)
        } else {
            Json::String(value.to_string())
        };
        self.0.insert(key.as_str().to_owned(), json);
        Ok(())
    }
}

/// Fields as ` key=value`, quoting values with spaces.
struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let text = value.to_string();
        if text.contains(' ') || text.is_empty() {
            self.0.push_str(&format!(" {key}={text:?}"));
        } else {
            self.0.push_str(&format!(" {key}={text}"));
        }
        Ok(())
    }
}
