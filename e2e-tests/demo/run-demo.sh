#!/usr/bin/env bash
# `make demo`: the README example on the local control plane, as a Dask user runs it.
# Starts the cluster (kube-apiserver, controller-manager, node agent, policy webhook),
# runs demo.py (dask-kube up --adapt 1:8, the computation, scaling, dask-kube down, and
# the SIGKILL + garbage-collector scenario) and python_example.py (the README example
# from Python: KubeCluster.from_yaml, scale_up, adapt, Client, close), then stops the cluster unless
# DEMO_KEEP_CLUSTER=1.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
CLUSTER=e2e-tests/local-cluster/cluster
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"
VENV="${VENV:-$HOME/.cache/dask-on-k8s/venv}"
export NODE_AGENT_CPU="${NODE_AGENT_CPU:-32}" NODE_AGENT_MEMORY="${NODE_AGENT_MEMORY:-64Gi}"

echo "== starting the local control plane (first run builds kube-apiserver from the Go modules: ~6-9 min)"
eval "$("$CLUSTER" up)"
if [[ "${DEMO_KEEP_CLUSTER:-0}" != 1 ]]; then
  trap '"$CLUSTER" down >/dev/null && echo "== local control plane stopped"' EXIT
fi
kubectl get nodes
echo
"$VENV/bin/python" e2e-tests/demo/demo.py --check "$@"
echo
echo "== the same example from Python: from dask_kube import KubeCluster"
"$VENV/bin/python" e2e-tests/demo/python_example.py worker-spec.yml
if [[ "${DEMO_KEEP_CLUSTER:-0}" == 1 ]]; then
  echo "== the cluster is still up: eval \"\$($CLUSTER env)\"; stop it with: $CLUSTER down"
fi
