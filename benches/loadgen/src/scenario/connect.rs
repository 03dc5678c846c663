//! `connect`: N users connect at once (at most `--concurrency` in setup at a time); the
//! measure is the time from the first TCP connect until the last `welcome`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{mem_json, setup_problems, Ctx};
use crate::cli::{ConnectArgs, ParseMode};
use crate::fleet::{Fleet, Phase, Plan, Reading};
use crate::procfs::{mib, Snapshot};
use crate::ws::End;

pub async fn run(ctx: &Ctx, args: &ConnectArgs) -> Result<()> {
    ctx.check_files(args.n)?;
    let tokens = ctx.tokens(args.n).await?;
    ctx.report.step("tokens", json!({"n": args.n}));

    let before = Snapshot::take(ctx.hub_pid);
    let started = Instant::now();
    let (fleet, setup) = Fleet::launch(&ctx.fleet, tokens, |_| Plan {
        subscribe: None,
        reading: Reading::Fast,
        rcvbuf: None,
        expected: 0,
        parse: ParseMode::Scan,
    })
    .await;
    let wall = started.elapsed().as_secs_f64();
    let after = Snapshot::take(ctx.hub_pid);
    let setup_json = setup.to_json();
    ctx.report.step("connected", setup_json.clone());

    // Hold the connections (they keep reading, so pings get answered).
    fleet.set_phase(Phase::Run);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_s.max(0.0))).await;
    let held = Snapshot::take(ctx.hub_pid);
    let reports = fleet.finish().await;

    // Connections the hub ended while we held them.
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        if r.setup.is_ok() && !matches!(r.end, End::Stopped) {
            *dropped.entry(r.end.label()).or_default() += 1;
        }
    }
    let rss_per_conn_kib = match (before.hub_rss_kib(), held.hub_rss_kib()) {
        (Some(a), Some(b)) if setup.connected > 0 => Some(crate::report::round3(
            (b as f64 - a as f64) / setup.connected as f64,
        )),
        _ => None,
    };
    let problems = setup_problems(&setup, &dropped);
    ctx.report.result(json!({
        "n": args.n,
        "setup": setup_json,
        "dropped_while_held": dropped,
        "cpu_during_connect": after.cpu_since(&before, wall),
        "mem_before": mem_json(&before),
        "mem_held": mem_json(&held),
        "hub_rss_delta_mib": match (before.hub_rss_kib(), held.hub_rss_kib()) {
            (Some(a), Some(b)) => Some(mib(b.saturating_sub(a))),
            _ => None,
        },
        "hub_rss_per_conn_kib": rss_per_conn_kib,
        "problems": problems,
    }));
    ctx.verdict(&problems)
}
