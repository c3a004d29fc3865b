#!/usr/bin/env bash
# Runs one cargo-fuzz target for a fixed time on the stable toolchain.
#
#   fuzz/run.sh TARGET SECONDS [extra libFuzzer flags...]     TARGET: decode | connection
#
# Environment: SANITIZER (address | none, default address), NICE (default 10),
# CARGO_BUILD_JOBS (default 1). Run one target at a time: libFuzzer uses one core.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 TARGET SECONDS [libFuzzer flags...]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
target=$1
seconds=$2
shift 2
cd "$here"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p "corpus/$target" "artifacts/$target"
# cargo-fuzz passes nightly-only flags (-Zsanitizer=..., -Cpasses=sancov-module, ...);
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept them.
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
# The connection target writes inputs that leave a connection open here (hangs).
export CMQ_FUZZ_HANG_DIR="$here/artifacts/$target/hangs"
# libFuzzer's own per-input timeout; the connection harness reports hangs itself (2 s) and
# gives up on a connection after 30 s.
case "$target" in
    connection) timeout=60 ;;
    *) timeout=10 ;;
esac
# New corpus entries go to corpus/TARGET (ignored by git); seeds/TARGET is read only.
exec nice -n "${NICE:-10}" cargo fuzz run --sanitizer "${SANITIZER:-address}" "$target" \
    "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 "$@"
