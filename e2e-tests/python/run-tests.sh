#!/usr/bin/env bash
# The Python package's tests with the venv's pytest: unit tests always, cluster tests
# against the local cluster (found like every suite: $DASK_K8S_STATE_DIR, $KUBECONFIG, or
# the default state dir). In the integration tier set DASK_K8S_REQUIRE_CLUSTER=1 so a
# missing cluster fails instead of skipping.
#
#   e2e-tests/python/run-tests.sh [pytest args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$HOME/.cache/dask-on-k8s/venv}"
cd "$REPO"
exec "$VENV/bin/python" -m pytest e2e-tests/python -ra "$@"
