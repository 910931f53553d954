#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the Tier-1 control plane from the Go module proxy into a cache outside the repo:
#   kube-apiserver, kube-controller-manager, kubectl (Kubernetes), etcd, helm.
# Binaries land in ${FERRY_CACHE:-~/.cache/ferry}/<tool>/<version>/bin and are reused when present.
#
# k8s.io/kubernetes and etcd's server module cannot be `go install`ed: their go.mod files replace
# sibling modules with local paths. We build them from a wrapper module (made in the cache) that
# requires the upstream module and replaces each of those siblings with its published version,
# reading the list from the upstream go.mod itself.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[build] %s\n' "$*" >&2; }

have() { # have DIR BIN... : every binary exists and is executable
  local dir=$1; shift
  local b
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# The path of a module's go.mod in the module cache (downloads it if needed).
upstream_gomod() {
  go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'
}

# A fresh wrapper module in $1 that uses the upstream module's godebug defaults (from go.mod $2).
wrapper() {
  local dir=$1 gomod=$2
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir" && go mod init ferry-build.invalid >/dev/null 2>&1)
  local godebug
  godebug=$(sed -n 's/^godebug[[:space:]]\{1,\}\(default=[^[:space:]]*\).*/\1/p' "$gomod" | head -n1)
  if [[ -n "$godebug" ]]; then (cd "$dir" && go mod edit -godebug="$godebug"); fi
}

build_kubernetes() {
  local v=$K8S_VERSION minor staging
  local out="$CACHE/kubernetes/$v/bin"
  if have "$out" kube-apiserver kube-controller-manager kubectl; then
    log "kubernetes $v: cached in $out"
    return
  fi
  log "kubernetes $v: building (this takes a while the first time)"
  minor=$(cut -d. -f2 <<<"$v")
  staging="v0.${v#v1.}"
  local src="$CACHE/kubernetes/$v/src" gomod
  gomod=$(upstream_gomod "k8s.io/kubernetes@$v")
  wrapper "$src" "$gomod"
  # Every `k8s.io/X => ./staging/src/k8s.io/X` becomes `k8s.io/X => k8s.io/X v0.MINOR.PATCH`.
  local mods
  mods=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod")
  [[ -n "$mods" ]] || { log "no staging replaces found in $gomod"; exit 1; }
  local m args=()
  for m in $mods; do args+=("-replace=$m=$m@$staging"); done
  (cd "$src" && go mod edit "${args[@]}")
  local pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
  (cd "$src" && go get -tool "${pkgs[@]/%/@$v}")
  local date ldflags="-s -w" p
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitCommit=ferry-build-$v -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  mkdir -p "$out.tmp"
  (cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" "${pkgs[@]}")
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "kubernetes $v: built into $out"
}

build_etcd() {
  local v=$ETCD_VERSION out="$CACHE/etcd/$ETCD_VERSION/bin"
  if have "$out" etcd; then
    log "etcd $v: cached in $out"
    return
  fi
  log "etcd $v: building"
  local src="$CACHE/etcd/$v/src" gomod
  gomod=$(upstream_gomod "go.etcd.io/etcd/server/v3@$v")
  wrapper "$src" "$gomod"
  # server/v3 replaces its siblings (api, client/pkg, client/v3, pkg) with ../ paths; they are all
  # published at the same version.
  local mods m args=()
  mods=$(sed -n 's#^[[:space:]]*\(go\.etcd\.io/etcd/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\.\./.*#\1#p' "$gomod")
  for m in $mods; do args+=("-replace=$m=$m@$v"); done
  if ((${#args[@]})); then (cd "$src" && go mod edit "${args[@]}"); fi
  (cd "$src" && go get -tool "go.etcd.io/etcd/server/v3@$v")
  mkdir -p "$out.tmp"
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "etcd $v: built into $out"
}

build_helm() {
  local v=$HELM_VERSION out="$CACHE/helm/$HELM_VERSION/bin"
  if have "$out" helm; then
    log "helm $v: cached in $out"
    return
  fi
  log "helm $v: building"
  local minor
  minor=$(cut -d. -f2 <<<"$K8S_VERSION")
  # Without these, helm assumes Kubernetes v1.20 for `template` and `lint`.
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$v"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  mkdir -p "$out.tmp"
  GOBIN="$out.tmp" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$v"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "helm $v: built into $out"
}

command -v go >/dev/null || { log "go is not installed; the Tier-1 control plane needs it"; exit 1; }
build_etcd
build_helm
build_kubernetes
log "done: $CACHE"
