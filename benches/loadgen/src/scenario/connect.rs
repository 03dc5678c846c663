//! `connect`: N users connect at once (at most `--concurrency` in setup at a time); the
//! measure is the time from the first TCP connect until the last `welcome`, and from the
//! first close until the hub counts every connection gone. With `--lifecycle`, also until the
//! hub has emitted every `user.online` (after the connects) and every `user.offline` (after
//! the closes), read from its `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{hub_metrics, mem_json, setup_problems, Ctx};
use crate::cli::{ConnectArgs, ParseMode};
use crate::fleet::{Fleet, Phase, Plan, Reading};
use crate::procfs::{mib, Snapshot};
use crate::ws::End;

pub async fn run(ctx: &Ctx, args: &ConnectArgs) -> Result<()> {
    ctx.check_files(args.n)?;
    let tokens = ctx.tokens(args.n).await?;
    ctx.report.step("tokens", json!({"n": args.n}));

    let base = counts(ctx).await;
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

    let n = setup.connected as f64;
    let online_s = if args.lifecycle {
        wait_counts(ctx, |c| c.events >= base.events + n)
            .await
            .then(|| crate::report::round3(started.elapsed().as_secs_f64()))
    } else {
        None
    };

    // Hold the connections (they keep reading, so pings get answered).
    fleet.set_phase(Phase::Run);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_s.max(0.0))).await;
    let held = Snapshot::take(ctx.hub_pid);
    let closing = Instant::now();
    let reports = fleet.finish().await;
    // Until the hub counts them all gone (and, with `--lifecycle`, emitted their `offline`).
    let gone = wait_counts(ctx, |c| {
        c.connections <= base.connections && (!args.lifecycle || c.events >= base.events + 2.0 * n)
    })
    .await;
    let disconnect_s = gone.then(|| crate::report::round3(closing.elapsed().as_secs_f64()));

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
        "connect_s": crate::report::round3(wall),
        "lifecycle_online_s": online_s,
        "disconnect_s": disconnect_s,
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

/// The hub's open connections and lifecycle events so far.
struct Counts {
    connections: f64,
    events: f64,
}

async fn counts(ctx: &Ctx) -> Counts {
    let m = hub_metrics(
        ctx.http_base(),
        &["hub_connections", "hub_lifecycle_events_total"],
    )
    .await;
    Counts {
        connections: m.get("hub_connections").copied().unwrap_or(f64::NAN),
        events: m.get("hub_lifecycle_events_total").copied().unwrap_or(0.0),
    }
}

/// Polls the hub's figures every 10 ms until `done` holds; `false` after 30 s.
async fn wait_counts(ctx: &Ctx, done: impl Fn(&Counts) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if done(&counts(ctx).await) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
