//! Command line: the common flags every scenario shares and one subcommand per scenario.
//!
//! Owns only parsing and defaults; what a flag does is implemented by the scenario that reads
//! it. Secrets may come from the same environment variables the hub reads (`HUB_JWT_SECRET`,
//! `HUB_API_KEY`), so one shell can start both with the same settings.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator for realtime-hub.
#[derive(Debug, Parser)]
#[command(name = "hub-loadgen", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// WebSocket base URL of the hub (`/ws` is appended). Several, comma-separated, spread the
    /// clients round-robin over several nodes.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8000"
    )]
    pub url: Vec<String>,

    /// HTTP base URL of the hub's server API, used for publishing. Several, comma-separated,
    /// spread the publishing connections round-robin over several nodes (connection k goes to
    /// URL k mod their number); `/metrics` is read from the first.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8000"
    )]
    pub http: Vec<String>,

    /// HS256 secret the clients' tokens are signed with (the hub's `HUB_JWT_SECRET`).
    #[arg(long, global = true, env = "HUB_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Key for the hub's `/api/` routes (the hub's `HUB_API_KEY`).
    #[arg(long, global = true, env = "HUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// PID of the hub process, for RSS and CPU readings from /proc. Without it, the process
    /// listening on the first `--url`'s port is used; none found means no hub readings.
    #[arg(long, global = true)]
    pub hub_pid: Option<u32>,

    /// Number of local source addresses (127.0.0.2, 127.0.0.3, ...) WebSocket connections bind
    /// to round-robin, so that each gets its own ephemeral port range. 0: let the kernel choose.
    #[arg(long, global = true, default_value_t = 8)]
    pub source_ips: u8,

    /// Runtime worker threads. 1 (the default) runs everything on one current-thread runtime,
    /// which is the cheapest shape on the single core the load generator is pinned to.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,

    /// Users are named `<prefix><index>` (`u0`, `u1`, ...), one per connection.
    #[arg(long, global = true, default_value = "u")]
    pub user_prefix: String,

    /// Subscribe patterns put in the tokens' `channels` claim (comma-separated).
    #[arg(long, global = true, value_delimiter = ',', default_value = "bench:*")]
    pub token_channels: Vec<String>,

    /// Token lifetime in seconds (`exp` = now + this).
    #[arg(long, global = true, default_value_t = 3600)]
    pub token_ttl_s: u64,

    /// Connections being set up (TCP connect, upgrade, welcome, subscribe) at once. Keep it
    /// under the hub's listen backlog (2048) or SYNs get dropped and retried after 1 s.
    #[arg(long, global = true, default_value_t = 1024)]
    pub concurrency: usize,

    /// Deadline for one connection's setup (connect + welcome, and subscribe), in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub setup_timeout_s: f64,

    /// Read buffer per connection, in bytes (zeroed once, reused for every read; it grows only
    /// for a frame larger than itself). 4 KiB holds a dozen 300-byte pushes per read.
    #[arg(long, global = true, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(256..=1048576))]
    pub read_buffer: u32,

    /// Significant figures of the latency histograms (2 = within 1%). Each subscriber keeps its
    /// own histogram, so 3 figures cost ~140 KB per subscriber instead of ~20 KB.
    #[arg(long, global = true, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub hist_sigfig: u8,

    /// Do not print the readable table of the result to stderr (the JSON lines stay).
    #[arg(long, global = true)]
    pub no_table: bool,

    /// Exit with status 1 (after printing the result) when the run shows a correctness
    /// failure: a message lost, duplicated or out of order for a subscriber the hub did not
    /// close as a slow consumer, a connection that failed its setup or was dropped, or (for
    /// `ingest`) entries left unacknowledged. Speed figures never fail a run. For CI smokes.
    #[arg(long, global = true)]
    pub fail_on_loss: bool,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N authenticated connections and time until all have their `welcome`.
    Connect(ConnectArgs),
    /// Hold N subscribed connections and measure the hub's RSS per connection.
    Idle(IdleArgs),
    /// N subscribers on one channel, publications over HTTP at a fixed rate: throughput,
    /// latency, exact loss.
    Fanout(FanoutArgs),
    /// Publish beyond capacity with some deliberately slow subscribers: hub memory stays
    /// bounded, slow ones get 4000, fast ones keep receiving.
    Overload(OverloadArgs),
    /// A burst of entries appended to the hub's Redis stream (pipelined XADD) while M
    /// subscribers receive: append, delivery and acknowledgement rates, exact loss, order.
    Ingest(IngestArgs),
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Number of connections.
    #[arg(long, default_value_t = 5000)]
    pub n: usize,
    /// Seconds to keep the connections open after the last welcome.
    #[arg(long, default_value_t = 1.0)]
    pub hold_s: f64,
    /// Also wait for the hub's lifecycle events: one `user.online` per connection after the
    /// connects, one `user.offline` per connection after the closes (run the hub with
    /// `HUB_LIFECYCLE_EVENTS=*` and `HUB_LIFECYCLE_GRACE_S=0`).
    #[arg(long)]
    pub lifecycle: bool,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Number of connections.
    #[arg(long, default_value_t = 5000)]
    pub n: usize,
    /// Number of distinct channels; connection i subscribes to channel i mod this.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel name prefix; a unique one per run by default.
    #[arg(long)]
    pub channel: Option<String>,
    /// Seconds to wait before each RSS reading, so allocations settle.
    #[arg(long, default_value_t = 2.0)]
    pub settle_s: f64,
    /// Seconds to hold the connections after they are all subscribed.
    #[arg(long, default_value_t = 10.0)]
    pub hold_s: f64,
}

/// How subscribers find the sequence number and timestamp in a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParseMode {
    /// Byte search for the three fields needed (`offset`, `lg_seq`, `lg_t`).
    Scan,
    /// serde_json into a borrowed struct that skips every other field.
    Typed,
    /// serde_json into a `Value` (full tree).
    Value,
}

/// Publication settings shared by fanout and overload.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Publications per second (paced on a fixed schedule).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Size in bytes of each publication's `data` JSON (sequence number, send timestamp,
    /// padding).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Parallel keep-alive HTTP connections publishing; publication k goes on connection
    /// k mod this, so one slow answer delays only its own connection's next ones. The rate
    /// holds while this exceeds rate × the hub's answer time.
    #[arg(long, default_value_t = 32)]
    pub http_conns: usize,
    /// Channel to use; a unique one per run by default (so no history from earlier runs).
    #[arg(long)]
    pub channel: Option<String>,
    /// Give up on one HTTP publish after this many seconds (its fate is then unknown).
    #[arg(long, default_value_t = 5.0)]
    pub publish_timeout_s: f64,
    /// After the last publication, wait at most this long for deliveries to arrive.
    #[arg(long, default_value_t = 10.0)]
    pub drain_s: f64,
    /// How subscribers parse pushes.
    #[arg(long, value_enum, default_value_t = ParseMode::Scan)]
    pub parse: ParseMode,
    /// Hub RSS sampling period in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub rss_interval_ms: u64,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Number of subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    #[command(flatten)]
    pub publish: PublishArgs,
}

/// How the deliberately slow subscribers misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowMode {
    /// Stop reading the socket altogether until the drain phase.
    Stop,
    /// Read one message, then sleep `--slow-delay-ms`.
    Slow,
}

#[derive(Debug, Args)]
pub struct OverloadArgs {
    /// Number of subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Fraction of subscribers that are slow (spread evenly over the indices).
    #[arg(long, default_value_t = 0.1)]
    pub slow_fraction: f64,
    /// What slow subscribers do.
    #[arg(long, value_enum, default_value_t = SlowMode::Stop)]
    pub slow_mode: SlowMode,
    /// Pause after each message read by a `slow` subscriber.
    #[arg(long, default_value_t = 10)]
    pub slow_delay_ms: u64,
    /// SO_RCVBUF for slow subscribers' sockets in bytes (smaller: the hub feels them sooner).
    /// Unset: the kernel's default with autotuning.
    #[arg(long)]
    pub slow_rcvbuf: Option<u32>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Stream entries to append.
    #[arg(long, default_value_t = 100_000)]
    pub entries: u64,
    /// Number of subscribers on the target channel.
    #[arg(long, default_value_t = 10)]
    pub subs: usize,
    /// Redis the hub consumes from.
    #[arg(
        long,
        env = "HUB_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// The stream to append to (one of the hub's `HUB_STREAMS`).
    #[arg(long, default_value = "hub:events")]
    pub stream: String,
    /// The hub's consumer group (`HUB_STREAM_GROUP`), whose acknowledgements are watched.
    #[arg(long, default_value = "hub")]
    pub group: String,
    /// Wait this long for the group to appear (a hub that just started creates it).
    #[arg(long, default_value_t = 10.0)]
    pub wait_group_s: f64,
    /// XADD commands per pipeline (one write, one round trip).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Pipelines in flight at once on the one connection.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub in_flight: u64,
    /// Size in bytes of each entry's `data` JSON (sequence number, send timestamp, padding).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Give every entry an `event_id` (`lg-<run>-<seq>`); without it the hub's idempotency key
    /// is `<stream>/<entry id>`.
    #[arg(long)]
    pub event_id: bool,
    /// Channel the entries go to; a unique one per run by default.
    #[arg(long)]
    pub channel: Option<String>,
    /// After the last append, wait at most this long for deliveries and acknowledgements.
    #[arg(long, default_value_t = 30.0)]
    pub drain_s: f64,
    /// How often the group's acknowledgements are read (XINFO GROUPS, XPENDING), in ms.
    #[arg(long, default_value_t = 10)]
    pub ack_poll_ms: u64,
    /// Delete this run's entries from the stream (XDEL) once they are all acknowledged.
    #[arg(long)]
    pub delete_after: bool,
    /// How subscribers parse pushes.
    #[arg(long, value_enum, default_value_t = ParseMode::Scan)]
    pub parse: ParseMode,
    /// Hub RSS sampling period in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub rss_interval_ms: u64,
}
