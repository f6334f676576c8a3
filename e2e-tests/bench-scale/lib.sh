# Sourced by the benchmarks' run.sh (bench-scale, bench-python): what both need around the
# local cluster and dask-kubernetes classic. Expects CACHE_DIR, log() and the cluster's
# DASK_K8S_* / DASK_POD_* variables.
BENCH_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_CLUSTER="$BENCH_LIB_DIR/../local-cluster/cluster"

# ensure_classic_venv VENV: dask-kubernetes 2024.4.2 (requirements-classic.txt) in VENV,
# made again when the requirements changed.
ensure_classic_venv() {
  local venv="$1" reqs="$BENCH_LIB_DIR/requirements-classic.txt"
  if ! cmp -s "$reqs" "$venv/requirements-classic.txt"; then
    log "creating the classic venv $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$venv/requirements-classic.txt"
  fi
}

# use_local_cluster: the local cluster's env in this shell; starts it when it is not up and
# stops it at exit (only then).
use_local_cluster() {
  bench_started_cluster=0
  if ! "$BENCH_CLUSTER" status >/dev/null 2>&1; then
    log "the local cluster is not up: starting it"
    "$BENCH_CLUSTER" up >/dev/null
    bench_started_cluster=1
  fi
  trap 'if ((bench_started_cluster)); then log "stopping the local cluster"; "$BENCH_CLUSTER" down >&2 || true; fi' EXIT
  eval "$("$BENCH_CLUSTER" env)"
}

# pod_bridge_address: this machine's address on the nodes' network, where a scheduler running
# on this machine (classic's deploy_mode="local") is reachable from worker pods.
pod_bridge_address() {
  local state_dir address
  state_dir="$(realpath -m -- "${DASK_K8S_STATE_DIR:-$HOME/.cache/dask-on-k8s/cluster}")"
  address="$(sed -n 's/^NODE_GATEWAY=//p' "$state_dir/cluster.env" 2>/dev/null || true)"
  [[ -n "$address" ]] || { log "ERROR: no NODE_GATEWAY recorded in $state_dir/cluster.env (is the cluster up?)"; return 1; }
  echo "$address"
}
