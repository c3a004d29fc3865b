#!/usr/bin/env bash
# Installs a real Kubernetes control plane for the end-to-end tests, without Docker: etcd,
# kube-apiserver, kubectl and helm (kube-controller-manager, kube-scheduler and kwok, the
# fake kubelet, on request), built from the Go module proxy into a cache outside the repo:
#   ${CMQ_CACHE_DIR:-$HOME/.cache/cmq}/bin       the binaries (nats-server lives there too)
#   ${CMQ_CACHE_DIR:-$HOME/.cache/cmq}/go/{mod,build}   GOMODCACHE and GOCACHE
# A binary that already reports the pinned version is not rebuilt, so a warm machine takes
# about a second. Prints the bin directory as the LAST line of stdout, everything else goes
# to stderr:
#   BIN=$(scripts/install-k8s.sh | tail -n1)
#
# Pins (the module graph is tools/k8s/go.mod + go.sum, tools/k8s/helm/ for helm, tools/kwok/
# for kwok):
#   Kubernetes v1.36.3 (kube-apiserver, kubectl, ...), etcd v3.6.8 (the version
#   Kubernetes 1.36.3 pins in build/dependencies.yaml), helm v4.2.4, kwok v0.8.0.
# Environment:
#   CMQ_K8S_EXTRA="kube-controller-manager kube-scheduler kwok"  also build these (optional)
#   CMQ_CACHE_DIR                                                cache root (default ~/.cache/cmq)
# Needs Go >= 1.26 on PATH (only when something has to be built).
set -euo pipefail

K8S_VERSION=1.36.3
ETCD_VERSION=3.6.8
HELM_VERSION=4.2.4
KWOK_VERSION=0.8.0

repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${CMQ_CACHE_DIR:-$HOME/.cache/cmq}"
bin_dir="$cache/bin"

log() { printf 'install-k8s: %s\n' "$*" >&2; }

# has_version NAME: true when $bin_dir/NAME runs and reports the pinned version
has_version() {
  local b="$bin_dir/$1" out
  [ -x "$b" ] || return 1
  case "$1" in
    kube-apiserver | kube-controller-manager | kube-scheduler)
      out="$("$b" --version 2>/dev/null)" || return 1
      [ "$out" = "Kubernetes v$K8S_VERSION" ] ;;
    kubectl)
      out="$("$b" version --client 2>/dev/null)" || return 1
      grep -qx "Client Version: v$K8S_VERSION" <<<"$out" ;;
    etcd)
      out="$("$b" --version 2>/dev/null)" || return 1
      grep -qx "etcd Version: $ETCD_VERSION" <<<"$out" ;;
    helm)
      out="$("$b" version --template '{{.Version}}' 2>/dev/null)" || return 1
      [ "$out" = "v$HELM_VERSION" ] ;;
    kwok) # "kwok version v0.8.0 go1.26.8 (linux/amd64)"
      out="$("$b" --version 2>/dev/null)" || return 1
      [[ "$out" == "kwok version v$KWOK_VERSION "* ]] ;;
    *) return 1 ;;
  esac
}

wanted=(etcd kube-apiserver kubectl helm)
for extra in ${CMQ_K8S_EXTRA:-}; do
  case "$extra" in
    kube-controller-manager | kube-scheduler | kwok) wanted+=("$extra") ;;
    *) log "unknown CMQ_K8S_EXTRA entry: $extra"; exit 2 ;;
  esac
done

missing() {
  local n out=()
  for n in "${wanted[@]}"; do has_version "$n" || out+=("$n"); done
  printf '%s\n' "${out[@]}"
}

todo="$(missing)"
if [ -n "$todo" ]; then
  mkdir -p "$bin_dir"
  # one builder at a time (parallel test runners may all call this script)
  exec 9>"$cache/install-k8s.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  todo="$(missing)" # another process may have built them while we waited
fi

if [ -n "$todo" ]; then
  command -v go >/dev/null 2>&1 || { log "go not found on PATH; cannot build: $(echo $todo)"; exit 1; }
  export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
  export GOTOOLCHAIN=local CGO_ENABLED=0
  # -mod=readonly: build exactly what tools/k8s/go.sum pins, never edit go.mod
  export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
  go_minor="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  if [ -z "$go_minor" ] || [ "$go_minor" -lt 26 ]; then
    log "need Go >= 1.26, found $(go env GOVERSION)"; exit 1
  fi

  tmp="$(mktemp -d "$bin_dir/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  started=$SECONDS

  k8s_pkgs=()
  build_etcd=0
  build_helm=0
  build_kwok=0
  for n in $todo; do
    case "$n" in
      etcd) build_etcd=1 ;;
      helm) build_helm=1 ;;
      kwok) build_kwok=1 ;;
      *) k8s_pkgs+=("k8s.io/kubernetes/cmd/$n") ;;
    esac
  done

  # Kubernetes: the same version stamping as upstream hack/lib/version.sh, so /version and
  # `kubectl version` report v1.36.3 (unstamped builds say v0.0.0-master+$Format:%H$).
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  ldx=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldx+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldx+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done

  # kube-* and etcd come from one module graph (tools/k8s), which is Kubernetes 1.36.3's own
  # go.mod plus the staging-module replaces, so etcd shares its dependency versions.
  if [ "${#k8s_pkgs[@]}" -gt 0 ] || [ "$build_etcd" = 1 ]; then
    pkgs=("${k8s_pkgs[@]}")
    [ "$build_etcd" = 1 ] && pkgs+=(go.etcd.io/etcd/server/v3)
    log "building ${pkgs[*]} (cold: ~12 min on 2 cores)"
    (cd "$repo/tools/k8s" && nice -n 10 go build -ldflags="-s -w$ldx" -o "$tmp/" "${pkgs[@]}") >&2
    # the etcd server package is go.etcd.io/etcd/server/v3, so `go build` names it "server"
    [ "$build_etcd" = 1 ] && mv "$tmp/server" "$tmp/etcd"
  fi
  if [ "$build_helm" = 1 ]; then
    log "building helm v$HELM_VERSION"
    (cd "$repo/tools/k8s/helm" && nice -n 10 go build \
      -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=v$HELM_VERSION" \
      -o "$tmp/helm" helm.sh/helm/v4/cmd/helm) >&2
  fi
  if [ "$build_kwok" = 1 ]; then
    # its own module too (k8s.io/* v0.36.1, no replaces); the version is a source constant
    log "building kwok v$KWOK_VERSION (cold: ~3 min on 2 cores)"
    (cd "$repo/tools/kwok" && nice -n 10 go build -ldflags="-s -w" \
      -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok) >&2
  fi

  # move each into place by rename, so a concurrent reader never sees a half-written binary
  for n in $todo; do
    chmod +x "$tmp/$n"
    mv -f "$tmp/$n" "$bin_dir/$n"
    has_version "$n" || { log "$bin_dir/$n does not report the pinned version"; exit 1; }
  done
  log "built $(echo $todo) in $((SECONDS - started)) s"
fi

extras=""
case " ${wanted[*]} " in *" kwok "*) extras=", kwok v$KWOK_VERSION" ;; esac
log "$("$bin_dir/kube-apiserver" --version), etcd $ETCD_VERSION, helm v$HELM_VERSION$extras in $bin_dir"
printf '%s\n' "$bin_dir"
