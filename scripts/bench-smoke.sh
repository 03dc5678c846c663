#!/usr/bin/env bash
# A short smoke of every load-generator scenario, for CI: connect, idle, fanout and overload on
# the memory engine; ingest and a one- and a two-node fanout on the Redis engine. Builds the hub
# and the load generator in release, starts hubs (and a throwaway redis-server) on free ports, runs
# each scenario for a few seconds at small sizes with --fail-on-loss, and stops everything it
# started.
#
# Fails only when a scenario errors or loses, duplicates or reorders a message (or leaves a
# stream entry unacknowledged); never on a speed figure. Logs and JSON lines are kept in the
# directory it prints (BENCH_SMOKE_DIR to choose it).
#
#   scripts/bench-smoke.sh            # everything, release builds
#   BENCH_SMOKE_PROFILE=debug scripts/bench-smoke.sh  # debug builds (what scripts/test.sh
#                                     # uses: they share the test build's cache; the sizes
#                                     # here are small enough for them)
#   BENCH_SMOKE_SKIP_BUILD=1 scripts/bench-smoke.sh   # use the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
started_at=$(date +%s)

PROFILE="${BENCH_SMOKE_PROFILE:-release}"
case "$PROFILE" in
  release | debug) ;;
  *) echo "BENCH_SMOKE_PROFILE must be release or debug, not $PROFILE" >&2; exit 2 ;;
esac
HUB="$ROOT/target/$PROFILE/realtime-hub"
LOADGEN="$ROOT/target/$PROFILE/hub-loadgen"
SECRET="bench-smoke-secret"
API_KEY="bench-smoke-key"
OUT="${BENCH_SMOKE_DIR:-$(mktemp -d /tmp/bench-smoke.XXXXXX)}"
mkdir -p "$OUT"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # A hub drains for up to HUB_SHUTDOWN_TIMEOUT_S; then it is killed.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

say() { echo "== bench-smoke: $*"; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi

# Every connection is a descriptor on both sides; 200 clients fit the usual 1024, but raise
# the soft limit as far as the hard one allows so larger sizes work too.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true

if [ -z "${BENCH_SMOKE_SKIP_BUILD:-}" ]; then
  say "building ($PROFILE)"
  if [ "$PROFILE" = release ]; then
    # The same two commands docs/benchmarks.md uses, so their build caches are shared.
    cargo build --release --quiet
    cargo build --release --quiet -p hub-loadgen
  else
    # With every target of the workspace, dependencies get the features `cargo test
    # --workspace` gave them, so only the two binaries are built here; a plain `cargo build`
    # would leave out the dev-dependencies' features and rebuild half the dependency tree.
    cargo build --workspace --all-targets --quiet
  fi
fi

# A port nobody listens on (a race with other processes is possible but harmless here: the
# hub would fail to bind and the script would say so).
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
}

http_ready() {
  local port=$1
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null "http://127.0.0.1:$port/ready"
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$port" &&
      printf 'GET /ready HTTP/1.0\r\n\r\n' >&3 && head -n1 <&3 | grep -q ' 200 ') 2>/dev/null
  fi
}

# start_hub NAME PORT [VAR=VALUE ...]: a hub in the background, its PID in $HUB_PID.
start_hub() {
  local name=$1 port=$2
  shift 2
  env HUB_JWT_SECRET="$SECRET" HUB_API_KEY="$API_KEY" HUB_BIND="127.0.0.1:$port" \
    HUB_NODE_ID="$name" HUB_SHUTDOWN_TIMEOUT_S=2 "$@" "$HUB" >"$OUT/$name.log" 2>&1 &
  HUB_PID=$!
  PIDS+=("$HUB_PID")
  for _ in $(seq 100); do
    if http_ready "$port"; then return 0; fi
    if ! kill -0 "$HUB_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  say "hub $name did not become ready on port $port; its log:"
  tail -n 20 "$OUT/$name.log"
  exit 1
}

FAILED=()
SUMMARY=()
# run_scenario LABEL LOADGEN-ARGS...: runs the load generator; its JSON lines go to LABEL.json.
run_scenario() {
  local label=$1
  shift
  local t0 rc=0
  t0=$(date +%s.%N)
  "$LOADGEN" --secret "$SECRET" --api-key "$API_KEY" --no-table --fail-on-loss "$@" \
    >"$OUT/$label.json" 2>"$OUT/$label.err" || rc=$?
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  local line
  line=$(summarise "$label" <"$OUT/$label.json")
  if [ "$rc" -ne 0 ]; then
    FAILED+=("$label")
    line="FAIL $label (exit $rc, ${secs}s): $(tail -n 3 "$OUT/$label.err" | tr '\n' ' ') $line"
  else
    line="ok   $label (${secs}s): $line"
  fi
  SUMMARY+=("$line")
  echo "$line"
}

# The figures worth a glance from a scenario's result line (python3 if there, else the
# problems field as it is).
summarise() {
  local label=$1
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
r = None
for line in sys.stdin:
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if v.get("event") == "result":
        r = v
if r is None:
    print("no result line"); sys.exit()
def g(*path):
    v = r
    for p in path:
        v = v.get(p) if isinstance(v, dict) else None
    return v
s = r.get("scenario")
if s in ("connect", "idle"):
    out = "%s/%s connected, all welcome %ss, hub RSS/conn %s KiB" % (
        g("setup", "connected"), g("setup", "n"), g("setup", "all_welcome_s"),
        g("hub_rss_per_conn_kib", "held") if s == "idle" else g("hub_rss_per_conn_kib"))
elif s == "fanout":
    out = "%s deliveries, lost %s, dup %s, offset gaps %s, p99 %s ms, nodes %s" % (
        g("deliveries", "received"), g("deliveries", "lost"), g("deliveries", "duplicates"),
        g("deliveries", "offset_gaps"), g("latency_ms", "p99"),
        ",".join("%s:%s" % (k, v.get("received")) for k, v in (r.get("nodes") or {}).items()))
elif s == "overload":
    out = "fast lost %s, slow closed 4000: %s/%s, hub RSS max %s MiB" % (
        g("fast", "deliveries", "lost"), g("slow", "closed_4000"), g("slow", "clients"),
        g("hub_rss_max_mib"))
elif s == "ingest":
    out = "%s appended (%s/s), %s acked in %ss, lost %s, dup %s, order %s/%s, p99 %s ms" % (
        g("append", "appended"), g("appended_per_s"), g("acks", "acked"),
        g("acks", "all_acked_s"), g("deliveries", "lost"), g("deliveries", "duplicates"),
        g("deliveries", "offset_regressions"), g("deliveries", "seq_behind"),
        g("latency_ms", "p99"))
else:
    out = ""
problems = r.get("problems") or []
print(out + ("; problems: " + "; ".join(problems) if problems else ""))
'
  else
    grep -o '"problems":\[[^]]*\]' | tail -n 1 || echo "no result line"
  fi
}

say "output in $OUT"

# --- memory engine -------------------------------------------------------------------------
MEM_PORT=$(free_port)
start_hub mem "$MEM_PORT"
MEM_PID=$HUB_PID
MEM=(--url "ws://127.0.0.1:$MEM_PORT" --http "http://127.0.0.1:$MEM_PORT" --hub-pid "$MEM_PID")

run_scenario connect "${MEM[@]}" connect --n 200 --hold-s 1
run_scenario idle "${MEM[@]}" idle --n 200 --settle-s 0.5 --hold-s 1
run_scenario fanout "${MEM[@]}" fanout --subs 100 --rate 100 --duration 3 --drain-s 10

# Overload: 8 KB publications, so that the slow subscribers (which stop reading, with a 4 KiB
# receive buffer) fill the kernel's buffers (~3 MB per socket here) and then their hub-side
# bound within the few seconds and are closed with 4000; the fast ones must lose nothing. A
# 256 KiB bound holds a burst of 32 publications for the fast ones.
# Debug builds are several times slower on both sides: there the fast ones get the default
# 1 MiB bound (0.4 s of slack) and the slow ones a second longer to fill theirs.
OVL_PORT=$(free_port)
if [ "$PROFILE" = release ]; then
  OVL_QUEUE=262144 OVL_DURATION=3
else
  OVL_QUEUE=1048576 OVL_DURATION=4
fi
start_hub overload "$OVL_PORT" HUB_CLIENT_QUEUE_BYTES=$OVL_QUEUE
run_scenario overload --url "ws://127.0.0.1:$OVL_PORT" --http "http://127.0.0.1:$OVL_PORT" \
  --hub-pid "$HUB_PID" overload --subs 100 --rate 300 --duration "$OVL_DURATION" --payload 8000 \
  --slow-fraction 0.1 --slow-rcvbuf 4096 --drain-s 10

# --- Redis engine --------------------------------------------------------------------------
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  >"$OUT/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

A_PORT=$(free_port)
start_hub node-a "$A_PORT" HUB_REDIS_URL="$REDIS_URL" HUB_STREAMS=hub:events
A_PID=$HUB_PID
B_PORT=$(free_port)
# Node B consumes another stream: with one node consuming hub:events, ingest must keep the
# stream's order.
start_hub node-b "$B_PORT" HUB_REDIS_URL="$REDIS_URL" HUB_STREAMS=bench:unused

run_scenario ingest --url "ws://127.0.0.1:$A_PORT" --hub-pid "$A_PID" \
  ingest --entries 2000 --subs 10 --redis-url "$REDIS_URL" --drain-s 20
run_scenario fanout-redis-1-node --url "ws://127.0.0.1:$A_PORT" --http "http://127.0.0.1:$A_PORT" \
  --hub-pid "$A_PID" fanout --subs 100 --rate 100 --duration 3 --drain-s 10
# Subscribers alternate between the nodes, publications alternate between their server APIs:
# every subscriber must see one gapless order whichever node it is on.
run_scenario fanout-redis-2-nodes \
  --url "ws://127.0.0.1:$A_PORT,ws://127.0.0.1:$B_PORT" \
  --http "http://127.0.0.1:$A_PORT,http://127.0.0.1:$B_PORT" --hub-pid "$A_PID" \
  fanout --subs 100 --rate 100 --duration 3 --drain-s 10

elapsed=$(($(date +%s) - started_at))
echo
say "summary (${elapsed}s in all; logs in $OUT)"
printf '  %s\n' "${SUMMARY[@]}"
if [ ${#FAILED[@]} -gt 0 ]; then
  say "FAILED: ${FAILED[*]}"
  exit 1
fi
say "every scenario passed"
