//! realtime-hub: a realtime messaging hub. Browsers hold WebSocket connections and subscribe to
//! channels; services publish over HTTP; every publication reaches every subscriber of its
//! channel in order, with history for recovery and presence for who is there.
//!
//! # Layout
//!
//! Data flows one way: socket → [`session`] → [`engine`] → (Redis → [`bridge`]) → [`hub`] →
//! sessions.
//!
//! - [`clock`]: the wall clock and random ids.
//! - [`config`]: every setting, flag and `HUB_*` variable.
//! - [`protocol`]: the wire: client frames, server frames, close codes, channel names.
//! - [`error`]: errors mapped once to contract codes and HTTP statuses.
//! - [`auth`]: JWT verification and channel permissions.
//! - [`session`]: one WebSocket connection as an actor, a thin adapter around the subscription
//!   rules of [`session::subscription`] (plain state, unit-tested), with its rate limit and the
//!   response stream that counts its outbound backlog.
//! - [`hub`]: the per-node routing actor: the routing table ([`hub::Registry`]), batched
//!   fan-out, watches, and the messages it sends to sessions.
//! - [`engine`]: offsets, epochs, history, dedup, presence, connection slots (memory or Redis).
//! - [`bridge`]: the Redis engine's pub/sub link, feeding other nodes' publications to the Hub,
//!   and the Streams consumer group that ingests service events ([`bridge::streams`]).
//! - [`http`]: the route table: `/ws` (with its bounded frame reader), `/api/`, `/dev/token`,
//!   health, metrics, static files.
//! - [`metrics`]: every Prometheus metric, registered once.
//! - [`logging`]: text or JSON log lines, with a span per session carrying `client` and `user`.
//! - [`dashboard`]: the node's figures published to `dashboard:hub`.
//! - [`shutdown`]: the ordered drain on SIGTERM.
//! - [`webhooks`]: webhook delivery of lifecycle events: per-URL queues (memory or Redis),
//!   signed batches, retries, and their dead letters.
//! - [`demo_events`]: the `demo-events` producer of sample domain events.

pub mod app;
pub mod auth;
pub mod bridge;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod deadletters;
pub mod demo_events;
pub mod engine;
pub mod error;
pub mod http;
pub mod hub;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod session;
pub mod shutdown;
pub mod webhooks;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix::Actor;
use actix_web::{web, App, HttpServer};

use app::AppState;
use bridge::streams::{StreamSettings, Streams};
use bridge::RedisBridge;
use config::Config;
use engine::memory::MemoryEngine;
use engine::redis::{start_heartbeat, Keys, LifecycleSettings, RedisEngine, RedisSettings};
use engine::{Deadline, Engine};
use hub::{Hub, UseWatcher, Watcher};
use lifecycle::Emitter;
use metrics::Metrics;

/// Listen backlog: the default of 128 overflows under connection bursts (1 s SYN retries).
const LISTEN_BACKLOG: i32 = 2048;

/// Binds the listening socket the way the hub needs it (address reuse, a deep backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Runs one hub node on `listener` until `shutdown` resolves, then drains (see [`shutdown`]).
/// Must be called inside an actix system; the tests start it on port 0.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
) -> std::io::Result<()> {
    // Everything that can fail on bad settings comes before any actor starts: a node that
    // cannot run must exit cleanly with the reason, not after half-starting.
    let verifier = auth::Verifier::new(&config).map_err(std::io::Error::other)?;
    let redis_client = match &config.redis_url {
        Some(url) => Some(
            redis::Client::open(url.as_str())
                .map_err(|e| std::io::Error::other(format!("HUB_REDIS_URL: {e}")))?,
        ),
        None => None,
    };
    let metrics = Metrics::new();
    // Webhook delivery of lifecycle events: queues in Redis with the Redis engine (the
    // lifecycle scripts fill them), in this process with the memory engine (its emitter does).
    let webhooks = match (&config.webhooks, &redis_client) {
        (None, _) => None,
        (Some(hooks), None) => Some(
            webhooks::Webhooks::memory(hooks.clone(), Arc::clone(&metrics))
                .map_err(std::io::Error::other)?,
        ),
        (Some(hooks), Some(client)) => Some(
            webhooks::Webhooks::redis(
                hooks.clone(),
                client,
                Keys::new(&config.redis_prefix),
                config.node_id.clone(),
                Arc::clone(&metrics),
            )
            .map_err(std::io::Error::other)?,
        ),
    };
    let hub = Hub::new(config.node_queue_bytes, Arc::clone(&metrics)).start();
    let streams_client = redis_client.clone();
    let engine: Arc<dyn Engine> = match redis_client {
        None => {
            let mut memory = MemoryEngine::new(
                hub.clone().recipient(),
                config.history_size,
                config.history_ttl,
                config.dedup_window,
            );
            if config.lifecycle.enabled() {
                let sink = webhooks.clone().map(|w| w as Arc<dyn lifecycle::Sink>);
                let emitter =
                    Emitter::new(config.lifecycle.events.clone(), Arc::clone(&metrics), sink);
                memory = memory.with_lifecycle(config.lifecycle.grace, emitter);
            }
            let memory = Arc::new(memory);
            memory.start_sweeper();
            Arc::new(Deadline(memory))
        }
        Some(client) => {
            let keys = Keys::new(&config.redis_prefix);
            let lifecycle = config.lifecycle.enabled().then(|| LifecycleSettings {
                emitter: Emitter::new(config.lifecycle.events.clone(), Arc::clone(&metrics), None),
                grace: config.lifecycle.grace,
                stream: config.lifecycle.stream.clone(),
                webhook_queues: config
                    .webhooks
                    .iter()
                    .flat_map(|w| w.urls.iter().map(|u| keys.webhook_queue(u)))
                    .collect(),
            });
            let redis = RedisEngine::with_lifecycle(
                &client,
                keys.clone(),
                RedisSettings::from_config(&config),
                lifecycle,
            )
            .map_err(std::io::Error::other)?;
            let bridge = RedisBridge::new(
                client,
                keys,
                config.node_id.clone(),
                hub.clone(),
                Arc::clone(&redis.health),
                Arc::clone(&metrics),
            )
            .start();
            // Sent before the server accepts anyone, so no subscribe can miss the watcher.
            hub.do_send(UseWatcher(Watcher {
                watch: bridge.clone().recipient(),
                unwatch: bridge.recipient(),
            }));
            start_heartbeat(&redis, hub.clone().recipient());
            Arc::new(Deadline(redis))
        }
    };
    // Service events from Redis Streams, published through the engine like any publication.
    let streams = match streams_client {
        Some(client) if !config.streams.is_empty() => {
            let settings = StreamSettings::from_config(&config, &Keys::new(&config.redis_prefix));
            Some(
                Streams::start(&client, settings, Arc::clone(&engine), Arc::clone(&metrics))
                    .map_err(std::io::Error::other)?,
            )
        }
        _ => None,
    };
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        address = address.as_str(),
        engine = if config.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        },
        "listening"
    );
    let workers = config.workers;
    let shutdown_timeout = config.shutdown_timeout;
    let ping_interval = config.ping_interval;
    if let Some(hooks) = &webhooks {
        hooks.start();
    }
    let app = web::Data::new(
        AppState::new(config, engine, hub, verifier, Arc::clone(&metrics))
            .with_streams(streams)
            .with_webhooks(webhooks),
    );
    dashboard::start(app.clone().into_inner());

    let routes_app = app.clone();
    let server = HttpServer::new(move || {
        let app = routes_app.clone();
        App::new()
            .app_data(app.clone())
            .wrap(actix_web::middleware::from_fn(http::count_errors))
            .configure(|cfg| http::routes(cfg, &app))
    })
    .workers(workers)
    // We drive shutdown ourselves: sessions must be closed with 1001 first.
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs())
    // After a response ends with its request unread (every WebSocket), actix lingers, reading
    // and discarding, for this long before it closes; its 1 s default kept every closed
    // WebSocket's TCP connection open for a second, and the server must close first, at once
    // (RFC 6455 §7.1.1). Zero turns the linger off rather than shortening it: with a 20 ms
    // linger a dropped silent peer's socket sometimes stayed open on a loaded machine (1 in 5
    // runs of `silent_peer_is_dropped_after_two_intervals` under a CPU hog; 0 in 6 without).
    .client_disconnect_timeout(std::time::Duration::ZERO)
    .on_connect(move |conn, _| http::tune_connection(conn, ping_interval))
    .listen(listener)?
    .run();

    let handle = server.handle();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    actix_web::rt::spawn(async move {
        shutdown.await;
        shutdown::drain(&app, handle).await;
        let _ = drained_tx.send(());
    });
    // The drain bounds the whole shutdown by `HUB_SHUTDOWN_TIMEOUT_S`; once it is over,
    // dropping the server force-closes what is still open rather than waiting for it again.
    tokio::select! {
        served = server => served,
        Ok(()) = drained_rx => Ok(()),
    }
}
