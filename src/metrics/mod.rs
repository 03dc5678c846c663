//! Every metric of the hub, registered once, with its name, help and labels defined here only
//! (docs/operations.md "Metrics"). Labels are of low cardinality by construction: enums and
//! configured stream names, never a channel name or a user id.
//!
//! One [`Metrics`] per running node, shared by `Arc`: no process-wide globals, so several nodes
//! in one test process keep their own figures.
//!
//! Labelled series of known label sets (errors by code, connects by result, publications by
//! source, stream entries by configured stream and result) exist at 0 from the start, so that
//! `increase(...) > 0` alerts see their first count. The process metrics are in [`process`].
//!
//! The Redis metrics (`hub_redis_up`, `hub_redis_reconnects_total`) are exposed only once
//! [`Metrics::enable_redis`] was called, so that a memory-engine node does not show a Redis that
//! is "down" (and fire the alert on it).

mod process;

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::error::ErrorCode;
use crate::protocol::Close;

/// The closes that refuse a connection: with `accepted`, the `result`s of
/// `hub_connects_total`.
const REFUSALS: [Close; 6] = [
    Close::InvalidToken,
    Close::TokenExpired,
    Close::ConnectionLimit,
    Close::OriginNotAllowed,
    Close::GoingAway,
    Close::InternalError,
];

/// Who made a publication.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    Client,
    Api,
    Stream,
}

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Source::Client => "client",
            Source::Api => "api",
            Source::Stream => "stream",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

/// How a connection ended, as `hub_disconnects_total{code}` labels it: the server's own close
/// codes, `1006` when neither side sent a close frame, and one `client` for every close the
/// client started, whatever code it chose (a client must not fire the server-fault alert,
/// count as a slow consumer, or mint a label series per code it invents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    Server(crate::protocol::Close),
    Dropped,
    Client,
}

/// Every label `hub_disconnects_total` can carry, each shown from the start at 0 so that an
/// alert on one sees its first increase.
const DISCONNECT_LABELS: [&str; 11] = [
    "1000", "1001", "1002", "1006", "1007", "1008", "1009", "1011", "4000", "4001", "client",
];

impl Disconnect {
    fn label(self) -> &'static str {
        use crate::protocol::Close;
        match self {
            Disconnect::Server(close) => match close {
                Close::Normal => "1000",
                Close::GoingAway => "1001",
                Close::ProtocolError => "1002",
                Close::InvalidUtf8 => "1007",
                Close::InvalidToken
                | Close::TokenExpired
                | Close::ConnectionLimit
                | Close::OriginNotAllowed => "1008",
                Close::MessageTooBig => "1009",
                Close::InternalError => "1011",
                Close::SlowConsumer => "4000",
                Close::Disconnected => "4001",
            },
            Disconnect::Dropped => "1006",
            Disconnect::Client => "client",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

/// What became of a stream entry (`hub_stream_entries_total{result}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StreamResult {
    /// Published (or found already published, or deleted meanwhile) and acknowledged.
    Acked,
    /// A publish attempt failed for a passing reason; the entry stays pending and is retried.
    Retried,
    /// Moved to the dead letters (and acknowledged).
    Dead,
}

impl EncodeLabelValue for StreamResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            StreamResult::Acked => "acked",
            StreamResult::Retried => "retried",
            StreamResult::Dead => "dead",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamResultLabels {
    pub stream: String,
    pub result: StreamResult,
}

/// `hub_redis_up` and `hub_redis_reconnects_total`, encoded only on a node that runs with Redis.
#[derive(Debug, Default)]
struct RedisMetrics {
    /// Set once by [`Metrics::enable_redis`]; never cleared.
    enabled: AtomicBool,
    up: Gauge,
    reconnects: Counter,
}

impl Collector for RedisMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.enabled.load(Ordering::Acquire) {
            return Ok(());
        }
        let up = encoder.encode_descriptor(
            "hub_redis_up",
            "1 while Redis is reachable (nodes with Redis only)",
            None,
            self.up.metric_type(),
        )?;
        self.up.encode(up)?;
        let reconnects = encoder.encode_descriptor(
            "hub_redis_reconnects",
            "Times the pub/sub link to Redis was re-established (nodes with Redis only)",
            None,
            self.reconnects.metric_type(),
        )?;
        self.reconnects.encode(reconnects)
    }
}

/// The node's metrics. Handles are cheap clones of shared atomics.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub subscriptions: Gauge,
    pub channels: Gauge,
    pub publications: Family<SourceLabels, Counter>,
    pub deliveries: Counter,
    pub delivery_latency: Histogram,
    pub errors: Family<CodeLabels, Counter>,
    pub disconnects: Family<CodeLabels, Counter>,
    pub connects: Family<ResultLabels, Counter>,
    pub slow_consumer_disconnects: Counter,
    /// Shown only with Redis (see [`RedisMetrics`]).
    pub redis_up: Gauge,
    /// Shown only with Redis (see [`RedisMetrics`]).
    pub redis_reconnects: Counter,
    /// The collector that owns the two Redis handles above (clones of the same atomics).
    redis: Arc<RedisMetrics>,
    pub stream_entries: Family<StreamResultLabels, Counter>,
    /// Group-wide figures, refreshed by each stream's reader (see `bridge::streams`).
    pub stream_pending: Family<StreamLabels, Gauge>,
    /// As `stream_pending`; a stream's series is absent while Redis cannot tell its lag.
    pub stream_lag: Family<StreamLabels, Gauge>,
    /// Lifecycle events emitted by this node (with Redis, by whichever node decided them).
    pub lifecycle_events: Family<TypeLabels, Counter>,
    /// Webhook requests made by this node, by result: `ok`, `error`, `timeout`.
    pub webhook_requests: Family<ResultLabels, Counter>,
    /// Events waiting in the webhook queues (every URL's), as this node last saw them.
    pub webhook_queue_events: Gauge,
    /// Events moved to the webhook dead letters by this node.
    pub webhook_dead: Counter,
    /// Memory engine: events dropped from a full webhook queue (the oldest first).
    pub webhook_dropped: Counter,
    /// Events the hub knows it lost: a memory queue's content at shutdown, state Redis lost.
    pub webhook_lost: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let redis = Arc::new(RedisMetrics::default());
        let m = Metrics {
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            publications: Family::default(),
            deliveries: Counter::default(),
            // 0.25 ms to ~4 s.
            delivery_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            errors: Family::default(),
            disconnects: Family::default(),
            connects: Family::default(),
            slow_consumer_disconnects: Counter::default(),
            redis_up: redis.up.clone(),
            redis_reconnects: redis.reconnects.clone(),
            redis: Arc::clone(&redis),
            stream_entries: Family::default(),
            stream_pending: Family::default(),
            stream_lag: Family::default(),
            lifecycle_events: Family::default(),
            webhook_requests: Family::default(),
            webhook_queue_events: Gauge::default(),
            webhook_dead: Counter::default(),
            webhook_dropped: Counter::default(),
            webhook_lost: Counter::default(),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "hub_connections",
            "Open WebSocket connections on this node",
            m.connections.clone(),
        );
        registry.register(
            "hub_subscriptions",
            "Channel subscriptions on this node",
            m.subscriptions.clone(),
        );
        registry.register(
            "hub_channels",
            "Channels with a subscriber on this node",
            m.channels.clone(),
        );
        registry.register(
            "hub_publications",
            "Publications accepted through this node, by who made them",
            m.publications.clone(),
        );
        registry.register(
            "hub_deliveries",
            "Pushes handed to local subscribers",
            m.deliveries.clone(),
        );
        registry.register(
            "hub_delivery_latency_seconds",
            "From a publication's acceptance to its hand-off to the last local subscriber; once per publication per node",
            m.delivery_latency.clone(),
        );
        registry.register(
            "hub_errors",
            "Error replies (WebSocket and HTTP), by contract code",
            m.errors.clone(),
        );
        registry.register(
            "hub_disconnects",
            "Closed connections: by the server's close code, 1006 without a close frame, or client",
            m.disconnects.clone(),
        );
        registry.register(
            "hub_connects",
            "Connection attempts, by result",
            m.connects.clone(),
        );
        registry.register(
            "hub_slow_consumer_disconnects",
            "Connections closed with 4000 because their outbound backlog passed its bound",
            m.slow_consumer_disconnects.clone(),
        );
        for code in DISCONNECT_LABELS {
            let _ = m.disconnects.get_or_create(&CodeLabels {
                code: code.to_owned(),
            });
        }
        registry.register_collector(Box::new(redis));
        registry.register(
            "hub_stream_entries",
            "Stream entries handled, by stream and result (acked, retried, dead)",
            m.stream_entries.clone(),
        );
        registry.register(
            "hub_stream_pending",
            "Entries delivered to the consumer group and not yet acknowledged, by stream",
            m.stream_pending.clone(),
        );
        registry.register(
            "hub_stream_lag",
            "Entries not yet delivered to the consumer group, by stream (absent where Redis cannot tell)",
            m.stream_lag.clone(),
        );
        registry.register(
            "hub_lifecycle_events",
            "Lifecycle events emitted (decided) by this node, by type",
            m.lifecycle_events.clone(),
        );
        registry.register(
            "hub_webhook_requests",
            "Webhook requests made by this node, by result (ok, error, timeout)",
            m.webhook_requests.clone(),
        );
        registry.register(
            "hub_webhook_queue_events",
            "Lifecycle events waiting for webhook delivery, all URLs together",
            m.webhook_queue_events.clone(),
        );
        registry.register(
            "hub_webhook_dead",
            "Webhook events moved to the dead letters after their last attempt",
            m.webhook_dead.clone(),
        );
        registry.register(
            "hub_webhook_dropped",
            "Memory engine: webhook events dropped, oldest first, from a full queue",
            m.webhook_dropped.clone(),
        );
        registry.register(
            "hub_webhook_lost",
            "Webhook events the hub knows it lost (a memory queue at shutdown)",
            m.webhook_lost.clone(),
        );
        for kind in crate::lifecycle::Kind::ALL {
            let _ = m.lifecycle_events.get_or_create(&TypeLabels {
                r#type: kind.name().to_owned(),
            });
        }
        for result in ["ok", "error", "timeout"] {
            let _ = m.webhook_requests.get_or_create(&ResultLabels {
                result: result.to_owned(),
            });
        }
        registry.register(
            "hub_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(process::ProcessMetrics));
        for source in [Source::Client, Source::Api, Source::Stream] {
            let _ = m.publications.get_or_create(&SourceLabels { source });
        }
        for code in ErrorCode::ALL {
            let _ = m.errors.get_or_create(&CodeLabels {
                code: code.as_str().to_owned(),
            });
        }
        for result in std::iter::once("accepted").chain(REFUSALS.map(Close::label)) {
            let _ = m.connects.get_or_create(&ResultLabels {
                result: result.to_owned(),
            });
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// Shows every result of each of `streams` at 0 from now on: called once at start by a
    /// node that reads streams.
    pub fn expect_streams(&self, streams: &[String]) {
        for stream in streams {
            for result in [
                StreamResult::Acked,
                StreamResult::Retried,
                StreamResult::Dead,
            ] {
                let _ = self.stream_entries.get_or_create(&StreamResultLabels {
                    stream: stream.clone(),
                    result,
                });
            }
        }
    }

    pub fn lifecycle_event(&self, kind: crate::lifecycle::Kind) {
        self.lifecycle_events
            .get_or_create(&TypeLabels {
                r#type: kind.name().to_owned(),
            })
            .inc();
    }

    /// One webhook request's result: `ok`, `error` or `timeout`.
    pub fn webhook_request(&self, result: &str) {
        self.webhook_requests
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn published(&self, source: Source) {
        self.publications
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// Publications accepted through this node, whatever their source.
    pub fn publications_total(&self) -> u64 {
        [Source::Client, Source::Api, Source::Stream]
            .into_iter()
            .map(|source| {
                self.publications
                    .get_or_create(&SourceLabels { source })
                    .get()
            })
            .sum()
    }

    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&CodeLabels {
                code: code.to_owned(),
            })
            .inc();
    }

    pub fn disconnected(&self, how: Disconnect) {
        self.disconnects
            .get_or_create(&CodeLabels {
                code: how.label().to_owned(),
            })
            .inc();
    }

    pub fn connect(&self, result: &str) {
        self.connects
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Shows the Redis metrics from now on: called once at start by a node with Redis.
    pub fn enable_redis(&self) {
        self.redis.enabled.store(true, Ordering::Release);
    }

    /// `n` entries of `stream` came to `result`.
    pub fn stream_entries(&self, stream: &str, result: StreamResult, n: u64) {
        if n == 0 {
            return;
        }
        self.stream_entries
            .get_or_create(&StreamResultLabels {
                stream: stream.to_owned(),
                result,
            })
            .inc_by(n);
    }

    /// A stream's group-wide pending and lag figures (`lag` `None`: Redis cannot tell, and the
    /// series is removed rather than left at a stale or made-up value).
    pub fn stream_figures(&self, stream: &str, pending: u64, lag: Option<u64>) {
        let labels = StreamLabels {
            stream: stream.to_owned(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.stream_pending
            .get_or_create(&labels)
            .set(gauge(pending));
        match lag {
            Some(lag) => {
                self.stream_lag.get_or_create(&labels).set(gauge(lag));
            }
            None => {
                self.stream_lag.remove(&labels);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_contract_names() {
        let m = Metrics::new();
        m.published(Source::Api);
        m.error("bad_request");
        m.disconnected(Disconnect::Server(crate::protocol::Close::SlowConsumer));
        m.delivery_latency.observe(0.001);
        let text = m.encode();
        for name in [
            "hub_connections ",
            "hub_subscriptions ",
            "hub_publications_total{source=\"api\"} 1",
            "hub_deliveries_total ",
            "hub_delivery_latency_seconds_bucket",
            "hub_errors_total{code=\"bad_request\"} 1",
            "hub_disconnects_total{code=\"4000\"} 1",
            "hub_slow_consumer_disconnects_total ",
            "hub_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert_eq!(m.publications_total(), 1);
    }

    /// A node without Redis shows no Redis metrics (so "Redis down" cannot fire on it); one
    /// with Redis shows both.
    #[test]
    fn redis_metrics_appear_only_with_redis() {
        let m = Metrics::new();
        assert!(!m.encode().contains("hub_redis"), "{}", m.encode());
        m.enable_redis();
        m.redis_up.set(1);
        m.redis_reconnects.inc();
        let text = m.encode();
        assert!(text.contains("hub_redis_up 1\n"), "{text}");
        assert!(text.contains("hub_redis_reconnects_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// Every label of the disconnect metric is shown at 0 from the start, and a client's own
    /// close counts under `client` whatever its code.
    #[test]
    fn disconnect_labels_are_fixed_and_start_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        for code in DISCONNECT_LABELS {
            let line = format!("hub_disconnects_total{{code=\"{code}\"}} 0\n");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        m.disconnected(Disconnect::Client);
        assert!(m
            .encode()
            .contains("hub_disconnects_total{code=\"client\"} 1\n"));
    }

    /// Stream figures are labelled by stream and result; an unknown lag has no series.
    #[test]
    fn stream_figures_are_labelled_by_stream() {
        let m = Metrics::new();
        m.stream_entries("s", StreamResult::Acked, 3);
        m.stream_entries("s", StreamResult::Dead, 1);
        m.stream_figures("s", 2, Some(5));
        let text = m.encode();
        for line in [
            "hub_stream_entries_total{stream=\"s\",result=\"acked\"} 3",
            "hub_stream_entries_total{stream=\"s\",result=\"dead\"} 1",
            "hub_stream_pending{stream=\"s\"} 2",
            "hub_stream_lag{stream=\"s\"} 5",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        m.stream_figures("s", 2, None);
        assert!(!m.encode().contains("hub_stream_lag{"), "{}", m.encode());
    }

    /// Known label sets are shown at 0 before their first count, so that an alert on
    /// `increase(...) > 0` sees the first one; stream results only for the streams read.
    #[test]
    fn known_label_sets_start_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        for line in [
            "hub_errors_total{code=\"internal\"} 0",
            "hub_errors_total{code=\"unavailable\"} 0",
            "hub_connects_total{result=\"accepted\"} 0",
            "hub_connects_total{result=\"invalid_token\"} 0",
            "hub_publications_total{source=\"stream\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("hub_stream_entries_total{"), "{text}");
        m.expect_streams(&["s".to_owned()]);
        let text = m.encode();
        for result in ["acked", "retried", "dead"] {
            let line = format!("hub_stream_entries_total{{stream=\"s\",result=\"{result}\"}} 0");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
    }

    /// The standard process metrics are part of the exposition.
    #[test]
    fn exposition_has_the_process_metrics() {
        let text = Metrics::new().encode();
        for name in [
            "process_open_fds ",
            "process_max_fds ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
