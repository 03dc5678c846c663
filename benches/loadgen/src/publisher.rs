//! Publishes numbered, timestamped publications on a fixed schedule and records exactly which
//! ones the hub acknowledged.
//!
//! Publication k is due at `start + k / rate`, on lane `k mod lanes`; each lane has its own
//! connection and one request in flight, so the rate holds as long as
//! `lanes / answer time >= rate`. A lane that falls behind sends its overdue publications
//! back to back (the schedule is open-loop: the hub being slow does not lower the offered rate
//! until the lanes saturate), and how late each was is recorded. Sending stops at a hard
//! deadline so that a run always ends.
//!
//! The transport is behind [`Publisher`]: HTTP `POST /api/publish` here; a producer writing
//! into the hub's Redis stream plugs in the same way and keeps the schedule and accounting.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::frame;
use crate::http::{HttpClient, HttpError};
use crate::report::round3;
use crate::stats::{self, SeqSet};

/// A way of handing one publication to the hub.
pub trait Publisher: Send + 'static {
    /// Opens what it needs before the schedule's clock starts.
    fn prepare(&mut self) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// Publishes `data` (a JSON object) to `channel`.
    fn publish(
        &mut self,
        channel: &str,
        data: &[u8],
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// A publication that was not acknowledged.
#[derive(Debug)]
pub enum PublishError {
    /// Certainly not published (refused, or never sent). The text groups failures.
    NotPublished(String),
    /// Sent but unanswered: the hub may have published it.
    Unknown(String),
}

/// `POST /api/publish` over one keep-alive connection.
pub struct HttpPublisher {
    client: HttpClient,
    api_key: String,
    /// Request body, reused.
    body: Vec<u8>,
}

impl HttpPublisher {
    pub async fn new(base: &str, api_key: &str, timeout: Duration) -> Result<Self> {
        Ok(Self {
            client: HttpClient::new(base, timeout).await?,
            api_key: api_key.to_string(),
            body: Vec::with_capacity(1024),
        })
    }
}

impl Publisher for HttpPublisher {
    async fn prepare(&mut self) -> Result<(), PublishError> {
        self.client
            .connect()
            .await
            .map_err(|e| PublishError::NotPublished(e.to_string()))
    }

    async fn publish(&mut self, channel: &str, data: &[u8]) -> Result<(), PublishError> {
        self.body.clear();
        self.body.extend_from_slice(b"{\"channel\":");
        // Serialising a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.body, channel);
        self.body.extend_from_slice(b",\"data\":");
        self.body.extend_from_slice(data);
        self.body.push(b'}');
        let headers = [
            ("X-API-Key", self.api_key.as_str()),
            ("Content-Type", "application/json"),
        ];
        let response = self
            .client
            .request("POST", "/api/publish", &headers, &self.body)
            .await
            .map_err(|e| match e {
                HttpError::NotSent(e) => PublishError::NotPublished(format!("not sent: {e}")),
                HttpError::NoAnswer(e) => PublishError::Unknown(e),
            })?;
        if response.status == 200 {
            return Ok(());
        }
        // The contract's error body: {"error":{"code":..,"message":..}}.
        let code = serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        Err(PublishError::NotPublished(format!(
            "HTTP {} {code}",
            response.status
        )))
    }
}

/// What to publish and when.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub rate: f64,
    /// Publications 0..count.
    pub count: u64,
    /// Bytes of each `data`.
    pub payload: usize,
    pub channel: String,
    /// Nothing is sent later than this after the start, whatever is left.
    pub give_up_after: Duration,
}

impl Schedule {
    fn due(&self, start: Instant, seq: u64) -> Instant {
        start + Duration::from_secs_f64(seq as f64 / self.rate)
    }
}

/// Counters the progress ticker reads.
#[derive(Debug, Default)]
pub struct PublishProgress {
    pub accepted: AtomicU64,
    pub not_published: AtomicU64,
    pub unknown: AtomicU64,
}

/// What the publisher did.
pub struct PublishOutcome {
    /// Acknowledged publications: every subscriber must receive exactly these.
    pub accepted: SeqSet,
    /// Unanswered ones: a subscriber receiving one is not an error.
    pub unknown: SeqSet,
    pub accepted_count: u64,
    pub unknown_count: u64,
    pub not_published: u64,
    /// Never sent because the deadline passed.
    pub not_sent: u64,
    pub failures: BTreeMap<String, u64>,
    /// How late each publication was sent relative to its due time.
    pub lateness: Histogram<u64>,
    /// Request round trips.
    pub request: Histogram<u64>,
    /// From the schedule's start to the last answer.
    pub elapsed: Duration,
    /// The schedule's start (publication 0 due), Unix µs.
    pub start_us: u64,
}

impl PublishOutcome {
    /// Whether the publisher held the schedule (sent everything, at most 5% behind on
    /// average). When it did not, the offered load was lower than asked for and every rate
    /// measured downstream must be read against `achieved_rate`.
    pub fn held_rate(&self, schedule: &Schedule) -> bool {
        let planned_s = schedule.count as f64 / schedule.rate;
        self.not_sent == 0 && self.elapsed.as_secs_f64() <= planned_s * 1.05 + 0.05
    }

    pub fn to_json(&self, schedule: &Schedule) -> Value {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        json!({
            "scheduled": schedule.count,
            "accepted": self.accepted_count,
            "not_published": self.not_published,
            "unknown": self.unknown_count,
            "not_sent": self.not_sent,
            "failures": self.failures,
            "elapsed_s": round3(secs),
            "achieved_rate": round3(self.accepted_count as f64 / secs),
            "held_rate": self.held_rate(schedule),
            "send_lateness_ms": stats::summary_ms(&self.lateness),
            "request_ms": stats::summary_ms(&self.request),
        })
    }
}

/// Runs `schedule` over `lanes` (one publisher each) and returns what was acknowledged.
///
/// The lanes run on a thread and runtime of their own. On the subscribers' runtime a
/// publication would wait behind whatever deliveries are queued there, so a load generator
/// busy receiving would publish less and hide its own saturation behind a lower offered rate.
/// On its own thread the publisher, which needs little CPU, is scheduled promptly by the
/// kernel even when it shares the core.
pub async fn run<P: Publisher>(
    schedule: Arc<Schedule>,
    lanes: Vec<P>,
    progress: Arc<PublishProgress>,
    sigfig: u8,
) -> Result<PublishOutcome> {
    let (done, outcome) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the publisher's runtime")
                .and_then(|rt| rt.block_on(run_lanes(schedule, lanes, progress, sigfig)));
            let _ = done.send(result);
        })
        .context("starting the publisher thread")?;
    outcome
        .await
        .context("the publisher thread ended without a result")?
}

async fn run_lanes<P: Publisher>(
    schedule: Arc<Schedule>,
    mut lanes: Vec<P>,
    progress: Arc<PublishProgress>,
    sigfig: u8,
) -> Result<PublishOutcome> {
    for lane in &mut lanes {
        lane.prepare()
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .context("opening the publishing connections")?;
    }
    // A short lead so that every lane is waiting when the first publication falls due.
    const LEAD: Duration = Duration::from_millis(50);
    let start = Instant::now() + LEAD;
    let start_us = frame::now_us() + LEAD.as_micros() as u64;
    let stride = lanes.len().max(1) as u64;
    let tasks: Vec<_> = lanes
        .into_iter()
        .enumerate()
        .map(|(lane, publisher)| {
            let lane = Lane {
                first: lane as u64,
                stride,
                schedule: schedule.clone(),
                progress: progress.clone(),
                start,
                sigfig,
            };
            tokio::spawn(lane.run(publisher))
        })
        .collect();

    let mut outcome = PublishOutcome {
        accepted: SeqSet::new(schedule.count),
        unknown: SeqSet::new(schedule.count),
        accepted_count: 0,
        unknown_count: 0,
        not_published: 0,
        not_sent: 0,
        failures: BTreeMap::new(),
        lateness: stats::latency_histogram(sigfig),
        request: stats::latency_histogram(sigfig),
        elapsed: Duration::ZERO,
        start_us,
    };
    for task in tasks {
        let lane = task.await.context("a publishing lane failed")?;
        for seq in lane.accepted {
            outcome.accepted.insert(seq);
            outcome.accepted_count += 1;
        }
        for seq in lane.unknown {
            outcome.unknown.insert(seq);
            outcome.unknown_count += 1;
        }
        outcome.not_published += lane.not_published;
        outcome.not_sent += lane.not_sent;
        for (k, v) in lane.failures {
            *outcome.failures.entry(k).or_default() += v;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = outcome.lateness.add(&lane.lateness);
        let _ = outcome.request.add(&lane.request);
        outcome.elapsed = outcome
            .elapsed
            .max(lane.last_answer.saturating_duration_since(start));
    }
    Ok(outcome)
}

/// One lane: publications first, first + stride, first + 2·stride, ...
struct Lane {
    first: u64,
    stride: u64,
    schedule: Arc<Schedule>,
    progress: Arc<PublishProgress>,
    start: Instant,
    sigfig: u8,
}

struct LaneOutcome {
    accepted: Vec<u64>,
    unknown: Vec<u64>,
    not_published: u64,
    not_sent: u64,
    failures: BTreeMap<String, u64>,
    lateness: Histogram<u64>,
    request: Histogram<u64>,
    last_answer: Instant,
}

impl Lane {
    async fn run<P: Publisher>(self, mut publisher: P) -> LaneOutcome {
        let s = &*self.schedule;
        let give_up = self.start + s.give_up_after;
        let mut out = LaneOutcome {
            accepted: Vec::new(),
            unknown: Vec::new(),
            not_published: 0,
            not_sent: 0,
            failures: BTreeMap::new(),
            lateness: stats::latency_histogram(self.sigfig),
            request: stats::latency_histogram(self.sigfig),
            last_answer: self.start,
        };
        let mut data = Vec::with_capacity(s.payload + 64);
        let mut seq = self.first;
        while seq < s.count {
            let due = s.due(self.start, seq);
            tokio::time::sleep_until(due.into()).await;
            let now = Instant::now();
            if now >= give_up {
                out.not_sent += (s.count - seq).div_ceil(self.stride);
                break;
            }
            stats::record(
                &mut out.lateness,
                now.saturating_duration_since(due).as_micros() as u64,
            );
            frame::write_data(&mut data, seq, frame::now_us(), s.payload);
            let result = publisher.publish(&s.channel, &data).await;
            out.last_answer = Instant::now();
            stats::record(
                &mut out.request,
                out.last_answer.duration_since(now).as_micros() as u64,
            );
            match result {
                Ok(()) => {
                    out.accepted.push(seq);
                    self.progress.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(PublishError::Unknown(why)) => {
                    out.unknown.push(seq);
                    *out.failures.entry(format!("no answer: {why}")).or_default() += 1;
                    self.progress.unknown.fetch_add(1, Ordering::Relaxed);
                }
                Err(PublishError::NotPublished(why)) => {
                    out.not_published += 1;
                    *out.failures.entry(why).or_default() += 1;
                    self.progress.not_published.fetch_add(1, Ordering::Relaxed);
                }
            }
            seq += self.stride;
        }
        out
    }
}
