#!/usr/bin/env bash
# CoAP publish requests per second one hub sustains: `cmq standalone` pinned to core 0,
# the load (dataplane/examples/coap_load.rs: each "device" a UDP socket, CON with one
# request outstanding per device as NSTART 1 allows, or NON with a window of 16) pinned to
# core 1; requests answered with 2.04 per second, and the hub's CPU per request. The same
# over DTLS (dtls-con, dtls-non: one PSK session per device, handshakes before the window).
#
#   bench/coap_rate.sh [rounds=3] [seconds=10] [devices=64]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"; seconds="${2:-10}"; devices="${3:-64}"
cargo build -q --release -p cmq --bin cmq --example coap_load
cmq=target/release/cmq
load=target/release/examples/coap_load
port=25683
dtls_port=25684
manifests=$(mktemp -d)
trap 'rm -rf "$manifests"' EXIT
cat > "$manifests/load.yaml" <<'EOF'
apiVersion: v1
kind: Secret
metadata: {name: load-psk}
stringData: {psk: load-key}
---
apiVersion: cmq.io/v1alpha1
kind: DeviceCredential
metadata: {name: load}
spec:
  clusterRef: bench
  psk: {identity: load, secretRef: {name: load-psk}}
EOF
for round in $(seq 1 "$rounds"); do
  for mode in con non dtls-con dtls-non; do
    target="127.0.0.1:$port"
    [[ $mode == dtls-* ]] && target="127.0.0.1:$dtls_port"
    # Anonymous plain-UDP devices stay allowed next to the PSK credential.
    taskset -c 0 "$cmq" standalone --mqtt-listen 127.0.0.1:21883 --ws-listen off \
      --admin-listen off --coap-listen "127.0.0.1:$port" --coaps-listen "127.0.0.1:$dtls_port" \
      --manifests "$manifests" --allow-anonymous true >/dev/null 2>&1 &
    pid=$!
    sleep 1
    cpu0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    out=$(taskset -c 1 "$load" "$target" "$mode" "$devices" "$seconds" 16)
    cpu1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    ticks=$(getconf CLK_TCK)
    echo "round $round $out hub_cpu_s=$(echo "scale=2; ($cpu1-$cpu0)/$ticks" | bc)"
  done
done
