#!/usr/bin/env bash
# The Python package's tests with the venv's pytest (the package installed by
# e2e-tests/python/install.sh, i.e. `make venv`):
#   unit     test_unit.py: no cluster needed (the unit tier, `make unit`)
#   cluster  test_cluster.py: against the local cluster, found like every suite
#            ($DASK_K8S_STATE_DIR, $KUBECONFIG, or the default state dir); skipped without
#            one unless DASK_K8S_REQUIRE_CLUSTER=1 (the integration tier), where they fail
#   all      both (the default)
#
#   e2e-tests/python/run-tests.sh [unit|cluster|all] [pytest args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$HOME/.cache/dask-on-k8s/venv}"
cd "$REPO"
case "${1:-all}" in
  unit) tests=(e2e-tests/python/test_unit.py); shift ;;
  cluster) tests=(e2e-tests/python/test_cluster.py); shift ;;
  all) tests=(e2e-tests/python); shift || true ;;
  *) tests=(e2e-tests/python) ;;
esac
[[ -x "$VENV/bin/python" ]] || { echo "run-tests.sh: no venv at $VENV (make venv)" >&2; exit 1; }
exec "$VENV/bin/python" -m pytest "${tests[@]}" -ra "$@"
