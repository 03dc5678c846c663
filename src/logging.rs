//! Log lines: fields first, then a sentence. Call sites emit `tracing` events with fields
//! (`client`, `user`, `channel`, `event_id`, `code`, ...), inside spans that carry fields for
//! every line they enclose (a session's `client` and `user`, see [`session_span`]); this module
//! writes each event as one line, either readable text or, with `HUB_LOG_FORMAT=json`, one JSON
//! object, and adds the node id to every line. Third-party crates' `log` records (actix, redis)
//! come through the same lines. Tokens, secrets and API keys are never passed as fields.
//!
//! The line shapes are the ones operators' log collection already parses (they were env_logger's
//! before tracing): JSON keys `ts`, `level`, `node`, `target`, `msg`, then every field flat;
//! text `<ts> <LEVEL:5> node=<node> k=v ... <msg>`.

use crate::clock::{unix_millis, Rfc3339Millis};
use std::fmt::{self, Write as _};

use serde_json::{Map, Value as Json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Span, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::LogFormat;

/// Sets up the process-wide subscriber writing to standard error (levels from `RUST_LOG`,
/// default `info`), and routes `log` records into it.
pub fn init(format: LogFormat, node: &str) {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    // An error means a subscriber is already set (a test process): keep that one.
    let _ = subscriber(format, node, std::io::stderr, filter).try_init();
}

/// For test processes: text lines through the test harness's output capture, levels from
/// `RUST_LOG` (errors only without it). Safe to call more than once.
pub fn init_for_tests() {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::ERROR.into())
        .from_env_lossy();
    let writer = tracing_subscriber::fmt::TestWriter::new;
    let _ = subscriber(LogFormat::Text, "test", writer, filter).try_init();
}

/// The span of one WebSocket session: every event given `parent: &span` carries its `client`
/// and `user`. An explicit parent, not an entered span, because a session's code runs in actix
/// handlers and spawned futures where no span is entered.
pub fn session_span(client: &str, user: &str) -> Span {
    // ERROR, the most severe level, so the span is enabled whenever any of the session's events
    // is (a disabled span would take its fields from every line); the session's target, so
    // `RUST_LOG=realtime_hub::session=debug` selects it with the events.
    tracing::span!(target: "realtime_hub::session", Level::ERROR, "session", client, user)
}

/// The registry with the span field store and the line writer, filtered by `filter`.
fn subscriber<W>(
    format: LogFormat,
    node: &str,
    writer: W,
    filter: EnvFilter,
) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .fmt_fields(NoSpanText)
        .event_format(Lines {
            format,
            node: node.to_owned(),
        });
    tracing_subscriber::registry()
        .with(filter)
        .with(SpanFieldStore)
        .with(lines)
}

/// One event as one line in the configured format.
struct Lines {
    format: LogFormat,
    node: String,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record arrives as an event of tracing-log's own callsite: its real target
        // and level are in the normalized metadata, and its `log.*` fields are bookkeeping.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut fields = Fields::new(normalized.is_some());
        // Spans from the outermost in, then the event: the event's own fields come last.
        // `event_scope` starts at the event's explicit parent when it has one.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(stored) = span.extensions().get::<SpanFields>() {
                    fields.pairs.extend(stored.0.iter().cloned());
                }
            }
        }
        event.record(&mut fields);
        let ts = Rfc3339Millis(unix_millis());
        let level = meta.level().as_str();
        let msg = fields.message.as_deref().unwrap_or_default();
        match self.format {
            LogFormat::Json => {
                let mut line = Map::new();
                line.insert("ts".into(), Json::String(ts.to_string()));
                line.insert("level".into(), Json::String(level.to_owned()));
                line.insert("node".into(), Json::String(self.node.clone()));
                line.insert("target".into(), Json::String(meta.target().to_owned()));
                line.insert("msg".into(), Json::String(msg.to_owned()));
                for (key, value) in fields.pairs {
                    line.insert(key.to_owned(), value);
                }
                writeln!(writer, "{}", Json::Object(line))
            }
            LogFormat::Text => {
                write!(writer, "{ts} {level:5} node={}", self.node)?;
                for (key, value) in &fields.pairs {
                    let text = match value {
                        Json::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if text.contains(' ') || text.is_empty() {
                        write!(writer, " {key}={text:?}")?;
                    } else {
                        write!(writer, " {key}={text}")?;
                    }
                }
                writeln!(writer, " {msg}")
            }
        }
    }
}

/// The fields of a span, in the order given, kept in the span's extensions by [`SpanFieldStore`].
struct SpanFields(Vec<(&'static str, Json)>);

/// Records each span's fields as values, for [`Lines`] to write with every enclosed event.
struct SpanFieldStore;

impl<S> Layer<S> for SpanFieldStore
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new(false);
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.pairs));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new(false);
        values.record(&mut fields);
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let Some(stored) = extensions.get_mut::<SpanFields>() else {
            return;
        };
        // A field recorded later (`span.record`) replaces its empty or earlier value in place.
        for (key, value) in fields.pairs {
            match stored.0.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => stored.0.push((key, value)),
            }
        }
    }
}

/// The span text fmt would keep for its own formatter: none, as [`Lines`] reads
/// [`SpanFields`] instead.
struct NoSpanText;

impl<'w> FormatFields<'w> for NoSpanText {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'w>,
        _fields: R,
    ) -> fmt::Result {
        Ok(())
    }
}

/// Fields as JSON values, as the `log` key-values were written: integers that fit 64 bits and
/// booleans as such, everything else (floats included) as text; the message apart.
struct Fields {
    pairs: Vec<(&'static str, Json)>,
    message: Option<String>,
    /// A `log` record: its `log.target`, `log.file`, ... fields are not written.
    from_log: bool,
}

impl Fields {
    fn new(from_log: bool) -> Fields {
        Fields {
            pairs: Vec::new(),
            message: None,
            from_log,
        }
    }

    fn push(&mut self, field: &Field, value: Json) {
        if self.from_log && field.name().starts_with("log.") {
            return;
        }
        self.pairs.push((field.name(), value));
    }
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Json::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Json::from(value));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let json =
            u64::try_from(value).map_or_else(|_| Json::String(value.to_string()), Json::from);
        self.push(field, json);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let json =
            i64::try_from(value).map_or_else(|_| Json::String(value.to_string()), Json::from);
        self.push(field, json);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Json::String(value.to_string()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Json::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.push(field, Json::String(value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%v` fields and the message (`format_args!`) arrive here too, Debug-wrapping Display.
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.push(field, Json::String(text));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Lines written by a subscriber, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;

        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    /// The lines `emit` produces with the hub's subscriber in `format`, at every level.
    fn lines(format: LogFormat, emit: impl FnOnce()) -> Vec<String> {
        lines_with(format, "trace", emit)
    }

    /// The lines `emit` produces with the hub's subscriber in `format`, filtered by `directives`.
    fn lines_with(format: LogFormat, directives: &str, emit: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let filter = EnvFilter::new(directives);
        let subscriber = subscriber(format, "node-1", captured.clone(), filter);
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes)
            .expect("UTF-8 lines")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A session-like event: a span with `client` and `user`, given as explicit parent and not
    /// entered, and fields of every kind the hub passes.
    fn session_event() {
        let span = session_span("c-1", "alice smith");
        let error = io::Error::other("redis is down");
        tracing::info!(
            parent: &span,
            offset = 7u64,
            delta = -3i64,
            duplicate = false,
            channel = "chat:x",
            empty = "",
            error = %error,
            ratio = 0.5f64,
            "published {} by client",
            "e1"
        );
    }

    /// A JSON line has exactly the keys of before plus the fields of its spans, flat, with
    /// integers and booleans as JSON numbers and booleans and everything else as strings.
    #[test]
    fn json_line_has_the_old_keys_and_value_types() {
        let lines = lines(LogFormat::Json, session_event);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line: Json = serde_json::from_str(&lines[0]).expect("a JSON object");
        let object = line.as_object().expect("an object");
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut expected = vec![
            "channel",
            "client",
            "delta",
            "duplicate",
            "empty",
            "error",
            "level",
            "msg",
            "node",
            "offset",
            "ratio",
            "target",
            "ts",
            "user",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["node"], "node-1");
        assert_eq!(line["target"], "realtime_hub::logging::tests");
        assert_eq!(line["msg"], "published e1 by client");
        assert_eq!(line["client"], "c-1");
        assert_eq!(line["user"], "alice smith");
        assert!(line["offset"].is_u64() && line["offset"] == 7);
        assert!(line["delta"].is_i64() && line["delta"] == -3);
        assert_eq!(line["duplicate"], false);
        assert_eq!(line["channel"], "chat:x");
        assert_eq!(line["empty"], "");
        assert_eq!(line["error"], "redis is down");
        assert_eq!(line["ratio"], "0.5");
        let ts = line["ts"].as_str().expect("ts is a string");
        assert_eq!(ts.len(), "2026-12-07T16:45:19.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }

    /// A text line is `<ts> <LEVEL:5> node=<node>`, the span's fields then the event's in
    /// order, values with a space or empty quoted, then the message.
    #[test]
    fn text_line_has_the_old_shape() {
        let lines = lines(LogFormat::Text, session_event);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (ts, rest) = lines[0].split_once(' ').expect("a timestamp first");
        assert_eq!(ts.len(), 24, "{ts}");
        assert_eq!(
            rest,
            "INFO  node=node-1 client=c-1 user=\"alice smith\" offset=7 delta=-3 \
             duplicate=false channel=chat:x empty=\"\" error=\"redis is down\" ratio=0.5 \
             published e1 by client"
        );
    }

    /// The session span is on whenever the session's lines are: under the default `info`, and
    /// when `RUST_LOG` selects only the session's module (here with the test's own).
    #[test]
    fn session_span_is_on_with_the_session_lines() {
        for directives in [
            "info",
            "realtime_hub::session=info,realtime_hub::logging::tests=info",
        ] {
            let lines = lines_with(LogFormat::Text, directives, || {
                let span = session_span("c-3", "carol");
                tracing::info!(parent: &span, "connected");
            });
            assert_eq!(lines.len(), 1, "{directives}: {lines:?}");
            assert!(
                lines[0].ends_with(" INFO  node=node-1 client=c-3 user=carol connected"),
                "{directives}: {}",
                lines[0]
            );
        }
    }

    /// Fields of nested spans come outermost first, and a later `record` fills its slot.
    #[test]
    fn nested_span_fields_come_outermost_first() {
        let lines = lines(LogFormat::Text, || {
            let outer = session_span("c-2", "bob");
            let inner =
                tracing::info_span!(parent: &outer, "step", channel = tracing::field::Empty);
            inner.record("channel", "chat:y");
            tracing::warn!(parent: &inner, code = 4000u16, "closing");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let rest = lines[0].split_once(' ').expect("a timestamp").1;
        assert_eq!(
            rest,
            "WARN  node=node-1 client=c-2 user=bob channel=chat:y code=4000 closing"
        );
    }

    /// A `log` record from another crate is written with its own target and level, without
    /// tracing-log's `log.*` bookkeeping fields.
    #[test]
    fn log_records_keep_their_target_and_level() {
        // Forwards to whichever subscriber is current, so the scoped one below sees the record.
        let _ = tracing_log::LogTracer::init();
        let lines = lines(LogFormat::Json, || {
            tracing_log::log::warn!(target: "actix_server::worker", "worker {} stopped", 3);
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line: Json = serde_json::from_str(&lines[0]).expect("a JSON object");
        let keys: Vec<&str> = line
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["level", "msg", "node", "target", "ts"]);
        assert_eq!(line["target"], "actix_server::worker");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["msg"], "worker 3 stopped");
    }
}
