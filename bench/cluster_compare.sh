#!/usr/bin/env bash
# CMQ cluster mode (3 hubs on one nats-server) vs NATS's own MQTT listener on the SAME
# nats-server process, same machine, same run, interleaved rounds (per round: CMQ cases, then
# NATS MQTT cases). No CPU pinning: 3 hubs + nats-server + the load generator do not split
# fairly over 2 cores, so the script reports CPU seconds instead.
#   bench/cluster_compare.sh [ROUNDS] [SECONDS] [WARMUP]   (defaults: 3 rounds, 10 s, 2 s)
# Env: CMQ (default target/release/cmq; not rebuilt), NATS_SERVER_BIN (default
# ~/.cache/cmq/bin/nats-server).
# Writes raw JSON lines to target/bench/cluster/results.jsonl, logs next to it, and a table
# to stdout (bench/cluster_summarize.py).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
warmup=${3:-2}
cmq=${CMQ:-target/release/cmq}
nats_bin=${NATS_SERVER_BIN:-$HOME/.cache/cmq/bin/nats-server}
out=target/bench/cluster
mkdir -p "$out"
: > "$out/results.jsonl"
rm -f "$out"/hub-r*.log "$out"/nats.log "$out"/bench-*.err
[ -x "$cmq" ] || { echo "no $cmq (build it first: cargo build --release -p cmq)" >&2; exit 1; }
[ -x "$nats_bin" ] || { echo "no nats-server at $nats_bin (scripts/install-nats.sh)" >&2; exit 1; }
hz=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/cmq-cluster-compare.XXXXXX)
support=dataplane/tests/support

pids=()         # everything this script started and has not stopped yet
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports (bindable on IPv4 loopback and the IPv6 wildcard, 20000-32000).
read -r -a ports <<<"$(python3 - "$support" $((3 + 6 * rounds)) <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from natsserver import free_port
print(" ".join(str(free_port()) for _ in range(int(sys.argv[2]))))
PY
)"
nats_port=${ports[0]} mon_port=${ports[1]} mqtt_port=${ports[2]}

http_status() { curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$1$2" || true; }

cpu_ticks() { # pids... -> utime+stime summed, in clock ticks
  local t=0 p s
  for p in "$@"; do
    # comm (field 2) has no spaces for cmq / nats-server
    s=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + s))
  done
  echo "$t"
}

# ---- nats-server: one process for the whole run, MQTT listener on -------------------------
cat > "$work/nats.conf" <<CONF
server_name: cmq_cluster_compare
listen: 127.0.0.1:$nats_port
http: 127.0.0.1:$mon_port
jetstream { store_dir: "$work/js" }
mqtt { listen: 127.0.0.1:$mqtt_port }
CONF
"$nats_bin" -c "$work/nats.conf" >"$out/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
for _ in $(seq 100); do
  [ "$(http_status "$mon_port" '/healthz?js-enabled-only=true')" = 200 ] &&
    (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break
  kill -0 "$nats_pid" 2>/dev/null || { cat "$out/nats.log" >&2; exit 1; }
  sleep 0.1
done
[ "$(http_status "$mon_port" '/healthz?js-enabled-only=true')" = 200 ] ||
  { echo "nats-server not healthy" >&2; exit 1; }
echo "nats-server $("$nats_bin" --version) pid $nats_pid: nats :$nats_port, mqtt :$mqtt_port" >&2

# ---- hubs ------------------------------------------------------------------------------
hub_pids=()
targets=
start_hubs() { # round cluster
  local round=$1 cluster=$2 i port admin pid base=$((3 + 6 * ($1 - 1)))
  hub_pids=()
  targets=
  for i in 1 2 3; do
    port=${ports[base + 2 * (i - 1)]}
    admin=${ports[base + 2 * (i - 1) + 1]}
    RUST_LOG=warn "$cmq" hub --nats "nats://127.0.0.1:$nats_port" --cluster "$cluster" \
      --hub-id "h$i" --mqtt-listen "127.0.0.1:$port" --ws-listen off --coap-listen off \
      --admin-listen "127.0.0.1:$admin" >"$out/hub-r$round-h$i.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    hub_pids+=("$pid")
    targets+="${targets:+,}127.0.0.1:$port"
    for _ in $(seq 200); do
      [ "$(http_status "$admin" /readyz)" = 200 ] && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    [ "$(http_status "$admin" /readyz)" = 200 ] ||
      { echo "hub h$i not ready (log: $out/hub-r$round-h$i.log)" >&2; exit 1; }
  done
}

stop_hubs() {
  local p keep=()
  for p in "${hub_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${hub_pids[@]}"; do
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null && echo "hub $p needed SIGKILL" >&2
    wait "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    [[ " ${hub_pids[*]} " == *" $p "* ]] || keep+=("$p")
  done
  pids=("${keep[@]}")
  hub_pids=()
}

# JetStream bytes of the round's cluster, then delete its streams (KV buckets included), so
# every round starts from the same store.
drop_cluster_streams() { # cluster
  python3 - "$support" "$nats_port" "$mon_port" "$1" <<'PY'
import json, sys, urllib.request
sys.path.insert(0, sys.argv[1])
from natsserver import nats_request
port, mon, cluster = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with urllib.request.urlopen(f"http://127.0.0.1:{mon}/jsz?accounts=true&streams=true", timeout=5) as r:
    jsz = json.load(r)
streams = [s for a in jsz.get("account_details") or [] for s in a.get("stream_detail") or []
           if cluster in s.get("name", "")]
total = sum(int(s.get("state", {}).get("bytes", 0)) for s in streams)
msgs = sum(int(s.get("state", {}).get("messages", 0)) for s in streams)
for s in streams:
    nats_request(port, f"$JS.API.STREAM.DELETE.{s['name']}", b"", timeout=10)
print(f"cluster {cluster}: {len(streams)} streams, {msgs} messages, {total} bytes; deleted",
      file=sys.stderr)
PY
}

# ---- one case --------------------------------------------------------------------------
run_case() { # side round case bench-args...
  local side=$1 round=$2 case=$3
  shift 3
  local conn json h0 h1 n0 n1 w0 w1 bcpu
  # server CPU: the 3 hubs (empty on the NATS side: stopped) + nats-server
  if [ "$side" = cmq_cluster ]; then conn=(--targets "$targets"); else conn=(--port "$mqtt_port"); fi
  h0=$(cpu_ticks "${hub_pids[@]}")
  n0=$(cpu_ticks "$nats_pid")
  w0=$(date +%s.%N)
  TIMEFORMAT='%U %S'
  # bash `time` on the bench alone: its user+system CPU seconds (the load generator shares
  # the 2 cores with the servers)
  bcpu=$( { time timeout $((secs + warmup + 60)) "$cmq" bench "${conn[@]}" --json \
              --duration "$secs" --warmup "$warmup" --mqtt-version 4 "$@" \
              >"$work/bench.out" 2>>"$out/bench-$side.err"; } 2>&1 ) || true
  w1=$(date +%s.%N)
  h1=$(cpu_ticks "${hub_pids[@]}")
  n1=$(cpu_ticks "$nats_pid")
  json=$(grep '^{' "$work/bench.out" | tail -1 || true)
  [ -n "$json" ] || echo "  $side $case: no report (see $out/bench-$side.err)" >&2
  python3 - "$side" "$round" "$case" "$((h1 - h0))" "$((n1 - n0))" "$hz" "$w0" "$w1" \
    "$bcpu" "${json:-null}" >>"$out/results.jsonl" <<'PY'
import json, sys
side, rnd, case, hub_t, nats_t, hz, w0, w1, bcpu, rep = sys.argv[1:]
hz = int(hz)
bu, bs = (float(x) for x in bcpu.split()[-2:]) if bcpu.strip() else (None, None)
print(json.dumps({
    "side": side, "round": int(rnd), "case": case,
    "wall_s": round(float(w1) - float(w0), 3),
    "hubs_cpu_s": int(hub_t) / hz if side == "cmq_cluster" else 0.0,
    "nats_cpu_s": int(nats_t) / hz,
    "server_cpu_s": (int(hub_t) if side == "cmq_cluster" else 0) / hz + int(nats_t) / hz,
    "bench_cpu_s": None if bu is None else round(bu + bs, 2),
    "report": json.loads(rep),
}))
PY
  tail -1 "$out/results.jsonl" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
b = r["report"] or {}
print("  %-11s %-12s %10.0f/s p50 %s p99 %s us lost %s ooo %s err %s server CPU %.1fs bench CPU %ss"
      % (r["side"], r["case"], b.get("deliveries_per_s") or 0, b.get("latency_p50_us"),
         b.get("latency_p99_us"), b.get("lost"), b.get("out_of_order"), b.get("errors"),
         r["server_cpu_s"], r["bench_cpu_s"]), file=sys.stderr)'
  sleep 1
}

run_all_cases() { # side round
  # 4 publishers, 4 subscribers, 4 topics: connection i goes to hub i mod 3 and subscribers
  # connect first, so subscriber j is on hub j mod 3 and publisher j (same topic) on hub
  # (j + 4) mod 3: every message crosses hubs (with 3/3/3 each would stay on one hub).
  local flood=(--publishers 4 --subscribers 4 --topics 4 --payload 64 --inflight 500)
  # 1 publisher (hub 2), 1 subscriber (hub 1).
  local lat=(--publishers 1 --subscribers 1 --topics 1 --payload 64 --rate 2000)
  run_case "$1" "$2" qos0 "${flood[@]}" --qos 0 --topic-prefix "b$2/q0"
  run_case "$1" "$2" qos1 "${flood[@]}" --qos 1 --topic-prefix "b$2/q1"
  run_case "$1" "$2" latency_qos0 "${lat[@]}" --qos 0 --topic-prefix "b$2/l0"
  run_case "$1" "$2" latency_qos1 "${lat[@]}" --qos 1 --topic-prefix "b$2/l1"
}

tag=$(date +%H%M%S)
for round in $(seq "$rounds"); do
  cluster="cc${tag}r$round"
  echo "round $round: cmq_cluster ($cluster, 3 hubs)" >&2
  start_hubs "$round" "$cluster"
  run_all_cases cmq_cluster "$round"
  stop_hubs
  drop_cluster_streams "$cluster"
  echo "round $round: nats_mqtt" >&2
  run_all_cases nats_mqtt "$round"
done

echo "--- warnings/errors in hub logs (the anonymous-access warning left out):" >&2
grep -h -E 'WARN|ERROR' "$out"/hub-r*.log | grep -v 'anonymous clients are allowed' |
  sed 's/\x1b\[[0-9;]*m//g' | sort | uniq -c | sort -rn | head -20 >&2 || true
echo "--- [WRN]/[ERR] in the nats-server log:" >&2
grep -E '\[(WRN|ERR|FTL)\]' "$out/nats.log" | sed -E 's/^\[[0-9]+\] [0-9/]+ [0-9:.]+ //' |
  sort | uniq -c | sort -rn | head -20 >&2 || true
echo "--- JetStream streams left at the end (NATS MQTT's own):" >&2
curl -s -m 5 "http://127.0.0.1:$mon_port/jsz?accounts=true&streams=true" | python3 -c '
import json, sys
for a in json.load(sys.stdin).get("account_details") or []:
    for s in a.get("stream_detail") or []:
        st = s.get("state", {})
        print("  %s: %s messages, %s bytes" % (s["name"], st.get("messages"), st.get("bytes")))
' >&2 || true
python3 bench/cluster_summarize.py "$out/results.jsonl"
