#!/usr/bin/env bash
# CMQ standalone vs Mosquitto, same machine, same run, interleaved rounds. Each broker
# starts fresh for each case, pinned to core 0; `cmq bench` runs pinned to core 1.
#   bench/compare.sh [ROUNDS] [SECONDS]     (defaults: 3 rounds, 10 s per case)
# Writes raw JSON lines to target/bench/results.jsonl and a table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
out=target/bench
mkdir -p "$out"
: > "$out/results.jsonl"

command -v mosquitto >/dev/null || { apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null; }
cargo build --release -p cmq --bin cmq >/dev/null
cmq=target/release/cmq
port=18900

cat > "$out/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 1000
CONF

start_broker() { # name -> prints pid
  case "$1" in
    cmq) taskset -c 0 "$cmq" standalone --mqtt-listen 127.0.0.1:$port --ws-listen off --coap-listen off \
           --admin-listen off >"$out/cmq.log" 2>&1 & ;;
    mosquitto) taskset -c 0 mosquitto -c "$out/mosquitto.conf" >"$out/mosquitto.log" 2>&1 & ;;
  esac
  local pid=$!
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
  echo "$pid"
}

run_case() { # broker case args...
  local broker=$1 case=$2; shift 2
  local pid
  pid=$(start_broker "$broker")
  local json
  json=$(taskset -c 1 "$cmq" bench --port $port --broker-pid "$pid" --json "$@" 2>/dev/null | tail -1 || true)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "{\"broker\":\"$broker\",\"case\":\"$case\",\"report\":${json:-null}}" >> "$out/results.jsonl"
  sleep 0.5
}

for round in $(seq "$rounds"); do
  for broker in cmq mosquitto; do
    echo "round $round: $broker" >&2
    run_case "$broker" qos0 --publishers 8 --subscribers 8 --topics 8 --qos 0 --payload 64 \
      --inflight 500 --duration "$secs"
    run_case "$broker" qos1 --publishers 8 --subscribers 8 --topics 8 --qos 1 --payload 64 \
      --inflight 500 --duration "$secs"
    run_case "$broker" latency_qos0 --publishers 1 --subscribers 1 --topics 1 --qos 0 \
      --payload 64 --rate 5000 --duration "$secs"
    run_case "$broker" latency_qos1 --publishers 1 --subscribers 1 --topics 1 --qos 1 \
      --payload 64 --rate 5000 --duration "$secs"
    run_case "$broker" idle_10k --mode idle --connections 10000 --connect-rate 5000 --hold 2
  done
done
python3 bench/summarize.py "$out/results.jsonl"
