#!/usr/bin/env bash
# `make e2e-kind`: Tier 2, for hosts with Docker. Ferry as a user installs it, on a real cluster:
#
#  1. builds the three images with `make images` (Docker) and the two sample apps' images
#     (deploy/samples/*/Dockerfile);
#  2. creates a kind cluster (e2e/kind/kind-config.yaml) with a kubeconfig of its own (your
#     ~/.kube/config is not touched), and `kind load`s the images into its nodes;
#  3. `helm install`s charts/ferry with those images (pull policy Never, so a missing image fails
#     instead of being pulled from the registry) into ferry-system, which enforces the restricted
#     Pod Security Standard;
#  4. deploys the samples (e2e/kind/samples.yaml): cart and a curl client in namespace shop, math
#     (mathService) in namespace calc, as annotated Deployments that the injector gives a sidecar;
#  5. invokes across apps and namespaces and checks every answer: the client calls cart and
#     math through its sidecar on localhost:3500 (URL, header and basic-auth forms), cart calls
#     math and math calls cart across namespaces, and the callees saw the caller's app ID;
#  6. deletes the cluster on exit, whatever happened (after printing pods, events and logs when
#     something failed). FERRY_KIND_KEEP=1 keeps it for a look.
#
# Calls are made with `kubectl exec` inside the pods: a sidecar's API listens on the pod's
# loopback only, and an app calls it from inside its pod, so that is the path tested; nothing
# runs in the background and no local port is needed.
#
#   FERRY_KIND_CLUSTER  the cluster's name (default ferry-e2e); an existing one is never reused
#   KIND_NODE_IMAGE     the node image (default: the kind release's own; Kubernetes >= 1.33)
#   FERRY_KIND_KEEP=1   keep the cluster (delete it with: kind delete cluster --name NAME)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cluster="${FERRY_KIND_CLUSTER:-ferry-e2e}"
tag=kind-e2e # also in e2e/kind/samples.yaml
registry=ghcr.io # the chart's image.registry; its repositories are ferry-dev/<binary>
release_ns=ferry-system
wait=180s

say() { echo "e2e-kind: $*" >&2; }
die() { say "$*"; exit 1; }

# --- 0. tools ---
missing=()
need() { command -v "$1" >/dev/null || missing+=("  $1: $2"); }
need docker "a Docker engine, https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (or: go install sigs.k8s.io/kind@latest)"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need helm "https://helm.sh/docs/intro/install/"
need make "your system's package (e.g. apt-get install make)"
if ((${#missing[@]})); then
  printf 'e2e-kind: missing tools:\n%s\n' "$(printf '%s\n' "${missing[@]}")" >&2
  exit 1
fi
docker info >/dev/null 2>&1 ||
  die "'docker info' fails: start the Docker engine (or give your user access to it); kind runs its nodes as Docker containers"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  die "a kind cluster named '$cluster' exists already; delete it (kind delete cluster --name $cluster) or set FERRY_KIND_CLUSTER"
fi
say "using $(kind version), kubectl $(kubectl version --client 2>/dev/null | head -n1), helm $(helm version --short)"

work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-kind.XXXXXX")"
export KUBECONFIG="$work/kubeconfig"
created=
failed=1

dump() {
  say "--- what the cluster looked like ---"
  kubectl get nodes -o wide || true
  kubectl get pods -A -o wide || true
  kubectl get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 60 || true
  kubectl get routingtables.ferry.dev -A -o yaml 2>/dev/null | head -n 120 || true
  kubectl -n "$release_ns" logs -l app.kubernetes.io/instance=ferry --all-containers --prefix --tail=80 || true
  for ns in shop calc; do
    kubectl -n "$ns" logs -l app --all-containers --prefix --tail=80 || true
  done
}

cleanup() {
  local status=$?
  trap - EXIT
  if ((failed)) && [[ -n $created ]]; then dump >&2; fi
  if ((failed)); then say "FAILED"; else say "passed"; fi
  if [[ -n $created && ${FERRY_KIND_KEEP:-} == 1 ]]; then
    say "kept cluster '$cluster': KUBECONFIG=$KUBECONFIG; delete it with: kind delete cluster --name $cluster"
    exit "$status"
  fi
  if [[ -n $created ]]; then
    say "deleting cluster '$cluster'"
    kind delete cluster --name "$cluster" --kubeconfig "$KUBECONFIG" >&2 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. images (first: a failed build costs no cluster) ---
say "building images (make images, Docker)"
# Plain single-platform images: BuildKit's default provenance attestation turns an image into an
# index, which `kind load` cannot always import (Docker's containerd image store).
export BUILDX_NO_DEFAULT_ATTESTATIONS=1
IMAGE_BUILDER=docker IMAGE_REGISTRY="$registry/ferry-dev" IMAGE_TAG="$tag" make --no-print-directory images
docker build -t "ferry.test/cart:$tag" deploy/samples/cart
docker build -t "ferry.test/math-service:$tag" deploy/samples/mathService

# --- 2. cluster ---
say "creating kind cluster '$cluster'"
created=1
kind create cluster --name "$cluster" --config e2e/kind/kind-config.yaml \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --kubeconfig "$KUBECONFIG" --wait 120s
kind load docker-image --name "$cluster" \
  "$registry/ferry-dev/ferryd:$tag" "$registry/ferry-dev/ferry-operator:$tag" \
  "$registry/ferry-dev/ferry-injector:$tag" "ferry.test/cart:$tag" "ferry.test/math-service:$tag"

# --- 3. Ferry ---
say "installing charts/ferry into $release_ns"
kubectl create namespace "$release_ns"
kubectl label namespace "$release_ns" pod-security.kubernetes.io/enforce=restricted
# failurePolicy Fail: a pod created before the webhook answers is refused and retried by its
# ReplicaSet, never left without its sidecar (the default, Ignore, would make this test flaky).
helm install ferry charts/ferry --namespace "$release_ns" \
  --set image.registry="$registry" --set image.tag="$tag" --set image.pullPolicy=Never \
  --set webhook.failurePolicy=Fail --wait --timeout 5m
kubectl -n "$release_ns" rollout status deployment/ferry-operator --timeout "$wait"
kubectl -n "$release_ns" rollout status deployment/ferry-injector --timeout "$wait"

# --- 4. the samples ---
say "deploying the samples"
kubectl apply -f e2e/kind/samples.yaml
for app in shop/cart calc/math shop/client; do
  kubectl -n "${app%/*}" rollout status "deployment/${app#*/}" --timeout "$wait"
done
for app in shop/cart calc/math shop/client; do
  containers="$(kubectl -n "${app%/*}" get pods -l "app=${app#*/}" -o jsonpath='{.items[*].spec.containers[*].name}')"
  [[ " $containers " == *" daprd "* ]] || die "$app: no daprd container injected (containers: $containers)"
done
say "every sample pod has its daprd sidecar"

# --- 5. calls ---
# expect WHAT WANT COMMAND...: runs COMMAND until it prints exactly WANT; the first calls may come
# before the operator's RoutingTables and EndpointSlices reach the callers' sidecars.
expect() {
  local what="$1" want="$2" got deadline=$((SECONDS + 90))
  shift 2
  while :; do
    if got="$("$@" 2>&1)" && [[ $got == "$want" ]]; then
      say "ok: $what -> $got"
      return 0
    fi
    ((SECONDS < deadline)) || die "$what: got '$got', want '$want'"
    sleep 2
  done
}
client() { kubectl -n shop exec deploy/client -c client -- curl -sS -m 10 --fail-with-body "$@"; }
sum='{"arg1":2,"arg2":3}'
json='content-type: application/json'

expect "client -> cart (same namespace, URL form)" 'Added!' \
  client -X POST http://127.0.0.1:3500/v1.0/invoke/cart/method/add
expect "client -> math.calc (across namespaces, URL form)" 5 \
  client -X POST -H "$json" -d "$sum" http://127.0.0.1:3500/v1.0/invoke/math.calc/method/add
expect "client -> math.calc (dapr-app-id header form)" 5 \
  client -X POST -H "$json" -H 'dapr-app-id: math.calc' -d "$sum" http://127.0.0.1:3500/add
expect "client -> cart (basic-auth form)" 'Added!' \
  client -X POST http://dapr-app-id:cart@127.0.0.1:3500/add
expect "client -> nosuchapp (a fast, clear error)" 500 \
  kubectl -n shop exec deploy/client -c client -- curl -sS -m 10 -o /dev/null -w '%{http_code}' \
  -X POST http://127.0.0.1:3500/v1.0/invoke/nosuchapp/method/add
# App to app, each through its own sidecar, with the tools of its own image.
py_call='import sys, urllib.request as u
r = u.urlopen(u.Request(sys.argv[1], data=sys.argv[2].encode(), method="POST",
                        headers={"content-type": "application/json"}), timeout=10)
print(r.read().decode())'
expect "cart (shop) -> math.calc" 5 \
  kubectl -n shop exec deploy/cart -c cart -- python -c "$py_call" \
  http://127.0.0.1:3500/v1.0/invoke/math.calc/method/add "$sum"
js_call='fetch(process.argv[1], {method: "POST"}).then(async (r) => {
  console.log(await r.text()); process.exit(r.ok ? 0 : 1);
}, (e) => { console.error(e); process.exit(1); })'
expect "math (calc) -> cart.shop" 'Added!' \
  kubectl -n calc exec deploy/math -c math -- node -e "$js_call" \
  http://127.0.0.1:3500/v1.0/invoke/cart.shop/method/add
# The callees saw who called: the sidecars set dapr-caller-app-id.
kubectl -n shop logs deploy/cart -c cart | grep -qF 'dapr-caller-app-id=client' ||
  die "cart's log has no call from app ID client"
kubectl -n shop logs deploy/cart -c cart | grep -qF 'dapr-caller-app-id=math' ||
  die "cart's log has no call from app ID math"
kubectl -n calc logs deploy/math -c math | grep -qF 'dapr-caller-app-id=cart' ||
  die "math's log has no call from app ID cart"
say "ok: the callees saw their callers' app IDs"

failed=0
