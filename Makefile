# dask-on-k8s: the dask-worker-defaults Kubewarden policy, dask-kube, and their tests.
#
#   make demo    the README example end to end on a local control plane
#   make test    everything CI runs (lint, unit, wasm e2e, integration on a real apiserver)
#
# Build caches live outside the checkout (CI runs on a clean clone and keeps $HOME/.cache).
CACHE_DIR ?= $(HOME)/.cache/dask-on-k8s
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
VENV ?= $(CACHE_DIR)/venv
# Kubewarden's kwctl and policy-server, installed by `make setup` (e2e-tests/setup.sh).
export PATH := $(CACHE_DIR)/bin:$(PATH)
PYTHON := $(VENV)/bin/python
CARGO ?= cargo
CARGO_FLAGS ?= --locked
WASM := $(CARGO_TARGET_DIR)/wasm32-wasip1/release/dask_worker_defaults.wasm
# The release artifact: the module with policy-metadata.yml and README.md in its metadata
# section, as `kwctl annotate` writes them.
ANNOTATED_WASM := $(CARGO_TARGET_DIR)/wasm32-wasip1/release/annotated-policy.wasm
KWCTL ?= kwctl
# The bats suite's TAP output, read for skips.
BATS_TAP := $(CACHE_DIR)/policy-bats.tap
CLUSTER := e2e-tests/local-cluster/cluster
# The policy's AdmissionReview fixtures (request.json, settings.json, expected.json).
POLICY_FIXTURES ?= tests/fixtures
# The request the policy benches measure: the README pod (CREATE, patched).
BENCH_POLICY_REQUEST ?= $(POLICY_FIXTURES)/readme-worker-spec/request.json
BENCH_POLICY_RUNS ?= 3
FLOOR_WASM := $(CARGO_TARGET_DIR)/wasm32-wasip1/release/minimal_policy.wasm
ANNOTATED_FLOOR_WASM := $(CARGO_TARGET_DIR)/wasm32-wasip1/release/annotated-minimal-policy.wasm
# The floor built with `policy-output`: the policy's whole mutation of the README pod, no decisions.
ANNOTATED_SAME_OUTPUT_WASM := $(CARGO_TARGET_DIR)/wasm32-wasip1/release/annotated-minimal-policy-same-output.wasm
# The host binaries the local cluster runs (dask-kube, in its image) are built as one set with
# the unit tests: cargo unifies features per invocation, so `-p dask-kube` alone and `cargo
# test --workspace` would each compile kube again. The image build uses the same set (a no-op
# after `make unit`).
HOST_BUILD := --workspace --all-targets
export DASK_K8S_HOST_BUILD := $(HOST_BUILD)

.PHONY: help setup demo policy-demo wasm annotate annotated-policy.wasm build venv lint fmt clippy \
        unit e2e-policy bats integration test bench cluster-up cluster-down clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## install what demo and test need (Debian packages, Rust target, kwctl, policy-server, checks Go/Python); quick when done
	@CACHE_DIR=$(CACHE_DIR) e2e-tests/setup.sh

demo: setup wasm venv ## the README example end to end on the local control plane
	$(CARGO) build $(CARGO_FLAGS) $(HOST_BUILD)
	e2e-tests/demo/run-demo.sh

policy-demo: annotate venv ## build the policy and run it on worker-spec.yml with kwctl
	$(PYTHON) e2e-tests/demo/policy-demo.py $(KWCTL) $(ANNOTATED_WASM) worker-spec.yml

wasm: setup ## build the policy module (wasm32-wasip1, size-tuned release profile)
	$(CARGO) build $(CARGO_FLAGS) --release --target wasm32-wasip1 -p dask-worker-defaults
	@ls -l $(WASM) | awk '{printf "module: %s (%d bytes)\n", $$9, $$5}'

annotate: wasm ## the release artifact: kwctl annotate -m policy-metadata.yml -u README.md (annotated-policy.wasm)
	$(KWCTL) annotate -m policy-metadata.yml -u README.md -o $(ANNOTATED_WASM) $(WASM)
	@ls -l $(ANNOTATED_WASM) | awk '{printf "annotated module: %s (%d bytes)\n", $$9, $$5}'

annotated-policy.wasm: annotate

build: wasm ## build every crate and binary
	$(CARGO) build $(CARGO_FLAGS) --workspace --all-targets

venv: $(VENV)/.installed ## Python venv: distributed, dask[array], numpy, pytest (PyPI) and the dask_kube package
	VENV=$(VENV) e2e-tests/python/install.sh
# The venv links the interpreter by its real path: made under CI's temporary toolbox PATH
# (.ci/run), `python3` is a link in a directory that is gone by the next run. A venv whose
# interpreter is gone all the same is made again.
ifneq ($(wildcard $(VENV)/.installed),)
ifeq ($(shell test -x $(VENV)/bin/python && echo ok),)
$(shell rm -f $(VENV)/.installed)
endif
endif
$(VENV)/.installed: e2e-tests/requirements.txt e2e-tests/python/requirements.txt | setup
	"$$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')" -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check \
	  -r e2e-tests/requirements.txt -r e2e-tests/python/requirements.txt
	touch $@

.PHONY: python
python: venv ## the dask_kube Python package (PyO3 + maturin from PyPI) built into the venv

fmt: setup ## check formatting
	$(CARGO) fmt --all -- --check

clippy: setup ## lints, warnings are errors
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	$(CARGO) clippy $(CARGO_FLAGS) --release --target wasm32-wasip1 -p dask-worker-defaults -- -D warnings

lint: fmt clippy

unit: setup venv ## tests that need no cluster (unit, table, property, golden fixtures natively, Python unit, cap-translate, the README CAP's matchConditions)
	$(CARGO) test $(CARGO_FLAGS) --workspace
	$(CARGO) test $(CARGO_FLAGS) -p minimal-policy --features policy-output
	VENV=$(VENV) e2e-tests/python/run-tests.sh unit
	$(PYTHON) -m pytest -ra e2e-tests/kubewarden
	$(PYTHON) -m pytest -ra -p no:cacheprovider --noconftest e2e-tests/operator/test_bench.py
	cd e2e-tests/kubewarden/matchconditions && go test ./...

e2e-policy: wasm ## the golden fixtures: natively (tests/admission_fixtures.rs), then by kwctl (bats)
	$(CARGO) test $(CARGO_FLAGS) -p dask-worker-defaults --test admission_fixtures
	$(MAKE) bats

# A skipped case fails the run: bats itself exits 0 on skips.
bats: annotate $(VENV)/.installed ## kwctl on the annotated module (every golden fixture, metadata, annotate), policy-server on the README's ClusterAdmissionPolicy
	@mkdir -p $(dir $(BATS_TAP))
	@PYTHON=$(PYTHON) KWCTL=$(KWCTL) bats --tap e2e-tests/kubewarden/policy.bats >$(BATS_TAP); status=$$?; \
	  cat $(BATS_TAP); \
	  if grep -q '^ok .* # skip' $(BATS_TAP); then echo "make bats: a skipped case fails the run" >&2; exit 1; fi; \
	  exit $$status

integration: wasm venv ## start the local control plane, run every test against it, stop it
	e2e-tests/run-integration.sh

test: setup lint wasm venv unit bats integration ## everything CI runs

bench: annotate ## policy figures: kwctl bench of the annotated module on the README pod and an unlabelled pod
	$(KWCTL) bench --request-path $(BENCH_POLICY_REQUEST) $(ANNOTATED_WASM)
	$(KWCTL) bench --request-path $(POLICY_FIXTURES)/unlabelled-pod/request.json $(ANNOTATED_WASM)

.PHONY: bench-policy
bench-policy: annotate ## kwctl bench: the annotated policy vs a minimal mutating policy (one toleration, and one making the policy's whole mutation) on the README pod, alternating runs, medians and ratios (BENCH_POLICY_RUNS)
	$(CARGO) build $(CARGO_FLAGS) --release --target wasm32-wasip1 -p minimal-policy --features policy-output
	$(KWCTL) annotate -m e2e-tests/bench-policy/minimal-policy/metadata.yml \
	  -o $(ANNOTATED_SAME_OUTPUT_WASM) $(FLOOR_WASM)
	$(CARGO) build $(CARGO_FLAGS) --release --target wasm32-wasip1 -p minimal-policy
	$(KWCTL) annotate -m e2e-tests/bench-policy/minimal-policy/metadata.yml \
	  -o $(ANNOTATED_FLOOR_WASM) $(FLOOR_WASM)
	python3 e2e-tests/bench-policy/run.py --kwctl $(KWCTL) --request $(BENCH_POLICY_REQUEST) \
	  --runs $(BENCH_POLICY_RUNS) policy=$(ANNOTATED_WASM) same-output=$(ANNOTATED_SAME_OUTPUT_WASM) \
	  floor=$(ANNOTATED_FLOOR_WASM)

.PHONY: bench-webhook
bench-webhook: setup wasm venv ## policy-server under a burst of worker pods (BENCH_N, default 1000): burst time with and without the webhook, admission p50/p99 from the apiserver's metrics, errors
	$(CARGO) build $(CARGO_FLAGS) $(HOST_BUILD)
	e2e-tests/bench-pods/with-cluster.sh $(PYTHON) e2e-tests/bench-webhook/run.py --pods $${BENCH_N:-1000}

.PHONY: bench-startup
bench-startup: setup wasm venv ## pod startup latency p50/p99 of BENCH_N (100) worker pods with the image present (the SLO: p99 <= 5 s)
	$(CARGO) build $(CARGO_FLAGS) $(HOST_BUILD)
	e2e-tests/bench-pods/with-cluster.sh $(PYTHON) e2e-tests/bench-pods/startup.py --pods $${BENCH_N:-100}

.PHONY: bench-scale
bench-scale: setup wasm venv ## time to N Pending pods and back to 0: raw apiserver limit vs classic vs dask-kube (BENCH_N, BENCH_REPEATS)
	e2e-tests/bench-scale/run.sh

.PHONY: fuzz
fuzz: ## bounded fuzz campaign of the policy (cargo-fuzz on nightly; FUZZ_RUNS per target)
	CACHE_DIR=$(CACHE_DIR) fuzz/run.sh

# dask-kubernetes 2026.3.0 (its kopf operator and client) and distributed, for the upstream
# operator tests (e2e-tests/operator/run-upstream-tests.sh) and the operator bench.
OPERATOR_VENV ?= $(CACHE_DIR)/venv-operator-tests

.PHONY: bench-operator
bench-operator: setup ## on the running local cluster: the dask-kube operator vs upstream's kopf (same 2026.3.0 wheel): apply to N connected / N Pending pods (raw creator as reference), a deleted pod, scale-down with data, RSS, CPU (BENCH_OPERATOR_*)
	cd e2e-tests/bench-scale/rawcreate && go build -o $(CACHE_DIR)/bench-scale/rawcreate .
	$(CARGO) build $(CARGO_FLAGS) --release -p dask-kube --bin dask-kube
	[ -x $(OPERATOR_VENV)/bin/python ] || python3 -m venv $(OPERATOR_VENV)
	$(OPERATOR_VENV)/bin/pip install --quiet --disable-pip-version-check -r e2e-tests/operator/requirements.txt
	eval "$$($(CLUSTER) env)" && $(OPERATOR_VENV)/bin/python e2e-tests/operator/bench.py \
	  --dask-kube $(CARGO_TARGET_DIR)/release/dask-kube --kopf-python $(OPERATOR_VENV)/bin/python \
	  --rawcreate $(CACHE_DIR)/bench-scale/rawcreate

.PHONY: bench-tls
bench-tls: setup venv ## the README example on a dask-kube cluster with TLS (the default) and without, side by side: medians and ratio (BENCH_REPEATS, BENCH_WORKERS)
	VENV=$(VENV) e2e-tests/bench-tls/run.sh

.PHONY: bench-python
bench-python: setup wasm venv ## classic dask-kubernetes KubeCluster vs dask_kube.KubeCluster, each deploy mode: constructor to N connected workers, machine CPU, peak RSS (BENCH_N, BENCH_REPEATS)
	VENV=$(VENV) e2e-tests/bench-python/run.sh

cluster-up: wasm venv ## start the local control plane (+ node agent, policy webhook)
	$(CLUSTER) up

cluster-down: ## stop it; nothing is left running
	$(CLUSTER) down

clean: ## remove build outputs (caches in $(CACHE_DIR) are kept)
	$(CARGO) clean
