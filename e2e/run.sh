#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# `make e2e`: the Tier-1 tests against the real control plane.
#
# Builds what the tests need outside the cluster's network namespace (the control plane from the
# Go module proxy, cached; every binary of the workspace with cargo), starts the
# cluster (e2e/controlplane/up.sh), runs the `#[ignore]`d cluster tests of the ferry-e2e crate
# inside the namespace, where the cluster's addresses are, and stops everything afterwards,
# whatever the outcome. FERRY_E2E_KEEP=1 leaves the cluster up for a look (stop it with
# `make cluster-down`). Extra arguments go to the test binary (e.g. a test name filter).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CARGO="${CARGO:-cargo}"

[[ $EUID -eq 0 ]] || { echo "e2e: network namespaces need root" >&2; exit 1; }

# One cluster per machine (the network namespace and the bridge are fixed names): a second run
# waits for the first instead of tearing its cluster down.
exec 9>"${TMPDIR:-/tmp}/ferry-e2e.lock"
if ! flock -n 9; then
  echo "e2e: another run holds ${TMPDIR:-/tmp}/ferry-e2e.lock; waiting for it" >&2
  flock 9
fi

bash e2e/controlplane/build.sh
# The sample apps' images (e2e/images.yaml) run from the samples' own dependency folders.
bash deploy/samples/demo.sh --deps
# Every binary: the kubelet and the test app, and what pods run (ferryd, ferry-operator).
"$CARGO" build --quiet --workspace --bins
"$CARGO" test --quiet -p ferry-e2e --no-run

stop() {
  local rc=$?
  if [[ "${FERRY_E2E_KEEP:-0}" == 1 ]]; then
    echo "e2e: FERRY_E2E_KEEP=1: the cluster stays up (make cluster-down stops it)" >&2
  else
    bash e2e/controlplane/down.sh || rc=1
  fi
  exit "$rc"
}
trap stop EXIT

bash e2e/controlplane/up.sh 9>&-
# Inside the namespace nothing can be downloaded: everything was built above.
ip netns exec ferry-e2e env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY \
  "$CARGO" test --offline -p ferry-e2e -- --ignored --test-threads=2 "$@" 9>&-
