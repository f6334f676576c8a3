#!/usr/bin/env bash
# up.d hook: serve the dask-worker-defaults policy (the real .wasm, annotated by kwctl with
# policy-metadata.yml and README.md as the release artifact is, through `policy-runner serve`) as a
# mutating admission webhook on 127.0.0.1 and register it with a
# MutatingWebhookConfiguration.
#
# Env (from `cluster up`): KUBECONFIG, STATE_DIR, REPO_ROOT, PIDS_DIR, LOG_DIR.
# Optional:
#   DASK_POLICY_WEBHOOK_PORT      listen port on 127.0.0.1 (default 8443)
#   DASK_POLICY_SETTINGS_JSON     policy settings as a JSON object (default: none, i.e. {})
#   DASK_POLICY_RUNNER_PROFILE    cargo profile of policy-runner (default dev; release-host is faster)
#   DASK_POLICY_WEBHOOK_TIMEOUT   seconds to wait for readiness (default 120)
#   CARGO_TARGET_DIR              default ~/.cache/dask-on-k8s/target
#   KWCTL                         kwctl to annotate with (default: kwctl on PATH, else
#                                 ~/.cache/dask-on-k8s/bin/kwctl, where `make setup` puts it)
#
# Idempotent: a webhook started by an earlier run (our pid file) is stopped and replaced,
# and the configuration is applied, not created.
set -euo pipefail

: "${KUBECONFIG:?run by 'cluster up'}" "${STATE_DIR:?run by 'cluster up'}" "${REPO_ROOT:?run by 'cluster up'}"
PIDS_DIR="${PIDS_DIR:-$STATE_DIR/pids}"
LOG_DIR="${LOG_DIR:-$STATE_DIR/logs}"
PORT="${DASK_POLICY_WEBHOOK_PORT:-8443}"
PROFILE="${DASK_POLICY_RUNNER_PROFILE:-dev}"
READY_TIMEOUT="${DASK_POLICY_WEBHOOK_TIMEOUT:-120}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"

NAME=policy-webhook
POLICY=dask-worker-defaults
CERT_DIR="$STATE_DIR/webhook"
PID_FILE="$PIDS_DIR/$NAME.pid"
LOG_FILE="$LOG_DIR/$NAME.log"
KUBECTL="${KUBECTL:-/usr/bin/kubectl}"
WASM="$CARGO_TARGET_DIR/wasm32-wasip1/release/dask_worker_defaults.wasm"
ANNOTATED_WASM="$CARGO_TARGET_DIR/wasm32-wasip1/release/annotated-policy.wasm"
case "$PROFILE" in
  dev) RUNNER="$CARGO_TARGET_DIR/debug/policy-runner" ;;
  *) RUNNER="$CARGO_TARGET_DIR/$PROFILE/policy-runner" ;;
esac

log() { echo "20-policy-webhook: $*" >&2; }
die() { echo "20-policy-webhook: ERROR: $*" >&2; exit 1; }

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

# ---- build (cargo decides what is stale; a no-op takes a second)
if command -v cargo >/dev/null 2>&1; then
  log "building policy-runner ($PROFILE) and the policy module (wasm32-wasip1, release)"
  # The same build as the Makefile's unit tests and the node-agent hook (DASK_K8S_HOST_BUILD):
  # building policy-runner alone would unify other features and compile wasmtime again.
  # shellcheck disable=SC2086
  (cd "$REPO_ROOT" && cargo build --quiet --profile "$PROFILE" ${DASK_K8S_HOST_BUILD:---workspace --all-targets}) ||
    die "cargo build of the host binaries (policy-runner) failed"
  (cd "$REPO_ROOT" && cargo build --quiet --release --target wasm32-wasip1 -p dask-worker-defaults) ||
    die "cargo build of the policy module failed"
else
  log "cargo not found: using existing binaries"
fi
[[ -x "$RUNNER" ]] || die "policy-runner not found at $RUNNER"
[[ -f "$WASM" ]] || die "policy module not found at $WASM (build it with 'make wasm')"

# ---- the release artifact: metadata in the module (`make annotate` does the same)
KWCTL="${KWCTL:-$(command -v kwctl || echo "$HOME/.cache/dask-on-k8s/bin/kwctl")}"
[[ -x "$KWCTL" ]] || die "kwctl not found ($KWCTL): run 'make setup', which installs it"
"$KWCTL" annotate -m "$REPO_ROOT/policy-metadata.yml" -u "$REPO_ROOT/README.md" \
  -o "$ANNOTATED_WASM" "$WASM" || die "kwctl annotate failed"

mkdir -p "$PIDS_DIR" "$LOG_DIR" "$CERT_DIR"

# ---- stop our previous webhook, if any (only the pid we recorded)
if [[ -f "$PID_FILE" ]]; then
  old="$(tr -dc '0-9' <"$PID_FILE")"
  if alive "$old" && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q "policy-runner"; then
    log "stopping previous webhook (pid $old)"
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 50); do alive "$old" || break; sleep 0.2; done
    if alive "$old"; then kill -KILL "$old" 2>/dev/null || true; fi
  fi
  rm -f "$PID_FILE"
fi

if ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
  die "port $PORT is already in use ($(ss -Hltnp "sport = :$PORT" 2>/dev/null | head -n1)); set DASK_POLICY_WEBHOOK_PORT"
fi

# ---- start
args=(serve --module "$ANNOTATED_WASM" --policy-name "$POLICY" --listen "127.0.0.1:$PORT" --cert-dir "$CERT_DIR")
if [[ -n "${DASK_POLICY_SETTINGS_JSON:-}" ]]; then
  args+=(--settings-json "$DASK_POLICY_SETTINGS_JSON")
fi
echo "===== $(date -u +%FT%TZ) starting: $RUNNER ${args[*]}" >>"$LOG_FILE"
setsid bash -c 'echo $$ > "$0"; exec "$@"' "$PID_FILE" "$RUNNER" "${args[@]}" \
  </dev/null >>"$LOG_FILE" 2>&1 8>&- &
for _ in $(seq 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
[[ -s "$PID_FILE" ]] || die "could not start the webhook (no pid file); see $LOG_FILE"
pid="$(cat "$PID_FILE")"

# ---- wait for readiness (the module is compiled at startup)
deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS --max-time 2 --cacert "$CERT_DIR/ca.crt" "https://127.0.0.1:$PORT/readiness" >/dev/null 2>&1; do
  if ! alive "$pid"; then
    tail -n 30 "$LOG_FILE" >&2 || true
    die "the webhook exited during startup; see $LOG_FILE"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 30 "$LOG_FILE" >&2 || true
    die "the webhook was not ready after ${READY_TIMEOUT}s; see $LOG_FILE"
  fi
  sleep 0.3
done
log "webhook ready on https://127.0.0.1:$PORT (pid $pid)"

# ---- register it
CA_BUNDLE="$(base64 -w0 <"$CERT_DIR/ca.crt")"
URL="https://127.0.0.1:$PORT/validate/$POLICY"
NOT_KUBE_SYSTEM='{matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: ["kube-system"]}]}'
"$KUBECTL" apply -f - >&2 <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: $POLICY
  labels:
    app.kubernetes.io/managed-by: dask-on-k8s-local-cluster
webhooks:
  # objectSelector is a single AND-ed selector, so each worker label scheme gets its own
  # webhook; the policy checks the labels again itself.
  - name: worker-pods.$POLICY.dask.org
    clientConfig: {url: "$URL", caBundle: "$CA_BUNDLE"}
    rules:
      - {apiGroups: [""], apiVersions: ["v1"], resources: ["pods"], operations: ["CREATE"]}
    objectSelector:
      matchLabels: {dask.org/component: worker}
    namespaceSelector: $NOT_KUBE_SYSTEM
    failurePolicy: Fail
    sideEffects: None
    timeoutSeconds: 2
    admissionReviewVersions: ["v1"]
  - name: classic-worker-pods.$POLICY.dask.org
    clientConfig: {url: "$URL", caBundle: "$CA_BUNDLE"}
    rules:
      - {apiGroups: [""], apiVersions: ["v1"], resources: ["pods"], operations: ["CREATE"]}
    objectSelector:
      matchLabels: {app: dask, component: dask-worker}
    namespaceSelector: $NOT_KUBE_SYSTEM
    failurePolicy: Fail
    sideEffects: None
    timeoutSeconds: 2
    admissionReviewVersions: ["v1"]
  # Workloads with pod templates: the labels to match are on the template, which an
  # objectSelector cannot see, so the policy selects templates itself.
  - name: workloads.$POLICY.dask.org
    clientConfig: {url: "$URL", caBundle: "$CA_BUNDLE"}
    rules:
      - {apiGroups: ["apps"], apiVersions: ["v1"], resources: ["deployments", "replicasets", "statefulsets", "daemonsets"], operations: ["CREATE", "UPDATE"]}
      - {apiGroups: ["batch"], apiVersions: ["v1"], resources: ["jobs"], operations: ["CREATE"]}
      - {apiGroups: ["batch"], apiVersions: ["v1"], resources: ["cronjobs"], operations: ["CREATE", "UPDATE"]}
      - {apiGroups: ["kubernetes.dask.org"], apiVersions: ["v1"], resources: ["daskclusters", "daskworkergroups"], operations: ["CREATE", "UPDATE"]}
    namespaceSelector: $NOT_KUBE_SYSTEM
    failurePolicy: Fail
    sideEffects: None
    timeoutSeconds: 2
    admissionReviewVersions: ["v1"]
EOF

# ---- smoke test: the apiserver reaches the webhook (server-side dry run, nothing stored)
smoke="$("$KUBECTL" create --dry-run=server -o json -f - 2>&1 <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: policy-webhook-smoke-test
  namespace: default
  labels: {dask.org/component: worker}
spec:
  containers:
    - name: worker
      image: ghcr.io/dask/dask:latest
      args: ["dask", "worker", "tcp://smoke-scheduler:8786"]
EOF
)" || die "server-side dry run of a worker pod failed, the apiserver cannot use the webhook: $smoke"
if [[ "$(jq -r '.spec.tolerations // [] | length' <<<"$smoke" 2>/dev/null)" == 0 ]]; then
  log "WARNING: the dry-run worker pod came back without tolerations; check $LOG_FILE"
else
  log "webhook registered and verified (dry-run worker pod was mutated)"
fi
