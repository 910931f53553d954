# Thin targets; the logic lives in Rust and in scripts. CI runs `make test` (.ci/run).
CARGO ?= cargo

.PHONY: all build demo test fmt fmt-check lint unit samples chart manifests clean cluster-build cluster-up cluster-down kubectl e2e crds bench bench-resolver images images-test shellcheck e2e-kind dapr-build interop

all: build

build: ## Build every binary (ferry, ferryd)
	$(CARGO) build --workspace

demo: ## Two sample apps calling each other through sidecars, standalone
	bash deploy/samples/demo.sh

test: fmt-check lint shellcheck unit interop samples images-test e2e ## Every test tier this machine can run (0 and 1)

# A full run builds everything once: incremental caches would only cost disk.
test: export CARGO_INCREMENTAL = 0

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

shellcheck: ## Every shell script in the repository (installs shellcheck with apt when missing)
	@command -v shellcheck >/dev/null || { apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null; }
	shellcheck -x $$(git ls-files --cached --others --exclude-standard -- '*.sh') .ci/run

unit: ## Tier 0: pure unit tests and real processes on loopback
	$(CARGO) test --workspace

dapr-build: ## Build Dapr's daprd and sentry from the Go module proxy (cached outside the repo)
	bash e2e/dapr/build.sh

interop: ## Tier 0 against Dapr's own binaries and SDKs: Sentry and daprd both ways, the Python SDK over gRPC
	bin="$$(bash e2e/dapr/build.sh)" && FERRY_DAPR_BIN="$$bin" $(CARGO) test -p ferry-sidecar --test dapr_interop -- --ignored
	py="$$(bash e2e/clients/python.sh)" && FERRY_PYTHON="$$py" $(CARGO) test -p ferry-sidecar --test sdk_grpc -- --ignored

samples: ## The demo, with every answer checked
	bash deploy/samples/demo.sh --check

crds: ## Write crds/*.yaml from ferry_api::crd::all(), and the chart's CRD templates from them (a test fails when stale)
	$(CARGO) run --quiet -p ferry-cli --bin ferry -- crds --out-dir crds --chart-crds-dir charts/ferry/templates/crds

chart: ## The Helm chart's Tier-0 checks: lint in every mode, schema, RBAC = deploy/rbac, deploy/ferry.yaml up to date
	$(CARGO) test -p ferry-e2e --test helm

manifests: ## Rewrite deploy/ferry.yaml from charts/ferry (helm template with the defaults; a test fails when stale)
	UPDATE_MANIFESTS=1 $(CARGO) test -p ferry-e2e --test helm -- rendered_snapshot_is_up_to_date

cluster-build: ## Tier 1: build etcd, kube-apiserver, kube-controller-manager, kubectl, helm (cached)
	bash e2e/controlplane/build.sh

cluster-up: ## Tier 1: start the test cluster and the process kubelet in netns ferry-e2e (root)
	$(CARGO) build -p ferry-e2e --bins && bash e2e/controlplane/up.sh

cluster-down: ## Tier 1: stop the test cluster and everything in its network namespaces
	bash e2e/controlplane/down.sh

e2e: ## Tier 1: start the cluster, run the cluster tests inside its namespace, stop it
	bash e2e/run.sh

kubectl: ## kubectl inside the test cluster: make kubectl ARGS='get pods -A'
	@bash e2e/controlplane/kubectl.sh $(ARGS)

images: ## The ferryd, ferry-operator and ferry-injector images: with Docker, else offline with podman/buildah
	bash images/build.sh

images-test: ## The Dockerfiles build offline here (buildah, no network) into right images
	bash images/test.sh

e2e-kind: ## Tier 2, on a host with Docker: kind, the images, helm install, the samples across namespaces
	bash e2e/kind/run.sh

bench: ## ferryd next to a direct call and an nginx pair, then resolver scale (as root); rewrites BENCHMARKS.md (~30 min; BENCH_ARGS=--quick: ~3 min, no resolver scale)
	@command -v nginx >/dev/null && command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null; }
	$(CARGO) build --release -p ferry-sidecar
	$(CARGO) run --release --quiet -p ferry-bench -- run $(BENCH_ARGS)
ifeq ($(findstring --quick,$(BENCH_ARGS)),)
	@if [ "$$(id -u)" -eq 0 ] && command -v ip >/dev/null && command -v flock >/dev/null; then \
	  bash bench/resolver.sh; \
	else \
	  echo "make bench: resolver scale skipped (it needs root, ip and flock: make bench-resolver); BENCHMARKS.md keeps its last section"; \
	fi
endif

bench-resolver: ## Resolver scale on the Tier-1 cluster (root): 10,000 endpoints, memory per endpoint, change propagation; updates BENCHMARKS.md (~3 min)
	bash bench/resolver.sh $(ARGS)

clean:
	$(CARGO) clean
