//! Every metric of the hub, registered once, with its name, help and labels defined here only
//! (PROTOCOL §3, docs/operations.md). Labels are of low cardinality by construction: enums and
//! configured stream names, never a channel name or a user id.
//!
//! One [`Metrics`] per running node, shared by `Arc`: no process-wide globals, so several nodes
//! in one test process keep their own figures.

use std::sync::Arc;

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamResultLabels {
    pub stream: String,
    pub result: String,
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
    pub redis_up: Gauge,
    pub redis_reconnects: Counter,
    pub stream_entries: Family<StreamResultLabels, Counter>,
    pub stream_pending: Family<StreamLabels, Gauge>,
    pub stream_lag: Family<StreamLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
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
            redis_up: Gauge::default(),
            redis_reconnects: Counter::default(),
            stream_entries: Family::default(),
            stream_pending: Family::default(),
            stream_lag: Family::default(),
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
            "Closed connections, by close code",
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
        registry.register(
            "hub_redis_up",
            "1 while Redis is reachable (Redis engine only)",
            m.redis_up.clone(),
        );
        registry.register(
            "hub_redis_reconnects",
            "Times the pub/sub link to Redis was re-established",
            m.redis_reconnects.clone(),
        );
        registry.register(
            "hub_stream_entries",
            "Stream entries handled, by stream and result (acked, retried, dead)",
            m.stream_entries.clone(),
        );
        registry.register(
            "hub_stream_pending",
            "Entries pending in the consumer group",
            m.stream_pending.clone(),
        );
        registry.register(
            "hub_stream_lag",
            "Entries not yet delivered to the consumer group",
            m.stream_lag.clone(),
        );
        registry.register(
            "hub_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Arc::new(Metrics { registry, ..m })
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

    pub fn disconnected(&self, code: u16) {
        self.disconnects
            .get_or_create(&CodeLabels {
                code: code.to_string(),
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

    pub fn stream_entry(&self, stream: &str, result: &str) {
        self.stream_entries
            .get_or_create(&StreamResultLabels {
                stream: stream.to_owned(),
                result: result.to_owned(),
            })
            .inc();
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
        m.disconnected(4000);
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
            "hub_redis_up ",
            "hub_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert_eq!(m.publications_total(), 1);
    }
}
