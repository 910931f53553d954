# shellcheck shell=bash source-path=SCRIPTDIR disable=SC2034 # the constants are used by the scripts that source this
# Shared constants and helpers of the Tier-1 cluster scripts (up.sh, down.sh, kubectl.sh).
# Sourced, never run. The values that other programs need (the kubelet, the Rust tests) are also
# written by up.sh to e2e/.run/cluster.env; read them there, not here.

CP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" # e2e/controlplane
# shellcheck source=versions.env
source "$CP_DIR/versions.env"
E2E_DIR="$(dirname "$CP_DIR")"                            # e2e
RUN_DIR="$E2E_DIR/.run"                                    # git-ignored runtime state
PKI_DIR="$RUN_DIR/pki"      # kept by down.sh, reused by up.sh while valid
LOG_DIR="$RUN_DIR/logs"     # kept by down.sh (post-mortem), truncated by the next up.sh
PID_DIR="$RUN_DIR/pids"
ETCD_DATA="$RUN_DIR/etcd"   # wiped by down.sh: every up.sh starts from an empty etcd
KUBECONFIG_FILE="$RUN_DIR/kubeconfig"
KCM_KUBECONFIG="$RUN_DIR/controller-manager.kubeconfig"
CLUSTER_ENV="$RUN_DIR/cluster.env"
STAMP_FILE="$RUN_DIR/stamp" # which scripts/versions started the running cluster

CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
K8S_BIN="$CACHE/kubernetes/$K8S_VERSION/bin"
ETCD_BIN="$CACHE/etcd/$ETCD_VERSION/bin/etcd"
HELM_BIN="$CACHE/helm/$HELM_VERSION/bin/helm"
KUBECTL="$K8S_BIN/kubectl"
# The process kubelet (crate ferry-e2e), built by cargo: `make cluster-up` builds it first.
KUBELET_BIN="${CARGO_TARGET_DIR:-$(dirname "$E2E_DIR")/target}/debug/ferry-kubelet"
NODE_NAME=ferry-node

# The network. The cluster namespace holds `lo` and a bridge for the pods, nothing else: no
# uplink, no default route. Pod namespaces (made by the process kubelet) are named ferry-pod-*.
NETNS=ferry-e2e
POD_NETNS_PREFIX=ferry-pod-
BRIDGE=ferry-br0
POD_CIDR=10.88.0.0/16
BRIDGE_IP=10.88.0.1         # first address of POD_CIDR; pods use it as gateway and API address
POD_PREFIX_LEN=16
SERVICE_CIDR=10.96.0.0/16
SERVICE_FIRST_IP=10.96.0.1  # the `kubernetes` Service's ClusterIP (only named in the cert: no kube-proxy)
CLUSTER_DOMAIN=cluster.local
APISERVER_PORT=6443
APISERVER_URL="https://$BRIDGE_IP:$APISERVER_PORT"
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
KCM_PORT=10257
SA_ISSUER="https://kubernetes.default.svc.$CLUSTER_DOMAIN"

COMPONENTS=(etcd kube-apiserver kube-controller-manager ferry-kubelet) # start order

if [[ "$RUN_DIR" =~ [[:space:]] ]]; then
  echo "the repository path must not contain whitespace: $RUN_DIR" >&2
  exit 1
fi

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
  [[ $EUID -eq 0 ]] || die "network namespaces need root; run as root"
  command -v ip >/dev/null || die "ip (iproute2) is not installed"
}

# Commands run inside the cluster namespace. Proxy variables are dropped: every address in there
# is local, and a proxy would be unreachable anyway.
UNPROXIED=(env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY
  -u no_proxy -u NO_PROXY)
in_ns() { ip netns exec "$NETNS" "${UNPROXIED[@]}" "$@"; }

# Serialises up.sh and down.sh on e2e/.run/lock. up.sh passes FERRY_E2E_LOCK_HELD to the down.sh
# it runs itself. The lock is on fd 9, which the cluster's processes must not inherit.
take_lock() {
  [[ "${FERRY_E2E_LOCK_HELD:-}" == "$RUN_DIR" ]] && return 0
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/lock"
  flock -w 300 9 || die "another up.sh or down.sh still holds $RUN_DIR/lock after 300s"
}

netns_exists() { [[ -e "/run/netns/$1" ]]; }

# The binary a component runs, for checking that a pid file still names that process.
component_bin() {
  case $1 in
    etcd) echo "$ETCD_BIN" ;;
    kube-apiserver | kube-controller-manager) echo "$K8S_BIN/$1" ;;
    ferry-kubelet) readlink -f "$KUBELET_BIN" ;;
    *) return 1 ;;
  esac
}

# Prints the pid of a running component, or fails. A pid is trusted only if its executable is the
# component's binary, so a stale pid file never names an unrelated process that reused the pid.
component_pid() {
  local f="$PID_DIR/$1.pid" pid exe
  [[ -r "$f" ]] || return 1
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ "$exe" == "$(component_bin "$1")" ]] || return 1
  [[ "$(proc_field "$pid" 1)" != Z ]] || return 1
  echo "$pid"
}

# proc_field PID N: field N (1 = state, 2 = ppid) of /proc/PID/stat after the command name, which
# may itself contain spaces and parentheses.
proc_field() {
  local stat fields
  { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
  read -r -a fields <<<"${stat##*) }"
  echo "${fields[$2 - 1]}"
}

# This shell and its ancestors: never signalled, even when a script runs inside the namespace.
self_and_ancestors() {
  local p=$$
  while [[ -n "$p" && "$p" != 0 ]]; do
    echo "$p"
    [[ "$p" == 1 ]] && break
    p=$(proc_field "$p" 2) || break
  done
}

# Whether PID is this shell or one of its descendants (its subshells, its commands).
is_own() {
  local p=$1
  while [[ -n "$p" && "$p" != 0 && "$p" != 1 ]]; do
    [[ "$p" == "$$" ]] && return 0
    p=$(proc_field "$p" 2) || return 1
  done
  return 1
}

# The fingerprint of what a running cluster was started with: when the scripts or the versions
# change, up.sh restarts the cluster instead of calling it healthy.
stamp() {
  cat "$CP_DIR/versions.env" "$CP_DIR/common.sh" "$CP_DIR/up.sh" | sha256sum | cut -d' ' -f1
}
