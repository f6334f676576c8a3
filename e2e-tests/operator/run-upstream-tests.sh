#!/usr/bin/env bash
# Runs dask-kubernetes 2026.3.0's own operator tests (operator/kubecluster/tests and
# operator/controller/tests, from the wheel, unchanged) against dask-kube-operator on the
# local cluster, with conftest.py here in place of upstream's kind/kopf fixtures.
#
#   e2e-tests/operator/run-upstream-tests.sh [pytest args...]
#
# Needs: the local cluster up (its kubeconfig found as e2e-tests/cluster-harness finds it),
# the image dask-kubernetes:dev in its registry (README.md), the dask-kube-operator binary
# ($DASK_KUBE_OPERATOR_BIN, default $CARGO_TARGET_DIR/debug/dask-kube-operator; built here if
# missing). The venv ($VENV, default ~/.cache/dask-on-k8s/venv-operator-tests) gets
# dask-kubernetes==2026.3.0 and pytest's plugins from PyPI on first use.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$HOME/.cache/dask-on-k8s/venv-operator-tests}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"
export DASK_KUBE_OPERATOR_BIN="${DASK_KUBE_OPERATOR_BIN:-$CARGO_TARGET_DIR/debug/dask-kube-operator}"

if [[ ! -x "$DASK_KUBE_OPERATOR_BIN" ]]; then
  (cd "$REPO" && cargo build --locked -p dask-kube-operator --bin dask-kube-operator)
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet -r "$HERE/requirements.txt"

# Upstream's test files next to our conftest, outside the installed package: pytest would
# otherwise load the package's own conftest.py (kind, docker, helm).
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PKG="$("$VENV/bin/python" -c 'import dask_kubernetes, os; print(os.path.dirname(dask_kubernetes.__file__))')"
mkdir -p "$WORK/kubecluster" "$WORK/controller"
cp "$PKG"/operator/kubecluster/tests/test_*.py "$WORK/kubecluster/"
cp -r "$PKG"/operator/controller/tests/* "$WORK/controller/"
cp "$HERE/conftest.py" "$HERE/pytest.ini" "$WORK/"
cd "$WORK"
"$VENV/bin/python" -m pytest -p no:cacheprovider --rootdir "$WORK" "$@" kubecluster controller
