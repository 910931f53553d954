#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# `make bench-resolver`: resolver scale of kubernetes-mode ferryd on the Tier-1 cluster (issue 8,
# item 4): a namespace of 10,000 endpoints across 1,000 apps; ferryd's memory per watched endpoint
# and the time an endpoint change takes to reach it. Writes bench/results/resolver.md (and .json,
# logs in bench/results/resolver/) and replaces the "Resolver scale" section of BENCHMARKS.md in
# place; `make bench` runs it after its own tables when it can, and keeps the section otherwise.
#
# Builds ferryd and ferry-bench (release) and the process kubelet outside the cluster's network
# namespace, takes the machine-wide cluster lock (waiting for a run that holds it, as
# e2e/run.sh does), starts the cluster (e2e/controlplane/up.sh), runs `ferry-bench resolver`
# inside the namespace, and stops the cluster afterwards, whatever the outcome. Needs root.
# Arguments go to `ferry-bench resolver` (see `ferry-bench resolver --help`); another scale than
# the default writes bench/results/resolver.trial.md and leaves BENCHMARKS.md alone.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CARGO="${CARGO:-cargo}"
target="${CARGO_TARGET_DIR:-$root/target}"

[[ $EUID -eq 0 ]] || { echo "bench-resolver: the cluster's network namespaces need root" >&2; exit 1; }

bash e2e/controlplane/build.sh
"$CARGO" build --quiet --release -p ferry-sidecar -p ferry-bench
# up.sh starts the process kubelet (a debug build, as `make cluster-up` makes it).
"$CARGO" build --quiet -p ferry-e2e --bin ferry-kubelet

# One cluster per machine (the network namespace and the bridge are fixed names): wait for a
# run that holds it instead of tearing its cluster down.
exec 9>"${TMPDIR:-/tmp}/ferry-e2e.lock"
if ! flock -n 9; then
  echo "bench-resolver: another run holds ${TMPDIR:-/tmp}/ferry-e2e.lock; waiting for it" >&2
  flock 9
fi

stop() {
  local rc=$?
  bash e2e/controlplane/down.sh || rc=1
  exit "$rc"
}
trap stop EXIT

bash e2e/controlplane/up.sh 9>&-
ip netns exec ferry-e2e env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY \
  "$target/release/ferry-bench" resolver "$@" 9>&-
