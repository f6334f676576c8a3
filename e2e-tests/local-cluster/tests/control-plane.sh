#!/usr/bin/env bash
# Checks that the local control plane (e2e-tests/local-cluster/cluster) really works.
# Brings the cluster up if needed, runs the checks, then `cluster down`, `cluster up`
# again with a test up.d/down.d hook dir (restart keeps etcd data; hook env, pid files,
# TERM-ignoring process groups and stray processes are cleaned by down), `cluster down`,
# and a port-conflict check. The cluster is DOWN afterwards unless --keep-up is given.
# Needs kubectl, curl, python3.
# Uses the same state dir / ports as `cluster` (DASK_K8S_STATE_DIR etc.).
# Prints "ok - ..." / "not ok - ..." per check and "N passed, N failed"; exits non-zero on failure.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="$HERE/cluster"
STATE_DIR="${DASK_K8S_STATE_DIR:-$HOME/.cache/dask-on-k8s/cluster}"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/dask-on-k8s/localkube"
KEEP_UP=0
[[ "${1:-}" == "--keep-up" ]] && KEEP_UP=1
WAIT="${CHECK_TIMEOUT:-60}"   # bound for every "eventually" check, seconds

passed=0 failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
notok() { echo "not ok - $*"; failed=$((failed + 1)); }
# A killed process reparented to a PID 1 that does not reap stays a zombie for a while:
# it is dead, although kill -0 still succeeds.
pid_alive() { kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
check() { # check DESCRIPTION CMD...
  local d="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then ok "$d"; else notok "$d"; echo "$out" | sed 's/^/    # /' | tail -n 15; fi
}
# eventually TIMEOUT CMD...: retry CMD until it succeeds or TIMEOUT seconds pass
eventually() {
  local t="$1"; shift
  local deadline=$((SECONDS + t))
  while ((SECONDS < deadline)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  "$@"
}
finish() {
  echo "$passed passed, $failed failed"
  ((failed == 0))
  exit $?
}

for t in curl python3; do
  command -v "$t" >/dev/null || { echo "not ok - $t not found"; echo "0 passed, 1 failed"; exit 1; }
done

# ---- up
t0=$SECONDS
if ! up_out="$("$CLUSTER" up 2>/tmp/control-plane-test-up.$$.log)"; then
  notok "cluster up"; tail -n 40 /tmp/control-plane-test-up.$$.log | sed 's/^/    # /'; rm -f /tmp/control-plane-test-up.$$.log
  finish
fi
rm -f /tmp/control-plane-test-up.$$.log
ok "cluster up ($((SECONDS - t0))s)"
eval "$up_out"
[[ "${KUBECONFIG:-}" == "$STATE_DIR/kubeconfig" ]] && ok "up prints export KUBECONFIG=$KUBECONFIG" || notok "up printed: $up_out"
[[ "$(command -v kubectl)" == "$STATE_DIR/bin/kubectl" ]] && ok "up puts the bundled kubectl first on PATH" || notok "kubectl is $(command -v kubectl)"
check "cluster status exits 0 when up" "$CLUSTER" status

# ---- up again is a no-op
api_pid="$(cat "$STATE_DIR/pids/kube-apiserver.pid")"
kcm_pid="$(cat "$STATE_DIR/pids/kube-controller-manager.pid")"
t1=$SECONDS
up2="$("$CLUSTER" up 2>&1)"; rc=$?
if ((rc == 0)) && [[ "$(cat "$STATE_DIR/pids/kube-apiserver.pid")" == "$api_pid" ]] &&
  [[ "$(cat "$STATE_DIR/pids/kube-controller-manager.pid")" == "$kcm_pid" ]] && grep -q "already up" <<<"$up2"; then
  ok "second cluster up is a no-op ($((SECONDS - t1))s, same pids $api_pid/$kcm_pid)"
else
  notok "second cluster up is a no-op (rc=$rc)"; echo "$up2" | sed 's/^/    # /'
fi
[[ "$("$CLUSTER" env | head -n1)" == "export KUBECONFIG=$STATE_DIR/kubeconfig" ]] && ok "cluster env" || notok "cluster env"
client_ver="$(kubectl version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
server_ver="$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
[[ -n "$client_ver" && "$client_ver" == "$server_ver" ]] && ok "kubectl $client_ver matches the server" || notok "kubectl $client_ver vs server $server_ver"

# ---- /version
want="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$HERE/controlplane/go.mod")"
got="$(kubectl get --raw /version 2>&1 | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')"
[[ -n "$want" && "$got" == "$want" ]] && ok "/version gitVersion is $got (pinned $want)" || notok "/version gitVersion '$got' != pinned '$want'"
check "/readyz?verbose is ok" bash -c 'kubectl get --raw "/readyz?verbose" | tail -n1 | grep -q "readyz check passed"'

# ---- namespace + default service account (serviceaccount controller)
ns="cp-test-$$-$RANDOM"
check "create namespace $ns" kubectl create namespace "$ns"
check "default ServiceAccount appears in $ns (<=${WAIT}s)" eventually "$WAIT" kubectl -n "$ns" get serviceaccount default
check "kube-root-ca.crt ConfigMap published in $ns (<=${WAIT}s)" eventually "$WAIT" kubectl -n "$ns" get configmap kube-root-ca.crt

# ---- garbage collection via ownerReferences
check "create owner ConfigMap" kubectl -n "$ns" create configmap owner --from-literal=a=b
owner_uid="$(kubectl -n "$ns" get configmap owner -o jsonpath='{.metadata.uid}')"
check "create dependent ConfigMap with ownerReference to owner ($owner_uid)" bash -c "kubectl -n '$ns' apply -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  ownerReferences:
  - apiVersion: v1
    kind: ConfigMap
    name: owner
    uid: $owner_uid
data: {x: \"1\"}
EOF"
check "dependent ConfigMap exists before the owner is deleted" kubectl -n "$ns" get configmap dependent
check "delete owner" kubectl -n "$ns" delete configmap owner --wait=true
gone_dependent() { ! kubectl -n "$ns" get configmap dependent >/dev/null 2>&1; }
t2=$SECONDS
if eventually "$WAIT" gone_dependent; then ok "dependent garbage-collected after owner deletion ($((SECONDS - t2))s)"; else notok "dependent still present ${WAIT}s after owner deletion (garbagecollector)"; fi

# ---- workload controllers: Deployment -> ReplicaSet -> Pods (an image no registry has: they
# are created and scheduled, and stay waiting for the image)
check "create Deployment" kubectl -n "$ns" create deployment web --image=registry.invalid/none:1 --replicas=2
pods_created() { [[ "$(kubectl -n "$ns" get pods -l app=web -o name | wc -l)" -eq 2 ]]; }
check "Deployment -> ReplicaSet -> 2 Pods created (<=${WAIT}s)" eventually "$WAIT" pods_created
check "delete Deployment" kubectl -n "$ns" delete deployment web --wait=false

# ---- nodes: real kubelets, the Dask worker pool as dask-kubernetes documents it
mapfile -t node_specs < <("$CLUSTER" node list)
want_nodes="${#node_specs[@]}"
ready_nodes() { [[ "$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" -eq "$want_nodes" ]]; }
check "$want_nodes nodes Ready" ready_nodes
pool_ok() {
  local idx name pool labels taints
  for spec in "${node_specs[@]}"; do
    read -r idx name pool <<<"$spec"
    labels="$(kubectl get node "$name" -o jsonpath='{.metadata.labels.k8s\.dask\.org/node-purpose}')"
    taints="$(kubectl get node "$name" -o jsonpath='{range .spec.taints[*]}{.key}={.value}:{.effect}{" "}{end}')"
    case "$pool" in
      general) [[ -z "$labels" && "$taints" != *k8s.dask.org* ]] || { echo "$name: $labels $taints"; return 1; } ;;
      *) [[ "$labels" == "$pool" && "$taints" == *"k8s.dask.org/dedicated=$pool:NoSchedule"* ]] || { echo "$name: $labels $taints"; return 1; } ;;
    esac
    kubectl get node "$name" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion} {.status.nodeInfo.kubeletVersion}' | grep -q "^containerd://2\..* $want$" ||
      { echo "$name runs $(kubectl get node "$name" -o jsonpath='{.status.nodeInfo}')"; return 1; }
  done
}
check "pool nodes labelled k8s.dask.org/node-purpose and tainted k8s.dask.org/dedicated; containerd 2 and kubelet $want on each" pool_ok
# Two pods on two nodes: an HTTP server on the pool (it tolerates the taint and asks for the
# pool) behind a Service, and a client on a general node that reaches it by DNS name.
general_node="$(awk '$3 == "general" {print $2; exit}' <<<"$(printf '%s\n' "${node_specs[@]}")")"
server_and_service() {
  kubectl -n "$ns" apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeSelector: {k8s.dask.org/node-purpose: worker}
  tolerations: [{key: k8s.dask.org/dedicated, operator: Equal, value: worker, effect: NoSchedule}]
  containers:
  - name: httpd
    image: busybox
    command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www']
    resources: {requests: {cpu: 10m}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
EOF
}
check "create a server pod on the worker pool and its Service" server_and_service
pod_running() { [[ "$(kubectl -n "$ns" get pod "$1" -o jsonpath='{.status.phase}')" == Running ]]; }
check "server pod Running (<=${WAIT}s)" eventually "$WAIT" pod_running server
server_node="$(kubectl -n "$ns" get pod server -o jsonpath='{.spec.nodeName}')"
[[ "$(kubectl get node "$server_node" -o jsonpath='{.metadata.labels.k8s\.dask\.org/node-purpose}')" == worker ]] &&
  ok "server scheduled on the pool ($server_node)" || notok "server scheduled on '$server_node', not on the pool"
# The client resolves the Service's name as any program does (glibc's resolver, the pod's
# resolv.conf: the cluster DNS and its search path).
fetch_by_name='import sys, time, urllib.request
for attempt in range(10):
    try:
        print(urllib.request.urlopen("http://" + sys.argv[1], timeout=3).read().decode(), end="")
        sys.exit(0)
    except OSError as e:
        print(e, file=sys.stderr)
        time.sleep(1)
sys.exit(1)'
client_fetches_by_name() {
  kubectl -n "$ns" run client --image=python:3.11 --restart=Never \
    --overrides="{\"spec\": {\"nodeSelector\": {\"kubernetes.io/hostname\": \"$general_node\"}}}" \
    --command -- python3 -c "$fetch_by_name" "web.$ns.svc.cluster.local" || return 1
  local phase i
  for i in $(seq "$WAIT"); do
    phase="$(kubectl -n "$ns" get pod client -o jsonpath='{.status.phase}')"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    sleep 1
  done
  kubectl -n "$ns" logs client
  [[ "$(kubectl -n "$ns" get pod client -o jsonpath='{.spec.nodeName}')" == "$general_node" ]] &&
    kubectl -n "$ns" logs client | grep -q "hello from server"
}
check "a client pod on $general_node fetches http://web.$ns.svc.cluster.local (another node, by name)" client_fetches_by_name
through_the_kubelet() {
  kubectl -n "$ns" exec server -- cat /www/index.html | grep -q "hello from server" || { echo "exec failed"; return 1; }
  kubectl -n "$ns" logs server >/dev/null || { echo "logs failed"; return 1; }
  kubectl -n "$ns" port-forward pod/server 18099:8080 >/dev/null 2>&1 &
  local pf=$! i
  for i in $(seq 50); do
    if curl -fsS --max-time 1 http://127.0.0.1:18099/ 2>/dev/null | grep -q "hello from server"; then kill "$pf"; return 0; fi
    sleep 0.2
  done
  kill "$pf"
  echo "port-forward failed"
  return 1
}
check "kubectl exec, logs and port-forward reach the kubelet through the apiserver" through_the_kubelet

# ---- RBAC + service-account tokens
sa_token="$(kubectl -n "$ns" create token default 2>&1)"
if [[ "$sa_token" == ey* ]]; then
  ok "TokenRequest for $ns/default works"
  forbidden() { local o; o="$(kubectl --token="$sa_token" -n kube-system get secrets 2>&1)"; grep -q Forbidden <<<"$o"; }
  check "RBAC denies the default ServiceAccount listing kube-system secrets" forbidden
  whoami() { kubectl --token="$sa_token" auth whoami -o jsonpath='{.status.userInfo.username}' 2>/dev/null | grep -qx "system:serviceaccount:$ns:default"; }
  check "service-account token authenticates as system:serviceaccount:$ns:default" whoami
else
  notok "TokenRequest for $ns/default: $sa_token"
fi

# ---- admission: defaults a normal cluster has (MutatingAdmissionWebhook etc. not disabled)
plugins_log="$(grep -m1 -o 'Loaded [0-9]* mutating admission controller(s) successfully in the following order: [^"]*' "$STATE_DIR/logs/kube-apiserver.log" || true)"
[[ "$plugins_log" == *MutatingAdmissionWebhook* ]] && ok "MutatingAdmissionWebhook enabled (${plugins_log#*order: })" || notok "MutatingAdmissionWebhook not in apiserver's loaded mutating plugins: '$plugins_log'"

# ---- namespace deletion (namespace controller)
check "delete namespace $ns" kubectl delete namespace "$ns" --wait=false
ns_gone() { ! kubectl get namespace "$ns" >/dev/null 2>&1; }
t3=$SECONDS
if eventually "$WAIT" ns_gone; then ok "namespace $ns finalized and gone ($((SECONDS - t3))s)"; else notok "namespace $ns still present after ${WAIT}s: $(kubectl get ns "$ns" -o jsonpath='{.status}' 2>&1)"; fi

# ---- persistence across restart
check "create namespace cp-persist" bash -c 'kubectl get ns cp-persist >/dev/null 2>&1 || kubectl create namespace cp-persist'

# ---- down leaves nothing behind
leftovers() { # processes of THIS cluster: cmdline names the state dir, or a localkube binary from the cache serving it
  # (other clusters with their own DASK_K8S_STATE_DIR may legitimately run localkube at the same time)
  local p out="" cmd
  for p in $(pgrep -f -- "$STATE_DIR/" 2>/dev/null); do
    [[ "$p" == "$$" || "$p" == "$BASHPID" ]] && continue
    cmd="$(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null | cut -c1-150)"
    [[ -n "$cmd" ]] && out+="$p: $cmd"$'\n'
  done
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/exe" 2>/dev/null)" == "$CACHE_ROOT"/* ]] || continue
    tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qF -- "$STATE_DIR/" || continue
    out+="${p#/proc/}: exe $(readlink "$p/exe")"$'\n'
  done
  printf '%s' "$out"
}
down_and_verify() { # down_and_verify LABEL
  local t=$SECONDS out left
  if out="$("$CLUSTER" down 2>&1)"; then ok "$1: cluster down ($((SECONDS - t))s)"; else notok "$1: cluster down"; echo "$out" | sed 's/^/    # /'; fi
  left="$(leftovers)"
  [[ -z "$left" ]] && ok "$1: no process from state/cache dir remains (pgrep)" || { notok "$1: processes remain after down"; echo "$left" | sed 's/^/    # /'; }
  "$CLUSTER" status >/dev/null 2>&1; local rc=$?
  ((rc == 3)) && ok "$1: cluster status exits 3 when down" || notok "$1: cluster status exit code $rc when down (want 3)"
  "$CLUSTER" down >/dev/null 2>&1 && ok "$1: second cluster down is a no-op success" || notok "$1: second cluster down failed"
}
down_and_verify "first stop"

# ---- restart with extra hooks: up.d/down.d contract, pid files, process groups, strays
hooks="$(mktemp -d)"
mkdir -p "$hooks/up.d" "$hooks/down.d"
cat >"$hooks/up.d/50-test.sh" <<'HOOK'
#!/usr/bin/env bash
set -eu
printf 'KUBECONFIG=%s\nSTATE_DIR=%s\nREPO_ROOT=%s\n' "$KUBECONFIG" "$STATE_DIR" "$REPO_ROOT" >"$STATE_DIR/hook-env"
kubectl get --raw /readyz >"$STATE_DIR/hook-readyz" 2>&1 || true
# A process group that ignores SIGTERM (leader + child): down must escalate to SIGKILL.
setsid bash -c 'trap "" TERM; sleep 100000 & echo $! >"$0/hook-child.pid"; wait' "$STATE_DIR" </dev/null >/dev/null 2>&1 &
echo $! >"$STATE_DIR/pids/test-stubborn.pid"
# A process with no pid file whose command line names the state dir: down must find it.
setsid bash -c 'exec -a "stray-test-process $0" sleep 100000' "$STATE_DIR" </dev/null >/dev/null 2>&1 &
echo $! >"$STATE_DIR/hook-stray.pid"
sleep 0.3
HOOK
cat >"$hooks/down.d/50-test.sh" <<'HOOK'
#!/usr/bin/env bash
touch "$STATE_DIR/down-hook-ran"
HOOK
chmod +x "$hooks/up.d/50-test.sh" "$hooks/down.d/50-test.sh"
hook_pids=""
t4=$SECONDS
if DASK_K8S_EXTRA_HOOKS_DIR="$hooks" "$CLUSTER" up >/dev/null 2>/tmp/control-plane-test-up.$$.log; then
  ok "cluster up again on existing state, with an extra up.d hook ($((SECONDS - t4))s)"
  check "namespace cp-persist survived the restart (etcd data kept)" kubectl get namespace cp-persist
  check "delete namespace cp-persist" kubectl delete namespace cp-persist --wait=false
  want_env="$(printf 'KUBECONFIG=%s\nSTATE_DIR=%s\nREPO_ROOT=%s' "$STATE_DIR/kubeconfig" "$STATE_DIR" "$(git -C "$HERE" rev-parse --show-toplevel)")"
  if [[ "$(cat "$STATE_DIR/hook-env" 2>/dev/null)" == "$want_env" ]]; then ok "up.d hook got KUBECONFIG, STATE_DIR, REPO_ROOT"
  else notok "up.d hook env"; sed 's/^/    # /' "$STATE_DIR/hook-env"; fi
  if [[ "$(cat "$STATE_DIR/hook-readyz" 2>/dev/null)" == ok ]]; then ok "up.d hook ran after readiness (kubectl works in it)"
  else notok "up.d hook readyz: $(cat "$STATE_DIR/hook-readyz" 2>/dev/null)"; fi
  hook_pids="$(cat "$STATE_DIR/pids/test-stubborn.pid" "$STATE_DIR/hook-child.pid" "$STATE_DIR/hook-stray.pid" 2>/dev/null | tr '\n' ' ')"
  alive=0; for p in $hook_pids; do pid_alive "$p" && alive=$((alive + 1)); done
  if ((alive == 3)); then ok "hook processes running (pids $hook_pids)"; else notok "hook processes running: $alive of 3 ($hook_pids)"; fi
else
  notok "cluster up again"; tail -n 40 /tmp/control-plane-test-up.$$.log | sed 's/^/    # /'
fi
rm -f /tmp/control-plane-test-up.$$.log
export DASK_K8S_STOP_TIMEOUT=3 DASK_K8S_EXTRA_HOOKS_DIR="$hooks"
down_and_verify "final stop"
unset DASK_K8S_STOP_TIMEOUT DASK_K8S_EXTRA_HOOKS_DIR
if [[ -f "$STATE_DIR/down-hook-ran" ]]; then ok "down.d hook ran"; else notok "down.d hook did not run"; fi
alive=""; for p in $hook_pids; do pid_alive "$p" && alive+="$p "; done
if [[ -n "$hook_pids" && -z "$alive" ]]; then ok "down killed the hook's TERM-ignoring process group and the stray process"
else notok "hook processes survived down: '$alive' (of '$hook_pids')"; fi
rm -rf "$hooks"; rm -f "$STATE_DIR"/hook-* "$STATE_DIR/down-hook-ran"

# ---- a port taken by another process gives a clear error
port="$(sed -n 's/^APISERVER_PORT=//p' "$STATE_DIR/cluster.env" 2>/dev/null)"; port="${port:-${DASK_K8S_APISERVER_PORT:-6443}}"
python3 -c 'import socket,sys,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); time.sleep(60)' "$port" &
blocker=$!
sleep 0.5
out="$("$CLUSTER" up 2>&1)"; rc=$?
kill "$blocker" 2>/dev/null; wait "$blocker" 2>/dev/null
if ((rc != 0)) && grep -q "port $port (kube-apiserver) is already in use" <<<"$out" && grep -q python3 <<<"$out"; then
  ok "up with port $port taken fails with a clear message naming the process"
else
  notok "up with port $port taken (rc=$rc)"; echo "$out" | sed 's/^/    # /' | tail -n 10
fi
left="$(leftovers)"
if [[ -z "$left" ]]; then ok "nothing left running after the failed up"; else notok "processes left after failed up"; echo "$left" | sed 's/^/    # /'; fi

if ((KEEP_UP)); then
  if "$CLUSTER" up >/dev/null; then ok "cluster up (--keep-up)"; else notok "cluster up (--keep-up)"; fi
fi
finish
