#!/usr/bin/env bash
# make bench-python: dask-kubernetes 2024.4.2 classic KubeCluster vs dask_kube.KubeCluster,
# constructor to N connected workers, machine CPU meanwhile and client peak RSS, side by side,
# each deploy mode of classic (local, remote) against its dask_kube counterpart (run.py, driver.py).
# A benchmark, not a test: it prints figures and asserts nothing about them.
#
#   BENCH_N=4 BENCH_REPEATS=3 e2e-tests/bench-python/run.sh [--sides classic,dask-kube]
#
# Env: BENCH_N (4), BENCH_REPEATS (3), BENCH_OUT_DIR, VENV (the venv with dask_kube, as
# `make venv` makes it), BENCH_CLASSIC_VENV (made from ../bench-scale/requirements-classic.txt
# when missing or different; ../bench-scale/lib.sh), and the local cluster's DASK_K8S_* / DASK_POD_* variables.
# Uses the local cluster if it is up, else starts it and stops it at the end.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE_DIR="${CACHE_DIR:-$HOME/.cache/dask-on-k8s}"
VENV="${VENV:-$CACHE_DIR/venv}"
CLASSIC_VENV="${BENCH_CLASSIC_VENV:-$CACHE_DIR/venv-classic}"
log() { echo "bench-python: $*" >&2; }

"$VENV/bin/python" -c 'import dask_kube' 2>/dev/null || { log "no dask_kube in $VENV: run make venv"; exit 1; }
source "$REPO/e2e-tests/bench-scale/lib.sh"
ensure_classic_venv "$CLASSIC_VENV"
use_local_cluster
# Classic's scheduler runs in the driver process: its worker pods reach it on the bridge.
SCHED_HOST="$(pod_bridge_address)"

OUT="${BENCH_OUT_DIR:-$(mktemp -d /tmp/bench-python-XXXXXX)}"
log "dask_kube $("$VENV/bin/python" -c 'import dask_kube; print(dask_kube.__version__)') at $(git -C "$REPO" rev-parse --short HEAD), load avg $(cut -d' ' -f1 /proc/loadavg), $(nproc) cores"
python3 "$HERE/run.py" --n "${BENCH_N:-4}" --repeats "${BENCH_REPEATS:-3}" \
  --dask-kube-python "$VENV/bin/python" --classic-python "$CLASSIC_VENV/bin/python" \
  --scheduler-host "$SCHED_HOST" --kubectl kubectl --out-dir "$OUT" "$@"
