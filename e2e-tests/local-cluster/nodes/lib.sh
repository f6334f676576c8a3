# shellcheck shell=bash
# The local cluster's nodes: real kubelets with containerd, runc and the CNI plugins, and
# kube-proxy, several on one machine the way kind's nodes share one host. Sourced by the
# up.d/down.d hooks and by `cluster node ...`.
#
# Each node has its own network namespace (`dkn-<node>`: its own loopback, so every node's
# kubelet, containerd and kube-proxy use their default ports, and its own nftables, so each
# kube-proxy programs only its node), joined by a veth to the host bridge `dkn0`
# (172.30.0.1/24 on the host). A node's pods sit on the node's own CNI bridge with the pod
# subnet 10.244.<index>.0/24, routed by the host to the node's address 172.30.0.<10+index>.
# Nodes share the host's mount namespace and filesystem, each with its own directories
# (kubelet root dir, containerd root/state, CNI config, pod logs) under
# $STATE_DIR/nodes/<node>/, and their own cgroup root /dk-<node> in every cgroup hierarchy,
# so a node's pods are exactly the processes under that cgroup.
#
# Needs: STATE_DIR, PKI, PIDS_DIR, LOG_DIR, CLUSTER_BIN (localkube), NODEPARTS_BIN.

NODE_BRIDGE=dkn0
NODE_NET_PREFIX=172.30.0
NODE_GATEWAY=$NODE_NET_PREFIX.1
POD_CIDR=10.244.0.0/16
CLUSTER_DNS_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
REGISTRY_ADDR=$NODE_GATEWAY:5000
# The pools of dask-kubernetes' docs for GKE/EKS: a Dask worker pool is labelled
# k8s.dask.org/node-purpose=worker and tainted k8s.dask.org/dedicated=worker:NoSchedule
# (a scheduler pool the same with `scheduler`); a general node has neither.
DEFAULT_NODES="general-1=general pool-1=worker pool-2=worker"

nodes_log() { echo "nodes: $*" >&2; }
kc() { "$STATE_DIR/bin/kubectl" --kubeconfig "$STATE_DIR/kubeconfig" "$@"; }
nodes_die() { echo "nodes: ERROR: $*" >&2; exit 1; }

node_dir() { echo "$STATE_DIR/nodes/$1"; }
node_netns() { echo "dkn-$1"; }
node_ip() { echo "$NODE_NET_PREFIX.$((10 + $1))"; }
node_pod_subnet() { echo "10.244.$1.0/24"; }
node_cgroup() { echo "/dk-$1"; }

# nodes_list: "index name pool" per node, as `up` recorded it (or the requested set).
nodes_list() {
  if [[ -s "$STATE_DIR/nodes.list" ]]; then cat "$STATE_DIR/nodes.list"; return; fi
  local i=1 spec name pool
  for spec in ${DASK_K8S_NODES:-$DEFAULT_NODES}; do
    name="${spec%%=*}"
    pool="general"
    [[ "$spec" == *=* ]] && pool="${spec#*=}"
    echo "$i $name $pool"
    i=$((i + 1))
  done
}

node_field() { # node_field NAME index|pool
  local idx name pool
  while read -r idx name pool; do
    [[ "$name" == "$1" ]] || continue
    case "$2" in index) echo "$idx" ;; pool) echo "$pool" ;; esac
    return 0
  done < <(nodes_list)
  return 1
}

validate_nodes() {
  local idx name pool seen=" "
  while read -r idx name pool; do
    [[ "$name" =~ ^[a-z0-9]([a-z0-9-]{0,9}[a-z0-9])?$ ]] ||
      nodes_die "node name '$name': lowercase letters, digits and '-', at most 11 characters (network device names are short)"
    [[ "$seen" != *" $name "* ]] || nodes_die "node name '$name' given twice"
    seen+="$name "
    case "$pool" in general | worker | scheduler) ;;
      *) nodes_die "node '$name': pool '$pool' is not one of general, worker, scheduler" ;;
    esac
    ((idx <= 200)) || nodes_die "at most 200 nodes"
  done < <(nodes_list)
}

# ------------------------------------------------------------------ host network

sysctl_set() { # sysctl_set KEY VALUE: set, remembering the machine's value for net_down
  local key="$1" val="$2" f="/proc/sys/${1//.//}" saved="$STATE_DIR/sysctl.saved"
  [[ -w "$f" ]] || return 0
  grep -q "^$key " "$saved" 2>/dev/null || echo "$key $(cat "$f")" >>"$saved"
  echo "$val" >"$f"
}

net_up() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
    ip addr add "$NODE_GATEWAY/24" dev "$NODE_BRIDGE"
  fi
  ip link set "$NODE_BRIDGE" up
  # Pods on one node reach pods on another through the host, as through a cloud's routes.
  sysctl_set net.ipv4.ip_forward 1
}

net_down() {
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  local saved="$STATE_DIR/sysctl.saved" key val
  if [[ -f "$saved" ]]; then
    while read -r key val; do echo "$val" >"/proc/sys/${key//.//}" 2>/dev/null || true; done <"$saved"
    rm -f "$saved"
  fi
}

# ------------------------------------------------------------------ one node

node_net_up() { # node_net_up NAME INDEX
  local name="$1" idx="$2" ns veth
  ns="$(node_netns "$name")"
  veth="dkv$idx"
  ip netns add "$ns" 2>/dev/null || true
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$NODE_BRIDGE" up
  fi
  ip -n "$ns" link set lo up
  ip -n "$ns" addr replace "$(node_ip "$idx")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "$NODE_GATEWAY"
  ip route replace "$(node_pod_subnet "$idx")" via "$(node_ip "$idx")" dev "$NODE_BRIDGE"
  # Inside the node as on any node: forwarding for its pods, and bridged pod traffic through
  # netfilter so kube-proxy's Service DNAT applies between pods of one bridge.
  ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward
    [ -w /proc/sys/net/bridge/bridge-nf-call-iptables ] && echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
    true'
}

node_net_down() { # node_net_down NAME INDEX
  local ns
  ns="$(node_netns "$1")"
  ip route del "$(node_pod_subnet "$2")" 2>/dev/null || true
  ip link del "dkv$2" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}

# sign NAME SUBJECT EXT: a key and certificate signed by the cluster CA.
node_sign() {
  local out="$1" subj="$2" ext="$3"
  [[ -s "$out.crt" && -s "$out.key" ]] && return 0
  printf '%b' "$ext" >"$out.ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$out.key" -out "$out.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$out.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$out.ext" -out "$out.crt" 2>/dev/null
  chmod 600 "$out.key"
  rm -f "$out.csr"
}

kubeconfig_for() { # kubeconfig_for FILE CERT_BASE
  local ca_b64
  ca_b64="$(base64 -w0 <"$PKI/ca.crt")"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$NODE_GATEWAY:${APISERVER_PORT:-6443}
    certificate-authority-data: $ca_b64
users:
- name: node
  user:
    client-certificate: $2.crt
    client-key: $2.key
contexts:
- name: local
  context: {cluster: local, user: node}
current-context: local
EOF
  chmod 600 "$1"
}

node_configure() { # node_configure NAME INDEX POOL
  local name="$1" idx="$2" pool="$3" d ip
  d="$(node_dir "$name")"
  ip="$(node_ip "$idx")"
  mkdir -p "$d"/{pki,containerd/root,containerd/state,cni/net.d,certs.d,kubelet,pod-logs}
  chmod 700 "$d/pki"
  local client='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
  node_sign "$d/pki/kubelet-client" "/O=system:nodes/CN=system:node:$name" "$client"
  node_sign "$d/pki/kubelet-serving" "/O=system:nodes/CN=system:node:$name" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$ip,DNS:$name\n"
  node_sign "$d/pki/kube-proxy" "/CN=system:kube-proxy" "$client"
  kubeconfig_for "$d/kubelet.kubeconfig" "$d/pki/kubelet-client"
  kubeconfig_for "$d/kube-proxy.kubeconfig" "$d/pki/kube-proxy"

  # containerd: its own socket, root and state; CRI with the pause image, runc on cgroupfs,
  # network namespaces under its state dir, and registries from certs.d below.
  cat >"$d/containerd/config.toml" <<EOF
version = 3
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$d/containerd/containerd.sock"
[ttrpc]
  address = "$d/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "registry.k8s.io/pause:3.10.2"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$d/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE (no process may lower its oom_score_adj), as a
  # node inside a container (kind) or rootless does: the kubelet's negative scores for
  # sandboxes and Guaranteed pods become containerd's own (0); higher ones are kept.
  restrict_oom_score_adj = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$NODEPARTS_BIN/runc"
      Root = "$d/containerd/state/runc"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$d/cni/bin"]
    conf_dir = "$d/cni/net.d"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
EOF
  # The local registry serves every public registry host: unchanged manifests
  # (ghcr.io/dask/dask:latest, registry.k8s.io/pause) pull from it, and nothing reaches the
  # internet (the registry is the server, not a mirror with a fallback).
  local host
  for host in ghcr.io docker.io registry.k8s.io quay.io _default; do
    mkdir -p "$d/certs.d/$host"
    cat >"$d/certs.d/$host/hosts.toml" <<EOF
server = "http://$REGISTRY_ADDR"
[host."http://$REGISTRY_ADDR"]
  capabilities = ["pull", "resolve"]
EOF
  done

  # CNI: a bridge per node with the node's pod subnet; loopback; portmap for hostPort.
  mkdir -p "$d/cni/bin"
  local p
  for p in bridge host-local loopback portmap; do ln -sf "$NODEPARTS_BIN/$p" "$d/cni/bin/$p"; done
  cat >"$d/cni/net.d/10-dask-bridge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "dask-pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(node_pod_subnet "$idx")"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$d/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "backend": "nftables"}
  ]
}
EOF

  # Pod DNS is the cluster's CoreDNS only: an empty host resolv.conf keeps every other name
  # (and any upstream resolver) out of the pods.
  : >"$STATE_DIR/resolv.conf"
  local labels="" taints=""
  case "$pool" in
    worker | scheduler)
      labels="k8s.dask.org/node-purpose=$pool"
      taints="  - {key: k8s.dask.org/dedicated, value: $pool, effect: NoSchedule}"
      ;;
  esac
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 (kubelet >= 1.35 refuses it unless told otherwise).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $(node_cgroup "$name")
containerRuntimeEndpoint: unix://$d/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $d/pki/kubelet-serving.crt
tlsPrivateKeyFile: $d/pki/kubelet-serving.key
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $STATE_DIR/resolv.conf
podLogsDir: $d/pod-logs
staticPodPath: ""
serializeImagePulls: false
failSwapOn: false
registerNode: true
registerWithTaints:
${taints:-  []}
# Every node of this machine sees the same disk: leave eviction to real pressure only.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 98
imageGCLowThresholdPercent: 95
EOF
  echo "$labels" >"$d/labels"
  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $d/kube-proxy.kubeconfig}
hostnameOverride: $name
clusterCIDR: $POD_CIDR
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Conntrack limits are the machine's (one kernel for every node): do not touch them.
conntrack: {maxPerCore: 0, min: 0}
EOF
}

# cgroup_dirs CGROUP: the node's directory in every cgroup hierarchy of this machine.
cgroup_dirs() {
  local m
  for m in /sys/fs/cgroup/*/; do
    [[ -d "$m" ]] && echo "${m%/}$1"
  done
}

node_cgroups_up() {
  local cg d
  cg="$(node_cgroup "$1")"
  while read -r d; do
    mkdir -p "$d" 2>/dev/null || continue
    # cgroup v1 cpuset: a new group starts with no CPUs or memory nodes.
    if [[ -f "$d/cpuset.cpus" && -z "$(cat "$d/cpuset.cpus")" ]]; then
      cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
    fi
  done < <(cgroup_dirs "$cg")
}

# Every process under the node's cgroups (its pods' containers and their shims' children).
node_cgroup_pids() {
  local cg d
  cg="$(node_cgroup "$1")"
  while read -r d; do
    [[ -d "$d" ]] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done < <(cgroup_dirs "$cg") | sort -un
}

node_cgroups_down() {
  local cg d
  cg="$(node_cgroup "$1")"
  while read -r d; do
    [[ -d "$d" ]] || continue
    # Deepest first; a group with a process left fails, and `down` reports it.
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done < <(cgroup_dirs "$cg")
}

node_start() { # node_start NAME INDEX: containerd, kubelet and kube-proxy in the node's netns
  local name="$1" idx="$2" d ns labels
  d="$(node_dir "$name")"
  ns="/run/netns/$(node_netns "$name")"
  labels="$(cat "$d/labels")"
  local path="$NODEPARTS_BIN:$PATH"
  # Image layers and volumes are unpacked with the daemons' umask: a node's, not a key file's.
  umask 022
  # A containerd that was killed leaves its socket behind: wait for the new one to answer.
  rm -f "$d/containerd/containerd.sock"
  start_proc "containerd-$name" env PATH="$path" nsenter --net="$ns" \
    "$NODEPARTS_BIN/containerd" --config "$d/containerd/config.toml"
  local i
  for i in $(seq 150); do
    "$NODEPARTS_BIN/ctr" --address "$d/containerd/containerd.sock" --timeout 1s version >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$NODEPARTS_BIN/ctr" --address "$d/containerd/containerd.sock" --timeout 1s version >/dev/null 2>&1 ||
    nodes_die "containerd of $name does not answer on its socket; see $LOG_DIR/containerd-$name.log"
  start_proc "kubelet-$name" env PATH="$path" nsenter --net="$ns" \
    "$CLUSTER_BIN" kubelet --config="$d/kubelet.yaml" --kubeconfig="$d/kubelet.kubeconfig" \
    --root-dir="$d/kubelet" --cert-dir="$d/pki" --hostname-override="$name" \
    --node-ip="$(node_ip "$idx")" ${labels:+--node-labels="$labels"} --v="${DASK_K8S_KUBELET_V:-1}"
  start_proc "kube-proxy-$name" env PATH="$path" nsenter --net="$ns" \
    "$CLUSTER_BIN" kube-proxy --config="$d/kube-proxy.yaml" --v="${DASK_K8S_KUBE_PROXY_V:-1}"
}

crictl_on() { # crictl_on NAME ARGS...
  local d
  d="$(node_dir "$1")"
  shift
  "$NODEPARTS_BIN/crictl" --runtime-endpoint "unix://$d/containerd/containerd.sock" \
    --image-endpoint "unix://$d/containerd/containerd.sock" --timeout 20s "$@"
}

# Mount points under DIR, deepest first.
mounts_under() {
  awk -v d="$1/" '{ p = $5; gsub(/\\040/, " ", p); if (index(p "/", d) == 1) print p }' /proc/self/mountinfo |
    awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

# node_down NAME INDEX: everything of the node goes, pods first (as a drained node's would),
# then its daemons, then whatever the kernel still holds for it.
node_down() {
  local name="$1" idx="$2" d pid pids m
  d="$(node_dir "$name")"
  stop_named "kubelet-$name"
  if [[ -S "$d/containerd/containerd.sock" ]] && pid_alive "$(pidfile_pid "$PIDS_DIR/containerd-$name.pid")"; then
    timeout 60 bash -c "$(declare -f crictl_on node_dir); NODEPARTS_BIN=$NODEPARTS_BIN STATE_DIR=$STATE_DIR crictl_on $name rmp -fa" \
      >/dev/null 2>&1 || nodes_log "removing the pods of $name through CRI failed; killing what is left"
  fi
  stop_named "kube-proxy-$name"
  stop_named "containerd-$name"
  # Shims of this containerd (they outlive it by design) and anything left in the node's cgroups.
  mapfile -t pids < <(
    grep -lzF -- "$d/containerd/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3
    node_cgroup_pids "$name"
  )
  if ((${#pids[@]})); then
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
      pids=($(node_cgroup_pids "$name"))
      ((${#pids[@]})) || break
      sleep 0.1
    done
  fi
  while read -r m; do
    [[ -n "$m" ]] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || nodes_log "could not unmount $m"; }
  done < <(mounts_under "$d")
  node_cgroups_down "$name"
  node_net_down "$name" "$idx"
}

# stop_named NAME: SIGTERM the process of pid file NAME, SIGKILL after the stop timeout.
stop_named() {
  local pid
  pid="$(pidfile_pid "$PIDS_DIR/$1.pid")"
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + ${DASK_K8S_STOP_TIMEOUT:-20}))
  while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null
  while pid_alive "$pid"; do sleep 0.1; done
  rm -f "$PIDS_DIR/$1.pid"
}

# ------------------------------------------------------------------ the whole set

# The registry's storage outlives clusters (images are pushed once, as to a real registry).
REGISTRY_STORAGE="${DASK_K8S_REGISTRY_DIR:-$HOME/.cache/dask-on-k8s/registry}"

registry_up() {
  mkdir -p "$REGISTRY_STORAGE"
  cat >"$STATE_DIR/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $REGISTRY_STORAGE}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
EOF
  start_proc registry "$NODEPARTS_BIN/registry" serve "$STATE_DIR/registry.yml"
  local i
  for i in $(seq 100); do
    curl -fsS --max-time 2 "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  nodes_die "the registry did not answer on http://$REGISTRY_ADDR/v2/; see $LOG_DIR/registry.log"
}

images_up() {
  local t=$SECONDS
  "${DASK_K8S_IMAGES_BUILDER:-$REPO_ROOT/e2e-tests/local-cluster/images/build.sh}" --registry "$REGISTRY_ADDR" \
    --digests "$STATE_DIR/images.digests" >&2 ||
    nodes_die "building or pushing the images failed (e2e-tests/local-cluster/images/build.sh)"
  nodes_log "images in the registry after $((SECONDS - t))s"
}

node_ready_count() {
  kc get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    grep -c '^True$' || true
}

nodes_up() { # nodes_up T0
  local t0="$1" idx name pool want
  validate_nodes
  nodes_list >"$STATE_DIR/nodes.list.tmp"
  mv -f "$STATE_DIR/nodes.list.tmp" "$STATE_DIR/nodes.list"
  NODEPARTS_BIN="$("$SCRIPT_DIR/nodeparts/build.sh")" || nodes_die "building the node parts failed"
  echo "NODEPARTS_BIN=$NODEPARTS_BIN" >>"$STATE_DIR/cluster.env"
  net_up
  registry_up
  images_up
  while read -r idx name pool; do
    node_cgroups_up "$name"
    node_net_up "$name" "$idx"
    node_configure "$name" "$idx" "$pool"
    node_start "$name" "$idx"
  done < <(nodes_list)
  want="$(nodes_list | wc -l)"
  local deadline=$((SECONDS + ${DASK_K8S_UP_TIMEOUT:-120}))
  until [[ "$(node_ready_count)" -ge "$want" ]]; do
    ((SECONDS < deadline)) || nodes_die "only $(node_ready_count) of $want nodes Ready after ${DASK_K8S_UP_TIMEOUT:-120}s; see $LOG_DIR/kubelet-*.log"
    sleep 0.5
  done
  nodes_log "$want nodes Ready after $((SECONDS - t0))s"
  addons_up
  nodes_log "cluster DNS ready after $((SECONDS - t0))s"
}

addons_up() {
  kc apply -f "$SCRIPT_DIR/addons/coredns.yaml" >/dev/null ||
    nodes_die "applying CoreDNS failed"
  kc -n kube-system rollout status deployment/coredns --timeout="${DASK_K8S_UP_TIMEOUT:-120}s" >&2 ||
    nodes_die "CoreDNS did not become ready"
}

# nodes_down_all: every node recorded by `up`, then the host network. Safe to run twice.
nodes_down_all() {
  local idx name pool
  # No nodes.list: this state dir never started nodes (`nodes_up` writes it before net_up), so
  # the bridge, if any, is another cluster's: `down` of an idle state dir must not cut it.
  [[ -s "$STATE_DIR/nodes.list" ]] || return 0
  NODEPARTS_BIN="${NODEPARTS_BIN:-$("$SCRIPT_DIR/nodeparts/build.sh" 2>/dev/null)}"
  while read -r idx name pool; do
    node_down "$name" "$idx"
  done < <(nodes_list)
  stop_named registry
  net_down
}

# What `down` must find gone for the nodes: processes in their cgroups, mounts under their
# directories, their cgroups, network namespaces and links. Prints one line per leftover.
nodes_leftovers() {
  local idx name pool m d
  [[ -s "$STATE_DIR/nodes.list" ]] || return 0
  while read -r idx name pool; do
    d="$(node_dir "$name")"
    [[ -n "$(node_cgroup_pids "$name")" ]] && echo "processes in cgroup $(node_cgroup "$name"): $(node_cgroup_pids "$name" | tr '\n' ' ')"
    while read -r m; do [[ -n "$m" ]] && echo "mount $m"; done < <(mounts_under "$d")
    while read -r m; do [[ -d "$m" ]] && echo "cgroup $m"; done < <(cgroup_dirs "$(node_cgroup "$name")")
    [[ -e "/run/netns/$(node_netns "$name")" ]] && echo "network namespace $(node_netns "$name")"
    ip link show "dkv$idx" >/dev/null 2>&1 && echo "link dkv$idx"
  done < <(nodes_list)
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && echo "bridge $NODE_BRIDGE"
  true
}

# services_synced: after the API server was away, the nodes' kube-proxies, CoreDNS and
# kube-controller-manager watch again, each informer with its own backoff (client-go: up to
# 30 s, doubled by jitter, again on each refusal): a Service created meanwhile is neither
# resolvable, nor given endpoints, nor routed until they have. kube-proxy watches Services and
# EndpointSlices apart: a node that follows the first but not yet the second rejects
# connections to a new Service as if it had no endpoints. (A CI run once lost a worker that
# way, it seems: on one node it exited 31 s after it started, its nanny's 30 s connect to
# the scheduler, while the other node's worker connected.) So the probe is a Service with
# endpoints (CoreDNS's pods, by kube-dns's selector), and this waits until every node routes
# it (kube-proxy's nftables `service-ips` map sends its address to the probe's service chain;
# with no endpoints known it is in `no-endpoint-services`) and CoreDNS answers its name.
services_synced() {
  local timeout="${1:-120}" probe=dk-resync-probe ns=kube-system ip idx name pool deadline
  kc -n "$ns" delete service "$probe" --ignore-not-found --wait=true >/dev/null 2>&1 || true
  kc -n "$ns" apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: Service
metadata: {name: $probe, namespace: $ns}
spec:
  selector: {k8s-app: kube-dns}
  ports: [{name: probe, port: 80, protocol: TCP, targetPort: 53}]
EOF
  ip="$(kc -n "$ns" get service "$probe" -o jsonpath='{.spec.clusterIP}')"
  deadline=$((SECONDS + timeout))
  while read -r idx name pool; do
    until ip netns exec "$(node_netns "$name")" nft list ruleset 2>/dev/null | grep -qF "$ip . tcp . 80 : goto service-"; do
      ((SECONDS < deadline)) || { nodes_log "kube-proxy of $name does not route Service $ns/$probe ($ip) to endpoints"; return 1; }
      sleep 0.5
    done
  done < <(nodes_list)
  # An A query for the probe, to the cluster DNS address from a node (kube-proxy routes it).
  name="$(nodes_list | awk 'NR == 1 {print $2}')"
  until ip netns exec "$(node_netns "$name")" python3 - "$probe.$ns.svc.$CLUSTER_DOMAIN" "$CLUSTER_DNS_IP" <<'PY' 2>/dev/null
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
query = struct.pack(">HHHHHH", 0x1d5b, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(query, (server, 53))
answer = s.recv(512)
flags, answers = struct.unpack(">H", answer[2:4])[0], struct.unpack(">H", answer[6:8])[0]
sys.exit(0 if flags & 0xF == 0 and answers > 0 else 1)
PY
  do
    ((SECONDS < deadline)) || { nodes_log "CoreDNS does not resolve Service $ns/$probe"; return 1; }
    sleep 0.5
  done
  kc -n "$ns" delete service "$probe" --wait=false >/dev/null 2>&1 || true
}
