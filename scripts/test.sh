#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit/property/component tests, and the
# protocol tests that drive a running `cmq standalone` with clients written by others
# (Python paho-mqtt, mosquitto_pub/mosquitto_sub). Installs those clients when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "installing test clients when missing"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace

step "protocol tests (paho-mqtt, mosquitto clients) against cmq standalone"
cargo build -p cmq --bin cmq
export CMQ_BIN="$PWD/target/debug/cmq"
cd dataplane/tests/protocol
set +e
python3 -m pytest -p no:cacheprovider -q --broker=cmq
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no protocol tests were collected" >&2
  exit 1
fi
exit "$status"
