#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit/property/component tests, the
# protocol tests that drive a running `cmq standalone` with clients written by others
# (Python paho-mqtt, mosquitto_pub/mosquitto_sub), the same protocol tests against
# `cmq hub` on NATS JetStream state, the access tests (credentials, ACLs, TLS) in both
# modes, the CoAP gateway tests (libcoap and aiocoap clients) in both modes, the cluster
# tests (several `cmq hub` processes on one nats-server), the dispatch
# tests (ForwardRules to a real Kafka broker in KRaft mode, NATS, HTTP, MQTT), and the
# operator's end-to-end tests against a real kube-apiserver (with the Helm chart). Installs
# the clients, nats-server, Kafka and the Kubernetes binaries (into ~/.cache/cmq) when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "installing test clients when missing"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "CRD drift check (crds/*.yaml equal what the types generate)"
cargo run -q -p cmq-crds --bin crdgen -- --check

step "cargo test"
cargo test --workspace

# run_suite NAME DIR PYTEST-ARGS...: runs one pytest suite, records a failure (exit status 5,
# "no tests collected", counts as one) and carries on, so one run reports every suite.
failed=()
run_suite() {
  local name="$1" dir="$2"
  shift 2
  local status=0
  (cd "$dir" && python3 -m pytest -p no:cacheprovider -q "$@") || status=$?
  if [ "$status" -eq 5 ]; then
    echo "no $name tests were collected" >&2
  fi
  if [ "$status" -ne 0 ]; then
    failed+=("$name (exit $status)")
  fi
}

step "protocol tests (paho-mqtt, mosquitto clients) against cmq standalone"
cargo build -p cmq --bin cmq
export CMQ_BIN="$PWD/target/debug/cmq"
run_suite "protocol (memory state)" dataplane/tests/protocol --broker=cmq

step "access tests (credentials, ACLs, TLS) against cmq standalone with a manifests folder"
run_suite "access (standalone)" dataplane/tests/access --mode=standalone

step "installing nats-server when missing"
NATS_SERVER_BIN="$(scripts/install-nats.sh | tail -n 1)"
export NATS_SERVER_BIN

step "protocol tests against cmq hub on NATS JetStream state"
run_suite "protocol (nats state)" dataplane/tests/protocol --broker=cmq --state=nats

step "access tests against cmq hub with the registry in NATS KV"
run_suite "access (cluster)" dataplane/tests/access --mode=cluster

step "CoAP tests (libcoap coap-client, aiocoap, raw datagrams) against cmq standalone and two cmq hubs"
run_suite "coap (standalone)" dataplane/tests/coap --mode=standalone
run_suite "coap (cluster)" dataplane/tests/coap --mode=cluster

step "cluster tests: several cmq hub processes on one nats-server and on a 3-node NATS cluster"
run_suite "cluster" dataplane/tests/cluster --run-nats-cluster

step "installing Apache Kafka (KRaft, from its Maven jars) when missing"
KAFKA_HOME="$(scripts/install-kafka.sh | tail -n 1)"
export KAFKA_HOME

step "dispatch tests: ForwardRules to a real Kafka broker, NATS, HTTP and MQTT (standalone and cmq dispatch)"
run_suite "dispatch" dataplane/tests/dispatch

step "installing the Kubernetes control plane (etcd, kube-apiserver, kubectl, helm) when missing"
CMQ_K8S_BIN="$(CMQ_K8S_EXTRA="kube-controller-manager kube-scheduler kwok" scripts/install-k8s.sh | tail -n 1)"
export CMQ_K8S_BIN

step "operator e2e: CRDs, controllers, Helm chart against a real kube-apiserver, NATS and hubs"
cargo build -p cmq-operator --bin cmq-operator
run_suite "operator e2e" e2e/operator

if [ "${#failed[@]}" -gt 0 ]; then
  echo >&2
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\nall test suites passed\n'
