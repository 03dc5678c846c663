//! `ingest`: a burst of N entries appended to the hub's Redis stream (docs/events.md "The entry") with
//! pipelined `XADD`, while M subscribers on the entries' channel receive them. Measures
//! entries/s appended, entries/s delivered (first receipt anywhere to last), append-to-receipt
//! latency, exact loss and duplicates per subscriber, order (offsets +1 each, sequence numbers
//! increasing), and the hub's acknowledgements as Redis reports them, with the time until
//! every entry was acknowledged.
//!
//! Sequence: check the stream's consumer group exists (the hub creates it when it starts with
//! `HUB_REDIS_URL` and `HUB_STREAMS`), connect and subscribe everyone, append the burst (see
//! [`crate::stream`]) while watching the group, wait (bounded) until every subscriber has every
//! appended entry, then compare.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{mem_json, per_s, Ctx, Deliveries, LoopLag, Ticker};
use crate::cli::IngestArgs;
use crate::fleet::{Fleet, Phase, Plan, Reading};
use crate::procfs::{mib, RssSampler, Snapshot};
use crate::publisher::PublishProgress;
use crate::report::round3;
use crate::stats;
use crate::stream::{self, Burst, BurstProgress};

pub async fn run(ctx: &Ctx, args: &IngestArgs) -> Result<()> {
    if args.entries == 0 {
        bail!("--entries must be positive");
    }
    let channel = args
        .channel
        .clone()
        .unwrap_or_else(|| ctx.fresh_channel("ingest"));
    ctx.check_files(args.subs + 8)?;
    let dlq = format!("{}:dlq", args.stream);

    let client = redis::Client::open(args.redis_url.as_str()).context("--redis-url")?;
    let mut conn = stream::connect(&client).await?;
    let wait_until =
        std::time::Instant::now() + Duration::from_secs_f64(args.wait_group_s.max(0.0));
    let group = loop {
        let group = stream::group_info(&mut conn, &args.stream, &args.group).await?;
        if group.is_some() || std::time::Instant::now() >= wait_until {
            break group;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(group) = group else {
        bail!(
            "stream {} has no consumer group {}: start the hub with HUB_REDIS_URL pointing at \
             this Redis and {} in HUB_STREAMS (and HUB_STREAM_GROUP={}), and wait for /ready",
            args.stream,
            args.group,
            args.stream,
            args.group
        );
    };
    let stream_len = stream::xlen(&mut conn, &args.stream).await?;
    let dlq_before = stream::xlen(&mut conn, &dlq).await?;
    ctx.report.step(
        "stream",
        json!({
            "stream": args.stream,
            "length": stream_len,
            "group": args.group,
            "group_before": group.to_json(),
            "dead_letters": dlq_before,
        }),
    );
    if group.lag.unwrap_or(0) > 0 || group.pending > 0 {
        eprintln!(
            "hub-loadgen: the group has a backlog before the run (pending {}, lag {:?}): it is \
             consumed first and slows this run's figures",
            group.pending, group.lag
        );
    }

    let tokens = ctx.tokens(args.subs).await?;
    let (fleet, setup) = Fleet::launch(&ctx.fleet, tokens, |_| Plan {
        subscribe: Some(channel.clone()),
        reading: Reading::Fast,
        rcvbuf: None,
        expected: args.entries,
        parse: args.parse,
    })
    .await;
    let setup_json = setup.to_json();
    ctx.report.step("subscribed", setup_json.clone());
    if setup.subscribed == 0 {
        fleet.finish().await;
        bail!("no subscriber got through setup: {:?}", setup.failures);
    }

    let progress = BurstProgress::default();
    let counters = vec![
        ("appended", progress.appended.clone()),
        ("acked", progress.acked.clone()),
    ];
    let sampler = RssSampler::start(
        ctx.hub_pid,
        Duration::from_millis(args.rss_interval_ms.max(1)),
    );
    let ticker = Ticker::start(
        ctx.report,
        vec![("subs", fleet.progress.clone())],
        Arc::new(PublishProgress::default()),
        counters,
        &sampler,
    );
    let lag = LoopLag::start(ctx.common.hist_sigfig);
    let before = Snapshot::take(ctx.hub_pid);
    let measuring = std::time::Instant::now();
    let burst = Burst {
        stream: args.stream.clone(),
        group: args.group.clone(),
        channel: channel.clone(),
        entries: args.entries,
        batch: args.batch,
        in_flight: args.in_flight,
        payload: args.payload,
        event_id_prefix: args
            .event_id
            .then(|| format!("lg-{}-{}-", std::process::id(), frame_ms())),
        drain: Duration::from_secs_f64(args.drain_s.max(0.0)),
        poll: Duration::from_millis(args.ack_poll_ms.max(1)),
    };
    fleet.set_phase(Phase::Run);
    let outcome = stream::run(client.clone(), burst, progress, ctx.common.hist_sigfig).await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            lag.finish().await;
            ticker.finish().await;
            sampler.finish().await;
            fleet.finish().await;
            return Err(e);
        }
    };
    ctx.report.step("appended", outcome.to_json());

    // Acknowledgement comes after fan-out, so deliveries are normally complete by now; the
    // wait covers what is still on its way (at most the rest of the drain time).
    fleet.set_phase(Phase::Drain);
    let drain_started = std::time::Instant::now();
    let wait = if outcome.all_acked_after.is_some() {
        Duration::from_secs_f64(args.drain_s.max(1.0))
    } else {
        // The producer already waited the drain time for acknowledgements.
        Duration::from_secs(1)
    };
    let drained = fleet
        .wait_received(
            outcome.accepted_count + outcome.unknown_count,
            drain_started + wait,
        )
        .await;
    let drain_s = drain_started.elapsed().as_secs_f64();
    let after = Snapshot::take(ctx.hub_pid);
    let measured_s = measuring.elapsed().as_secs_f64();
    let loop_lag = lag.finish().await;
    ticker.finish().await;
    let (max_rss_kib, rss_samples) = sampler.finish().await;
    let reports = fleet.finish().await;

    let dlq_after = stream::xlen(&mut conn, &dlq).await.ok();
    let deleted = if args.delete_after && outcome.all_acked_after.is_some() {
        Some(stream::delete(&client, &args.stream, &outcome.ids).await?)
    } else {
        None
    };

    let d = Deliveries::count(
        &reports,
        &outcome.accepted,
        &outcome.unknown,
        ctx.common.hist_sigfig,
    );
    let delivery_s = d.last_us.saturating_sub(d.first_us) as f64 / 1e6;
    let appended = outcome.accepted_count;
    let mut problems = d.problems("subscribers", true);
    // With several consuming nodes, entries they handle may take another order than the
    // stream's (docs/events.md "The entry"); each channel's offsets must still be gapless.
    let consumers = outcome.group_end.as_ref().map_or(1, |g| g.consumers);
    if d.seq_behind() > 0 && consumers <= 1 {
        problems.push(format!(
            "subscribers: {} entries received after a later one (stream order broken)",
            d.seq_behind()
        ));
    }
    if outcome.unknown_count > 0 {
        problems.push(format!(
            "{} entries in failed pipelines: {:?}",
            outcome.unknown_count, outcome.failures
        ));
    }
    if outcome.all_acked_after.is_none() {
        problems.push(format!(
            "{} of {appended} entries acknowledged, {} pending, after {:.1} s of drain",
            outcome.acked, outcome.pending, args.drain_s
        ));
    }
    let dead_letters = dlq_after.map(|a| a.saturating_sub(dlq_before));
    if let Some(n) = dead_letters.filter(|n| *n > 0) {
        problems.push(format!("{n} entries went to the dead letters ({dlq})"));
    }
    if !drained {
        problems.push(format!(
            "not every subscriber had every entry after {drain_s:.1} s of drain"
        ));
    }
    let own_cpu = match (after.own, before.own) {
        (Some((_, a)), Some((_, b))) => Some(a - b),
        _ => None,
    };
    let run_s = (d.last_us.max(outcome.start_us) - outcome.start_us) as f64 / 1e6;
    let mut deliveries = d.to_json();
    deliveries["seq_behind"] = json!(d.seq_behind());
    ctx.report.result(json!({
        "entries": args.entries,
        "subs": args.subs,
        "payload": args.payload,
        "batch": args.batch,
        "in_flight": args.in_flight,
        "event_id": args.event_id,
        "stream": args.stream,
        "group": args.group,
        "channel": channel,
        "setup": setup_json,
        "append": outcome.to_json(),
        "acks": outcome.acks_json(),
        "deliveries": deliveries,
        "appended_per_s": per_s(appended, outcome.append_elapsed.as_secs_f64()),
        "acked_per_s": outcome.all_acked_after.map(|t| per_s(outcome.acked, t.as_secs_f64())),
        // Per subscriber: distinct entries over the first-to-last receipt window.
        "delivered_entries_per_s": per_s(d.received() / d.connected().max(1) as u64, delivery_s),
        "deliveries_per_s": per_s(d.received(), delivery_s),
        "delivery_window_s": round3(delivery_s),
        "first_append_to_last_delivery_s": round3(run_s),
        "latency_ms": stats::summary_ms(&d.latency),
        "loadgen_loop_lag_ms": loop_lag,
        "drained": drained,
        "drain_s": round3(drain_s),
        "dead_letters_added": dead_letters,
        "deleted_after": deleted,
        "cpu": after.cpu_since(&before, measured_s),
        "loadgen_cpu_ns_per_delivery": own_cpu.map(|s| round3(s * 1e9 / d.received().max(1) as f64)),
        "mem_before": mem_json(&before),
        "mem_after": mem_json(&after),
        "hub_rss_max_mib": (rss_samples > 0).then(|| mib(max_rss_kib)),
        "problems": problems,
    }));
    ctx.verdict(&problems)
}

/// Milliseconds since the epoch, to make `event_id`s unique per run.
fn frame_ms() -> u64 {
    crate::frame::now_us() / 1000
}
