#!/usr/bin/env bash
# `make demo`: the README example on the local cluster, as a Dask user runs it.
# Starts the cluster (control plane, three nodes with kubelet + containerd: one general node and
# a Dask worker pool of two, CoreDNS, Kubewarden's policy-server as the webhook),
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
# The README's worker-spec.yml at the size of this machine's nodes (the file says why).
WORKER_SPEC="${DEMO_WORKER_SPEC:-e2e-tests/demo/demo-worker.yml}"

echo "== starting the local cluster (a first run builds Kubernetes, containerd and the images)"
eval "$("$CLUSTER" up)"
if [[ "${DEMO_KEEP_CLUSTER:-0}" != 1 ]]; then
  trap '"$CLUSTER" down >/dev/null && echo "== local cluster stopped"' EXIT
fi
kubectl get nodes -L k8s.dask.org/node-purpose
echo
"$VENV/bin/python" e2e-tests/demo/demo.py --check --worker-spec "$WORKER_SPEC" "$@"
echo
echo "== the same example from Python: from dask_kube import KubeCluster"
"$VENV/bin/python" e2e-tests/demo/python_example.py "$WORKER_SPEC"
if [[ "${DEMO_KEEP_CLUSTER:-0}" == 1 ]]; then
  echo "== the cluster is still up: eval \"\$($CLUSTER env)\"; stop it with: $CLUSTER down"
fi
