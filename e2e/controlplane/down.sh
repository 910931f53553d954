#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops Ferry's Tier-1 test cluster and everything that runs in its network namespaces. Needs root.
# `make cluster-down` runs it; it is safe to run when nothing (or only part of the cluster) is up,
# and after a failed test.
#
#   e2e/controlplane/down.sh
#
# 1. SIGTERM, and SIGKILL after FERRY_E2E_STOP_GRACE seconds (default 5), to the components
#    up.sh started (pids in e2e/.run/pids, each checked against its binary so a reused pid is
#    never hit) and to every other process inside netns ferry-e2e (the process kubelet, test
#    helpers) and inside every pod netns ferry-pod-* (the containers), found with `ip netns pids`;
#    etcd last. This shell and its ancestors are spared (and named) if it runs inside one of them;
# 2. deletes the ferry-pod-* namespaces (with their veths) and ferry-e2e (with the bridge);
# 3. removes etcd's data, the pid files, the kubeconfigs, cluster.env. It keeps e2e/.run/pki
#    (reused by up.sh while valid), e2e/.run/logs (for a post-mortem) and the binary cache.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GRACE="${FERRY_E2E_STOP_GRACE:-5}"

alive() { # alive PID: exists and is not a zombie
  local st
  st=$(proc_field "$1" 1) || return 1
  [[ -n "$st" && "$st" != Z ]]
}

# terminate PID...: SIGTERM, wait up to GRACE seconds, SIGKILL what is left, wait for it to go.
terminate() {
  (($#)) || return 0
  local pid left=() deadline
  kill -TERM "$@" 2>/dev/null || true
  deadline=$((SECONDS + GRACE))
  while :; do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    ((${#left[@]})) || return 0
    ((SECONDS < deadline)) || break
    sleep 0.1
  done
  log "killing (SIGKILL) ${left[*]}"
  kill -KILL "${left[@]}" 2>/dev/null || true
  for _ in {1..50}; do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    ((${#left[@]})) || return 0
    sleep 0.1
  done
  log "warning: still alive after SIGKILL: ${left[*]}"
}

# Every ferry netns: the cluster's and the pods'.
our_netns() {
  netns_exists "$NETNS" && echo "$NETNS"
  ip netns list 2>/dev/null | awk -v p="$POD_NETNS_PREFIX" 'index($1, p) == 1 {print $1}'
}

need_root
take_lock
mapfile -t spare < <(self_and_ancestors)
while read -r ns; do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do
    if printf '%s\n' "${spare[@]}" | grep -qx "$pid"; then
      log "warning: not killing pid $pid ($(ps -o comm= -p "$pid")) in netns $ns: it is this script or its caller"
    fi
  done
done < <(our_netns)

# Every process in our namespaces except this script, its ancestors and its descendants and,
# with `keep-etcd` as argument, etcd (it goes last: the apiserver shuts down cleanly only while
# etcd answers).
ns_pids() {
  local ns pid etcd_pid=""
  [[ "${1:-}" != keep-etcd ]] || etcd_pid=$(component_pid etcd) || true
  while read -r ns; do
    [[ -n "$ns" ]] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      [[ "$pid" != "$etcd_pid" ]] || continue
      printf '%s\n' "${spare[@]}" | grep -qx "$pid" && continue
      is_own "$pid" && continue
      alive "$pid" && echo "$pid" # (short-lived commands of this script are gone by now)
    done
  done < <(our_netns)
}

describe() { # describe PID...: "kube-apiserver (1), sleep (3)"
  ps -o comm= -p "$(IFS=,; echo "$*")" | sort | uniq -c | awk '{printf "%s%s (%s)", sep, $2, $1; sep=", "}'
}

# 1. Everything but etcd, at once: the components up.sh started (checked against their pid files
#    even if, somehow, they were outside the namespace), the process kubelet, the pods' processes.
#    kube-apiserver takes about 3 s to drain; the controller-manager about 2 s.
pids=()
for c in kube-controller-manager kube-apiserver; do
  if pid=$(component_pid "$c"); then pids+=("$pid"); fi
done
mapfile -t -O "${#pids[@]}" pids < <(ns_pids keep-etcd)
if ((${#pids[@]})); then mapfile -t pids < <(printf '%s\n' "${pids[@]}" | sort -un); fi
if ((${#pids[@]})); then
  log "stopping $(describe "${pids[@]}")"
  terminate "${pids[@]}"
fi

# 2. etcd, then whatever is left or new (a dying kubelet may just have started a pod).
if pid=$(component_pid etcd); then
  log "stopping etcd (pid $pid)"
  terminate "$pid"
fi
for _ in 1 2 3; do
  mapfile -t pids < <(ns_pids)
  ((${#pids[@]})) || break
  log "stopping what is left: $(describe "${pids[@]}")"
  terminate "${pids[@]}"
done

# 3. The namespaces. Pod namespaces first: their veths hang on the cluster's bridge.
while read -r ns; do
  [[ -n "$ns" && "$ns" != "$NETNS" ]] || continue
  ip netns del "$ns" && log "deleted netns $ns"
done < <(our_netns)
if netns_exists "$NETNS"; then
  ip netns del "$NETNS" && log "deleted netns $NETNS"
fi

# 4. Runtime state, except the PKI and the logs.
rm -rf "$ETCD_DATA" "$PID_DIR" "$CLUSTER_ENV" "$KUBECONFIG_FILE" "$KCM_KUBECONFIG" "$STAMP_FILE"

remaining=$(our_netns)
[[ -z "$remaining" ]] || die "namespaces still present: $remaining"
log "cluster down"
