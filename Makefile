# dask-on-k8s: the dask-worker-defaults Kubewarden policy, dask-kube, and their tests.
#
#   make demo    the README example end to end on a local control plane
#   make test    everything CI runs (lint, unit, wasm e2e, integration on a real apiserver)
#
# Build caches live outside the checkout (CI runs on a clean clone and keeps $HOME/.cache).
CACHE_DIR ?= $(HOME)/.cache/dask-on-k8s
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
VENV ?= $(CACHE_DIR)/venv
PYTHON := $(VENV)/bin/python
CARGO ?= cargo
CARGO_FLAGS ?= --locked
WASM := $(CARGO_TARGET_DIR)/wasm32-wasip1/release/dask_worker_defaults.wasm
RUNNER := $(CARGO_TARGET_DIR)/debug/policy-runner
CLUSTER := e2e-tests/local-cluster/cluster

.PHONY: help demo policy-demo wasm build venv lint fmt clippy unit e2e-policy bats integration \
        test bench cluster-up cluster-down clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

demo: wasm venv ## the README example end to end on the local control plane
	$(CARGO) build $(CARGO_FLAGS) -p dask-kube -p policy-runner -p node-agent
	e2e-tests/demo/run-demo.sh

policy-demo: wasm venv ## build the policy and run it on worker-spec.yml like kwctl
	$(CARGO) build $(CARGO_FLAGS) -p policy-runner
	$(PYTHON) e2e-tests/demo/policy-demo.py $(RUNNER) $(WASM) worker-spec.yml

wasm: ## build the policy module (wasm32-wasip1, size-tuned release profile)
	$(CARGO) build $(CARGO_FLAGS) --release --target wasm32-wasip1 -p dask-worker-defaults
	@ls -l $(WASM) | awk '{printf "module: %s (%d bytes)\n", $$9, $$5}'

build: wasm ## build every crate and binary
	$(CARGO) build $(CARGO_FLAGS) --workspace --all-targets

venv: $(VENV)/.installed ## Python venv with distributed, dask[array], numpy (from PyPI)
$(VENV)/.installed: e2e-tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r e2e-tests/requirements.txt
	touch $@

.PHONY: python
python: venv ## the dask_kube Python package (PyO3 + maturin) and pytest into the venv
	VENV=$(VENV) e2e-tests/python/install.sh

fmt: ## check formatting
	$(CARGO) fmt --all -- --check

clippy: ## lints, warnings are errors
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	$(CARGO) clippy $(CARGO_FLAGS) --release --target wasm32-wasip1 -p dask-worker-defaults -- -D warnings

lint: fmt clippy

unit: ## tests that need no cluster (unit, table, property, wasm e2e through the runner)
	DASK_K8S_SKIP_CLUSTER_TESTS=1 $(CARGO) test $(CARGO_FLAGS) --workspace

e2e-policy: wasm ## the compiled policy on the fixtures: runner suite + bats (kwctl if present)
	$(CARGO) test $(CARGO_FLAGS) -p policy-runner --test policy_fixtures
	$(MAKE) bats

bats: wasm ## the fixtures' bats file, through policy-runner and through kwctl (skipped without it)
	$(CARGO) build $(CARGO_FLAGS) -p policy-runner
	KWCTL=$(RUNNER) bats e2e-tests/policy-runner/tests/policy.bats
	bats e2e-tests/policy-runner/tests/policy.bats

integration: wasm venv ## start the local control plane, run every test against it, stop it
	e2e-tests/run-integration.sh

test: lint wasm venv unit bats integration ## everything CI runs

bench: wasm ## figures: module size, wasm vs native evaluation, dask-kube timings
	$(CARGO) build $(CARGO_FLAGS) --profile release-host -p policy-runner --features native
	$(CARGO_TARGET_DIR)/release-host/policy-runner bench --native --iterations 5000 \
	  --request-path e2e-tests/policy-runner/tests/fixtures/policy/readme-worker-spec/request.json $(WASM)
	$(CARGO_TARGET_DIR)/release-host/policy-runner bench --native --iterations 5000 \
	  --request-path e2e-tests/policy-runner/tests/fixtures/policy/unlabelled-pod/request.json $(WASM)

cluster-up: wasm venv ## start the local control plane (+ node agent, policy webhook)
	$(CLUSTER) up

cluster-down: ## stop it; nothing is left running
	$(CLUSTER) down

clean: ## remove build outputs (caches in $(CACHE_DIR) are kept)
	$(CARGO) clean
