//! What a session needs of its node, and nothing more: the engine, the Hub, the token
//! verifier, the counters and the handful of settings it reads. Built once per node and shared
//! by every session, so a session can be built (in a test too) without the whole `AppState`
//! and its HTTP-side parts (the Streams reader, the draining flag).

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use crate::auth::Verifier;
use crate::config::Config;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::namespace;

/// The node's handles a session uses. Owned by the node's `AppState`; each session holds an
/// `Arc` of it, dropped with the session.
pub struct SessionHandles {
    /// Offsets, history, presence and connection slots.
    pub engine: Arc<dyn Engine>,
    /// Where the session registers, subscribes and says it went.
    pub hub: Addr<Hub>,
    /// Checks a `refresh` token.
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    pub settings: SessionSettings,
}

/// The settings a session reads, copied from the validated [`Config`].
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Named in `welcome`.
    pub node_id: String,
    /// `HUB_MAX_SUBSCRIPTIONS`.
    pub max_subscriptions: usize,
    /// `HUB_MAX_FRAME_BYTES`: the cap on a reassembled message.
    pub max_frame_bytes: usize,
    /// `HUB_MAX_PUBLICATION_BYTES`.
    pub max_publication_bytes: usize,
    /// Namespaces whose channels get join/leave pushes.
    pub join_leave_namespaces: Vec<String>,
    /// Requests per second (the burst is twice this).
    pub client_rate: u32,
    /// `HUB_CLIENT_QUEUE_BYTES`: the bound on the session's backlog.
    pub client_queue_bytes: usize,
    pub ping_interval: Duration,
    /// `HUB_HISTORY_SIZE`: the cap on a history read.
    pub history_size: usize,
}

impl SessionSettings {
    pub fn from_config(config: &Config) -> Self {
        SessionSettings {
            node_id: config.node_id.clone(),
            max_subscriptions: config.max_subscriptions,
            max_frame_bytes: config.max_frame_bytes,
            max_publication_bytes: config.max_publication_bytes,
            join_leave_namespaces: config.join_leave_namespaces.clone(),
            client_rate: config.client_rate,
            client_queue_bytes: config.client_queue_bytes,
            ping_interval: config.ping_interval,
            history_size: config.history_size,
        }
    }

    /// Whether `channel`'s namespace gets join/leave pushes.
    pub fn announces(&self, channel: &str) -> bool {
        namespace(channel).is_some_and(|ns| self.join_leave_namespaces.iter().any(|n| n == ns))
    }
}
