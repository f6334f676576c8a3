#!/usr/bin/env bash
# up.d hook: build and start the node agent (e2e-tests/local-cluster/node-agent), which
# registers a Node and plays kubelet + scheduler for it: pods run as local processes, one
# network namespace per pod on a Linux bridge. Waits until the Node is Ready.
#
# Env (from `cluster up`): KUBECONFIG, STATE_DIR, REPO_ROOT, PIDS_DIR, LOG_DIR.
# Optional:
#   DASK_NODE_NAME            node name (default local-node)
#   DASK_NODE_TAINTS          taints, comma or space separated, e.g.
#                             k8s.dask.org/dedicated=worker:NoSchedule (default: none)
#   DASK_NODE_LABELS          labels key=value, comma or space separated (default: none)
#   DASK_KUBELET_PORT         kubelet HTTPS port on 127.0.0.1 (default 10250)
#   DASK_POD_SUBNET           pod subnet (default 10.244.0.0/24); two clusters need two subnets
#   DASK_POD_BRIDGE           bridge device (default dkbr0); two clusters need two bridges
#   DASK_VENV                 python venv for dask images (default ~/.cache/dask-on-k8s/venv;
#                             created from e2e-tests/requirements.txt when missing)
#   DASK_NODE_AGENT_CONFIG    image mapping file (default $STATE_DIR/node-agent/images.yaml,
#                             written from the built-in mapping when missing, and rewritten
#                             when the built-in mapping changed and nobody edited the file)
#   DASK_NODE_AGENT_PROFILE   cargo profile (default dev; release-host is faster)
#   DASK_NODE_AGENT_TIMEOUT   seconds to wait for the Node to be Ready (default 60)
#   DASK_NODE_AGENT_SKIP=1    do nothing (a cluster without a node)
#   CARGO_TARGET_DIR          default ~/.cache/dask-on-k8s/target
set -euo pipefail
# Zombies (killed, not yet reaped by a lazy PID 1) count as gone.
pid_alive() { kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

: "${KUBECONFIG:?run by 'cluster up'}" "${STATE_DIR:?run by 'cluster up'}" "${REPO_ROOT:?run by 'cluster up'}"
PIDS_DIR="${PIDS_DIR:-$STATE_DIR/pids}"
LOG_DIR="${LOG_DIR:-$STATE_DIR/logs}"
log() { echo "30-node-agent: $*" >&2; }
die() { echo "30-node-agent: ERROR: $*" >&2; exit 1; }

if [[ "${DASK_NODE_AGENT_SKIP:-0}" == 1 ]]; then
  log "DASK_NODE_AGENT_SKIP=1: not starting the node agent"
  exit 0
fi

NODE_NAME="${DASK_NODE_NAME:-local-node}"
KUBELET_PORT="${DASK_KUBELET_PORT:-10250}"
POD_SUBNET="${DASK_POD_SUBNET:-10.244.0.0/24}"
BRIDGE="${DASK_POD_BRIDGE:-dkbr0}"
VENV="${DASK_VENV:-$HOME/.cache/dask-on-k8s/venv}"
PROFILE="${DASK_NODE_AGENT_PROFILE:-dev}"
TIMEOUT="${DASK_NODE_AGENT_TIMEOUT:-60}"
AGENT_DIR="$STATE_DIR/node-agent"
CONFIG="${DASK_NODE_AGENT_CONFIG:-$AGENT_DIR/images.yaml}"
PID_FILE="$PIDS_DIR/node-agent.pid"
LOG_FILE="$LOG_DIR/node-agent.log"
KUBECTL="${KUBECTL:-kubectl}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"
case "$PROFILE" in
  dev) BIN="$CARGO_TARGET_DIR/debug/node-agent" ;;
  *) BIN="$CARGO_TARGET_DIR/$PROFILE/node-agent" ;;
esac

[[ "$(id -u)" == 0 ]] || die "the node agent needs root (network namespaces, bridge, bind mounts)"
command -v ip >/dev/null || die "iproute2 (ip) is required"
command -v nft >/dev/null || die "nftables (nft) is required: ClusterIP Services are DNATed with it (e2e-tests/setup.sh installs it)"

# ---- build (cargo decides what is stale); dask-kube too: the dask-kube image maps to it
if command -v cargo >/dev/null 2>&1; then
  log "building node-agent and dask-kube ($PROFILE)"
  # One package set for every host binary (see 20-policy-webhook.sh and the Makefile).
  # shellcheck disable=SC2086
  (cd "$REPO_ROOT" && cargo build --quiet --profile "$PROFILE" ${DASK_K8S_HOST_BUILD:---workspace --all-targets}) ||
    die "cargo build of the host binaries (node-agent, dask-kube) failed"
else
  log "cargo not found: using the existing binaries"
fi
[[ -x "$BIN" ]] || die "node-agent not found at $BIN"
[[ -x "$(dirname "$BIN")/dask-kube" ]] || log "WARNING: no dask-kube next to $BIN: the dask-kube image will not start"

# ---- python venv for the dask images
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating the venv $VENV from e2e-tests/requirements.txt"
  python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install --quiet -r "$REPO_ROOT/e2e-tests/requirements.txt" || die "pip install failed"
fi

mkdir -p "$PIDS_DIR" "$LOG_DIR" "$AGENT_DIR"
# The built-in mapping (dask, python, dask-kube, host). A copy of what was generated last time
# sits next to the default file: while the two are equal nobody edited it, so a newer built-in
# mapping replaces it. A file given by DASK_NODE_AGENT_CONFIG is only written when missing.
NEW="$AGENT_DIR/.images.yaml.new"
GENERATED="$AGENT_DIR/.images.yaml.generated"
"$BIN" default-config --venv "$VENV" --dask-kube-dir "$(dirname "$BIN")" >"$NEW" || die "node-agent default-config failed"
if [[ "$CONFIG" == "$AGENT_DIR/images.yaml" && -f "$CONFIG" && ! -f "$GENERATED" ]] &&
  [[ "$(head -n1 "$CONFIG")" == "$(head -n1 "$NEW")" ]] && ! cmp -s "$CONFIG" "$NEW"; then
  # Written by an older hook that kept no copy: keep a backup and treat it as generated.
  cp -f "$CONFIG" "$CONFIG.bak"
  cp -f "$CONFIG" "$GENERATED"
  log "the image mapping predates the generated copy; the old one is in $CONFIG.bak"
fi
if [[ ! -f "$CONFIG" ]] || { [[ "$CONFIG" == "$AGENT_DIR/images.yaml" ]] && cmp -s "$CONFIG" "$GENERATED" && ! cmp -s "$CONFIG" "$NEW"; }; then
  [[ "$CONFIG" == "$AGENT_DIR/images.yaml" ]] && cp -f "$NEW" "$GENERATED"
  mv -f "$NEW" "$CONFIG"
  log "wrote image mapping $CONFIG"
else
  rm -f "$NEW"
fi

# Recorded for the down hook (same names => it finds this instance's leftovers).
cat >"$AGENT_DIR/agent.env" <<ENV
NODE_NAME=$NODE_NAME
BRIDGE=$BRIDGE
POD_SUBNET=$POD_SUBNET
BIN=$BIN
ENV

# ---- stop an agent of an earlier run (only the pid we recorded)
if [[ -f "$PID_FILE" ]]; then
  old="$(tr -dc '0-9' <"$PID_FILE")"
  if [[ -n "$old" ]] && pid_alive "$old"; then
    log "stopping the previous node agent (pid $old)"
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 200); do pid_alive "$old" || break; sleep 0.2; done
  fi
  rm -f "$PID_FILE"
fi

args=(run --state-dir "$STATE_DIR" --kubeconfig "$KUBECONFIG" --config "$CONFIG"
      --node-name "$NODE_NAME" --kubelet-port "$KUBELET_PORT" --pod-subnet "$POD_SUBNET" --bridge "$BRIDGE")
for t in ${DASK_NODE_TAINTS:+${DASK_NODE_TAINTS//,/ }}; do args+=(--taint "$t"); done
for l in ${DASK_NODE_LABELS:+${DASK_NODE_LABELS//,/ }}; do args+=(--node-label "$l"); done

echo "===== $(date -u +%FT%TZ) starting: $BIN ${args[*]}" >>"$LOG_FILE"
setsid bash -c 'echo $$ > "$0"; exec "$@"' "$PID_FILE" "$BIN" "${args[@]}" \
  </dev/null >>"$LOG_FILE" 2>&1 8>&- &
for _ in $(seq 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
pid="$(cat "$PID_FILE" 2>/dev/null || true)"
[[ -n "$pid" ]] || die "node agent did not start; see $LOG_FILE"

ready() {
  [[ "$("$KUBECTL" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]] &&
    [[ "$("$KUBECTL" get node "$NODE_NAME" -o jsonpath='{.status.daemonEndpoints.kubeletEndpoint.Port}' 2>/dev/null)" == "$KUBELET_PORT" ]]
}
deadline=$((SECONDS + TIMEOUT))
until ready; do
  if ! pid_alive "$pid"; then
    tail -n 30 "$LOG_FILE" >&2 || true
    die "node agent (pid $pid) exited; see $LOG_FILE"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 30 "$LOG_FILE" >&2 || true
    die "node $NODE_NAME not Ready after ${TIMEOUT}s; see $LOG_FILE"
  fi
  sleep 0.5
done
log "node $NODE_NAME Ready (agent pid $pid, pods on $BRIDGE $POD_SUBNET, kubelet 127.0.0.1:$KUBELET_PORT)"
