//! `overload`: publish beyond what the hub can deliver while some subscribers read slowly or
//! not at all. What must hold: the hub's memory stays bounded (sampled peak RSS against its
//! queue settings), the slow subscribers are closed with 4000 `slow consumer`, and the fast
//! ones keep receiving, in order and without loss, the whole time.
//!
//! Slow subscribers that stopped reading cannot see their close frame until they read again,
//! so in the drain phase every subscriber reads everything that is left; how each connection
//! ended (code and reason) is then known exactly, per client.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;

use super::{hub_metrics, mem_json, per_s, publish_and_drain, schedule, Ctx, Deliveries};
use crate::cli::{OverloadArgs, SlowMode};
use crate::fleet::{ClientReport, Fleet, Plan, Reading};
use crate::procfs::{self, mib};
use crate::report::round3;
use crate::stats;

/// The close code of a slow consumer.
const SLOW_CONSUMER: u16 = 4000;

/// Hub metrics read before and after, as a cross-check of what the clients saw.
const METRICS: &[&str] = &[
    "hub_slow_consumer_disconnects_total",
    "hub_deliveries_total",
    "hub_connections",
];

/// `HUB_NODE_QUEUE_BYTES` when the hub's environment does not set it.
const DEFAULT_NODE_QUEUE_BYTES: f64 = 268_435_456.0;

pub async fn run(ctx: &Ctx, args: &OverloadArgs) -> Result<()> {
    let p = &args.publish;
    let channel = p
        .channel
        .clone()
        .unwrap_or_else(|| ctx.fresh_channel("overload"));
    let schedule = schedule(p, &channel)?;
    ctx.check_files(args.subs + p.http_conns)?;
    let fraction = args.slow_fraction.clamp(0.0, 1.0);
    // Spreads floor(n * fraction) slow clients evenly over the indices.
    let is_slow = |i: usize| (i as f64 * fraction).floor() != ((i + 1) as f64 * fraction).floor();
    let tokens = ctx.tokens(args.subs).await?;
    let lanes = ctx.http_lanes(p).await?;
    let slow_reading = match args.slow_mode {
        SlowMode::Stop => Reading::Stopped,
        SlowMode::Slow => Reading::Slow(Duration::from_millis(args.slow_delay_ms)),
    };

    let (fleet, setup) = Fleet::launch(&ctx.fleet, tokens, |i| {
        let slow = is_slow(i);
        Plan {
            subscribe: Some(channel.clone()),
            reading: if slow { slow_reading } else { Reading::Fast },
            rcvbuf: if slow { args.slow_rcvbuf } else { None },
            expected: schedule.count,
            parse: p.parse,
        }
    })
    .await;
    let setup_json = setup.to_json();
    ctx.report.step("subscribed", setup_json.clone());
    if setup.subscribed == 0 {
        fleet.finish().await;
        bail!("no subscriber got through setup: {:?}", setup.failures);
    }

    let metrics_before = hub_metrics(ctx.http_base(), METRICS).await;
    let split = |slow: bool| {
        fleet
            .progress
            .iter()
            .enumerate()
            .filter(|(i, _)| is_slow(*i) == slow)
            .map(|(_, p)| p.clone())
            .collect::<Vec<_>>()
    };
    let groups = vec![("fast", split(false)), ("slow", split(true))];
    let measured = publish_and_drain(ctx, &fleet, schedule.clone(), lanes, groups, p).await;
    let reports = fleet.finish().await;
    let m = measured?;
    let metrics_after = hub_metrics(ctx.http_base(), METRICS).await;

    let sigfig = ctx.common.hist_sigfig;
    let (slow, fast): (Vec<&ClientReport>, Vec<&ClientReport>) =
        reports.iter().partition(|r| is_slow(r.index));
    let accepted = &m.outcome.accepted;
    let fast_d = Deliveries::count(fast.iter().copied(), accepted, &m.outcome.unknown, sigfig);
    // A fast client the hub closed as a slow consumer stops receiving there: what it missed
    // after its close is the cut, not a loss. It is reported as cut (the hub could not tell it
    // from a slow one, or the load generator fell behind), and only the fast clients that
    // stayed connected must have lost nothing.
    let fast_cut = fast
        .iter()
        .filter(|r| r.end.close_code() == Some(SLOW_CONSUMER))
        .count();
    let fast_kept_d = Deliveries::count(
        fast.iter()
            .copied()
            .filter(|r| r.end.close_code() != Some(SLOW_CONSUMER)),
        accepted,
        &m.outcome.unknown,
        sigfig,
    );
    let slow_d = Deliveries::count(slow.iter().copied(), accepted, &m.outcome.unknown, sigfig);
    // Slow clients the hub did not close as slow consumers must have lost nothing either.
    let slow_kept: Vec<&ClientReport> = slow
        .iter()
        .copied()
        .filter(|r| r.end.close_code() != Some(SLOW_CONSUMER))
        .collect();
    let slow_kept_d = Deliveries::count(
        slow_kept.iter().copied(),
        accepted,
        &m.outcome.unknown,
        sigfig,
    );
    let mut problems = fast_d.problems("fast", false);
    problems.extend(
        fast_kept_d
            .problems("fast", true)
            .into_iter()
            .filter(|p| p.ends_with(" lost")),
    );
    if fast_cut > 0 {
        problems.push(format!(
            "fast: {fast_cut} of {} clients reading at full speed were closed with 4000 \
             (slow consumer): their bound is too small for this machine's pace",
            fast.len()
        ));
    }
    problems.extend(slow_d.problems("slow", false));
    problems.extend(slow_kept_d.problems("slow, not closed with 4000", true));
    if !m.drained {
        problems.push(format!(
            "not every subscriber had every publication (or was closed) after {:.1} s of drain",
            m.drain_s
        ));
    }
    let closed_4000 = |rs: &[&ClientReport]| {
        rs.iter()
            .filter(|r| r.end.close_code() == Some(SLOW_CONSUMER))
            .count()
    };
    // A fast client "kept receiving" if its last delivery came within the last second of
    // publishing or later.
    let fast_receiving_at_end = fast
        .iter()
        .filter(|r| r.setup.is_ok() && r.tally.last_us + 1_000_000 >= m.end_us)
        .count();
    let fast_while_publishing: u64 = m
        .received_at_end
        .iter()
        .enumerate()
        .filter(|(i, _)| !is_slow(*i))
        .map(|(_, n)| n)
        .sum();

    let hub_env = ctx
        .hub_pid
        .map(|pid| {
            procfs::env_of(
                pid,
                &[
                    "HUB_CLIENT_QUEUE_BYTES",
                    "HUB_NODE_QUEUE_BYTES",
                    "HUB_MAX_FRAME_BYTES",
                ],
            )
        })
        .unwrap_or_default();
    let node_queue_mib = hub_env
        .get("HUB_NODE_QUEUE_BYTES")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(DEFAULT_NODE_QUEUE_BYTES)
        / (1024.0 * 1024.0);
    let metric_delta = |name: &str| match (metrics_before.get(name), metrics_after.get(name)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let publish_s = m.outcome.elapsed.as_secs_f64();
    let hub_rss_max_mib = (m.rss_samples > 0).then(|| mib(m.max_rss_kib));
    ctx.report.result(json!({
        "subs": args.subs,
        "rate": p.rate,
        "duration_s": p.duration,
        "payload": p.payload,
        "http_conns": p.http_conns,
        "channel": channel,
        "slow": {
            "mode": format!("{:?}", args.slow_mode).to_lowercase(),
            "clients": slow.len(),
            "closed_4000": closed_4000(&slow),
            "deliveries": slow_d.to_json(),
        },
        "fast": {
            "clients": fast.len(),
            "closed_4000": closed_4000(&fast),
            "receiving_at_end": fast_receiving_at_end,
            "deliveries": fast_d.to_json(),
            "deliveries_of_clients_not_closed": fast_kept_d.to_json(),
            "latency_ms": stats::summary_ms(&fast_d.latency),
            "deliveries_per_s_while_publishing": per_s(fast_while_publishing, publish_s),
        },
        "setup": setup_json,
        "publish": m.outcome.to_json(&schedule),
        "loadgen_loop_lag_ms": m.loop_lag,
        "drained": m.drained,
        "drain_s": round3(m.drain_s),
        "cpu": m.after.cpu_since(&m.before, publish_s + m.drain_s),
        "mem_before": mem_json(&m.before),
        "mem_published": mem_json(&m.published),
        "mem_after": mem_json(&m.after),
        "hub_rss_max_mib": hub_rss_max_mib,
        "hub_rss_samples": m.rss_samples,
        "hub_settings": hub_env,
        "hub_rss_max_over_node_queue_mib": hub_rss_max_mib.map(|v| round3(v - node_queue_mib)),
        "hub_metrics_delta": {
            "slow_consumer_disconnects": metric_delta("hub_slow_consumer_disconnects_total"),
            "deliveries": metric_delta("hub_deliveries_total"),
        },
        "first_publication_unix_us": m.start_us,
        "problems": problems,
    }));
    ctx.verdict(&problems)
}
