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
CLUSTER="$REPO/e2e-tests/local-cluster/cluster"
STATE_DIR="$(realpath -m -- "${DASK_K8S_STATE_DIR:-$HOME/.cache/dask-on-k8s/cluster}")"
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

# ---- dask-kubernetes classic in its own venv
if ! cmp -s "$HERE/requirements-classic.txt" "$VENV/requirements-classic.txt"; then
  log "creating the classic venv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements-classic.txt"
  cp "$HERE/requirements-classic.txt" "$VENV/requirements-classic.txt"
fi

# ---- the local cluster (started here only if it is not up; then stopped at the end)
started=0
if ! "$CLUSTER" status >/dev/null 2>&1; then
  log "the local cluster is not up: starting it"
  "$CLUSTER" up >/dev/null
  started=1
fi
stop_cluster() { if ((started)); then log "stopping the local cluster"; "$CLUSTER" down >&2 || true; fi; }
trap stop_cluster EXIT
eval "$("$CLUSTER" env)"

# The classic scheduler runs in this machine's network namespace: its worker pods reach it
# on the node agent's pod bridge.
BRIDGE="$(sed -n 's/^BRIDGE=//p' "$STATE_DIR/node-agent/agent.env" 2>/dev/null || true)"
[[ -n "$BRIDGE" ]] || { log "ERROR: no node agent bridge recorded in $STATE_DIR/node-agent/agent.env"; exit 1; }
SCHED_HOST="$(ip -4 -o addr show dev "$BRIDGE" | awk '{split($4, a, "/"); print a[1]; exit}')"
[[ -n "$SCHED_HOST" ]] || { log "ERROR: bridge $BRIDGE has no IPv4 address"; exit 1; }

COMMIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$REPO" diff --quiet HEAD -- crates 2>/dev/null || COMMIT="$COMMIT+dirty"
python3 "$HERE/run.py" --rawcreate "$BIN_DIR/rawcreate" --dask-kube "$DASK_KUBE" \
  --classic-python "$VENV/bin/python" --scheduler-host "$SCHED_HOST" --kubectl kubectl \
  --dask-kube-commit "$COMMIT" --machine "$(nproc) cores shared with other work, load avg $(cut -d' ' -f1 /proc/loadavg) at start" "$@"
