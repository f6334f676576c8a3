#!/usr/bin/env bash
# Runs a benchmark command against the local cluster: uses the one that is up, else starts it
# and stops it afterwards (as bench-scale does), with the cluster's env (KUBECONFIG, kubectl,
# the dask-kube image by digest).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$REPO/e2e-tests/local-cluster/cluster"
started=0
if ! "$CLUSTER" status >/dev/null 2>&1; then
  echo "with-cluster: starting the local cluster" >&2
  "$CLUSTER" up >/dev/null
  started=1
fi
trap 'if ((started)); then echo "with-cluster: stopping the local cluster" >&2; "$CLUSTER" down >&2 || true; fi' EXIT
eval "$("$CLUSTER" env)"
"$@"
