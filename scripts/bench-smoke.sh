#!/usr/bin/env bash
# A short smoke of every load-generator scenario, for CI: connect, idle, fanout and overload on
# the memory engine; ingest and a one- and a two-node fanout on the Redis engine. Builds the hub
# and the load generator in release, starts hubs on port 0 (and a throwaway redis-server below
# the ephemeral port range), runs each scenario for a few seconds at small sizes with
# --fail-on-loss, and stops everything it started.
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
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HUB="$TARGET/$PROFILE/realtime-hub"
LOADGEN="$TARGET/$PROFILE/hub-loadgen"
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

# Hubs bind port 0 and the address is read back from their `listening` log line: a port picked
# in advance can be taken meanwhile, and any port in the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 here) may be blocked by a client
# socket's TIME_WAIT left by an earlier scenario, SO_REUSEADDR or not.
#
# redis-server cannot report a port-0 bind, so it gets a random port below the ephemeral
# range and another one if that bind fails.
REDIS_PORT_LOW=10000
REDIS_PORT_HIGH=32000

http_ready() {
  local addr=$1
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null "http://$addr/ready"
  else
    (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" &&
      printf 'GET /ready HTTP/1.0\r\n\r\n' >&3 && head -n1 <&3 | grep -q ' 200 ') 2>/dev/null
  fi
}

# The address a hub's log says it listens on (`... address=127.0.0.1:40123 engine=... listening`),
# or nothing yet.
listening_addr() {
  sed -n 's/.* address=\([0-9.]*:[0-9]*\) .*listening$/\1/p' "$1" | head -n 1
}

# start_hub NAME [VAR=VALUE ...]: a hub on port 0 in the background; its PID in $HUB_PID and
# its address (host:port) in $HUB_ADDR once it is ready.
start_hub() {
  local name=$1
  shift
  env HUB_JWT_SECRET="$SECRET" HUB_API_KEY="$API_KEY" HUB_BIND="127.0.0.1:0" RUST_LOG=info \
    HUB_NODE_ID="$name" HUB_SHUTDOWN_TIMEOUT_S=2 "$@" "$HUB" >"$OUT/$name.log" 2>&1 &
  HUB_PID=$!
  PIDS+=("$HUB_PID")
  HUB_ADDR=
  # A debug build on a loaded machine can take a while to start: up to 30 s.
  for _ in $(seq 300); do
    [ -n "$HUB_ADDR" ] || HUB_ADDR=$(listening_addr "$OUT/$name.log")
    if [ -n "$HUB_ADDR" ] && http_ready "$HUB_ADDR"; then return 0; fi
    if ! kill -0 "$HUB_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  say "hub $name did not become ready (address: ${HUB_ADDR:-none logged}); its log:"
  tail -n 20 "$OUT/$name.log"
  exit 1
}

# start_redis: a throwaway redis-server below the ephemeral range, its port in $REDIS_PORT.
# A port someone else holds makes redis-server exit at once; then another is tried.
start_redis() {
  local attempt pid
  for attempt in $(seq 20); do
    REDIS_PORT=$((REDIS_PORT_LOW + RANDOM % (REDIS_PORT_HIGH - REDIS_PORT_LOW)))
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
      >"$OUT/redis.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      # Ours answers with its own pid: not another server that held the port first.
      if [ "$(redis-cli -p "$REDIS_PORT" info server 2>/dev/null |
        sed -n 's/^process_id:\([0-9]*\).*/\1/p')" = "$pid" ]; then
        PIDS+=("$pid")
        return 0
      fi
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    say "redis-server could not start on port $REDIS_PORT (attempt $attempt); another port"
  done
  say "redis-server did not start; its last log:"
  tail -n 20 "$OUT/redis.log"
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
    out = "fast lost %s, fast closed 4000: %s/%s, slow closed 4000: %s/%s, hub RSS max %s MiB" % (
        g("fast", "deliveries_of_clients_not_closed", "lost"), g("fast", "closed_4000"),
        g("fast", "clients"), g("slow", "closed_4000"), g("slow", "clients"),
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
start_hub mem
MEM=(--url "ws://$HUB_ADDR" --http "http://$HUB_ADDR" --hub-pid "$HUB_PID")

run_scenario connect "${MEM[@]}" connect --n 200 --hold-s 1
run_scenario idle "${MEM[@]}" idle --n 200 --settle-s 0.5 --hold-s 1
run_scenario fanout "${MEM[@]}" fanout --subs 100 --rate 100 --duration 3 --drain-s 10

# Overload: 8 KB publications, so that the slow subscribers (which stop reading, with a 4 KiB
# receive buffer) fill the kernel's buffers (~3 MB per socket here) and then their hub-side
# bound within the few seconds and are closed with 4000; the fast ones must lose nothing.
#
# The fast ones must also never be taken for slow: each one's hub-side bound must hold what
# publishing can get ahead of a reader on a loaded machine. The reader is the load generator,
# and with 90 fast subscribers (216 MB/s to read) a debug build on a busy 2-core machine fell
# 1 MiB behind and one fast subscriber was closed with 4000 (reported then as 991 "lost").
# So: 20 subscribers (2 slow, 18 fast: 43 MB/s), a 4 MiB bound (1.7 s of publishing) and 6 s
# of publishing, so that a slow one (kernel buffers + bound, ~7 MB at 2.4 MB/s) is still
# closed well within the run. Release builds are fast enough for a tighter bound.
if [ "$PROFILE" = release ]; then
  OVL_QUEUE=1048576 OVL_DURATION=4
else
  OVL_QUEUE=4194304 OVL_DURATION=6
fi
start_hub overload HUB_CLIENT_QUEUE_BYTES=$OVL_QUEUE
run_scenario overload --url "ws://$HUB_ADDR" --http "http://$HUB_ADDR" \
  --hub-pid "$HUB_PID" overload --subs 20 --rate 300 --duration "$OVL_DURATION" --payload 8000 \
  --slow-fraction 0.1 --slow-rcvbuf 4096 --drain-s 10

# --- Redis engine --------------------------------------------------------------------------
start_redis
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

start_hub node-a HUB_REDIS_URL="$REDIS_URL" HUB_STREAMS=hub:events
A_PID=$HUB_PID A_ADDR=$HUB_ADDR
# Node B consumes another stream: with one node consuming hub:events, ingest must keep the
# stream's order.
start_hub node-b HUB_REDIS_URL="$REDIS_URL" HUB_STREAMS=bench:unused
B_ADDR=$HUB_ADDR

run_scenario ingest --url "ws://$A_ADDR" --hub-pid "$A_PID" \
  ingest --entries 2000 --subs 10 --redis-url "$REDIS_URL" --drain-s 20
run_scenario fanout-redis-1-node --url "ws://$A_ADDR" --http "http://$A_ADDR" \
  --hub-pid "$A_PID" fanout --subs 100 --rate 100 --duration 3 --drain-s 10
# Subscribers alternate between the nodes, publications alternate between their server APIs:
# every subscriber must see one gapless order whichever node it is on.
run_scenario fanout-redis-2-nodes \
  --url "ws://$A_ADDR,ws://$B_ADDR" \
  --http "http://$A_ADDR,http://$B_ADDR" --hub-pid "$A_PID" \
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
