#!/usr/bin/env bash
# down.d hook: stop the node agent gracefully (it stops every pod process with its grace
# period and removes its network namespaces and bridge), then sweep whatever is left:
# container process groups recorded in $STATE_DIR/pods/*/*.pid and this instance's
# network namespaces (every process inside is killed), so `cluster down` leaves nothing.
#
# Env (from `cluster down`): KUBECONFIG, STATE_DIR, REPO_ROOT, PIDS_DIR, LOG_DIR.
# Optional: DASK_NODE_AGENT_STOP_TIMEOUT seconds to wait for the agent (default 45).
set -euo pipefail
# Zombies (killed, not yet reaped by a lazy PID 1) count as gone.
pid_alive() { kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

: "${STATE_DIR:?run by 'cluster down'}"
PIDS_DIR="${PIDS_DIR:-$STATE_DIR/pids}"
PID_FILE="$PIDS_DIR/node-agent.pid"
AGENT_DIR="$STATE_DIR/node-agent"
TIMEOUT="${DASK_NODE_AGENT_STOP_TIMEOUT:-45}"
log() { echo "30-node-agent: $*" >&2; }

NODE_NAME=local-node BRIDGE=dkbr0 POD_SUBNET=10.244.0.0/24 BIN=
# shellcheck disable=SC1091
[[ -f "$AGENT_DIR/agent.env" ]] && source "$AGENT_DIR/agent.env"

if [[ -f "$PID_FILE" ]]; then
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  if [[ -n "$pid" ]] && pid_alive "$pid"; then
    log "stopping the node agent (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if pid_alive "$pid"; then log "agent still running after ${TIMEOUT}s (cluster down will kill it)"; fi
  fi
fi

if [[ -n "$BIN" && -x "$BIN" ]]; then
  "$BIN" cleanup --state-dir "$STATE_DIR" --node-name "$NODE_NAME" --bridge "$BRIDGE" \
    --pod-subnet "$POD_SUBNET" --remove-bridge || log "cleanup reported an error"
else
  # No binary: kill the recorded container process groups at least.
  for f in "$STATE_DIR"/pods/*/*.pid; do
    [[ -e "$f" ]] || continue
    p="$(tr -dc '0-9' <"$f")"
    [[ -n "$p" ]] && kill -KILL -- "-$p" 2>/dev/null || true
    rm -f "$f"
  done
fi
