//! `hub-loadgen`: the load generator of realtime-hub.
//!
//! Simulates many WebSocket users and an HTTP (or Redis stream) publisher against a running hub
//! and measures what the hub promises: connection setup time (`connect`), memory per idle
//! connection (`idle`), fan-out throughput, latency and exact loss (`fanout`, on one node or
//! several), bounded memory with slow consumers cut off (`overload`), and Redis Streams
//! ingestion (`ingest`). Every step and result is one JSON line on stdout; the final result is
//! also shown as a table on stderr. With `--fail-on-loss` a run that lost, duplicated or
//! reordered a message exits with status 1. `docs/benchmarks.md` has the commands and
//! the numbers measured with them.
//!
//! Layout:
//! - `cli`: flags and subcommands.
//! - `scenario/`: one module per scenario, plus what they share: the context, the
//!   publish-and-drain sequence, the progress ticker, the loop-lag probe, the accounting.
//! - `fleet`: the client tasks (setup, reading modes, phases) and their coordinator.
//! - `ws`: one WebSocket connection (source-address binding, handshake, welcome, subscribe,
//!   close codes); `wire`: RFC 6455 framing without I/O (the frame parser, masking, the
//!   handshake check).
//! - `publisher`: paced publishing and the set of acknowledged publications; `http`: the
//!   minimal HTTP/1.1 client it uses; `stream`: the Redis stream producer of `ingest` and its
//!   acknowledgement watcher.
//! - `frame`: the benchmark payload and the cheap push parser; `stats`: bitsets, offset
//!   checks, histograms; `token`: HS256 tokens; `procfs`: RSS and CPU of the hub and of us;
//!   `report`: output.
//!
//! `examples/mock_hub.rs` is a stand-in hub for measuring the load generator itself.
//!
//! Run it pinned to its own core (`taskset -c 1`), the hub on another: from about 3M
//! deliveries per second (measured against the stand-in) the load generator's core is the
//! limit.

mod cli;
mod fleet;
mod frame;
mod http;
mod procfs;
mod publisher;
mod report;
mod scenario;
mod stats;
mod stream;
mod token;
mod wire;
mod ws;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = if cli.common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(cli.common.threads))
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scenario::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
