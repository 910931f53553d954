#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts Ferry's Tier-1 test cluster: etcd, kube-apiserver and kube-controller-manager as local
# processes inside the network namespace `ferry-e2e`, which has `lo` and a pod bridge and no route
# out of the machine. Needs root (network namespaces). `make cluster-up` runs it.
#
#   e2e/controlplane/up.sh        start the cluster, or say it is already up and healthy
#   e2e/controlplane/down.sh      stop it (see there)
#   e2e/controlplane/kubectl.sh   kubectl inside the namespace with the admin kubeconfig
#
# Idempotent: when the cluster is up and healthy (started by these same scripts and versions) it
# exits 0 at once; when it is partly up, it runs down.sh and starts afresh. If start-up fails it
# prints the failing component's log tail and runs down.sh, so no process is left behind
# (FERRY_E2E_KEEP_ON_FAILURE=1 leaves everything running for a look).
#
# Network (ferry-e2e): lo, and bridge ferry-br0 = 10.88.0.1/16 (the pod range; the process kubelet
# puts each pod in its own namespace ferry-pod-*, joined to the bridge by a veth pair). No other
# link, no default route. etcd (plain HTTP: it is reachable only inside the namespace) listens on
# 127.0.0.1:2379 and 10.88.0.1:2379; kube-apiserver on :6443 (all addresses of the namespace, that
# is 127.0.0.1 and 10.88.0.1). Services: 10.96.0.0/16, but no kube-proxy runs, so nothing uses
# ClusterIPs; pods reach the API at 10.88.0.1:6443.
#
# Everything lives in e2e/.run/ (git-ignored):
#   cluster.env        KEY=VALUE lines (no quotes) for the kubelet and the tests: FERRY_E2E_*
#   kubeconfig         admin (CN=ferry-admin, O=system:masters) -> https://10.88.0.1:6443, with the
#                      certificates embedded; use it inside the namespace:
#                      ip netns exec ferry-e2e kubectl --kubeconfig e2e/.run/kubeconfig get pods -A
#   pki/               CAs, certificates, service-account keys (kept across runs while valid)
#   logs/<c>.log, pids/<c>.pid  per component; etcd/ is etcd's data (wiped by down.sh)
#
# Environment: FERRY_CACHE (binary cache, default ~/.cache/ferry), FERRY_E2E_START_TIMEOUT
# (seconds per wait, default 120), FERRY_E2E_KEEP_ON_FAILURE.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TIMEOUT="${FERRY_E2E_START_TIMEOUT:-120}"
T0=$(date +%s.%N)

# The controllers of kube-controller-manager (1.36 names). Deployments, ReplicaSets, Services'
# EndpointSlices (and Endpoints), namespace deletion, the `default` ServiceAccount and tokens,
# garbage collection, kube-root-ca.crt in every namespace, and the aggregated admin/edit/view roles.
KCM_CONTROLLERS=deployment-controller,replicaset-controller,endpointslice-controller,endpoints-controller
KCM_CONTROLLERS+=,namespace-controller,serviceaccount-controller,serviceaccount-token-controller
KCM_CONTROLLERS+=,garbage-collector-controller,root-ca-certificate-publisher-controller
KCM_CONTROLLERS+=,clusterrole-aggregation-controller

elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- health --------------------------------------------------------------------------------------

# GET an API path as the admin user, from inside the namespace. Fails on HTTP errors.
api_get() {
  in_ns curl -fsS --max-time 5 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" \
    --key "$PKI_DIR/admin.key" "$APISERVER_URL$1"
}

healthy() {
  netns_exists "$NETNS" || return 1
  [[ -r "$STAMP_FILE" && "$(<"$STAMP_FILE")" == "$(stamp)" ]] || return 1
  [[ -r "$CLUSTER_ENV" && -r "$KUBECONFIG_FILE" ]] || return 1
  local c
  for c in "${COMPONENTS[@]}"; do component_pid "$c" >/dev/null || return 1; done
  ip -n "$NETNS" -o addr show dev "$BRIDGE" 2>/dev/null | grep -q " $BRIDGE_IP/$POD_PREFIX_LEN " || return 1
  [[ "$(api_get /readyz 2>/dev/null)" == ok ]] || return 1
  api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null 2>&1 || return 1
}

something_up() {
  netns_exists "$NETNS" && return 0
  ip netns list 2>/dev/null | grep -q "^$POD_NETNS_PREFIX" && return 0
  compgen -G "$PID_DIR/*.pid" >/dev/null
}

inside_cluster_netns() {
  netns_exists "$NETNS" &&
    [[ "$(stat -L -c %i /proc/self/ns/net)" == "$(stat -L -c %i "/run/netns/$NETNS")" ]]
}

# --- failure -------------------------------------------------------------------------------------

SUCCESS=0
on_exit() {
  local rc=$?
  ((SUCCESS)) && return
  log "start-up failed after $(elapsed)s (exit $rc)"
  if [[ "${FERRY_E2E_KEEP_ON_FAILURE:-0}" == 1 ]]; then
    log "FERRY_E2E_KEEP_ON_FAILURE=1: leaving everything as it is; stop it with down.sh"
  else
    FERRY_E2E_LOCK_HELD="$RUN_DIR" "$CP_DIR/down.sh" >&2 || true
  fi
}

# fail COMPONENT MESSAGE: prints the message and the tail of the component's log, then exits.
fail() {
  local c=$1; shift
  log "error: $*"
  if [[ "$c" == kube-apiserver ]] && component_pid "$c" >/dev/null; then
    log "failing /readyz checks:"
    in_ns curl -sS --max-time 5 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" \
      --key "$PKI_DIR/admin.key" "$APISERVER_URL/readyz?verbose" 2>&1 | grep -v '^\[+\]' | sed 's/^/    /' >&2 || true
  fi
  if [[ -s "$LOG_DIR/$c.log" ]]; then
    log "last lines of $LOG_DIR/$c.log:"
    tail -n 40 "$LOG_DIR/$c.log" | sed 's/^/    /' >&2
  fi
  exit 1
}

# wait_for COMPONENT WHAT COMMAND...: polls COMMAND until it succeeds, while the component lives.
wait_for() {
  local c=$1 what=$2; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    component_pid "$c" >/dev/null || fail "$c" "$c exited while waiting for $what"
    ((SECONDS < deadline)) || fail "$c" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.2
  done
}

# --- network -------------------------------------------------------------------------------------

setup_netns() {
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  # A fixed MAC: otherwise the bridge borrows one from a pod's veth and changes it when that pod
  # goes, cutting every other pod off from 10.88.0.1 until its ARP entry expires (about 30 s).
  ip -n "$NETNS" link add "$BRIDGE" address 02:42:0a:58:00:01 type bridge
  ip -n "$NETNS" addr add "$BRIDGE_IP/$POD_PREFIX_LEN" dev "$BRIDGE"
  ip -n "$NETNS" link set "$BRIDGE" up
  # The guarantee the tests rely on: nothing routes out. A fresh namespace has no default route
  # and no links besides lo; check it anyway.
  [[ -z "$(ip -n "$NETNS" route show default)$(ip -n "$NETNS" -6 route show default)" ]] ||
    die "namespace $NETNS has a default route"
  local links
  links=$(ip -n "$NETNS" -o link show | awk -F': ' '{print $2}' | sort | tr '\n' ' ')
  [[ "$links" == "$BRIDGE lo " ]] || die "namespace $NETNS has unexpected links: $links"
}

# --- certificates --------------------------------------------------------------------------------

# name|CN|O|SANs|signing CA|usage. The spec is stored with the PKI: any change regenerates it.
PKI_SPEC="ca|ferry-e2e-ca|||self|ca
front-proxy-ca|ferry-e2e-front-proxy-ca|||self|ca
apiserver|kube-apiserver||IP:127.0.0.1,IP:$BRIDGE_IP,IP:$SERVICE_FIRST_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost|ca|server
admin|ferry-admin|system:masters||ca|client
controller-manager|system:kube-controller-manager|||ca|client
apiserver-kubelet-client|kube-apiserver-kubelet-client|system:masters||ca|client
front-proxy-client|front-proxy-client|||front-proxy-ca|client"

pki_valid() {
  [[ -r "$PKI_DIR/spec" && "$(<"$PKI_DIR/spec")" == "$PKI_SPEC" ]] || return 1
  [[ -s "$PKI_DIR/sa.key" && -s "$PKI_DIR/sa.pub" ]] || return 1
  local name cn o sans ca usage
  while IFS='|' read -r name cn o sans ca usage; do
    [[ -s "$PKI_DIR/$name.key" && -s "$PKI_DIR/$name.crt" ]] || return 1
    openssl x509 -in "$PKI_DIR/$name.crt" -noout -checkend 86400 >/dev/null 2>&1 || return 1
    if [[ "$ca" != self ]]; then
      openssl verify -CAfile "$PKI_DIR/$ca.crt" "$PKI_DIR/$name.crt" >/dev/null 2>&1 || return 1
    fi
  done <<<"$PKI_SPEC"
}

make_pki() {
  local tmp="$PKI_DIR.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp" && chmod 700 "$tmp"
  local name cn o sans ca usage subj ext
  while IFS='|' read -r name cn o sans ca usage; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/$name.key" 2>/dev/null
    subj="/CN=$cn"
    [[ -z "$o" ]] || subj="/O=$o$subj"
    if [[ "$ca" == self ]]; then
      openssl req -x509 -new -key "$tmp/$name.key" -subj "$subj" -days 3650 -sha256 \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature -out "$tmp/$name.crt"
      continue
    fi
    ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$([[ $usage == server ]] && echo serverAuth || echo clientAuth)
authorityKeyIdentifier=keyid"
    [[ -z "$sans" ]] || ext+=$'\n'"subjectAltName=$sans"
    openssl req -new -key "$tmp/$name.key" -subj "$subj" -out "$tmp/$name.csr"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$tmp/$ca.crt" -CAkey "$tmp/$ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 \
      -extfile <(printf '%s\n' "$ext") -out "$tmp/$name.crt" 2>/dev/null
    rm -f "$tmp/$name.csr"
  done <<<"$PKI_SPEC"
  # The service-account token signing key pair (RSA: RS256 is what every client expects).
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/sa.key" 2>/dev/null
  openssl pkey -in "$tmp/sa.key" -pubout -out "$tmp/sa.pub"
  printf '%s' "$PKI_SPEC" >"$tmp/spec"
  rm -rf "$PKI_DIR" && mv "$tmp" "$PKI_DIR"
}

# kubeconfig FILE SERVER USER: a kubeconfig with the CA and the user's certificate embedded.
kubeconfig() {
  local file=$1 server=$2 user=$3
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ferry-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/$user.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/$user.key")
contexts:
- name: ferry-e2e
  context:
    cluster: ferry-e2e
    user: $user
current-context: ferry-e2e
EOF
  chmod 600 "$file.tmp" && mv "$file.tmp" "$file"
}

# --- processes -----------------------------------------------------------------------------------

# start NAME BINARY ARGS...: runs the binary detached (own session) inside the namespace.
start() {
  local name=$1 bin=$2; shift 2
  local logf="$LOG_DIR/$name.log"
  : >"$logf"
  # Without job control a background job is not a process-group leader, so setsid (like
  # `ip netns exec` and env) execs in place and $! is the component's own pid. (Not through the
  # in_ns function: a backgrounded function is a subshell whose pid $! would be.)
  ip netns exec "$NETNS" "${UNPROXIED[@]}" setsid "$bin" "$@" </dev/null >>"$logf" 2>&1 9>&- &
  local pid=$!
  echo "$pid" >"$PID_DIR/$name.pid"
  for _ in {1..50}; do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$bin" ]] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
  done
  component_pid "$name" >/dev/null || fail "$name" "$name did not start"
}

start_etcd() {
  # --unsafe-no-fsync: this is a throw-away test cluster whose etcd starts empty every time;
  # skipping fsync makes every write much faster and loses nothing we care about.
  start etcd "$ETCD_BIN" \
    --name=ferry-e2e \
    --data-dir="$ETCD_DATA" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT,http://$BRIDGE_IP:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="ferry-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --unsafe-no-fsync=true
  wait_for etcd "etcd to be healthy" \
    in_ns curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
}

start_apiserver() {
  local p="$PKI_DIR"
  # Bound to every address of the namespace, which are only 127.0.0.1 and the bridge's.
  # --endpoint-reconciler-type=lease: the `kubernetes` Service's endpoint is 10.88.0.1:6443, an
  # address pods really reach (there is no kube-proxy for its ClusterIP).
  # --enable-aggregator-routing: the apiserver calls webhooks and aggregated APIs behind a Service
  # at the Service's endpoint (pod) addresses, not at its ClusterIP.
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=0.0.0.0 \
    --secure-port="$APISERVER_PORT" \
    --advertise-address="$BRIDGE_IP" \
    --tls-cert-file="$p/apiserver.crt" \
    --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$p/sa.pub" \
    --service-account-signing-key-file="$p/sa.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NamespaceLifecycle,ServiceAccount,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
    --enable-aggregator-routing=true \
    --requestheader-client-ca-file="$p/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$p/front-proxy-client.crt" \
    --proxy-client-key-file="$p/front-proxy-client.key" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --allow-privileged=true \
    --endpoint-reconciler-type=lease \
    --profiling=false
  wait_for kube-apiserver "kube-apiserver /readyz" api_get_ok /readyz
}

api_get_ok() { [[ "$(api_get "$1")" == ok ]]; }

start_controller_manager() {
  local p="$PKI_DIR"
  # --use-service-account-credentials=true, as kubeadm does: each controller acts as its own
  # ServiceAccount in kube-system with its bootstrap RBAC role. With `false` every controller acts
  # as system:kube-controller-manager, whose role cannot create ReplicaSets, Pods, EndpointSlices
  # or ConfigMaps, so Deployments would never get pods.
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$KCM_KUBECONFIG" \
    --authentication-kubeconfig="$KCM_KUBECONFIG" \
    --authorization-kubeconfig="$KCM_KUBECONFIG" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --controllers="$KCM_CONTROLLERS" \
    --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$p/ca.crt" \
    --use-service-account-credentials=true \
    --leader-elect=false \
    --kube-api-qps=100 \
    --kube-api-burst=200 \
    --profiling=false
  wait_for kube-controller-manager "the default ServiceAccount in namespace default" \
    api_get /api/v1/namespaces/default/serviceaccounts/default
  # Pods' projected service-account volumes need it; it also proves the controllers' RBAC works.
  wait_for kube-controller-manager "ConfigMap kube-root-ca.crt in namespace default" \
    api_get /api/v1/namespaces/default/configmaps/kube-root-ca.crt
}

write_cluster_env() {
  cat >"$CLUSTER_ENV.tmp" <<EOF
FERRY_E2E_NETNS=$NETNS
FERRY_E2E_POD_NETNS_PREFIX=$POD_NETNS_PREFIX
FERRY_E2E_BRIDGE=$BRIDGE
FERRY_E2E_BRIDGE_IP=$BRIDGE_IP
FERRY_E2E_POD_CIDR=$POD_CIDR
FERRY_E2E_SERVICE_CIDR=$SERVICE_CIDR
FERRY_E2E_CLUSTER_DOMAIN=$CLUSTER_DOMAIN
FERRY_E2E_APISERVER=$APISERVER_URL
FERRY_E2E_APISERVER_HOST=$BRIDGE_IP
FERRY_E2E_APISERVER_PORT=$APISERVER_PORT
FERRY_E2E_KUBECONFIG=$KUBECONFIG_FILE
FERRY_E2E_RUN_DIR=$RUN_DIR
FERRY_E2E_LOG_DIR=$LOG_DIR
FERRY_E2E_K8S_VERSION=$K8S_VERSION
FERRY_E2E_BIN_DIR=$K8S_BIN
FERRY_E2E_KUBECTL=$KUBECTL
FERRY_E2E_HELM=$HELM_BIN
FERRY_E2E_CA_CERT=$PKI_DIR/ca.crt
FERRY_E2E_CA_KEY=$PKI_DIR/ca.key
FERRY_E2E_SA_ISSUER=$SA_ISSUER
FERRY_E2E_SA_KEY=$PKI_DIR/sa.key
FERRY_E2E_SA_PUB=$PKI_DIR/sa.pub
FERRY_E2E_ETCD=http://$BRIDGE_IP:$ETCD_CLIENT_PORT
EOF
  mv "$CLUSTER_ENV.tmp" "$CLUSTER_ENV"
}

# The process kubelet: registers node ferry-node and runs pods as processes, each pod in its own
# network namespace on the bridge (see e2e/src/bin/kubelet).
start_kubelet() {
  start ferry-kubelet "$(component_bin ferry-kubelet)" \
    --kubeconfig "$KUBECONFIG_FILE" \
    --node-name "$NODE_NAME" \
    --run-dir "$RUN_DIR/kubelet"
  wait_for ferry-kubelet "node $NODE_NAME to be Ready" node_ready
}

node_ready() {
  [[ "$(in_ns "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# --- main ----------------------------------------------------------------------------------------

need_root
command -v openssl >/dev/null || die "openssl is not installed"
command -v curl >/dev/null || die "curl is not installed"

take_lock
"$CP_DIR/build.sh" 9>&-
for b in "$ETCD_BIN" "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" "$KUBECTL" "$HELM_BIN"; do
  [[ -x "$b" ]] || die "missing $b after build.sh"
done
[[ -x "$KUBELET_BIN" ]] || die "missing $KUBELET_BIN: build it with cargo build -p ferry-e2e --bins (make cluster-up does)"

if healthy; then
  log "cluster already up and healthy: $APISERVER_URL in netns $NETNS (checked in $(elapsed)s)"
  exit 0
fi
if inside_cluster_netns; then
  die "the cluster is not healthy and this shell runs inside netns $NETNS; run up.sh outside it"
fi
if something_up; then
  log "cluster is partly up or stale: stopping it first"
  FERRY_E2E_LOCK_HELD="$RUN_DIR" "$CP_DIR/down.sh"
fi

trap on_exit EXIT
T0=$(date +%s.%N) # start-up time, without the build check and the clean-up
mkdir -p "$RUN_DIR" "$LOG_DIR" "$PID_DIR"
rm -f "$STAMP_FILE" "$CLUSTER_ENV" "$KUBECONFIG_FILE"
rm -rf "$ETCD_DATA"

setup_netns
if pki_valid; then
  log "reusing certificates in $PKI_DIR"
else
  log "making certificates in $PKI_DIR"
  make_pki
fi
kubeconfig "$KCM_KUBECONFIG" "https://127.0.0.1:$APISERVER_PORT" controller-manager

log "starting etcd $ETCD_VERSION"
start_etcd
log "starting kube-apiserver $K8S_VERSION ($(elapsed)s)"
start_apiserver
log "starting kube-controller-manager ($(elapsed)s)"
start_controller_manager

kubeconfig "$KUBECONFIG_FILE" "$APISERVER_URL" admin
write_cluster_env
log "starting the process kubelet ($(elapsed)s)"
start_kubelet
stamp >"$STAMP_FILE"
SUCCESS=1
log "cluster up in $(elapsed)s: $APISERVER_URL in netns $NETNS"
log "  env: $CLUSTER_ENV   kubeconfig: $KUBECONFIG_FILE   logs: $LOG_DIR"
