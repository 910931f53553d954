# Thin targets; the logic lives in Rust and in scripts. CI runs `make test` (.ci/run).
CARGO ?= cargo

.PHONY: all build demo test fmt fmt-check lint unit samples clean

all: build

build: ## Build every binary (ferry, ferryd)
	$(CARGO) build --workspace

demo: ## Two sample apps calling each other through sidecars, standalone
	bash deploy/samples/demo.sh

test: fmt-check lint unit samples ## Every test tier this machine can run

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## Tier 0: pure unit tests and real processes on loopback
	$(CARGO) test --workspace

samples: ## The demo, with every answer checked
	bash deploy/samples/demo.sh --check

clean:
	$(CARGO) clean
