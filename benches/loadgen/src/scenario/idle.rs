//! `idle`: N connections, each subscribed to one channel, held idle; the measure is the hub's
//! resident memory per connection (VmRSS after − before, over N), read once things settled.
//!
//! RSS is also read after everything is closed, to show what the hub gives back (an
//! allocator keeps some; a leak keeps all).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::{mem_json, setup_problems, Ctx};
use crate::cli::{IdleArgs, ParseMode};
use crate::fleet::{Fleet, Phase, Plan, Reading};
use crate::procfs::{mib, Snapshot};
use crate::report::round3;
use crate::ws::End;

pub async fn run(ctx: &Ctx, args: &IdleArgs) -> Result<()> {
    ctx.check_files(args.n)?;
    let hub = ctx
        .hub_pid
        .context("idle measures the hub's memory: pass --hub-pid (or run one realtime-hub)")?;
    let prefix = args
        .channel
        .clone()
        .unwrap_or_else(|| ctx.fresh_channel("idle"));
    let channels = args.channels.max(1);
    let settle = Duration::from_secs_f64(args.settle_s.max(0.0));
    let tokens = ctx.tokens(args.n).await?;

    let before = Snapshot::take(Some(hub));
    ctx.report.step("before", mem_json(&before));
    let (fleet, setup) = Fleet::launch(&ctx.fleet, tokens, |i| Plan {
        subscribe: Some(if channels == 1 {
            prefix.clone()
        } else {
            format!("{prefix}.{}", i % channels)
        }),
        reading: Reading::Fast,
        rcvbuf: None,
        expected: 0,
        parse: ParseMode::Scan,
    })
    .await;
    let setup_json = setup.to_json();
    ctx.report.step("subscribed", setup_json.clone());
    fleet.set_phase(Phase::Run);

    tokio::time::sleep(settle).await;
    let settled = Snapshot::take(Some(hub));
    ctx.report.step("settled", mem_json(&settled));

    let hold_until = tokio::time::Instant::now() + Duration::from_secs_f64(args.hold_s.max(0.0));
    while tokio::time::Instant::now() < hold_until {
        tokio::time::sleep_until(
            hold_until.min(tokio::time::Instant::now() + Duration::from_secs(1)),
        )
        .await;
        let s = Snapshot::take(Some(hub));
        ctx.report.tick(mem_json(&s));
    }
    let held = Snapshot::take(Some(hub));
    let reports = fleet.finish().await;
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        if r.setup.is_ok() && !matches!(r.end, End::Stopped) {
            *dropped.entry(r.end.label()).or_default() += 1;
        }
    }
    tokio::time::sleep(settle).await;
    let closed = Snapshot::take(Some(hub));

    let n = setup.subscribed.max(1) as f64;
    let per_conn = |s: &Snapshot, of: fn(&Snapshot) -> Option<u64>| match (of(&before), of(s)) {
        (Some(a), Some(b)) => Some(round3((b as f64 - a as f64) / n)),
        _ => None,
    };
    let hub_rss = |s: &Snapshot| s.hub_rss_kib();
    let own_rss = |s: &Snapshot| s.own.map(|(m, _)| m.rss_kib);
    let mut problems = setup_problems(&setup, &dropped);
    if setup.subscribed < setup.connected {
        problems.push(format!(
            "{} connections were welcomed but not subscribed",
            setup.connected - setup.subscribed
        ));
    }
    ctx.report.result(json!({
        "n": args.n,
        "channels": channels,
        "setup": setup_json,
        "dropped_while_held": dropped,
        "hub_rss_mib": {
            "before": before.hub_rss_kib().map(mib),
            "settled": settled.hub_rss_kib().map(mib),
            "held": held.hub_rss_kib().map(mib),
            "after_close": closed.hub_rss_kib().map(mib),
        },
        "hub_rss_per_conn_kib": {
            "settled": per_conn(&settled, hub_rss),
            "held": per_conn(&held, hub_rss),
            "after_close": per_conn(&closed, hub_rss),
        },
        "loadgen_rss_per_conn_kib": per_conn(&held, own_rss),
        "problems": problems,
    }));
    ctx.verdict(&problems)
}
