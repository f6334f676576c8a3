#!/usr/bin/env bash
# make bench-tls: the README example (da.ones((1000,1000,1000), chunks=(100,100,10)).mean())
# on a dask-kube cluster with TLS (a certificate authority per cluster, the default) and
# without (--tls off), side by side in one run: time to compute it through the address `up`
# printed (port-forward, as from a laptop), and `up` itself. run.py alternates the sides;
# it prints medians (min-max) and the ratio, and asserts nothing about them.
#
#   BENCH_REPEATS=3 e2e-tests/bench-tls/run.sh
#
# Env: BENCH_REPEATS (3), BENCH_WORKERS (2), BENCH_NAMESPACE (default), DASK_KUBE_BIN (skip
# the cargo build), VENV (a venv with distributed, `make venv`), and the local cluster's
# DASK_K8S_* variables. Uses the local cluster if it is up, else starts it and stops it at
# the end.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE_DIR="${CACHE_DIR:-$HOME/.cache/dask-on-k8s}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
VENV="${VENV:-$CACHE_DIR/venv}"
BENCH_CLUSTER="$REPO/e2e-tests/local-cluster/cluster"
log() { echo "bench-tls: $*" >&2; }

"$VENV/bin/python" -c 'import distributed' 2>/dev/null || { log "no distributed in $VENV: run make venv"; exit 1; }
if [[ -n "${DASK_KUBE_BIN:-}" ]]; then
  DASK_KUBE="$DASK_KUBE_BIN"
else
  log "building dask-kube (release-host)"
  (cd "$REPO" && cargo build --quiet --locked --profile release-host -p dask-kube)
  DASK_KUBE="$CARGO_TARGET_DIR/release-host/dask-kube"
fi
source "$REPO/e2e-tests/bench-scale/lib.sh"
use_local_cluster
COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
"$VENV/bin/python" "$HERE/run.py" --dask-kube "$DASK_KUBE" \
  --template "$REPO/crates/dask-kube/tests/fixtures/small-worker.yml" \
  --client "$REPO/crates/dask-kube/tests/fixtures/tls_client.py" \
  --repeats "${BENCH_REPEATS:-3}" --workers "${BENCH_WORKERS:-2}" \
  --namespace "${BENCH_NAMESPACE:-default}" \
  --machine "$(nproc) cores shared with other work, load avg $(cut -d' ' -f1 /proc/loadavg) at start, dask-kube $COMMIT" "$@"
