//! What every part of a running node shares: the validated config, the engine, the Hub's
//! address, the token verifier, the counters and the draining flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;

use crate::auth::Verifier;
use crate::bridge::streams::Streams;
use crate::config::Config;
use crate::deadletters::{DeadLetterSource, DeadLetters};
use crate::engine::Engine;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::session::{SessionHandles, SessionSettings};
use crate::webhooks::Webhooks;

pub struct AppState {
    pub config: Config,
    pub engine: Arc<dyn Engine>,
    pub hub: Addr<Hub>,
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// The part of this state sessions get: each holds an `Arc` of it.
    pub session: Arc<SessionHandles>,
    /// The Streams ingestion (Redis engine only): dead letters and `/api/info` figures (its
    /// readers count into `metrics` themselves). Stopped by the shutdown.
    pub streams: Option<Arc<Streams>>,
    /// Every source of dead letters this node has, for `/api/deadletters`.
    pub dead_letters: DeadLetters,
    /// Webhook delivery of lifecycle events, when configured. Stopped by the shutdown.
    pub webhooks: Option<Arc<Webhooks>>,
    /// Set once shutdown begins: `/ready` answers 503 and new connections are refused.
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        config: Config,
        engine: Arc<dyn Engine>,
        hub: Addr<Hub>,
        verifier: Verifier,
        metrics: Arc<Metrics>,
    ) -> Self {
        if config.redis_url.is_some() {
            // Before the server accepts anyone, so the first scrape already shows them.
            metrics.enable_redis();
            metrics.expect_streams(&config.streams);
        }
        let verifier = Arc::new(verifier);
        let session = Arc::new(SessionHandles {
            engine: Arc::clone(&engine),
            hub: hub.clone(),
            verifier: Arc::clone(&verifier),
            metrics: Arc::clone(&metrics),
            settings: SessionSettings::from_config(&config),
        });
        AppState {
            config,
            engine,
            hub,
            verifier,
            metrics,
            session,
            started: Instant::now(),
            streams: None,
            dead_letters: DeadLetters::default(),
            webhooks: None,
            draining: AtomicBool::new(false),
        }
    }

    /// With the Streams ingestion this node runs.
    pub fn with_streams(mut self, streams: Option<Arc<Streams>>) -> Self {
        if let Some(streams) = &streams {
            self.dead_letters
                .add(Arc::clone(streams) as Arc<dyn DeadLetterSource>);
        }
        self.streams = streams;
        self
    }

    /// With the webhook delivery this node runs.
    pub fn with_webhooks(mut self, webhooks: Option<Arc<Webhooks>>) -> Self {
        if let Some(hooks) = &webhooks {
            self.dead_letters
                .add(Arc::clone(hooks) as Arc<dyn DeadLetterSource>);
        }
        self.webhooks = webhooks;
        self
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Whether `channel`'s namespace gets join/leave pushes.
    pub fn announces(&self, channel: &str) -> bool {
        self.session.settings.announces(channel)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
