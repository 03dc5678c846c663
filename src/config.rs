//! Every setting of the hub: its flag, its `HUB_*` variable, its default and its validation, in
//! one place. Nothing else reads the environment.
//!
//! Settings are parsed by clap (flags and environment variables share one definition), then turned
//! into a validated [`Config`] whose fields are plain values the rest of the code can trust.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::clock::random_token;

/// Command line of the `realtime-hub` binary: no subcommand serves. A subcommand comes first
/// and takes no serving flags.
#[derive(Debug, Parser)]
#[command(
    name = "realtime-hub",
    version,
    about = "A realtime messaging hub",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands alone, for a command line that starts with one: clap reads the `HUB_*`
/// variable of every flag it knows whether or not the flag is used, so parsing [`Cli`] would
/// let a bad serving setting (`HUB_BIND=x`) break `realtime-hub token`.
#[derive(Debug, Parser)]
#[command(name = "realtime-hub", version)]
struct SubcommandOnly {
    #[command(subcommand)]
    command: Command,
}

/// What the binary was asked to do.
#[derive(Debug)]
pub enum Invocation {
    Serve(Box<ServeArgs>),
    Run(Command),
}

impl Cli {
    /// The process's command line; exits with clap's message (and `--help`/`--version`) as
    /// `Parser::parse` does.
    pub fn invocation() -> Invocation {
        Self::try_invocation_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Serving settings are parsed (and their variables read) only when there is no
    /// subcommand.
    pub fn try_invocation_from<I, T>(args: I) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let first = args.get(1).and_then(|a| a.to_str());
        let names_subcommand =
            first.is_some_and(|f| Cli::command().get_subcommands().any(|c| c.get_name() == f));
        if names_subcommand {
            return SubcommandOnly::try_parse_from(args).map(|s| Invocation::Run(s.command));
        }
        let cli = Cli::try_parse_from(args)?;
        Ok(match cli.command {
            Some(command) => Invocation::Run(command),
            None => Invocation::Serve(Box::new(cli.serve)),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a signed HS256 token (needs --secret or HUB_JWT_SECRET).
    Token(TokenArgs),
    /// Append sample domain events (orders, sensor readings) to a Redis Stream the hub reads
    /// (needs --redis-url or HUB_REDIS_URL).
    DemoEvents(DemoEventsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DemoEventsArgs {
    /// Events per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long)]
    pub duration: Option<f64>,
    /// The stream to append to.
    #[arg(long, default_value = "hub:events")]
    pub stream: String,
    /// Keep the stream near this many entries (`XADD MAXLEN ~`); 0 = no cap.
    #[arg(long, default_value_t = 100_000)]
    pub maxlen: u64,
    /// Redis URL.
    #[arg(long, env = "HUB_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token's `sub` (not empty: the hub refuses a token without one).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub user: String,
    /// Subscribe patterns, comma-separated (claim `channels`).
    #[arg(long, value_delimiter = ',')]
    pub channels: Option<Vec<String>>,
    /// Publish patterns, comma-separated (claim `publish`).
    #[arg(long, value_delimiter = ',')]
    pub publish: Option<Vec<String>>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// HS256 secret; defaults to HUB_JWT_SECRET.
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

/// The serving settings, as given. See docs/protocol.md §9 and the README's settings table.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Listen address [default: 0.0.0.0:8000; 127.0.0.1:8000 in development mode].
    #[arg(long, env = "HUB_BIND")]
    pub bind: Option<SocketAddr>,
    /// This node's name [default: hostname plus a random suffix].
    #[arg(long, env = "HUB_NODE_ID")]
    pub node_id: Option<String>,
    /// Redis URL; unset runs the memory engine.
    #[arg(long, env = "HUB_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// HS256 secret; with no public key either, development mode.
    #[arg(long, env = "HUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA or EC (P-256) public key for RS256/ES256 tokens.
    #[arg(long, env = "HUB_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// The `aud` every token must carry [default: unset, `aud` not checked].
    #[arg(long, env = "HUB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The `iss` every token must carry [default: unset, `iss` not checked].
    #[arg(long, env = "HUB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Key for /api/ (development mode generates one when unset).
    #[arg(long, env = "HUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allowed browser origins, comma-separated, or `*` [default: same host].
    #[arg(long, env = "HUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Open connections per user (`sub`); cluster-wide with Redis.
    #[arg(long, env = "HUB_MAX_CONNECTIONS_PER_USER", default_value_t = 5)]
    pub max_connections_per_user: u32,
    /// Subscriptions per connection.
    #[arg(long, env = "HUB_MAX_SUBSCRIPTIONS", default_value_t = 128)]
    pub max_subscriptions: usize,
    /// Largest WebSocket message, after reassembly (at least 1024).
    #[arg(long, env = "HUB_MAX_FRAME_BYTES", default_value_t = 131_072)]
    pub max_frame_bytes: usize,
    /// Largest publication `data`, as JSON.
    #[arg(long, env = "HUB_MAX_PUBLICATION_BYTES", default_value_t = 65_536)]
    pub max_publication_bytes: usize,
    /// Subscribe patterns for tokens without `channels`.
    #[arg(long, env = "HUB_DEFAULT_CHANNELS", value_delimiter = ',')]
    pub default_channels: Vec<String>,
    /// Publish patterns for tokens without `publish`.
    #[arg(long, env = "HUB_DEFAULT_PUBLISH", value_delimiter = ',')]
    pub default_publish: Vec<String>,
    /// Namespaces whose channels get `join`/`leave` pushes, comma-separated.
    #[arg(
        long,
        env = "HUB_JOIN_LEAVE_NAMESPACES",
        value_delimiter = ',',
        default_value = "chat"
    )]
    pub join_leave_namespaces: Vec<String>,
    /// Seconds an `event_id` is remembered per channel.
    #[arg(long, env = "HUB_DEDUP_WINDOW_S", default_value_t = 600)]
    pub dedup_window_s: u64,
    /// Requests per second per connection (burst twice that).
    #[arg(long, env = "HUB_CLIENT_RATE", default_value_t = 100)]
    pub client_rate: u32,
    /// One connection's outbound backlog before `4000 slow consumer` (at least 4096).
    #[arg(long, env = "HUB_CLIENT_QUEUE_BYTES", default_value_t = 1_048_576)]
    pub client_queue_bytes: usize,
    /// All connections' backlog together; over it the most lagging are closed first.
    #[arg(long, env = "HUB_NODE_QUEUE_BYTES", default_value_t = 268_435_456)]
    pub node_queue_bytes: usize,
    /// Seconds between server pings; two silent intervals drop the connection.
    #[arg(long, env = "HUB_PING_INTERVAL_S", default_value_t = 25)]
    pub ping_interval_s: u64,
    /// Publications kept per channel (and the largest `history` limit).
    #[arg(long, env = "HUB_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,
    /// Seconds history is kept after a channel's last publication.
    #[arg(long, env = "HUB_HISTORY_TTL_S", default_value_t = 300)]
    pub history_ttl_s: u64,
    /// Redis engine: seconds between lease renewals (node, presence, connection slots).
    #[arg(long, env = "HUB_NODE_HEARTBEAT_S", default_value_t = 5)]
    pub node_heartbeat_s: u64,
    /// Redis engine: prefix of the hub's own keys and topics (not of the streams).
    #[arg(long, env = "HUB_REDIS_PREFIX", default_value = "hub")]
    pub redis_prefix: String,
    /// Directory served at `/` (the demo page).
    #[arg(long, env = "HUB_STATIC_DIR", default_value = "static")]
    pub static_dir: PathBuf,
    /// Seconds between dashboard snapshots on `dashboard:hub` [default: 1 in development mode, else 0 = off].
    #[arg(long, env = "HUB_DASHBOARD_INTERVAL_S")]
    pub dashboard_interval_s: Option<u64>,
    /// Redis engine: streams to ingest, comma-separated; empty: none.
    #[arg(
        long,
        env = "HUB_STREAMS",
        value_delimiter = ',',
        default_value = "hub:events"
    )]
    pub streams: Vec<String>,
    /// Redis engine: consumer group of the streams.
    #[arg(long, env = "HUB_STREAM_GROUP", default_value = "hub")]
    pub stream_group: String,
    /// Redis engine: deliveries of a failing entry before it is dead-lettered.
    #[arg(long, env = "HUB_STREAM_MAX_DELIVERIES", default_value_t = 5)]
    pub stream_max_deliveries: u32,
    /// Redis engine: milliseconds before a dead consumer's pending entries are claimed.
    #[arg(long, env = "HUB_STREAM_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub stream_claim_idle_ms: u64,
    /// The longest a shutdown takes, in seconds; connections still open then are cut.
    #[arg(long, env = "HUB_SHUTDOWN_TIMEOUT_S", default_value_t = 10)]
    pub shutdown_timeout_s: u64,
    /// `text` or `json`.
    #[arg(long, env = "HUB_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// HTTP worker threads [default: number of cores].
    #[arg(long, env = "HUB_WORKERS")]
    pub workers: Option<usize>,
    /// Lifecycle event types to emit, comma-separated, or `*` [default: none, off].
    #[arg(long, env = "HUB_LIFECYCLE_EVENTS", value_delimiter = ',')]
    pub lifecycle_events: Vec<String>,
    /// Seconds a user, channel or member stays "up" after its last connection left (0-3600).
    #[arg(long, env = "HUB_LIFECYCLE_GRACE_S", default_value_t = 3)]
    pub lifecycle_grace_s: u64,
    /// Redis engine: stream every lifecycle event is appended to [default: <prefix>:lifecycle;
    /// empty: none].
    #[arg(long, env = "HUB_LIFECYCLE_STREAM")]
    pub lifecycle_stream: Option<String>,
    /// http(s) URLs every lifecycle event is POSTed to, comma-separated.
    #[arg(long, env = "HUB_WEBHOOK_URLS", value_delimiter = ',')]
    pub webhook_urls: Vec<String>,
    /// Secret of the webhooks' HMAC-SHA256 signature (required with URLs).
    #[arg(long, env = "HUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Seconds a webhook request may take before it counts as failed.
    #[arg(long, env = "HUB_WEBHOOK_TIMEOUT_S", default_value_t = 5)]
    pub webhook_timeout_s: u64,
    /// Attempts of one webhook batch before its events are dead-lettered.
    #[arg(long, env = "HUB_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,
    /// Memory engine: webhook events held per URL; the oldest are dropped beyond it.
    #[arg(long, env = "HUB_WEBHOOK_QUEUE", default_value_t = 10_000)]
    pub webhook_queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which origins may open a WebSocket from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// The Origin's host must equal the request's `Host` header.
    SameHost,
    Any,
    /// Exact origins such as `https://app.example.com` (compared case-insensitively), and the
    /// same host as well.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Whether a browser page of `origin` may use the hub reached as `host` (the request's
    /// `Host` header). The hub's own pages (same host) are always allowed: listing a
    /// development server's origin must not lock out the demo page.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let same_host = || {
            let origin_host = origin.split_once("://").map(|(_, rest)| rest);
            matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
        };
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.contains(&origin) || same_host(),
            AllowedOrigins::SameHost => same_host(),
        }
    }
}

/// How tokens are verified.
#[derive(Clone)]
pub struct JwtKeys {
    /// HS256 secret, when configured (or generated in development mode).
    pub secret: Option<Vec<u8>>,
    /// PEM bytes of the public key for RS256/ES256, when configured.
    pub public_key_pem: Option<Vec<u8>>,
    /// The `aud` a token must carry, when configured; `None`: `aud` is not checked.
    pub audience: Option<String>,
    /// The `iss` a token must carry, when configured; `None`: `iss` is not checked.
    pub issuer: Option<String>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even in debug output.
        f.debug_struct("JwtKeys")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "public_key_pem",
                &self.public_key_pem.as_ref().map(|_| "<pem>"),
            )
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub node_id: String,
    pub redis_url: Option<String>,
    pub jwt: JwtKeys,
    /// `None`: the server API answers 401 to everything.
    pub api_key: Option<String>,
    /// Whether `api_key` was generated at start (development mode), and so must be shown once.
    pub api_key_generated: bool,
    /// Development mode: random secret, `/dev/token`, generated API key.
    pub dev_mode: bool,
    pub allowed_origins: AllowedOrigins,
    pub max_connections_per_user: u32,
    pub max_subscriptions: usize,
    pub max_frame_bytes: usize,
    pub max_publication_bytes: usize,
    pub default_channels: Vec<String>,
    pub default_publish: Vec<String>,
    pub join_leave_namespaces: Vec<String>,
    pub dedup_window: Duration,
    pub client_rate: u32,
    pub client_queue_bytes: usize,
    pub node_queue_bytes: usize,
    pub ping_interval: Duration,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub node_heartbeat: Duration,
    pub redis_prefix: String,
    pub static_dir: PathBuf,
    pub dashboard_interval: Option<Duration>,
    pub streams: Vec<String>,
    pub stream_group: String,
    pub stream_max_deliveries: u32,
    pub stream_claim_idle: Duration,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub workers: usize,
    pub lifecycle: LifecycleConfig,
    /// `None` without `HUB_WEBHOOK_URLS`.
    pub webhooks: Option<WebhookConfig>,
}

/// Lifecycle events (docs/lifecycle.md).
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// The types to emit; empty: lifecycle events are off (nothing is tracked either).
    pub events: Vec<crate::lifecycle::Kind>,
    pub grace: Duration,
    /// Redis engine: the stream events are appended to; `None`: no stream.
    pub stream: Option<String>,
}

impl LifecycleConfig {
    pub fn enabled(&self) -> bool {
        !self.events.is_empty()
    }
}

/// Webhook delivery of lifecycle events.
#[derive(Clone)]
pub struct WebhookConfig {
    pub urls: Vec<String>,
    pub secret: Vec<u8>,
    pub timeout: Duration,
    pub max_attempts: u32,
    /// Memory engine: events held per URL.
    pub queue_events: usize,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("WebhookConfig")
            .field("urls", &self.urls)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("queue_events", &self.queue_events)
            .finish()
    }
}

/// The most `HUB_LIFECYCLE_GRACE_S` may be: an hour.
pub const MAX_LIFECYCLE_GRACE_S: u64 = 3600;

/// Validates the lifecycle and webhook settings.
fn lifecycle_settings(
    args: &ServeArgs,
) -> Result<(LifecycleConfig, Option<WebhookConfig>), ConfigError> {
    let names = non_empty(args.lifecycle_events.clone());
    let events = if names.iter().any(|n| n == "*") {
        crate::lifecycle::Kind::ALL.to_vec()
    } else {
        let mut events = Vec::new();
        for name in &names {
            let kind = crate::lifecycle::Kind::from_name(name).ok_or_else(|| {
                ConfigError(format!(
                    "HUB_LIFECYCLE_EVENTS: unknown event type `{name}` (known: {}, or *)",
                    crate::lifecycle::Kind::ALL.map(|k| k.name()).join(", ")
                ))
            })?;
            if !events.contains(&kind) {
                events.push(kind);
            }
        }
        events
    };
    if args.lifecycle_grace_s > MAX_LIFECYCLE_GRACE_S {
        return Err(ConfigError(format!(
            "HUB_LIFECYCLE_GRACE_S must be at most {MAX_LIFECYCLE_GRACE_S}"
        )));
    }
    let stream = match &args.lifecycle_stream {
        Some(s) if s.trim().is_empty() => None,
        Some(s) => Some(s.trim().to_owned()),
        None => Some(format!("{}:lifecycle", args.redis_prefix)),
    };
    let lifecycle = LifecycleConfig {
        events,
        grace: Duration::from_secs(args.lifecycle_grace_s),
        stream,
    };
    let urls = non_empty(args.webhook_urls.clone());
    if urls.is_empty() {
        return Ok((lifecycle, None));
    }
    if !lifecycle.enabled() {
        return Err(ConfigError(
            "HUB_WEBHOOK_URLS needs HUB_LIFECYCLE_EVENTS: name the event types to send".into(),
        ));
    }
    for url in &urls {
        check_webhook_url(url)?;
    }
    let secret =
        match args.webhook_secret.as_deref() {
            Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
            _ => return Err(ConfigError(
                "HUB_WEBHOOK_URLS needs HUB_WEBHOOK_SECRET: receivers verify the signature with it"
                    .into(),
            )),
        };
    if args.webhook_max_attempts == 0 {
        return Err(ConfigError(
            "HUB_WEBHOOK_MAX_ATTEMPTS must be at least 1".into(),
        ));
    }
    if args.webhook_queue == 0 {
        return Err(ConfigError("HUB_WEBHOOK_QUEUE must be at least 1".into()));
    }
    let webhooks = WebhookConfig {
        urls,
        secret,
        timeout: seconds("HUB_WEBHOOK_TIMEOUT_S", args.webhook_timeout_s, 1)?,
        max_attempts: args.webhook_max_attempts,
        queue_events: args.webhook_queue,
    };
    Ok((lifecycle, Some(webhooks)))
}

/// An absolute `http://` or `https://` URL with a host.
fn check_webhook_url(url: &str) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError(format!("HUB_WEBHOOK_URLS: `{url}` {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("is not an http:// or https:// URL".into()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host".into()));
    }
    Ok(())
}

/// A setting that cannot be used, with the variable to fix.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn non_empty(v: Vec<String>) -> Vec<String> {
    v.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The longest any duration setting may be: ten years. Deadlines are computed as `now +
/// setting`, and a value near `u64::MAX` seconds would overflow that (a panic, not "never").
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration setting given in seconds, at least `min`, at most [`MAX_DURATION`].
fn seconds(name: &str, v: u64, min: u64) -> Result<Duration, ConfigError> {
    if v < min {
        return Err(ConfigError(format!("{name} must be at least {min}")));
    }
    within_max(name, Duration::from_secs(v))
}

fn within_max(name: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d > MAX_DURATION {
        Err(ConfigError(format!(
            "{name} must be at most ten years ({} seconds)",
            MAX_DURATION.as_secs()
        )))
    } else {
        Ok(d)
    }
}

impl ServeArgs {
    /// Parses settings from flags (and the environment, as the binary does); the tests use
    /// this to start a node with exactly the settings they name.
    pub fn from_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct ArgsOnly {
            #[command(flatten)]
            serve: ServeArgs,
        }
        ArgsOnly::try_parse_from(args)
            .map(|a| a.serve)
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// Validates the settings and fills in the derived defaults (development mode, bind address,
    /// node id, generated secrets).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let (lifecycle, webhooks) = lifecycle_settings(&self)?;
        let secret = self.jwt_secret.filter(|s| !s.is_empty());
        let public_key_pem = match &self.jwt_public_key {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError(format!(
                    "HUB_JWT_PUBLIC_KEY: cannot read {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let dev_mode = secret.is_none() && public_key_pem.is_none();
        let secret = match secret {
            Some(s) => Some(s.into_bytes()),
            None if dev_mode => Some(random_token(32).into_bytes()),
            None => None,
        };
        let given_key = self.api_key.filter(|k| !k.is_empty());
        let api_key_generated = given_key.is_none() && dev_mode;
        let api_key = given_key.or_else(|| api_key_generated.then(|| random_token(24)));
        let bind = self.bind.unwrap_or_else(|| {
            if dev_mode {
                SocketAddr::from(([127, 0, 0, 1], 8000))
            } else {
                SocketAddr::from(([0, 0, 0, 0], 8000))
            }
        });
        let origins = non_empty(self.allowed_origins);
        let allowed_origins = if origins.is_empty() {
            AllowedOrigins::SameHost
        } else if origins.iter().any(|o| o == "*") {
            AllowedOrigins::Any
        } else {
            AllowedOrigins::List(
                origins
                    .into_iter()
                    .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                    .collect(),
            )
        };
        let node_id = match self.node_id.filter(|n| !n.trim().is_empty()) {
            Some(n) => n,
            None => {
                let host = gethostname::gethostname().to_string_lossy().into_owned();
                format!("{host}-{}", &random_token(6))
            }
        };
        if self.history_size == 0 {
            return Err(ConfigError("HUB_HISTORY_SIZE must be at least 1".into()));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError(
                "HUB_MAX_FRAME_BYTES must be at least 1024".into(),
            ));
        }
        if self.client_rate == 0 {
            return Err(ConfigError("HUB_CLIENT_RATE must be at least 1".into()));
        }
        if self.client_queue_bytes < 4096 {
            return Err(ConfigError(
                "HUB_CLIENT_QUEUE_BYTES must be at least 4096".into(),
            ));
        }
        if self.node_queue_bytes < self.client_queue_bytes {
            return Err(ConfigError(
                "HUB_NODE_QUEUE_BYTES must be at least HUB_CLIENT_QUEUE_BYTES".into(),
            ));
        }
        let dashboard_s = self
            .dashboard_interval_s
            .unwrap_or(if dev_mode { 1 } else { 0 });
        let dashboard_interval = seconds("HUB_DASHBOARD_INTERVAL_S", dashboard_s, 0)?;
        Ok(Config {
            lifecycle,
            webhooks,
            bind,
            node_id,
            redis_url: self.redis_url.filter(|u| !u.is_empty()),
            jwt: JwtKeys {
                secret,
                public_key_pem,
                audience: self.jwt_audience.filter(|a| !a.is_empty()),
                issuer: self.jwt_issuer.filter(|i| !i.is_empty()),
            },
            api_key,
            api_key_generated,
            dev_mode,
            allowed_origins,
            max_connections_per_user: self.max_connections_per_user,
            max_subscriptions: self.max_subscriptions,
            max_frame_bytes: self.max_frame_bytes,
            max_publication_bytes: self.max_publication_bytes,
            default_channels: non_empty(self.default_channels),
            default_publish: non_empty(self.default_publish),
            join_leave_namespaces: non_empty(self.join_leave_namespaces),
            dedup_window: seconds("HUB_DEDUP_WINDOW_S", self.dedup_window_s, 0)?,
            client_rate: self.client_rate,
            client_queue_bytes: self.client_queue_bytes,
            node_queue_bytes: self.node_queue_bytes,
            ping_interval: seconds("HUB_PING_INTERVAL_S", self.ping_interval_s, 1)?,
            history_size: self.history_size,
            history_ttl: seconds("HUB_HISTORY_TTL_S", self.history_ttl_s, 1)?,
            node_heartbeat: seconds("HUB_NODE_HEARTBEAT_S", self.node_heartbeat_s, 1)?,
            redis_prefix: self.redis_prefix,
            static_dir: self.static_dir,
            dashboard_interval: (!dashboard_interval.is_zero()).then_some(dashboard_interval),
            streams: non_empty(self.streams),
            stream_group: self.stream_group,
            stream_max_deliveries: self.stream_max_deliveries.max(1),
            stream_claim_idle: within_max(
                "HUB_STREAM_CLAIM_IDLE_MS",
                Duration::from_millis(self.stream_claim_idle_ms),
            )?,
            shutdown_timeout: seconds("HUB_SHUTDOWN_TIMEOUT_S", self.shutdown_timeout_s, 0)?,
            log_format: self.log_format,
            workers: self
                .workers
                .filter(|w| *w > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["realtime-hub", "--jwt-secret", "s"];
        all.extend_from_slice(args);
        ServeArgs::from_args(all).and_then(ServeArgs::into_config)
    }

    const DURATION_FLAGS: [(&str, &str); 7] = [
        ("--dedup-window-s", "HUB_DEDUP_WINDOW_S"),
        ("--ping-interval-s", "HUB_PING_INTERVAL_S"),
        ("--history-ttl-s", "HUB_HISTORY_TTL_S"),
        ("--node-heartbeat-s", "HUB_NODE_HEARTBEAT_S"),
        ("--dashboard-interval-s", "HUB_DASHBOARD_INTERVAL_S"),
        ("--stream-claim-idle-ms", "HUB_STREAM_CLAIM_IDLE_MS"),
        ("--shutdown-timeout-s", "HUB_SHUTDOWN_TIMEOUT_S"),
    ];

    /// A duration setting over ten years is refused with a message naming its variable, rather
    /// than overflowing a deadline later.
    #[test]
    fn durations_over_ten_years_are_refused_with_the_variable_named() {
        let huge = u64::MAX.to_string();
        for (flag, var) in DURATION_FLAGS {
            let e = config(&[flag, &huge]).expect_err(flag);
            assert!(e.0.contains(var) && e.0.contains("at most"), "{flag}: {e}");
        }
    }

    /// No arguments serve; a leading subcommand runs it; serving flags before a subcommand are
    /// refused rather than silently ignored.
    #[test]
    fn a_leading_subcommand_runs_and_no_subcommand_serves() {
        assert!(matches!(
            Cli::try_invocation_from(["realtime-hub"]),
            Ok(Invocation::Serve(_))
        ));
        assert!(matches!(
            Cli::try_invocation_from(["realtime-hub", "token", "--user", "u"]),
            Ok(Invocation::Run(Command::Token(_)))
        ));
        assert!(Cli::try_invocation_from([
            "realtime-hub",
            "--workers",
            "2",
            "token",
            "--user",
            "u"
        ])
        .is_err());
    }

    /// `token --user ""` is refused: the hub would refuse a token with an empty `sub`.
    #[test]
    fn token_with_an_empty_user_is_refused() {
        let e = Cli::try_invocation_from(["realtime-hub", "token", "--user", ""])
            .expect_err("an empty user");
        assert!(e.to_string().contains("--user"), "{e}");
    }

    /// Ten years exactly is still accepted.
    #[test]
    fn durations_of_ten_years_are_accepted() {
        for (flag, _) in DURATION_FLAGS {
            let max = if flag.ends_with("-ms") {
                MAX_DURATION.as_millis().to_string()
            } else {
                MAX_DURATION.as_secs().to_string()
            };
            assert!(config(&[flag, &max]).is_ok(), "{flag} {max}");
        }
    }

    /// Every serving flag has a `--help` line.
    #[test]
    fn every_serving_flag_has_help() {
        let command = Cli::command();
        let missing: Vec<_> = command
            .get_arguments()
            .filter(|a| a.get_long().is_some() && a.get_help().is_none())
            .filter_map(|a| a.get_long())
            .collect();
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    /// With a list, the listed origins and the hub's own host are allowed, nothing else; by
    /// default only the same host.
    #[test]
    fn listed_origins_and_the_same_host_are_allowed() {
        let list = AllowedOrigins::List(vec!["http://localhost:5173".into()]);
        let host = Some("localhost:8000");
        assert!(list.allows("http://localhost:5173", host));
        assert!(list.allows("HTTP://LOCALHOST:5173/", host));
        assert!(list.allows("http://localhost:8000", host));
        assert!(!list.allows("http://evil.example", host));
        assert!(!list.allows("null", host));
        assert!(!AllowedOrigins::SameHost.allows("http://localhost:5173", host));
        assert!(AllowedOrigins::SameHost.allows("http://localhost:8000", host));
        assert!(!AllowedOrigins::SameHost.allows("http://localhost:8000", None));
        assert!(AllowedOrigins::Any.allows("null", None));
    }

    /// `aud` and `iss` are checked only when set; an empty value counts as unset.
    #[test]
    fn audience_and_issuer_are_optional() {
        let unset = config(&[]).expect("config");
        assert_eq!((unset.jwt.audience, unset.jwt.issuer), (None, None));
        let empty = config(&["--jwt-audience", "", "--jwt-issuer", ""]).expect("config");
        assert_eq!((empty.jwt.audience, empty.jwt.issuer), (None, None));
        let set = config(&["--jwt-audience", "hub", "--jwt-issuer", "auth"]).expect("config");
        assert_eq!(set.jwt.audience.as_deref(), Some("hub"));
        assert_eq!(set.jwt.issuer.as_deref(), Some("auth"));
    }

    /// Webhook URLs need a secret and lifecycle events; each must be an absolute http(s) URL;
    /// the grace is at most an hour; event types must be known.
    #[test]
    fn bad_lifecycle_and_webhook_settings_are_refused_with_the_variable_named() {
        let refused = |args: &[&str], names: &str| {
            let e = config(args).expect_err(names);
            assert!(e.0.contains(names), "{args:?}: {e}");
        };
        let on = ["--lifecycle-events", "*"];
        refused(
            &[&on[..], &["--webhook-urls", "http://127.0.0.1:9/h"]].concat(),
            "HUB_WEBHOOK_SECRET",
        );
        refused(
            &[
                "--webhook-urls",
                "http://127.0.0.1:9/h",
                "--webhook-secret",
                "s",
            ],
            "HUB_LIFECYCLE_EVENTS",
        );
        for bad in ["127.0.0.1:9/h", "ftp://host/h", "http://", "not a url"] {
            refused(
                &[&on[..], &["--webhook-urls", bad, "--webhook-secret", "s"]].concat(),
                "HUB_WEBHOOK_URLS",
            );
        }
        refused(
            &[&on[..], &["--lifecycle-grace-s", "3601"]].concat(),
            "HUB_LIFECYCLE_GRACE_S",
        );
        refused(&["--lifecycle-events", "user.away"], "HUB_LIFECYCLE_EVENTS");
    }

    #[test]
    fn lifecycle_settings_have_their_defaults() {
        let off = config(&[]).expect("config");
        assert!(!off.lifecycle.enabled() && off.webhooks.is_none());
        assert_eq!(off.lifecycle.grace, Duration::from_secs(3));
        assert_eq!(off.lifecycle.stream.as_deref(), Some("hub:lifecycle"));
        let on = config(&[
            "--lifecycle-events",
            "user.online,user.offline",
            "--lifecycle-stream",
            "",
            "--webhook-urls",
            "https://example.com/hook,http://10.0.0.1:8080/x",
            "--webhook-secret",
            "s",
        ])
        .expect("config");
        assert_eq!(on.lifecycle.events.len(), 2);
        assert_eq!(
            on.lifecycle.stream, None,
            "an empty stream name turns the stream off"
        );
        let hooks = on.webhooks.expect("webhooks");
        assert_eq!(hooks.urls.len(), 2);
        assert_eq!((hooks.max_attempts, hooks.queue_events), (8, 10_000));
        assert_eq!(hooks.timeout, Duration::from_secs(5));
        assert!(
            !format!("{hooks:?}").contains("\"s\""),
            "the secret is not printed"
        );
    }
}
