//! Fan-out of one channel's publications to N local sessions, through the Hub actor.
//!
//! The routing table itself (`realtime_hub::hub::Registry`) cannot be driven from outside the
//! crate: `Registry::connect` takes a `Conn`, which lives in the private `hub::registry`
//! module, so nothing outside can build one. What is public is the Hub's own message API
//! (`Connect`, `Subscribe`, `Deliver`), which is the registry's only user anyway, so this
//! measures the real path: registry lookup, per-subscriber backlog reservation, batching, and
//! one `Pushes` mailbox message per session per flush, handled by a probe actor that stands in
//! for a session (and does nothing with the frames).
//!
//! The measure is CPU time of the one thread the actix system runs on (from
//! `/proc/thread-self/schedstat`), reported per delivery (publication × session), not wall
//! time: the Hub may wait on purpose
//! before a flush (to gather more publications per write), and that wait is not work. Each
//! iteration hands the Hub a round of publications, waits until the Hub has fanned them all
//! out and everything it flushed has been handled, and counts the CPU spent.
//!
//! Linux only (schedstat). `cargo bench --bench hub_fanout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use serde_json::value::RawValue;

use realtime_hub::hub::{Connect, Deliver, Hub, Stats, Subscribe};
use realtime_hub::metrics::Metrics;
use realtime_hub::protocol::MessageTemplate;
use realtime_hub::session::{Control, Outbound, Pushes};

/// Publications per iteration: ~200k deliveries, at least 64 publications (the Hub's most per
/// flush), so that the CPU a round takes dwarfs the clock reads around it.
fn round_size(n: usize) -> u64 {
    (200_000 / n as u64).clamp(64, 100_000)
}

/// Stands in for a session: counts the `Pushes` messages it is handed.
struct Probe {
    messages: Arc<AtomicU64>,
}

impl Actor for Probe {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Never full: a full mailbox would make the Hub drop the probe as a slow consumer.
        ctx.set_mailbox_capacity(1 << 20);
    }
}

impl Handler<Pushes> for Probe {
    type Result = ();
    fn handle(&mut self, msg: Pushes, _: &mut Context<Self>) {
        // What a session does first with its pushes: take them (the frames are dropped here).
        drop(std::hint::black_box(msg));
        self.messages.fetch_add(1, Ordering::Relaxed);
    }
}

impl Handler<Control> for Probe {
    type Result = ();
    fn handle(&mut self, _: Control, _: &mut Context<Self>) {}
}

/// CPU time this thread has used so far.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .expect("/proc/thread-self/schedstat (Linux) gives this thread's CPU time");
    Duration::from_nanos(ns)
}

/// A Hub with `n` probes subscribed to one channel.
struct Setup {
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    messages: Arc<AtomicU64>,
    channel: String,
    epoch: Arc<str>,
    template: MessageTemplate,
    next_offset: u64,
    /// Keeps the probes' outbound counters alive.
    _outbounds: Vec<Arc<Outbound>>,
}

async fn setup(n: usize) -> Setup {
    let metrics = Metrics::new();
    let hub = Hub::new(usize::MAX / 2, Arc::clone(&metrics)).start();
    let messages = Arc::new(AtomicU64::new(0));
    let channel = "bench:fanout".to_string();
    let mut outbounds = Vec::with_capacity(n);
    for i in 0..n {
        let probe = Probe {
            messages: Arc::clone(&messages),
        }
        .start();
        // Nothing ever leaves these backlogs (the probe writes nowhere): a bound no run reaches.
        let outbound = Outbound::new(usize::MAX / 4);
        let client: Arc<str> = Arc::from(format!("c{i}"));
        hub.do_send(Connect {
            client: Arc::clone(&client),
            user: format!("u{i}"),
            push: probe.clone().recipient(),
            control: probe.recipient(),
            outbound: Arc::clone(&outbound),
        });
        outbounds.push(outbound);
        hub.send(Subscribe {
            client,
            channel: channel.clone(),
        })
        .await
        .expect("the hub answers")
        .expect("subscribed");
    }
    // A 100-byte `data`, as in the load generator's runs.
    let data = RawValue::from_string(format!(
        r#"{{"lg_seq":12345,"lg_t":1767225612345678,"pad":"{}"}}"#,
        "x".repeat(51)
    ))
    .expect("valid JSON");
    let template = MessageTemplate::new(&channel, "bench-event", None, &data, None, 1);
    Setup {
        hub,
        metrics,
        messages,
        channel,
        epoch: Arc::from("e0"),
        template,
        next_offset: 1,
        _outbounds: outbounds,
    }
}

impl Setup {
    /// Publishes a round of messages and waits until all are fanned out and handled; the CPU
    /// time that took (the frames are made beforehand: that is the engine's work, once per
    /// publication, not fan-out).
    async fn round(&mut self, n: usize) -> Duration {
        let count = round_size(n);
        let messages: Vec<Deliver> = (0..count)
            .map(|_| {
                let offset = self.next_offset;
                self.next_offset += 1;
                Deliver::Message {
                    channel: self.channel.clone(),
                    offset,
                    epoch: Arc::clone(&self.epoch),
                    frame: self.template.complete(offset, &self.epoch).into(),
                    event_id: String::new(),
                    accepted_us: 0,
                }
            })
            .collect();
        let deliveries_before = self.metrics.deliveries.get();
        let start = thread_cpu();
        for message in messages {
            self.hub.do_send(message);
        }
        // Answered once the Hub has handled every Deliver before it.
        let _ = self
            .hub
            .send(Stats {
                with_channels: false,
            })
            .await;
        // Then whatever it flushes (at once, or after a deliberate gap of at most ~10 ms) and
        // the probes' handling of it: wait until no message has come for a while.
        let mut seen = self.messages.load(Ordering::Relaxed);
        let mut quiet = 0;
        while quiet < 2 {
            tokio::time::sleep(Duration::from_millis(6)).await;
            let now = self.messages.load(Ordering::Relaxed);
            quiet = if now == seen { quiet + 1 } else { 0 };
            seen = now;
        }
        let spent = thread_cpu() - start;
        let delivered = self.metrics.deliveries.get() - deliveries_before;
        assert_eq!(
            delivered,
            count * n as u64,
            "every probe got every publication"
        );
        assert_eq!(self.metrics.slow_consumer_disconnects.get(), 0);
        spent
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_fanout_cpu");
    // Rounds take 0.05–0.5 s of CPU: ten samples of a fixed number of rounds each.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for n in [1usize, 100, 1000, 10_000] {
        let system = System::new();
        let mut s = system.block_on(setup(n));
        // Throughput in deliveries (publications × sessions).
        group.throughput(Throughput::Elements(round_size(n) * n as u64));
        group.bench_with_input(BenchmarkId::new("sessions", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += s.round(n).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
