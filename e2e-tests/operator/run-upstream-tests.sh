#!/usr/bin/env bash
# Runs dask-kubernetes 2026.3.0's own operator tests (operator/kubecluster/tests and
# operator/controller/tests, from the wheel, unchanged) on the local cluster, with
# conftest.py here in place of upstream's kind/kopf fixtures, against
#   --operator dask-kube   the dask-kube operator `cluster up` deployed (default), or
#   --operator kopf        upstream's kopf operator from the same wheel, run by upstream's own
#                          KopfRunner in pytest's process, for the reference pass counts (the
#                          deployed operator is scaled to 0 meanwhile, and back at the end).
#
#   e2e-tests/operator/run-upstream-tests.sh [--operator dask-kube|kopf] [pytest args...]
#
# Needs: the local cluster up (its kubeconfig found as e2e-tests/cluster-harness finds it)
# with its hooks (up.d/30-dask-operator.sh: the operator; images/build.sh: the image
# dask-kubernetes:dev), and the dask-kube binary for `operator crds` ($DASK_KUBE_BIN, default
# $CARGO_TARGET_DIR/debug/dask-kube; built here if missing). The venv ($VENV, default
# ~/.cache/dask-on-k8s/venv-operator-tests) gets requirements.txt from PyPI on first use.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$HOME/.cache/dask-on-k8s/venv-operator-tests}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"
export DASK_KUBE_BIN="${DASK_KUBE_BIN:-$CARGO_TARGET_DIR/debug/dask-kube}"
OPERATOR=dask-kube
if [[ "${1:-}" == --operator ]]; then
  OPERATOR="${2:?--operator dask-kube|kopf}"
  shift 2
fi
case "$OPERATOR" in dask-kube | kopf) ;; *) echo "run-upstream-tests: --operator dask-kube or kopf, not $OPERATOR" >&2; exit 2 ;; esac
export DASK_UPSTREAM_TESTS_OPERATOR="$OPERATOR"

if [[ ! -x "$DASK_KUBE_BIN" ]]; then
  (cd "$REPO" && cargo build --locked -p dask-kube --bin dask-kube)
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet -r "$HERE/requirements.txt"

if [[ -z "${KUBECONFIG:-}" ]]; then
  export KUBECONFIG="${DASK_K8S_STATE_DIR:-$HOME/.cache/dask-on-k8s/cluster}/kubeconfig"
fi
KUBECTL=(kubectl -n dask-kube-operator)
DEPLOYMENT=deployment/dask-kube-operator
"${KUBECTL[@]}" get "$DEPLOYMENT" >/dev/null ||
  { echo "run-upstream-tests: no $DEPLOYMENT in namespace dask-kube-operator: start the cluster with e2e-tests/local-cluster/cluster up (up.d/30-dask-operator.sh)" >&2; exit 1; }

# Upstream's test files next to our conftest, outside the installed package: pytest would
# otherwise load the package's own conftest.py (kind, docker, helm).
WORK="$(mktemp -d)"
cleanup() {
  if [[ "$OPERATOR" == kopf ]]; then
    "${KUBECTL[@]}" scale "$DEPLOYMENT" --replicas=1 >/dev/null || true
    "${KUBECTL[@]}" rollout status "$DEPLOYMENT" --timeout=120s >/dev/null ||
      echo "run-upstream-tests: the deployed operator did not come back; kubectl -n dask-kube-operator get pods" >&2
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
if [[ "$OPERATOR" == kopf ]]; then
  # One operator at a time: both would create every worker.
  "${KUBECTL[@]}" scale "$DEPLOYMENT" --replicas=0 >/dev/null
  "${KUBECTL[@]}" wait --for=delete pod -l app.kubernetes.io/name=dask-kube-operator --timeout=120s >/dev/null 2>&1 || true
fi
PKG="$("$VENV/bin/python" -c 'import dask_kubernetes, os; print(os.path.dirname(dask_kubernetes.__file__))')"
mkdir -p "$WORK/kubecluster" "$WORK/controller"
cp "$PKG"/operator/kubecluster/tests/test_*.py "$WORK/kubecluster/"
cp -r "$PKG"/operator/controller/tests/* "$WORK/controller/"
cp "$HERE/conftest.py" "$HERE/pytest.ini" "$WORK/"
cd "$WORK"
echo "run-upstream-tests: dask-kubernetes $("$VENV/bin/python" -c 'import dask_kubernetes; print(dask_kubernetes.__version__)') tests against the $OPERATOR operator" >&2
"$VENV/bin/python" -m pytest -p no:cacheprovider --rootdir "$WORK" "$@" kubecluster controller
