#!/usr/bin/env bash
# Runs the browser tests: hub-client.js protocol tests against a fake hub, and end-to-end tests
# that drive Debian's Chromium (through playwright-core) against the real hub binary.
#
# Installs what is missing (Chromium via apt, the npm packages from the lockfile), builds the hub
# with `cargo build` only if no binary exists, then runs `node --test`. Non-interactive (CI=true).
#
# Environment:
#   HUB_BIN        hub binary (default: target/debug/realtime-hub under the repository root)
#   CHROMIUM_PATH  browser (default: /usr/bin/chromium)
#   arguments are passed to `node --test` (e.g. one test file)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "browser tests: installing chromium (not found at $chromium)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if ! command -v node >/dev/null; then
  echo "browser tests: node is required (Node.js 20 or newer)" >&2
  exit 1
fi

hub_bin="${HUB_BIN:-target/debug/realtime-hub}"
case "$hub_bin" in /*) ;; *) hub_bin="$root/$hub_bin" ;; esac
if [ ! -x "$hub_bin" ]; then
  if [ -n "${HUB_BIN:-}" ]; then
    echo "browser tests: HUB_BIN=$HUB_BIN is not an executable" >&2
    exit 1
  fi
  echo "browser tests: building the hub (no binary at $hub_bin)"
  (cd "$root" && cargo build --quiet)
fi
export HUB_BIN="$hub_bin"

cd "$here"
# Exactly the locked versions (one small package, no browser download: playwright-core has none).
npm ci --no-audit --no-fund --loglevel=error

# Without arguments node finds the *.test.mjs files here. One file at a time: each end-to-end
# file starts its own hub and browser, and the machine is small.
exec node --test --test-concurrency=1 "$@"
