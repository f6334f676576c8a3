#!/usr/bin/env bash
# down.d hook: unregister the policy webhook before `cluster down` stops it, so a
# restarted control plane (its etcd keeps the configuration) does not send admission
# requests to a webhook that is not running yet. The process itself is stopped by
# `cluster down` through $STATE_DIR/pids/policy-webhook.pid.
set -euo pipefail
: "${KUBECONFIG:?run by 'cluster down'}"
"${KUBECTL:-/usr/bin/kubectl}" delete mutatingwebhookconfiguration dask-worker-defaults \
  --ignore-not-found --request-timeout=10s >&2
