//! The scenarios, and what they share: the run context, the publish-and-drain sequence, the
//! progress ticker, the loop-lag probe and the delivery accounting over many clients.
//!
//! A scenario is a module with `run(&Ctx, &Args) -> Result<()>` that emits its steps and one
//! result through `ctx.report`, plus a variant of [`crate::cli::Command`]. The building blocks
//! are meant to be recombined: a multi-node (Redis engine) run is `fanout` with several
//! `--url`s (clients are spread round-robin over them, and the result is broken down by the
//! node each client's `welcome` named). `ingest` has its own producer (pipelined XADD in a
//! burst, which a per-publication [`Publisher`] cannot express) but the same fleet, ticker and
//! accounting.

mod connect;
mod fanout;
mod idle;
mod ingest;
mod overload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cli::{Cli, Command, Common, PublishArgs};
use crate::fleet::{ClientReport, Fleet, FleetConfig, Phase, Progress, SetupSummary};
use crate::frame;
use crate::http::HttpClient;
use crate::procfs::{self, mib, RssSampler, Snapshot};
use crate::publisher::{self, HttpPublisher, PublishOutcome, PublishProgress, Publisher, Schedule};
use crate::report::{round3, Reporter};
use crate::stats::{self, SeqSet};
use crate::token::TokenMinter;
use crate::ws::Connector;

/// What every scenario gets.
pub struct Ctx {
    pub common: Common,
    pub fleet: FleetConfig,
    /// Signs tokens with `--secret`; `None`: tokens come from the hub's `POST /dev/token`.
    pub minter: Option<TokenMinter>,
    /// The hub process for /proc readings, when known.
    pub hub_pid: Option<u32>,
    pub report: Reporter,
}

/// Parses nothing, decides nothing: builds the context and runs the chosen scenario.
pub async fn run(cli: Cli) -> Result<()> {
    let name = match &cli.command {
        Command::Connect(_) => "connect",
        Command::Idle(_) => "idle",
        Command::Fanout(_) => "fanout",
        Command::Overload(_) => "overload",
        Command::Ingest(_) => "ingest",
    };
    let ctx = Ctx::new(cli.common, name).await?;
    match &cli.command {
        Command::Connect(args) => connect::run(&ctx, args).await,
        Command::Idle(args) => idle::run(&ctx, args).await,
        Command::Fanout(args) => fanout::run(&ctx, args).await,
        Command::Overload(args) => overload::run(&ctx, args).await,
        Command::Ingest(args) => ingest::run(&ctx, args).await,
    }
}

impl Ctx {
    async fn new(common: Common, scenario: &'static str) -> Result<Self> {
        let report = Reporter::new(scenario, !common.no_table);
        if common.secret.is_none() {
            eprintln!(
                "hub-loadgen: no --secret (or HUB_JWT_SECRET): tokens come from the hub's \
                 POST /dev/token (development mode), channels are under `dashboard:`"
            );
        }
        let connector =
            Connector::new(&common.url, common.source_ips, common.read_buffer as usize).await?;
        let hub_pid = procfs::hub_pid(common.hub_pid, connector.first_port())?;
        report.step(
            "start",
            json!({
                "url": common.url,
                "http": common.http,
                "source_addrs": connector.source_addrs(),
                "threads": common.threads,
                "concurrency": common.concurrency,
                "hub_pid": hub_pid,
                "open_files_limit": procfs::open_files_limit(),
            }),
        );
        Ok(Self {
            fleet: FleetConfig {
                connector: Arc::new(connector),
                concurrency: common.concurrency,
                setup_timeout: Duration::from_secs_f64(common.setup_timeout_s.max(0.001)),
                sigfig: common.hist_sigfig,
            },
            minter: common.secret.as_deref().map(|secret| {
                TokenMinter::new(
                    secret,
                    &common.user_prefix,
                    common.token_channels.clone(),
                    common.token_ttl_s,
                )
            }),
            hub_pid,
            report,
            common,
        })
    }

    /// Tokens for connections `0..n`, in order.
    pub async fn tokens(&self, n: usize) -> Result<Vec<String>> {
        match &self.minter {
            Some(minter) => minter.mint_all(n),
            None => crate::token::dev_tokens(self.http_base(), &self.common.user_prefix, n).await,
        }
    }

    /// A channel name no earlier run used, so that no history or subscriber carries over; under
    /// `dashboard:` against a development-mode hub, whose tokens allow only `chat:*` and
    /// `dashboard:*` (and `chat:` channels announce every subscriber to all the others).
    pub fn fresh_channel(&self, scenario: &str) -> String {
        let channel = fresh_channel(scenario);
        match self.minter {
            Some(_) => channel,
            None => channel.replacen("bench:", "dashboard:bench-", 1),
        }
    }

    /// Refuses to start `n` connections that the file limit cannot hold.
    pub fn check_files(&self, n: usize) -> Result<()> {
        // Sockets plus the runtime's and the publishers' own descriptors.
        let needed = n as u64 + 64;
        match procfs::open_files_limit() {
            Some(limit) if limit < needed => bail!(
                "{n} connections need ~{needed} open files but the limit is {limit}: \
                 run `ulimit -n 20000` first"
            ),
            _ => Ok(()),
        }
    }

    /// Ends the run on the correctness `problems` found (see `--fail-on-loss`): always said on
    /// stderr, an error only with the flag.
    pub fn verdict(&self, problems: &[String]) -> Result<()> {
        if problems.is_empty() {
            return Ok(());
        }
        eprintln!("hub-loadgen: problems: {}", problems.join("; "));
        if self.common.fail_on_loss {
            bail!("--fail-on-loss: {}", problems.join("; "));
        }
        Ok(())
    }

    /// The first `--http` URL: where `/metrics` is read.
    pub fn http_base(&self) -> &str {
        self.common
            .http
            .first()
            .map_or("http://127.0.0.1:8000", String::as_str)
    }

    /// The HTTP publishing lanes, round-robin over the `--http` URLs.
    pub async fn http_lanes(&self, args: &PublishArgs) -> Result<Vec<HttpPublisher>> {
        let key = self
            .common
            .api_key
            .as_deref()
            .context("no --api-key (or HUB_API_KEY): publishing uses the server API")?;
        let timeout = Duration::from_secs_f64(args.publish_timeout_s.max(0.001));
        let mut lanes = Vec::new();
        if self.common.http.is_empty() {
            bail!("no --http given");
        }
        for k in 0..args.http_conns.max(1) {
            let base = &self.common.http[k % self.common.http.len()];
            lanes.push(HttpPublisher::new(base, key, timeout).await?);
        }
        Ok(lanes)
    }
}

/// A channel name no earlier run used, so that no history or subscriber carries over.
pub fn fresh_channel(scenario: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("bench:{scenario}-{}-{ms}", std::process::id())
}

/// What [`publish_and_drain`] measured, besides the clients' own reports.
pub struct Measured {
    pub outcome: PublishOutcome,
    /// /proc readings when publishing started, when it ended, and after the drain.
    pub before: Snapshot,
    pub published: Snapshot,
    pub after: Snapshot,
    /// Unix µs when the first publication was due and when publishing ended.
    pub start_us: u64,
    pub end_us: u64,
    /// Each client's distinct deliveries when publishing ended, in index order.
    pub received_at_end: Vec<u64>,
    /// Whether every client had everything (or had ended) before the drain deadline.
    pub drained: bool,
    pub drain_s: f64,
    pub loop_lag: Value,
    /// Peak sampled hub RSS in KiB, and the number of samples (0: no hub to watch).
    pub max_rss_kib: u64,
    pub rss_samples: u64,
}

/// The middle of a publishing scenario, once the fleet is subscribed: start the probes, move
/// the fleet to [`Phase::Run`], publish `schedule` over `lanes`, move to [`Phase::Drain`] and
/// wait (at most `drain_s`) until every client has every acknowledged publication, then stop
/// the probes. `groups` name the clients' progress counters in the per-second ticks. The
/// fleet is left in the drain phase for the caller to finish.
pub async fn publish_and_drain<P: Publisher>(
    ctx: &Ctx,
    fleet: &Fleet,
    schedule: Arc<Schedule>,
    lanes: Vec<P>,
    groups: Vec<(&'static str, Vec<Arc<Progress>>)>,
    args: &PublishArgs,
) -> Result<Measured> {
    let progress = Arc::new(PublishProgress::default());
    let sampler = RssSampler::start(
        ctx.hub_pid,
        Duration::from_millis(args.rss_interval_ms.max(1)),
    );
    let ticker = Ticker::start(ctx.report, groups, progress.clone(), Vec::new(), &sampler);
    let lag = LoopLag::start(ctx.common.hist_sigfig);
    let before = Snapshot::take(ctx.hub_pid);
    fleet.set_phase(Phase::Run);
    let outcome = publisher::run(schedule.clone(), lanes, progress, ctx.common.hist_sigfig).await;
    let end_us = frame::now_us();
    let published = Snapshot::take(ctx.hub_pid);
    let received_at_end = fleet
        .progress
        .iter()
        .map(|p| p.unique.load(Ordering::Relaxed))
        .collect();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            lag.finish().await;
            ticker.finish().await;
            sampler.finish().await;
            return Err(e);
        }
    };
    ctx.report.step("published", outcome.to_json(&schedule));
    if !outcome.held_rate(&schedule) {
        eprintln!(
            "hub-loadgen: the publisher fell behind its schedule (see publish.request_ms): \
             the offered rate was lower than --rate; more --http-conns may help"
        );
    }

    fleet.set_phase(Phase::Drain);
    let drain_started = std::time::Instant::now();
    let drained = fleet
        .wait_received(
            outcome.accepted_count + outcome.unknown_count,
            drain_started + Duration::from_secs_f64(args.drain_s.max(0.0)),
        )
        .await;
    let drain_s = drain_started.elapsed().as_secs_f64();
    let after = Snapshot::take(ctx.hub_pid);
    let loop_lag = lag.finish().await;
    ticker.finish().await;
    let (max_rss_kib, rss_samples) = sampler.finish().await;
    Ok(Measured {
        start_us: outcome.start_us,
        outcome,
        before,
        published,
        after,
        end_us,
        received_at_end,
        drained,
        drain_s,
        loop_lag,
        max_rss_kib,
        rss_samples,
    })
}

/// The publication schedule `args` ask for, on `channel`.
pub fn schedule(args: &PublishArgs, channel: &str) -> Result<Arc<Schedule>> {
    if !(args.rate > 0.0 && args.duration > 0.0) {
        bail!("--rate and --duration must be positive");
    }
    Ok(Arc::new(Schedule {
        rate: args.rate,
        count: (args.rate * args.duration).round() as u64,
        payload: args.payload,
        channel: channel.to_string(),
        // Twice the planned time and 30 s more: a saturated hub still ends the run.
        give_up_after: Duration::from_secs_f64(args.duration * 2.0 + 30.0),
    }))
}

/// Memory of the hub (and of ourselves) as report fields.
pub fn mem_json(s: &Snapshot) -> Value {
    json!({
        "hub_rss_mib": s.hub.map(|(m, _)| mib(m.rss_kib)),
        "hub_hwm_mib": s.hub.map(|(m, _)| mib(m.hwm_kib)),
        "loadgen_rss_mib": s.own.map(|(m, _)| mib(m.rss_kib)),
    })
}

/// Prints a `tick` line every second: per group of clients, distinct pushes received in the
/// last second and how many clients received any; the publisher's count; each of `counters`
/// (its increase in the last second); the hub's RSS.
pub struct Ticker {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Ticker {
    pub fn start(
        report: Reporter,
        groups: Vec<(&'static str, Vec<Arc<Progress>>)>,
        published: Arc<PublishProgress>,
        counters: Vec<(&'static str, Arc<AtomicU64>)>,
        rss: &RssSampler,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let rss = rss.latest_kib.clone();
        let task = tokio::spawn(async move {
            let mut last: Vec<Vec<u64>> = groups.iter().map(|(_, g)| vec![0; g.len()]).collect();
            let mut last_published = 0;
            let mut last_counters = vec![0; counters.len()];
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await; // the first tick is immediate
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = every.tick() => {}
                }
                let mut fields = serde_json::Map::new();
                for ((name, group), prev) in groups.iter().zip(&mut last) {
                    let (mut delta, mut active) = (0, 0);
                    for (p, prev) in group.iter().zip(prev.iter_mut()) {
                        let now = p.unique.load(Ordering::Relaxed);
                        delta += now - *prev;
                        active += usize::from(now > *prev);
                        *prev = now;
                    }
                    fields.insert(format!("{name}_deliveries"), json!(delta));
                    fields.insert(format!("{name}_receiving"), json!(active));
                }
                let published_now = published.accepted.load(Ordering::Relaxed);
                fields.insert("published".into(), json!(published_now - last_published));
                last_published = published_now;
                for ((name, counter), prev) in counters.iter().zip(&mut last_counters) {
                    let now = counter.load(Ordering::Relaxed);
                    fields.insert((*name).into(), json!(now.saturating_sub(*prev)));
                    *prev = now;
                }
                let kib = rss.load(Ordering::Relaxed);
                fields.insert("hub_rss_mib".into(), json!((kib > 0).then(|| mib(kib))));
                report.tick(Value::Object(fields));
            }
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Measures how late the load generator's own event loop runs timers, as evidence of whether
/// it kept up: a loop that stalls stops reading every socket at once, which from the hub's
/// side looks exactly like every client turning slow together.
pub struct LoopLag {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Histogram<u64>>>,
}

impl LoopLag {
    /// How often the probe sleeps; its oversleep is the lag.
    const PERIOD: Duration = Duration::from_millis(10);

    pub fn start(sigfig: u8) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut lag = stats::latency_histogram(sigfig);
            loop {
                let asked = tokio::time::Instant::now();
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Self::PERIOD) => {}
                }
                let late = asked.elapsed().saturating_sub(Self::PERIOD);
                stats::record(&mut lag, late.as_micros() as u64);
            }
            lag
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the probe; the lag summary in milliseconds.
    pub async fn finish(mut self) -> Value {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(lag) => stats::summary_ms(&lag),
                Err(_) => Value::Null,
            },
            None => Value::Null,
        }
    }
}

/// Delivery accounting over a set of clients, against what the publisher had acknowledged.
pub struct Deliveries {
    clients: usize,
    connected: usize,
    expected: u64,
    received: u64,
    lost: u64,
    clients_with_loss: usize,
    max_lost: u64,
    duplicates: u64,
    received_unanswered: u64,
    received_never_published: u64,
    out_of_range: u64,
    other_frames: u64,
    offset_gaps: u64,
    offset_skipped: u64,
    offset_regressions: u64,
    min_received: u64,
    max_received: u64,
    seq_behind: u64,
    /// Unix µs of the first and the last delivery to any of these clients (0: none).
    pub first_us: u64,
    pub last_us: u64,
    pub latency: Histogram<u64>,
    ends: BTreeMap<String, u64>,
}

impl Deliveries {
    /// Accounts `reports`. Loss is counted only for clients that got through setup (the
    /// others' failures are in the setup summary) and, for clients the hub closed, counts
    /// what they missed as well: a disconnected client lost those publications.
    pub fn count<'a>(
        reports: impl IntoIterator<Item = &'a ClientReport>,
        accepted: &SeqSet,
        unknown: &SeqSet,
        sigfig: u8,
    ) -> Self {
        let accepted_count = accepted.count();
        let mut d = Deliveries {
            clients: 0,
            connected: 0,
            expected: 0,
            received: 0,
            lost: 0,
            clients_with_loss: 0,
            max_lost: 0,
            duplicates: 0,
            received_unanswered: 0,
            received_never_published: 0,
            out_of_range: 0,
            other_frames: 0,
            offset_gaps: 0,
            offset_skipped: 0,
            offset_regressions: 0,
            min_received: u64::MAX,
            max_received: 0,
            seq_behind: 0,
            first_us: 0,
            last_us: 0,
            latency: stats::latency_histogram(sigfig),
            ends: BTreeMap::new(),
        };
        for r in reports {
            d.clients += 1;
            *d.ends.entry(r.end.label()).or_default() += 1;
            if r.setup.is_err() {
                continue;
            }
            d.connected += 1;
            let t = &r.tally;
            let lost = t.seen.missing_from(accepted);
            // Received but not acknowledged = seen − (accepted ∩ seen).
            let outside_accepted = t.seen.count() - (accepted_count - lost);
            let unanswered = unknown.count() - t.seen.missing_from(unknown);
            d.expected += accepted_count;
            d.received += t.unique;
            d.lost += lost;
            d.clients_with_loss += usize::from(lost > 0);
            d.max_lost = d.max_lost.max(lost);
            d.duplicates += t.duplicates;
            d.received_unanswered += unanswered;
            d.received_never_published += outside_accepted.saturating_sub(unanswered);
            d.out_of_range += t.out_of_range;
            d.other_frames += t.other_frames;
            d.offset_gaps += t.offsets.gaps;
            d.offset_skipped += t.offsets.skipped;
            d.offset_regressions += t.offsets.regressions;
            d.min_received = d.min_received.min(t.unique);
            d.max_received = d.max_received.max(t.unique);
            d.seq_behind += t.seq_behind;
            if t.first_us > 0 && (d.first_us == 0 || t.first_us < d.first_us) {
                d.first_us = t.first_us;
            }
            d.last_us = d.last_us.max(t.last_us);
            if let Some(h) = &t.latency {
                let _ = d.latency.add(h);
            }
        }
        if d.connected == 0 {
            d.min_received = 0;
        }
        d
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn connected(&self) -> usize {
        self.connected
    }

    /// New pushes whose sequence number was below one received earlier (see
    /// [`stats::Tally::seq_behind`]).
    pub fn seq_behind(&self) -> u64 {
        self.seq_behind
    }

    /// Correctness failures among these clients, each as a short text; `lossless: false`
    /// leaves out loss (for clients the hub closed on purpose, whose missing messages are the
    /// point). Duplicates, offset gaps and regressions, and deliveries of something never
    /// published, are failures for every client.
    pub fn problems(&self, who: &str, lossless: bool) -> Vec<String> {
        let mut p = Vec::new();
        let mut say = |n: u64, what: &str| {
            if n > 0 {
                p.push(format!("{who}: {n} {what}"));
            }
        };
        if lossless {
            say(self.lost, "lost");
        }
        say(self.duplicates, "duplicates");
        say(self.offset_gaps, "offset gaps");
        say(self.offset_regressions, "offset regressions");
        say(
            self.received_never_published,
            "received but never published",
        );
        say(
            (self.clients - self.connected) as u64,
            "clients failed their setup",
        );
        p
    }

    pub fn to_json(&self) -> Value {
        json!({
            "clients": self.clients,
            "clients_connected": self.connected,
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "clients_with_loss": self.clients_with_loss,
            "max_lost_per_client": self.max_lost,
            "duplicates": self.duplicates,
            "received_unanswered_publish": self.received_unanswered,
            "received_never_published": self.received_never_published,
            "out_of_range": self.out_of_range,
            "other_frames": self.other_frames,
            "offset_gaps": self.offset_gaps,
            "offset_skipped": self.offset_skipped,
            "offset_regressions": self.offset_regressions,
            "min_received_per_client": self.min_received,
            "max_received_per_client": self.max_received,
            "ends": self.ends,
        })
    }
}

/// The hub's `/metrics` samples of `names`, each summed over its label sets; empty when the
/// hub does not answer (the figures are a cross-check, not the measure).
pub async fn hub_metrics(http_base: &str, names: &[&str]) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    let Ok(mut client) = HttpClient::new(http_base, Duration::from_secs(2)).await else {
        return found;
    };
    let Ok(response) = client.request("GET", "/metrics", &[], &[]).await else {
        return found;
    };
    if response.status != 200 {
        return found;
    }
    for line in String::from_utf8_lossy(&response.body).lines() {
        let Some(name) = line.split(['{', ' ']).next() else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        // `name{labels} value [timestamp]`
        let rest = &line[name.len()..];
        let rest = match rest.strip_prefix('{') {
            Some(labels) => labels.rsplit_once('}').map_or("", |(_, r)| r),
            None => rest,
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.entry(name.to_string()).or_default() += v;
        }
    }
    found
}

/// Setup failures and connections the hub ended while they were held, as problems.
pub fn setup_problems(setup: &SetupSummary, dropped: &BTreeMap<String, u64>) -> Vec<String> {
    let mut p = Vec::new();
    let failed = setup.n - setup.connected.min(setup.n);
    if failed > 0 {
        p.push(format!("{failed} connections failed: {:?}", setup.failures));
    }
    for (how, n) in dropped {
        p.push(format!("{n} connections {how} while held"));
    }
    p
}

/// `x` per second over `secs`, rounded.
pub fn per_s(x: u64, secs: f64) -> f64 {
    round3(x as f64 / secs.max(1e-9))
}
