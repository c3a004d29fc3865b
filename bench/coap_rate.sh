#!/usr/bin/env bash
# CoAP publish requests per second one hub sustains: `cmq standalone` pinned to core 0,
# the load (dataplane/examples/coap_load.rs: each "device" a UDP socket, CON with one
# request outstanding per device as NSTART 1 allows, or NON with a window of 16) pinned to
# core 1; requests answered with 2.04 per second, and the hub's CPU per request.
#
#   bench/coap_rate.sh [rounds=3] [seconds=10] [devices=64]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"; seconds="${2:-10}"; devices="${3:-64}"
cargo build -q --release -p cmq --bin cmq --example coap_load
cmq=target/release/cmq
load=target/release/examples/coap_load
port=25683
for round in $(seq 1 "$rounds"); do
  for mode in con non; do
    taskset -c 0 "$cmq" standalone --mqtt-listen 127.0.0.1:21883 --ws-listen off \
      --admin-listen off --coap-listen "127.0.0.1:$port" >/dev/null 2>&1 &
    pid=$!
    sleep 1
    cpu0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    out=$(taskset -c 1 "$load" "127.0.0.1:$port" "$mode" "$devices" "$seconds" 16)
    cpu1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    ticks=$(getconf CLK_TCK)
    echo "round $round $out hub_cpu_s=$(echo "scale=2; ($cpu1-$cpu0)/$ticks" | bc)"
  done
done
