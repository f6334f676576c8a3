#!/usr/bin/env bash
# The integration tier: the local cluster of real parts (kube-apiserver + etcd +
# controller-manager + scheduler, nodes with kubelet, containerd and kube-proxy, CoreDNS, the
# policy as a live webhook), every test that needs it, and `cluster down` at the end, also
# when a test fails. Exit status: 0 when everything passed.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CLUSTER=e2e-tests/local-cluster/cluster
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"
VENV="${VENV:-$HOME/.cache/dask-on-k8s/venv}"
results=()
status=0
run() {
  local name="$1" t0=$SECONDS
  shift
  echo "::: $name"
  if "$@"; then
    results+=("ok      $name ($((SECONDS - t0))s)")
  else
    results+=("FAILED  $name ($((SECONDS - t0))s)")
    status=1
  fi
}
finish() {
  echo "::: cluster down"
  "$CLUSTER" down || { results+=("FAILED  cluster down left something running"); status=1; }
  echo "::: integration results"
  printf '  %s\n' "${results[@]}"
  exit "$status"
}
trap finish EXIT

# The cluster's own checks start it, restart it and stop it; --keep-up leaves it
# up (with its nodes and the webhook) for everything below.
run "control plane checks (tests/control-plane.sh)" e2e-tests/local-cluster/tests/control-plane.sh --keep-up
if ! up_env="$("$CLUSTER" up)"; then
  results+=("FAILED  cluster up")
  status=1
  exit
fi
eval "$up_env"

# `--workspace --test NAME` rather than `-p PKG`: cargo unifies features per invocation, and
# the workspace-wide set is the one `make unit` already built, so nothing compiles again.
run "policy webhook through the apiserver" cargo test --locked --workspace --test webhook_cluster -- --include-ignored
# dask-kube's tests/cluster.rs (#[ignore]d outside this tier).
run "dask-kube against the cluster" cargo test --locked --workspace --test cluster -- --include-ignored --test-threads=1
# The operator's own life cycle, job, autoscaler and RBAC tests (each pauses the operator
# `cluster up` installed while it runs its own for its namespace).
run "dask-kube operator against the cluster (tests/operator_cluster.rs)" cargo test --locked --workspace --test operator_cluster -- --include-ignored --test-threads=1
run "dask-kube scale-down loses no data (tests/data_safety.rs)" cargo test --locked --workspace --test data_safety -- --include-ignored --test-threads=1
run "dask-kube's security (tests/security.rs: TLS, the controller's policies and securityContext)" cargo test --locked --workspace --test security -- --include-ignored --test-threads=1 --nocapture
run "README example end to end (demo.py --check)" "$VENV/bin/python" e2e-tests/demo/demo.py --check \
  --summary-json "${DEMO_SUMMARY:-$CARGO_TARGET_DIR/demo-summary.json}"
# The Python package (built into the venv by `make venv`) against the same cluster; a
# missing cluster fails here instead of skipping.
run "Python package against the cluster (pytest)" env DASK_K8S_REQUIRE_CLUSTER=1 VENV="$VENV" \
  e2e-tests/python/run-tests.sh cluster
# Last: the fault-injection tier takes the cluster's parts away (the API server, the webhook, a
# kubelet, a whole node) and starts them again as they were.
# --nocapture: each fault prints its FIGURE line (the README's Faults table), passed or not.
run "faults injected on the cluster (dask-kube tests/faults.rs)" cargo test --locked --workspace --test faults -- --include-ignored --test-threads=1 --nocapture
