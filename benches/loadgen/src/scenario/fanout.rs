//! `fanout`: N subscribers on one channel, publications through `POST /api/publish` at a
//! fixed rate; measures deliveries/s, publish-to-receipt latency and exact loss.
//!
//! Sequence: connect and subscribe everyone, publish, wait (bounded) until every subscriber
//! has every acknowledged publication, then compare each subscriber's bitset with the
//! publisher's.
//!
//! Several `--url`s spread the subscribers round-robin over several nodes (the Redis engine
//! case); every subscriber's loss and order are checked wherever it is connected, and the
//! result's `nodes` breaks the accounting down by the node each `welcome` named.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{mem_json, per_s, publish_and_drain, schedule, Ctx, Deliveries};
use crate::cli::FanoutArgs;
use crate::fleet::{ClientReport, Fleet, Plan, Reading};
use crate::procfs::mib;
use crate::publisher::PublishOutcome;
use crate::report::round3;
use crate::stats;

pub async fn run(ctx: &Ctx, args: &FanoutArgs) -> Result<()> {
    let p = &args.publish;
    let channel = p
        .channel
        .clone()
        .unwrap_or_else(|| ctx.fresh_channel("fanout"));
    let schedule = schedule(p, &channel)?;
    ctx.check_files(args.subs + p.http_conns)?;
    let tokens = ctx.tokens(args.subs).await?;
    let lanes = ctx.http_lanes(p).await?;

    let (fleet, setup) = Fleet::launch(&ctx.fleet, tokens, |_| Plan {
        subscribe: Some(channel.clone()),
        reading: Reading::Fast,
        rcvbuf: None,
        expected: schedule.count,
        parse: p.parse,
    })
    .await;
    let setup_json = setup.to_json();
    ctx.report.step("subscribed", setup_json.clone());
    if setup.subscribed == 0 {
        fleet.finish().await;
        bail!("no subscriber got through setup: {:?}", setup.failures);
    }

    let groups = vec![("subs", fleet.progress.clone())];
    let measured = publish_and_drain(ctx, &fleet, schedule.clone(), lanes, groups, p).await;
    let reports = fleet.finish().await;
    let m = measured?;

    let d = Deliveries::count(
        &reports,
        &m.outcome.accepted,
        &m.outcome.unknown,
        ctx.common.hist_sigfig,
    );
    let publish_s = m.outcome.elapsed.as_secs_f64();
    // From the first publication to the last delivery anywhere.
    let window_s = d.last_us.saturating_sub(m.start_us) as f64 / 1e6;
    let nodes = by_node(ctx, &reports, &m.outcome);
    let mut problems = d.problems("subscribers", true);
    if !m.drained {
        problems.push(format!(
            "not every subscriber had every publication after {:.1} s of drain",
            m.drain_s
        ));
    }
    let own_cpu = match (m.after.own, m.before.own) {
        (Some((_, a)), Some((_, b))) => Some(a - b),
        _ => None,
    };
    ctx.report.result(json!({
        "subs": args.subs,
        "rate": p.rate,
        "duration_s": p.duration,
        "payload": p.payload,
        "http_conns": p.http_conns,
        "parse": format!("{:?}", p.parse).to_lowercase(),
        "channel": channel,
        "setup": setup_json,
        "publish": m.outcome.to_json(&schedule),
        "deliveries": d.to_json(),
        "offered_deliveries_per_s": round3(p.rate * setup.subscribed as f64),
        "deliveries_per_s": per_s(d.received(), window_s),
        "deliveries_per_s_while_publishing": per_s(m.received_at_end.iter().sum(), publish_s),
        "latency_ms": stats::summary_ms(&d.latency),
        "loadgen_loop_lag_ms": m.loop_lag,
        "drained": m.drained,
        "drain_s": round3(m.drain_s),
        "cpu": m.after.cpu_since(&m.before, publish_s + m.drain_s),
        "loadgen_cpu_ns_per_delivery": own_cpu.map(|s| round3(s * 1e9 / d.received().max(1) as f64)),
        "mem_before": mem_json(&m.before),
        "mem_published": mem_json(&m.published),
        "hub_rss_max_mib": (m.rss_samples > 0).then(|| mib(m.max_rss_kib)),
        "nodes": nodes,
        "problems": problems,
    }));
    ctx.verdict(&problems)
}

/// The accounting per hub node: the `--url` each subscriber used, and the node id its
/// `welcome` named (one URL is one node, unless a balancer sits in front).
fn by_node(ctx: &Ctx, reports: &[ClientReport], outcome: &PublishOutcome) -> Value {
    let urls = &ctx.common.url;
    let mut groups: BTreeMap<(usize, String), Vec<&ClientReport>> = BTreeMap::new();
    for r in reports {
        let node = r.node.clone().unwrap_or_else(|| "?".into());
        groups
            .entry((r.index % urls.len(), node))
            .or_default()
            .push(r);
    }
    let mut nodes = serde_json::Map::new();
    for ((url, node), rs) in groups {
        let d = Deliveries::count(
            rs.iter().copied(),
            &outcome.accepted,
            &outcome.unknown,
            ctx.common.hist_sigfig,
        );
        let all = d.to_json();
        let entry = json!({
            "url": urls[url],
            "subscribers": rs.len(),
            "connected": d.connected(),
            "received": d.received(),
            "lost": all["lost"],
            "duplicates": all["duplicates"],
            "offset_gaps": all["offset_gaps"],
            "offset_regressions": all["offset_regressions"],
            "latency_ms": stats::summary_ms(&d.latency),
        });
        // One node reached through two URLs gets two entries.
        let key = if nodes.contains_key(&node) {
            format!("{node} (url {url})")
        } else {
            node
        };
        nodes.insert(key, entry);
    }
    Value::Object(nodes)
}
