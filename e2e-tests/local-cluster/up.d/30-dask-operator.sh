#!/usr/bin/env bash
# up.d hook: the dask-kube operator for every namespace, as a cluster with the operator has
# it: the CRDs (`dask-kube operator crds`), the ClusterRole, its binding and ServiceAccount
# (crates/dask-kube/deploy/operator/rbac-cluster.yaml), and the Deployment of
# deploy/operator/operator.yaml running `dask-kube operator run` from the dask-kube image.
#
# The image is the one images/build.sh makes of the workspace's debug dask-kube binary. That
# binary is built here first (cargo's no-op when current) and the image pushed again if it
# changed since `cluster up` built the images (and $STATE_DIR/images.digests, which `cluster
# env` reads, updated); the Deployment names it by digest
# (ghcr.io/dask-on-k8s/dask-kube:<version>@sha256:...), so the nodes run exactly what was
# built: a tag with IfNotPresent would keep a node's older copy, and a new binary changes
# the digest, which rolls the Deployment.
#
# Env (from `cluster up`): KUBECONFIG, STATE_DIR, REPO_ROOT, PIDS_DIR, LOG_DIR.
# Optional:
#   DASK_OPERATOR_TIMEOUT     seconds to wait for the operator to be ready (default 180)
#   DASK_OPERATOR_SKIP=1      install nothing (a cluster without the operator)
#   CARGO_TARGET_DIR          default ~/.cache/dask-on-k8s/target
#   DASK_K8S_HOST_BUILD       cargo's package selection for the binary (the Makefile's
#                             `--workspace --all-targets`, so nothing compiles twice); default
#                             `-p dask-kube --bin dask-kube`
#   DASK_K8S_IMAGES_BUILDER   images/build.sh or a stand-in (as `cluster up` uses it)
# Idempotent: everything is applied; an unchanged binary changes nothing.
set -euo pipefail

: "${KUBECONFIG:?run by 'cluster up'}" "${STATE_DIR:?run by 'cluster up'}" "${REPO_ROOT:?run by 'cluster up'}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"
READY_TIMEOUT="${DASK_OPERATOR_TIMEOUT:-180}"
DEPLOY="$REPO_ROOT/crates/dask-kube/deploy/operator"
NS=dask-kube-operator
NAME=dask-kube-operator
BIN="$CARGO_TARGET_DIR/debug/dask-kube"
BUILDER="${DASK_K8S_IMAGES_BUILDER:-$REPO_ROOT/e2e-tests/local-cluster/images/build.sh}"
# What dask-kube-operator logs once every watch has listed (OPERATOR_READY_LINE).
READY_LINE="dask-kube-operator ready"

log() { echo "30-dask-operator: $*" >&2; }
die() { echo "30-dask-operator: ERROR: $*" >&2; exit 1; }

if [[ "${DASK_OPERATOR_SKIP:-}" == 1 ]]; then
  log "DASK_OPERATOR_SKIP=1: no operator installed"
  exit 0
fi

# ---- the binary, and its image as built
if command -v cargo >/dev/null 2>&1; then
  # shellcheck disable=SC2086 # a cargo argument list
  (cd "$REPO_ROOT" && cargo build --quiet --locked ${DASK_K8S_HOST_BUILD:--p dask-kube --bin dask-kube}) ||
    die "cargo build of dask-kube failed"
fi
[[ -x "$BIN" ]] || die "no dask-kube binary at $BIN (cargo build -p dask-kube)"
registry="$(awk '$1 == "addr:" {print $2; exit}' "$STATE_DIR/registry.yml" 2>/dev/null || true)"
[[ -n "$registry" ]] || die "no registry address in $STATE_DIR/registry.yml (is the cluster up?)"
digests="$("$BUILDER" --registry "$registry" --dask-kube-bin "$BIN" dask-kube)" ||
  die "building or pushing the dask-kube image failed ($BUILDER)"
# REF@DIGEST lines; the versioned reference (ghcr.io/dask-on-k8s/dask-kube:<version>), not :latest.
image="$(grep -E '^ghcr\.io/dask-on-k8s/dask-kube:[^@]+@sha256:[0-9a-f]{64}$' <<<"$digests" | grep -v ':latest@' | head -n1 || true)"
[[ -n "$image" ]] || die "$BUILDER printed no digest of ghcr.io/dask-on-k8s/dask-kube:<version>: $digests"
log "image $image"
# `cluster env` names the controller image from what `up` recorded: record this build.
if [[ -f "$STATE_DIR/images.digests" ]]; then
  { grep -v '^ghcr\.io/dask-on-k8s/dask-kube:' "$STATE_DIR/images.digests" || true
    grep '^ghcr\.io/dask-on-k8s/dask-kube:' <<<"$digests"; } >"$STATE_DIR/images.digests.tmp"
  mv "$STATE_DIR/images.digests.tmp" "$STATE_DIR/images.digests"
fi

# ---- CRDs, then RBAC, then the Deployment
"$BIN" operator crds | kubectl apply -f - >/dev/null || die "applying the CRDs failed"
kubectl wait --for=condition=established --timeout="${READY_TIMEOUT}s" \
  crd/daskclusters.kubernetes.dask.org crd/daskworkergroups.kubernetes.dask.org \
  crd/daskautoscalers.kubernetes.dask.org crd/daskjobs.kubernetes.dask.org >/dev/null ||
  die "the CRDs were not established within ${READY_TIMEOUT}s"
kubectl apply -f "$DEPLOY/rbac-cluster.yaml" >/dev/null || die "applying rbac-cluster.yaml failed"
# The manifest users apply, with the image pinned to what was just pushed.
grep -q '^ *image: ghcr.io/dask-on-k8s/dask-kube:' "$DEPLOY/operator.yaml" ||
  die "$DEPLOY/operator.yaml names no ghcr.io/dask-on-k8s/dask-kube image"
sed "s#^\( *image:\) ghcr.io/dask-on-k8s/dask-kube:.*#\1 $image#" "$DEPLOY/operator.yaml" |
  kubectl apply -f - >/dev/null || die "applying operator.yaml failed"

# ---- ready: the rollout done, and the running pod's log says every watch listed
log "waiting for the operator to be ready"
kubectl -n "$NS" rollout status deployment "$NAME" --timeout="${READY_TIMEOUT}s" >&2 ||
  die "the operator did not roll out; kubectl -n $NS logs deploy/$NAME says: $(kubectl -n "$NS" logs "deploy/$NAME" --tail=20 2>&1)"
deadline=$((SECONDS + READY_TIMEOUT))
until kubectl -n "$NS" logs "deploy/$NAME" 2>/dev/null | grep -qF "$READY_LINE"; do
  ((SECONDS < deadline)) ||
    die "the operator did not log '$READY_LINE' within ${READY_TIMEOUT}s: $(kubectl -n "$NS" logs "deploy/$NAME" --tail=20 2>&1)"
  sleep 0.5
done
log "operator ready ($(kubectl -n "$NS" get pods -l app.kubernetes.io/name=$NAME -o jsonpath='{.items[0].metadata.name}'))"
