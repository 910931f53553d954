#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# kubectl against the Tier-1 test cluster, run inside its network namespace with the admin
# kubeconfig (the cluster is only reachable from in there). `make kubectl ARGS='get pods -A'`.
#
#   e2e/controlplane/kubectl.sh get pods -A
#   = ip netns exec ferry-e2e <cache>/kubernetes/<version>/bin/kubectl --kubeconfig e2e/.run/kubeconfig get pods -A
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_root
if [[ ! -r "$KUBECONFIG_FILE" ]] || ! netns_exists "$NETNS"; then
  die "the cluster is not up (no $KUBECONFIG_FILE or netns $NETNS): run make cluster-up"
fi
exec ip netns exec "$NETNS" "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"
