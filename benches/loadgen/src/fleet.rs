//! A fleet of simulated users: one task per connection that sets itself up (connect, welcome,
//! subscribe), reports that, then reads pushes until the scenario moves to its last phase.
//!
//! The coordinator steers every client with one `watch` of the run's [`Phase`] (plus a copy in
//! an atomic that clients glance at per frame) and reads their progress through per-client
//! atomics that only their own client writes, with plain stores: no lock and no
//! read-modify-write per delivery. Each client owns its [`Tally`] outright and returns it when
//! it ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::cli::ParseMode;
use crate::report::round3;
use crate::stats::{self, Tally};
use crate::ws::{Conn, Connector, End, Msg, SetupError};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

/// Where the run is. Clients only ever look forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Connecting and subscribing.
    Setup,
    /// Publishing.
    Run,
    /// Publishing done; everyone reads what is left (slow clients too).
    Drain,
    /// Stop reading and close.
    Stop,
}

/// How a client reads while the run is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// As fast as frames come.
    Fast,
    /// Not at all until [`Phase::Drain`].
    Stopped,
    /// One frame, then this pause, until [`Phase::Drain`].
    Slow(Duration),
}

/// What one client does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub subscribe: Option<String>,
    pub reading: Reading,
    /// SO_RCVBUF for this client's socket.
    pub rcvbuf: Option<u32>,
    /// Publications this run will make (sequence numbers `0..expected`).
    pub expected: u64,
    pub parse: ParseMode,
}

/// Counters a client publishes for the coordinator while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Distinct benchmark pushes received so far.
    pub unique: AtomicU64,
    /// Set once the client stopped reading for good.
    pub ended: AtomicBool,
}

/// A client's own account once it has ended.
#[derive(Debug)]
pub struct ClientReport {
    pub index: usize,
    pub setup: Result<SetupTimes, String>,
    /// The hub node its `welcome` named.
    pub node: Option<String>,
    pub tally: Tally,
    pub end: End,
}

/// When a client got through setup, measured from the fleet's start.
#[derive(Debug, Clone, Copy)]
pub struct SetupTimes {
    /// From the fleet's start to `welcome`.
    pub welcome_at: Duration,
    /// From this client's TCP connect to its `welcome` (excludes waiting for a slot).
    pub handshake: Duration,
    /// From the fleet's start to `subscribed`.
    pub subscribed_at: Option<Duration>,
    /// From sending `subscribe` to `subscribed`.
    pub subscribe_rtt: Option<Duration>,
}

/// The setup phase of the whole fleet.
pub struct SetupSummary {
    pub n: usize,
    pub connected: usize,
    pub subscribed: usize,
    pub failures: BTreeMap<String, u64>,
    /// Until the last client's `welcome`.
    pub all_welcome: Option<Duration>,
    /// Until the last client's `subscribed`.
    pub all_subscribed: Option<Duration>,
    handshake: Histogram<u64>,
    subscribe: Histogram<u64>,
}

impl SetupSummary {
    pub fn to_json(&self) -> Value {
        let secs = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64()));
        json!({
            "n": self.n,
            "connected": self.connected,
            "subscribed": self.subscribed,
            "failed": self.n - self.connected.min(self.n),
            "failures": self.failures,
            "all_welcome_s": secs(self.all_welcome),
            "all_subscribed_s": secs(self.all_subscribed),
            "connects_per_s": self.all_welcome.map(|d| round3(self.connected as f64 / d.as_secs_f64().max(1e-9))),
            "handshake_ms": stats::summary_ms(&self.handshake),
            "subscribe_ms": stats::summary_ms(&self.subscribe),
        })
    }
}

/// One client's setup outcome, sent to the coordinator as soon as it is known.
struct SetupEvent {
    outcome: Result<SetupTimes, String>,
}

/// Per-fleet settings that are the same for every client.
pub struct FleetConfig {
    pub connector: Arc<Connector>,
    pub concurrency: usize,
    pub setup_timeout: Duration,
    pub sigfig: u8,
}

/// The running clients.
pub struct Fleet {
    /// The coordinator's handle on every client's phase; dropping it also stops them.
    phase: watch::Sender<Phase>,
    /// The same phase as a number, for clients to check per frame without a poll.
    phase_now: Arc<AtomicU8>,
    /// One per client, in index order.
    pub progress: Vec<Arc<Progress>>,
    handles: Vec<JoinHandle<ClientReport>>,
}

impl Fleet {
    /// Starts one client per token (client i uses token i) and returns once every client has
    /// finished its setup, successfully or not.
    pub async fn launch(
        config: &FleetConfig,
        tokens: Vec<String>,
        plan: impl Fn(usize) -> Plan,
    ) -> (Fleet, SetupSummary) {
        let n = tokens.len();
        let (phase, phase_rx) = watch::channel(Phase::Setup);
        let phase_now = Arc::new(AtomicU8::new(Phase::Setup as u8));
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let (setup_tx, mut setup_rx) = mpsc::unbounded_channel();
        let started = Instant::now();
        let mut progress = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for (index, token) in tokens.into_iter().enumerate() {
            let p = Arc::new(Progress::default());
            let plan = plan(index);
            progress.push(p.clone());
            let client = Client {
                index,
                token,
                plan,
                connector: config.connector.clone(),
                slots: slots.clone(),
                setup_tx: setup_tx.clone(),
                phase: phase_rx.clone(),
                phase_now: phase_now.clone(),
                progress: p,
                started,
                timeout: config.setup_timeout,
            };
            handles.push(tokio::spawn(client.run(config.sigfig)));
        }
        // Only the clients hold senders now: if they all die, recv() returns None.
        drop(setup_tx);

        let mut summary = SetupSummary {
            n,
            connected: 0,
            subscribed: 0,
            failures: BTreeMap::new(),
            all_welcome: None,
            all_subscribed: None,
            handshake: stats::latency_histogram(config.sigfig),
            subscribe: stats::latency_histogram(config.sigfig),
        };
        let mut reported = 0;
        while reported < n {
            let Some(event) = setup_rx.recv().await else {
                break;
            };
            reported += 1;
            match event.outcome {
                Ok(t) => {
                    summary.connected += 1;
                    summary.all_welcome = summary.all_welcome.max(Some(t.welcome_at));
                    stats::record(&mut summary.handshake, t.handshake.as_micros() as u64);
                    if let (Some(at), Some(rtt)) = (t.subscribed_at, t.subscribe_rtt) {
                        summary.subscribed += 1;
                        summary.all_subscribed = summary.all_subscribed.max(Some(at));
                        stats::record(&mut summary.subscribe, rtt.as_micros() as u64);
                    }
                }
                Err(kind) => *summary.failures.entry(kind).or_default() += 1,
            }
        }
        let fleet = Fleet {
            phase,
            phase_now,
            progress,
            handles,
        };
        (fleet, summary)
    }

    pub fn set_phase(&self, phase: Phase) {
        // The number first: a client woken by the watch then finds it already set.
        self.phase_now.store(phase as u8, Ordering::Relaxed);
        self.phase.send_replace(phase);
    }

    /// Waits until every client has ended or received `target` distinct pushes, or until
    /// `deadline`. Returns whether they all got there.
    pub async fn wait_received(&self, target: u64, deadline: Instant) -> bool {
        loop {
            let done = self.progress.iter().all(|p| {
                p.ended.load(Ordering::Relaxed) || p.unique.load(Ordering::Relaxed) >= target
            });
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops and closes every client and collects their reports, in index order.
    pub async fn finish(self) -> Vec<ClientReport> {
        self.set_phase(Phase::Stop);
        let mut reports = Vec::with_capacity(self.handles.len());
        for (index, handle) in self.handles.into_iter().enumerate() {
            match handle.await {
                Ok(report) => reports.push(report),
                // A panicked client still counts, as a client that received nothing.
                Err(e) => reports.push(ClientReport {
                    index,
                    setup: Err(format!("task failed: {e}")),
                    node: None,
                    tally: Tally::new(0, ParseMode::Scan, 1),
                    end: End::Error(format!("task failed: {e}")),
                }),
            }
        }
        reports
    }
}

/// Everything one client task owns.
struct Client {
    index: usize,
    token: String,
    plan: Plan,
    connector: Arc<Connector>,
    /// Bounds how many clients are in setup at once; held only during setup.
    slots: Arc<Semaphore>,
    setup_tx: mpsc::UnboundedSender<SetupEvent>,
    phase: watch::Receiver<Phase>,
    phase_now: Arc<AtomicU8>,
    progress: Arc<Progress>,
    started: Instant,
    timeout: Duration,
}

impl Client {
    async fn run(self, sigfig: u8) -> ClientReport {
        let mut tally = Tally::new(self.plan.expected, self.plan.parse, sigfig);
        let setup = self.setup(&mut tally).await;
        let _ = self.setup_tx.send(SetupEvent {
            outcome: setup.as_ref().map(|(_, t, _)| *t).map_err(SetupError::kind),
        });
        let (end, setup, node) = match setup {
            Ok((mut conn, times, node)) => {
                let phases = Phases {
                    watch: self.phase.clone(),
                    now: &self.phase_now,
                };
                let end = receive(
                    &mut conn,
                    &mut tally,
                    &self.progress,
                    phases,
                    self.plan.reading,
                )
                .await;
                if matches!(end, End::Stopped) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), close_politely(&mut conn))
                        .await;
                }
                (end, Ok(times), node)
            }
            Err(e) => (End::NotConnected, Err(e.kind()), None),
        };
        self.progress.ended.store(true, Ordering::Relaxed);
        ClientReport {
            index: self.index,
            setup,
            node,
            tally,
            end,
        }
    }

    async fn setup(
        &self,
        tally: &mut Tally,
    ) -> Result<(Conn, SetupTimes, Option<String>), SetupError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| SetupError::Protocol("setup slots closed".into()))?;
        let begin = Instant::now();
        let mut session = tokio::time::timeout(
            self.timeout,
            self.connector
                .open(self.index, &self.token, self.plan.rcvbuf),
        )
        .await
        .map_err(|_| SetupError::Timeout("welcome"))??;
        let mut times = SetupTimes {
            welcome_at: self.started.elapsed(),
            handshake: begin.elapsed(),
            subscribed_at: None,
            subscribe_rtt: None,
        };
        if let Some(channel) = &self.plan.subscribe {
            let sent = Instant::now();
            let offset = tokio::time::timeout(self.timeout, session.subscribe(channel))
                .await
                .map_err(|_| SetupError::Timeout("subscribed"))??;
            tally.subscribed_at(channel, offset);
            times.subscribed_at = Some(self.started.elapsed());
            times.subscribe_rtt = Some(sent.elapsed());
        }
        Ok((session.conn, times, session.node))
    }
}

/// Reads until the hub ends the connection or the run reaches [`Phase::Stop`].
async fn receive(
    conn: &mut Conn,
    tally: &mut Tally,
    progress: &Progress,
    phases: Phases<'_>,
    reading: Reading,
) -> End {
    let now = phases.now;
    let (mut to_drain, mut to_stop) = (phases.watch.clone(), phases.watch);
    // A dropped sender (coordinator gone) resolves these too: then we stop.
    let drain = to_drain.wait_for(|p| *p >= Phase::Drain);
    let stop = to_stop.wait_for(|p| *p >= Phase::Stop);
    tokio::pin!(drain, stop);
    let mut clock = Clock::default();
    let mut reader = Reader {
        conn,
        tally,
        progress,
        clock: &mut clock,
        now,
    };

    match reading {
        Reading::Fast => {}
        Reading::Stopped => {
            let _ = (&mut drain).await;
        }
        Reading::Slow(pause) => loop {
            match reader.read_until(drain.as_mut(), Phase::Drain, true).await {
                Until::Phase => break,
                Until::End(end) => return end,
                Until::OneMessage => {}
            }
            tokio::select! {
                biased;
                _ = &mut drain => break,
                _ = tokio::time::sleep(pause) => {}
            }
            reader.clock.stale = true;
        },
    }
    match reader.read_until(stop.as_mut(), Phase::Stop, false).await {
        Until::End(end) => end,
        Until::Phase | Until::OneMessage => End::Stopped,
    }
}

/// Closes with 1000 and, as a client should, waits for the hub's close frame (or the end of
/// the stream) before the socket is dropped. Dropping it right after our close frame makes
/// the close frame and the FIN arrive together, and actix-web-actors then reports the
/// connection's end as a protocol error (the hub logs and counts 1002) instead of our 1000.
async fn close_politely(conn: &mut Conn) {
    if conn.close(1000, "").await.is_err() {
        return;
    }
    // Pushes still in flight come first, then the hub's echo of our close. Once that is here
    // the hub has our close frame, and we need not wait for its FIN (which it sends ~0.7 s
    // later).
    conn.skip_until_close().await;
}

/// The receive time stamped on frames, read once per wake-up rather than once per frame.
///
/// Every frame a read finds was already there when the task woke, so they share its arrival
/// time; reading the clock (~45 ns here) for each of them would be most of the accounting
/// cost. The stamp is also renewed every [`Clock::REFRESH`] frames, in case a socket never
/// runs dry.
#[derive(Debug, Default)]
struct Clock {
    now_us: u64,
    stale: bool,
    frames: u32,
}

impl Clock {
    const REFRESH: u32 = 64;

    fn now_us(&mut self) -> u64 {
        self.frames += 1;
        if self.stale || self.now_us == 0 || self.frames >= Self::REFRESH {
            self.now_us = crate::frame::now_us();
            self.stale = false;
            self.frames = 0;
        }
        self.now_us
    }
}

/// The phase, as a watch to sleep on and as a number to glance at.
struct Phases<'a> {
    watch: watch::Receiver<Phase>,
    now: &'a AtomicU8,
}

/// Why [`Reader::read_until`] returned.
enum Until {
    /// The run reached the phase.
    Phase,
    /// The connection is over.
    End(End),
    /// One message was read, as asked.
    OneMessage,
}

/// One client's receive path: the socket and what every message is accounted in.
struct Reader<'a> {
    conn: &'a mut Conn,
    tally: &'a mut Tally,
    progress: &'a Progress,
    clock: &'a mut Clock,
    now: &'a AtomicU8,
}

impl Reader<'_> {
    /// Reads and accounts messages until the run reaches `phase` (`until` is that phase's
    /// watch future), the connection ends or, with `one`, one message was read. Every
    /// message the buffer holds is accounted within one poll, without a future per message;
    /// per message this costs one relaxed load of the phase rather than a poll of the watch
    /// (which would also spend tokio's cooperative budget, and with the socket polled first,
    /// a socket that never runs dry could then starve the watch of budget forever). The watch
    /// is polled only when the socket has nothing, to be woken by the phase change.
    async fn read_until<F: Future>(
        &mut self,
        mut until: Pin<&mut F>,
        phase: Phase,
        one: bool,
    ) -> Until {
        std::future::poll_fn(|cx| loop {
            if self.now.load(Ordering::Relaxed) >= phase as u8 {
                return Poll::Ready(Until::Phase);
            }
            match self.conn.poll_next(cx) {
                Poll::Ready(Ok(Some(Msg::Text(text)))) => {
                    if self.tally.on_text(text, self.clock.now_us()) {
                        // A plain store of our own count: no read-modify-write per push.
                        self.progress
                            .unique
                            .store(self.tally.unique, Ordering::Relaxed);
                    }
                }
                // Binary frames carry nothing we count.
                Poll::Ready(Ok(Some(Msg::Binary(_)))) => {}
                Poll::Ready(Ok(Some(Msg::Close { code, reason }))) => {
                    return Poll::Ready(Until::End(End::from_close(code, reason)))
                }
                Poll::Ready(Ok(None)) => return Poll::Ready(Until::End(End::Eof)),
                Poll::Ready(Err(e)) => return Poll::Ready(Until::End(End::from_error(&e))),
                Poll::Pending => {
                    // Whatever arrives next arrives after this moment.
                    self.clock.stale = true;
                    return match until.as_mut().poll(cx) {
                        Poll::Ready(_) => Poll::Ready(Until::Phase),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
            if one {
                return Poll::Ready(Until::OneMessage);
            }
        })
        .await
    }
}
