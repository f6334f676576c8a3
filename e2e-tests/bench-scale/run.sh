#!/usr/bin/env bash
# make bench-scale: time to N Pending worker pods and back to 0, side by side in one run:
# the raw creator (the apiserver's own limit), dask-kubernetes classic, dask-kube.
# See README.md. Builds what it needs, uses the local cluster if it is up (else starts it
# and stops it at the end), then runs run.py; extra arguments go to run.py.
#
# Env: BENCH_N (100,1000), BENCH_REPEATS (3), BENCH_SIDES, BENCH_RAW_CONCURRENCY (64),
# BENCH_OUT_DIR, DASK_KUBE_BIN (skip the cargo build), BENCH_CLASSIC_VENV, and the local
# cluster's own DASK_K8S_* / DASK_POD_* variables (ports, state dir, pod subnet).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE_DIR="${CACHE_DIR:-$HOME/.cache/dask-on-k8s}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
VENV="${BENCH_CLASSIC_VENV:-$CACHE_DIR/venv-classic}"
BIN_DIR="$CACHE_DIR/bench-scale"
log() { echo "bench-scale: $*" >&2; }

# ---- the raw creator / watcher (Go, standard library only)
mkdir -p "$BIN_DIR"
log "building rawcreate"
(cd "$HERE/rawcreate" && go build -o "$BIN_DIR/rawcreate" .)

# ---- dask-kube (release build, as users run it)
if [[ -n "${DASK_KUBE_BIN:-}" ]]; then
  DASK_KUBE="$DASK_KUBE_BIN"
else
  log "building dask-kube (release-host)"
  (cd "$REPO" && cargo build --quiet --locked --profile release-host -p dask-kube)
  DASK_KUBE="$CARGO_TARGET_DIR/release-host/dask-kube"
fi

# ---- dask-kubernetes classic in its own venv, the local cluster, its pod bridge
source "$HERE/lib.sh"
ensure_classic_venv "$VENV"
use_local_cluster
SCHED_HOST="$(pod_bridge_address)"

COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || COMMIT="$COMMIT+dirty"
python3 "$HERE/run.py" --rawcreate "$BIN_DIR/rawcreate" --dask-kube "$DASK_KUBE" \
  --classic-python "$VENV/bin/python" --scheduler-host "$SCHED_HOST" --kubectl kubectl \
  --dask-kube-commit "$COMMIT" --machine "$(nproc) cores shared with other work, load avg $(cut -d' ' -f1 /proc/loadavg) at start" "$@"
