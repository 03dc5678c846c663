#!/usr/bin/env bash
# Runs every test of realtime-hub, installing first what the tests need on a fresh Debian
# machine: redis-server (the Redis engine's tests start their own), Chromium and Node.js (the
# demo page's browser tests), openssl and Python (an https webhook receiver), rustfmt and
# clippy.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase's heading says how long the run has taken so far: CI has a time budget.
started=$(date +%s)
phase() { echo "== $* (at $(($(date +%s) - started)) s)"; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The https webhook test makes its certificates with openssl and serves them with Python.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  phase "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

phase "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

phase "Rust tests (unit and integration, against the real hub)"
cargo test --workspace

phase "the single-node suites again, on the Redis engine (each node on its own redis-server)"
# --workspace: the same feature set as the run above, so nothing is rebuilt.
HUB_TEST_ENGINE=redis cargo test --workspace --test channels --test recovery --test connect --test hostile \
  --test backpressure --test api --test smoke

phase "load-generator smoke: every scenario at small sizes, failing only on loss or errors"
BENCH_SMOKE_PROFILE=debug scripts/bench-smoke.sh

if [ -x tests/browser/run.sh ]; then
  phase "browser tests (Playwright on Debian's Chromium)"
  cargo build --workspace --all-targets --quiet
  HUB_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/realtime-hub" tests/browser/run.sh
fi

phase "done"
