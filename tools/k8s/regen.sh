#!/usr/bin/env bash
# Regenerates tools/k8s/go.mod + go.sum (kube-apiserver, kubectl, kube-controller-manager,
# kube-scheduler, etcd) and tools/k8s/helm/go.mod + go.sum (helm) for new pins. Run it by
# hand after changing the versions below AND the matching pins in scripts/install-k8s.sh;
# commit the four files. Normal builds (scripts/install-k8s.sh) never edit them.
#
# Why a wrapper module: k8s.io/kubernetes requires its staging modules (k8s.io/api,
# k8s.io/client-go, ...) at the non-existent version v0.0.0 and replaces them with
# ./staging/... paths, so `go install k8s.io/kubernetes/cmd/kube-apiserver@v1.X.Y` refuses.
# The main module has to replace each staging module with its published v0.X.Y tag. The
# staging list changes between minors, so it is read from the go.mod that the proxy serves.
# etcd's server module has ../ replaces too, so it is built from here as well, at the
# version Kubernetes pins (build/dependencies.yaml), sharing Kubernetes' dependency versions.
# helm gets a module of its own: adding it here would raise grpc, otel, x/net, ... under
# kube-apiserver and etcd.
set -euo pipefail
K8S_VERSION=1.36.3
ETCD_VERSION=3.6.8
HELM_VERSION=4.2.4

cd "$(dirname "$0")"
cache="${CMQ_CACHE_DIR:-$HOME/.cache/cmq}"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

rm -f go.mod go.sum helm/go.mod helm/go.sum
go mod init cmq/tools/k8s
gomod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
staging="v0.${K8S_VERSION#1.}" # 1.36.3 -> v0.36.3
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$gomod"); do
  go mod edit "-replace=$m=$m@$staging"
done
go mod edit "-go=$(sed -n 's/^go[[:space:]]\{1,\}\([0-9.]*\).*/\1/p' "$gomod")"
gd="$(sed -n 's/^godebug[[:space:]]\{1,\}default=\(go[0-9.]*\).*/\1/p' "$gomod" | head -1)"
[ -z "$gd" ] || go mod edit "-godebug=default=$gd"
go get -tool \
  "k8s.io/kubernetes/cmd/kube-apiserver@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kubectl@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@v$K8S_VERSION" \
  "k8s.io/kubernetes/cmd/kube-scheduler@v$K8S_VERSION" \
  "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"

(cd helm && go mod init cmq/tools/k8s/helm && go mod edit -go=1.26.0 && go get -tool "helm.sh/helm/v4/cmd/helm@v$HELM_VERSION")
echo "regenerated tools/k8s/go.mod, go.sum, helm/go.mod, helm/go.sum" >&2
