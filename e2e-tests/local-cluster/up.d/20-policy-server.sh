#!/usr/bin/env bash
# up.d hook: the policy as Kubewarden runs it. Kubewarden's own policy-server (the image
# ghcr.io/kubewarden/policy-server, images/build.sh) as the Deployment, Service, Secret and
# ConfigMap that Kubewarden's controller makes for its default PolicyServer, serving the
# annotated module (kwctl annotate -m policy-metadata.yml -u README.md) with the settings of
# the README's ClusterAdmissionPolicy, and the MutatingWebhookConfiguration the controller
# writes for that policy. Kubewarden's controller is not available here (Go, not in a
# registry this machine reaches), so e2e-tests/kubewarden/cap-translate translates the README's
# ClusterAdmissionPolicy as the controller does.
#
# Env (from `cluster up`): KUBECONFIG, STATE_DIR, REPO_ROOT, PIDS_DIR, LOG_DIR.
# Optional:
#   DASK_POLICY_SETTINGS_JSON   settings instead of the README policy's (a JSON object)
#   DASK_POLICY_SERVER_TIMEOUT  seconds to wait for policy-server to be ready (default 120)
#   CARGO_TARGET_DIR            default ~/.cache/dask-on-k8s/target
# Idempotent: everything is applied, and a changed module or settings rolls the Deployment.
set -euo pipefail

: "${KUBECONFIG:?run by 'cluster up'}" "${STATE_DIR:?run by 'cluster up'}" "${REPO_ROOT:?run by 'cluster up'}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"
READY_TIMEOUT="${DASK_POLICY_SERVER_TIMEOUT:-120}"
NS=kubewarden
# Kubewarden's names for its default PolicyServer ("default", prefixed "policy-server-").
NAME=policy-server-default
IMAGE=ghcr.io/kubewarden/policy-server:v1.36.0-beta.1
WASM="$CARGO_TARGET_DIR/wasm32-wasip1/release/dask_worker_defaults.wasm"
ANNOTATED="$CARGO_TARGET_DIR/wasm32-wasip1/release/annotated-policy.wasm"
WORK="$STATE_DIR/policy-server"
KWCTL="$(command -v kwctl || echo "$HOME/.cache/dask-on-k8s/bin/kwctl")"
PYTHON="${PYTHON:-$HOME/.cache/dask-on-k8s/venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3

log() { echo "20-policy-server: $*" >&2; }
die() { echo "20-policy-server: ERROR: $*" >&2; exit 1; }

# ---- the release artifact: the module with its metadata and README (`make annotate`)
if command -v cargo >/dev/null 2>&1; then
  (cd "$REPO_ROOT" && cargo build --quiet --locked --release --target wasm32-wasip1 -p dask-worker-defaults) ||
    die "cargo build of the policy module failed"
fi
[[ -f "$WASM" ]] || die "policy module not found at $WASM (build it with 'make wasm')"
[[ -x "$KWCTL" ]] || die "kwctl not found (make setup installs it into ~/.cache/dask-on-k8s/bin)"
"$KWCTL" annotate -m "$REPO_ROOT/policy-metadata.yml" -u "$REPO_ROOT/README.md" -o "$ANNOTATED" "$WASM" >/dev/null ||
  die "kwctl annotate failed"

mkdir -p "$WORK"
chmod 700 "$WORK"
# ---- TLS: a serving certificate for the Service, signed by the cluster CA (the caBundle)
PKI="$STATE_DIR/pki"
if [[ ! -s "$WORK/tls.crt" ]]; then
  log "generating policy-server's serving certificate"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\n' \
    "$NAME" "$NS" "$NAME" "$NS" >"$WORK/tls.ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$WORK/tls.key" -out "$WORK/tls.csr" -subj "/CN=$NAME.$NS.svc" 2>/dev/null
  openssl x509 -req -in "$WORK/tls.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
    -extfile "$WORK/tls.ext" -out "$WORK/tls.crt" 2>/dev/null
  rm -f "$WORK/tls.csr"
fi

# ---- what the controller makes of the README's ClusterAdmissionPolicy
"$PYTHON" "$REPO_ROOT/e2e-tests/kubewarden/cap-translate" --readme "$REPO_ROOT/README.md" \
  --module /modules/annotated-policy.wasm --service "$NS/$NAME:443" --ca-bundle "$PKI/ca.crt" \
  --policies-out "$WORK/policies.json" --webhook-out "$WORK/webhook.json" ||
  die "cap-translate failed"
if [[ -n "${DASK_POLICY_SETTINGS_JSON:-}" ]]; then
  "$PYTHON" - "$WORK/policies.json" "$DASK_POLICY_SETTINGS_JSON" <<'EOF'
import json, sys
path, settings = sys.argv[1], json.loads(sys.argv[2])
policies = json.load(open(path))
for p in policies.values():
    p["settings"] = settings
json.dump(policies, open(path, "w"), indent=2)
EOF
fi

kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
  labels: {app.kubernetes.io/managed-by: dask-on-k8s-local-cluster}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: policy-server, namespace: $NS}
EOF
# The Secret and ConfigMaps as Kubewarden's controller names them (kubectl create --dry-run
# renders them with the file contents, the module as binaryData).
kubectl -n "$NS" create secret tls "$NAME" --cert="$WORK/tls.crt" --key="$WORK/tls.key" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" create configmap "$NAME" --from-file=policies.yml="$WORK/policies.json" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" create configmap "$NAME-modules" --from-file=annotated-policy.wasm="$ANNOTATED" \
  --dry-run=client -o yaml | kubectl apply --server-side --force-conflicts -f - >/dev/null
config_version="$(cat "$WORK/policies.json" "$ANNOTATED" "$WORK/tls.crt" | sha256sum | cut -c1-16)"

# The Deployment of Kubewarden's controller (internal/controller/policyserver_controller_
# deployment.go, kubewarden/adm-controller v1.36): its env, volumes, readiness probe and
# security contexts, with the module mounted where policies.yml says it is.
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $NAME
  namespace: $NS
  labels: {kubewarden/policy-server: default}
spec:
  replicas: 1
  selector:
    matchLabels: {app: kubewarden-$NAME}
  strategy: {type: RollingUpdate}
  template:
    metadata:
      labels: {app: kubewarden-$NAME, kubewarden/policy-server: default}
      annotations: {kubewarden/config-version: "$config_version"}
    spec:
      serviceAccountName: policy-server
      securityContext:
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: $NAME
        image: $IMAGE
        env:
        - {name: KUBEWARDEN_CERT_FILE, value: /pki/tls.crt}
        - {name: KUBEWARDEN_KEY_FILE, value: /pki/tls.key}
        - {name: KUBEWARDEN_PORT, value: "8443"}
        - {name: KUBEWARDEN_READINESS_PROBE_PORT, value: "8081"}
        - {name: KUBEWARDEN_POLICIES_DOWNLOAD_DIR, value: /tmp}
        - {name: KUBEWARDEN_POLICIES, value: /config/policies.yml}
        - {name: KUBEWARDEN_SIGSTORE_CACHE_DIR, value: /tmp/sigstore-data}
        - {name: KUBEWARDEN_ALWAYS_ACCEPT_ADMISSION_REVIEWS_ON_NAMESPACE, value: $NS}
        - {name: KUBEWARDEN_POLICY_TIMEOUT, value: "2"}
        - {name: KUBEWARDEN_LOG_NO_COLOR, value: "1"}
        ports:
        - {name: https, containerPort: 8443}
        readinessProbe:
          httpGet: {path: /readiness, port: 8081, scheme: HTTP}
          periodSeconds: 1
        resources:
          requests: {cpu: 50m, memory: 64Mi}
        securityContext:
          readOnlyRootFilesystem: true
          privileged: false
          allowPrivilegeEscalation: false
          runAsNonRoot: true
          runAsUser: 65532
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: certs, mountPath: /pki, readOnly: true}
        - {name: policies, mountPath: /config, readOnly: true}
        - {name: modules, mountPath: /modules, readOnly: true}
        - {name: policy-store, mountPath: /tmp}
      volumes:
      - name: policy-store
        emptyDir: {}
      - name: certs
        secret: {secretName: $NAME}
      - name: policies
        configMap:
          name: $NAME
          items: [{key: policies.yml, path: policies.yml}]
      - name: modules
        configMap: {name: $NAME-modules}
---
apiVersion: v1
kind: Service
metadata:
  name: $NAME
  namespace: $NS
  labels: {app: kubewarden-$NAME}
spec:
  selector: {app: kubewarden-$NAME}
  ports:
  - {name: policy-server, port: 443, targetPort: 8443, protocol: TCP}
EOF
log "waiting for policy-server to be ready"
kubectl -n "$NS" rollout status deployment "$NAME" --timeout="${READY_TIMEOUT}s" >&2 ||
  die "policy-server did not become ready; kubectl -n $NS logs deploy/$NAME says: $(kubectl -n "$NS" logs "deploy/$NAME" --tail=20 2>&1)"
kubectl apply -f "$WORK/webhook.json" >&2
# The apiserver calls the Service's endpoints: wait until an admission goes through, so that
# `up` returns a cluster whose worker pods are defaulted.
deadline=$((SECONDS + READY_TIMEOUT))
until kubectl create --dry-run=server -o jsonpath='{.spec.tolerations[*].key}' -f - 2>/dev/null <<'EOF' | grep -q k8s.dask.org
apiVersion: v1
kind: Pod
metadata: {name: webhook-probe, namespace: default, labels: {dask.org/component: worker}}
spec:
  containers: [{name: w, image: ghcr.io/dask/dask:latest, args: [dask, worker, tcp://s:8786]}]
EOF
do
  ((SECONDS < deadline)) || die "the webhook does not default a worker pod after ${READY_TIMEOUT}s"
  sleep 0.5
done
log "policy-server ready; webhook $(jq -r .metadata.name "$WORK/webhook.json") registered"
