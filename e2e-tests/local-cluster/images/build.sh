#!/usr/bin/env bash
# The local cluster's container images, built without a container engine (root filesystems
# from Debian's packages and PyPI, layers written by oci.py) and pushed with crane to the
# cluster's registry, which containerd uses as the mirror of ghcr.io, docker.io and
# registry.k8s.io. See README.md here for the images, the cache and the measured times.
#
#   images/build.sh --registry HOST:PORT [--digests FILE] [--dask-kube-bin PATH]
#                   [--policy-server-bin PATH] [--nodeparts-bin DIR] [NAME...]
#       build what is missing or whose inputs changed, push what the registry does not
#       hold, print one line `REF@sha256:DIGEST` per reference on stdout (and into FILE)
#   images/build.sh --list     print `NAME REF...` per image
#   images/build.sh --relock   re-resolve dask/constraints.txt from PyPI
#
# NAMEs (default: all): pause dask dask-kube dask-kubernetes-dev python busybox coredns
# policy-server.
# Needs root (mmdebstrap, chroot, a private mount namespace), mmdebstrap, gcc with a static
# libc (libc6-dev), Go (the pause source comes from the k8s.io/kubernetes module), python3.
# Cache: ${XDG_CACHE_HOME:-~/.cache}/dask-on-k8s/images/<layer>/<input-hash>/.
set -euo pipefail
# Failures inside $(...) stop the script too (a recipe runs inside $(layer ...)).
shopt -s inherit_errexit
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$here/../../.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dask-on-k8s/images"

log() { echo "images: $*" >&2; }
die() { echo "images: ERROR: $*" >&2; exit 1; }
# The host's Python itself, not a shim in front of it (pyenv's costs 0.1 s a call).
command -v python3 >/dev/null || die "'python3' not found"
PYTHON="$(python3 -c 'import sys; print(sys.executable)')"

# ------------------------------------------------------------------ what goes in
DEBIAN_SUITE=bookworm
DEBIAN_SOURCES=(
  "deb http://deb.debian.org/debian $DEBIAN_SUITE main"
  "deb http://deb.debian.org/debian $DEBIAN_SUITE-updates main"
  "deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main"
)
# The base of every image with Python: Debian's python3 (3.11 in bookworm) and `python`
# (pods run `python -c ...` as in the upstream dask image), tini (the dask ENTRYPOINT),
# CA certificates. No procps: no test runs ps in a pod (distributed reads /proc via psutil).
BASE_PACKAGES=(python3 python-is-python3 tini ca-certificates)
PYTHON_VERSION=3.11
# Handed to maintainer scripts (shadow's last-change day, ...); mtimes are set by oci.py.
DEBIAN_SOURCE_DATE_EPOCH=1767225600 # 2026-01-01
# mtime of every file in the layers made here (not in the Debian base: see oci.py).
LAYER_MTIME=1767225600
# Layers uncompressed: the registry is on this machine, and gzip costs CPU twice, once here
# and once per node pulling (README.md, "Layer compression"). IMAGES_COMPRESSION=gzip for gzip.
COMPRESSION="${IMAGES_COMPRESSION:-none}"
REQUIREMENTS="$REPO_ROOT/e2e-tests/requirements.txt"
CONSTRAINTS="$here/dask/constraints.txt"
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$REPO_ROOT/e2e-tests/local-cluster/controlplane/go.mod")"
DASK_VERSION="$(sed -n 's/^distributed==\([^ ;]*\).*/\1/p' "$REQUIREMENTS")"
DASK_KUBE_VERSION="$("$PYTHON" - "$REPO_ROOT" <<'EOF'
import sys, tomllib, pathlib
root = pathlib.Path(sys.argv[1])
pkg = tomllib.loads((root / "crates/dask-kube/Cargo.toml").read_text())["package"]["version"]
if isinstance(pkg, dict):  # version.workspace = true
    pkg = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["package"]["version"]
print(pkg)
EOF
)"
# The pause image's tag is the one its Makefile in the Kubernetes module builds.
PAUSE_TAG=3.10.2
COREDNS_TAG=v1.15.0
POLICY_SERVER_TAG=v1.36.0-beta.1

image_refs() {
  case "$1" in
    pause) echo "registry.k8s.io/pause:$PAUSE_TAG" ;;
    dask) echo "ghcr.io/dask/dask:latest ghcr.io/dask/dask:$DASK_VERSION" ;;
    dask-kube) echo "ghcr.io/dask-on-k8s/dask-kube:$DASK_KUBE_VERSION ghcr.io/dask-on-k8s/dask-kube:latest" ;;
    # What dask-kubernetes' own operator tests and test resources run (`image:
    # "dask-kubernetes:dev"`, which upstream builds from its ci/Dockerfile).
    dask-kubernetes-dev) echo "docker.io/library/dask-kubernetes:dev" ;;
    python) echo "docker.io/library/python:$PYTHON_VERSION" ;;
    busybox) echo "docker.io/library/busybox:latest" ;;
    coredns) echo "registry.k8s.io/coredns/coredns:$COREDNS_TAG" ;;
    policy-server) echo "ghcr.io/kubewarden/policy-server:$POLICY_SERVER_TAG" ;;
    *) return 1 ;;
  esac
}
ALL_IMAGES=(pause dask dask-kube dask-kubernetes-dev python busybox coredns policy-server)

# The repository path a mirror request uses: the reference without its registry host
# (ghcr.io/dask/dask:latest is asked of the mirror as /v2/dask/dask/manifests/latest).
mirror_path() {
  local ref="$1" first="${1%%/*}"
  [[ "$ref" == */* && ( "$first" == *.* || "$first" == *:* || "$first" == localhost ) ]] && ref="${ref#*/}"
  echo "$ref"
}

# ------------------------------------------------------------------ arguments
REGISTRY="" DIGESTS_FILE="" NODEPARTS_BIN=""
DASK_KUBE_BIN="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}/debug/dask-kube"
POLICY_SERVER_BIN="$REPO_ROOT/../shared/bin/policy-server"
NAMES=()
usage() { sed -n '/^#   images\/build.sh --registry/,/^# Cache:/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit "${1:-2}"; }
while (($#)); do
  case "$1" in
    --registry) REGISTRY="${2:?--registry HOST:PORT}"; shift 2 ;;
    --digests) DIGESTS_FILE="${2:?--digests FILE}"; shift 2 ;;
    --dask-kube-bin) DASK_KUBE_BIN="${2:?--dask-kube-bin PATH}"; shift 2 ;;
    --policy-server-bin) POLICY_SERVER_BIN="${2:?--policy-server-bin PATH}"; shift 2 ;;
    --nodeparts-bin) NODEPARTS_BIN="${2:?--nodeparts-bin DIR}"; shift 2 ;;
    --list) for n in "${ALL_IMAGES[@]}"; do echo "$n $(image_refs "$n")"; done; exit 0 ;;
    --relock) RELOCK=1; shift ;;
    -h | --help) usage 0 ;;
    -*) echo "images: unknown option $1" >&2; usage ;;
    *) image_refs "$1" >/dev/null || die "unknown image $1 (known: ${ALL_IMAGES[*]})"; NAMES+=("$1"); shift ;;
  esac
done
((${#NAMES[@]})) || NAMES=("${ALL_IMAGES[@]}")

# pip for Debian's python3 of the base: any host Python's pip, told which interpreter the
# wheels are for, into a --target dir (scripts and .pyc are made afterwards).
pip_venv() {
  local venv="$CACHE/pip-venv"
  [[ -x "$venv/bin/pip" ]] || "$PYTHON" -m venv "$venv" >&2
  echo "$venv/bin/pip"
}
PIP_TARGET_FLAGS=(--python-version "$PYTHON_VERSION" --implementation cp --abi "cp${PYTHON_VERSION/./}"
  --only-binary=:all: --disable-pip-version-check --quiet)

if [[ -n "${RELOCK:-}" ]]; then
  mkdir -p "$CACHE"
  pip="$(pip_venv)"
  {
    echo "# Every package of the dask image at its exact version: e2e-tests/requirements.txt"
    echo "# resolved for CPython $PYTHON_VERSION. Regenerate with: images/build.sh --relock"
    "$pip" install "${PIP_TARGET_FLAGS[@]}" --dry-run --ignore-installed --report - \
      --target "$CACHE/relock-unused" -r "$REQUIREMENTS" |
      "$PYTHON" -c 'import json, sys
for i in sorted(json.load(sys.stdin)["install"], key=lambda i: i["metadata"]["name"].lower()):
    print("%s==%s" % (i["metadata"]["name"], i["metadata"]["version"]))'
  } >"$CONSTRAINTS.tmp"
  mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"
  log "wrote $CONSTRAINTS"
  exit 0
fi

[[ -n "$REGISTRY" ]] || die "--registry HOST:PORT is required"
[[ "$(id -u)" == 0 ]] || die "needs root (mmdebstrap --mode=root, chroot, mount namespaces)"
for t in mmdebstrap gcc go unshare chroot tar; do
  command -v "$t" >/dev/null || die "'$t' not found (e2e-tests/setup.sh installs what the images need)"
done
if [[ -z "$NODEPARTS_BIN" ]]; then
  NODEPARTS_BIN="$("$REPO_ROOT/e2e-tests/local-cluster/nodeparts/build.sh")"
fi
CRANE="$NODEPARTS_BIN/crane"
[[ -x "$CRANE" ]] || die "no crane in $NODEPARTS_BIN"

umask 022 # the modes of staged files and directories are the images' modes
mkdir -p "$CACHE"
exec 8>"$CACHE/.lock"
flock 8
# Under the lock, a run dir is left over from a run that was killed.
rm -rf -- "$CACHE"/.run.*
find "$CACHE/.hashes" -type f -mtime +30 -delete 2>/dev/null || true
RUN_DIR="$(mktemp -d "$CACHE/.run.XXXXXX")"
trap 'rm -rf -- "$RUN_DIR"' EXIT
T0=$(date +%s.%N)
OCI=("$PYTHON" "$here/oci.py")

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------------ layers
# file_hash PATH: sha256 of PATH's content, remembered under its path, inode, size, mtime and
# ctime (a rebuilt binary changes them), so a warm run does not read 200 MB of binaries.
file_hash() {
  local stat memo
  stat="$(stat -L -c '%d %i %s %.9Y %.9Z' -- "$1")"
  memo="$CACHE/.hashes/$(printf '%s %s' "$(realpath -- "$1")" "$stat" | sha256sum | cut -c1-32)"
  if [[ ! -f "$memo" ]]; then
    mkdir -p "$CACHE/.hashes"
    sha256sum <"$1" | cut -d' ' -f1 >"$memo.tmp"
    mv "$memo.tmp" "$memo"
  fi
  cat "$memo"
}

# layer NAME INPUT...: the cache dir of layer NAME, built by recipe_NAME unless present.
# The key hashes the recipe's own text, oci.py, the compression and each INPUT (f:PATH is a
# file's content, anything else a literal: a lower layer's dir, a version), so a change to
# any of them builds the layer anew and an unchanged one is reused as is.
layer() {
  local name="$1" i key dir stage t
  shift
  key="$(
    {
      declare -f "recipe_${name//-/_}"
      file_hash "$here/oci.py"
      echo "$COMPRESSION $LAYER_MTIME"
      for i in "$@"; do
        if [[ "$i" == f:* ]]; then file_hash "${i#f:}"; else echo "$i"; fi
      done
    } | sha256sum | cut -c1-16
  )"
  dir="$CACHE/$name/$key"
  if [[ ! -f "$dir/layer.json" ]]; then
    log "building layer $name"
    t=$(date +%s.%N)
    stage="$RUN_DIR/$name.stage"
    rm -rf -- "$stage" "$dir.tmp"
    mkdir -p "$stage"
    LAYER_OPTS=(--mtime "$LAYER_MTIME")
    "recipe_${name//-/_}" "$stage" "$@" >&2
    "${OCI[@]}" layer --from "$stage" --out "$dir.tmp" --compression "$COMPRESSION" "${LAYER_OPTS[@]}" >/dev/null
    rm -rf -- "$stage" "$dir"
    mv "$dir.tmp" "$dir"
    echo "layer $name built in $(since "$t") s ($(du -h "$dir" | cut -f1 | tail -1))" >>"$RUN_DIR/report"
    # One version per layer is kept: the one just built.
    for old in "$CACHE/$name"/*/; do
      [[ "${old%/}" == "$dir" ]] || rm -rf -- "${old%/}"
    done
  fi
  echo "$dir"
}

# layer_blob DIR: the layer file in a layer's cache dir.
layer_blob() { if [[ -f "$1/layer.tar.gz" ]]; then echo "$1/layer.tar.gz"; else echo "$1/layer.tar"; fi; }

recipe_base() {
  local stage="$1" start
  start=$(date +%s)
  # No cache of .deb files: copied in, they would bring mtimes older than $start (see
  # --clamp-mtime-from below), and they save 15 of 90 s.
  SOURCE_DATE_EPOCH="$DEBIAN_SOURCE_DATE_EPOCH" mmdebstrap --mode=root --variant=minbase --quiet \
    --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -f "$1"/etc/resolv.conf "$1"/etc/hostname' \
    "$DEBIAN_SUITE" "$stage" "${DEBIAN_SOURCES[@]}"
  local v
  v="$(chroot "$stage" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [[ "$v" == "$PYTHON_VERSION" ]] || die "Debian $DEBIAN_SUITE's python3 is $v, not $PYTHON_VERSION"
  # Files written while installing get the newest package file's mtime (see oci.py); the
  # runtime mounts /dev, /proc and /sys over the empty directories.
  LAYER_OPTS=(--clamp-mtime-from "$start" --exclude-contents dev --exclude-contents proc
    --exclude-contents sys --exclude-contents tmp --exclude-contents run)
}

# Packages installed for the base's python3 under /usr/local (Debian's place for them), the
# console scripts as pip writes them but for /usr/bin/python3, and .pyc compiled by the
# image's own python3 so no pod compiles distributed at start.
recipe_dask_packages() {
  local stage="$1" base="$2" site pip root
  site="$stage/usr/local/lib/python$PYTHON_VERSION/dist-packages"
  pip="$(pip_venv)"
  "$pip" install "${PIP_TARGET_FLAGS[@]}" --no-compile --no-warn-script-location \
    --target "$site" -r "$REQUIREMENTS" -c "$CONSTRAINTS"
  mkdir -p "$stage/usr/local/bin"
  local script
  for script in "$site"/bin/*; do
    head -n1 "$script" | grep -q '^#!/[^ ]*python' || die "$script: not a pip script (first line $(head -n1 "$script"))"
    sed '1s|^#!.*|#!/usr/bin/python3|' "$script" >"$stage/usr/local/bin/${script##*/}"
    chmod 0755 "$stage/usr/local/bin/${script##*/}"
  done
  rm -rf -- "$site/bin"
  # The wheels' RECORD lists each script where pip put it, hashed with pip's shebang (the
  # path of the venv that ran pip): list them at /usr/local/bin as they are now.
  "$PYTHON" - "$site" <<'EOF'
import base64, hashlib, pathlib, sys
site = pathlib.Path(sys.argv[1])
bin_dir = site / "../../../bin"
for record in site.glob("*.dist-info/RECORD"):
    with open(record, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    for i, line in enumerate(lines):
        path = line.split(",")[0]
        if path.startswith("../") and path.rsplit("/", 2)[-2] == "bin":
            name = path.rsplit("/", 1)[-1]
            data = (bin_dir / name).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            end = line[len(line.rstrip("\r\n")):]
            lines[i] = f"../../../bin/{name},sha256={digest},{len(data)}{end}"
    with open(record, "w", newline="") as f:
        f.write("".join(lines))
EOF
  root="$RUN_DIR/base-root"
  mkdir -p "$root"
  tar -xf "$(layer_blob "$base")" -C "$root"
  mkdir -p "$root/usr/local/lib/python$PYTHON_VERSION/dist-packages"
  # checked-hash .pyc: reproducible (no mtimes) and still checked against the source.
  # compileall -j uses multiprocessing, whose semaphores live in /dev/shm.
  mkdir -p "$root/dev/shm"
  unshare -m sh -c 'mount --bind "$1" "$2$3" && mount -t tmpfs shm "$2/dev/shm" &&
    exec chroot "$2" python3 -m compileall -q -j 0 --invalidation-mode checked-hash "$3"' \
    sh "$site" "$root" "/usr/local/lib/python$PYTHON_VERSION/dist-packages"
  rm -rf -- "$root"
}

recipe_dask_files() {
  local stage="$1"
  install -D -m 0755 "$here/dask/prepare.sh" "$stage/usr/bin/prepare.sh"
  mkdir -p "$stage/opt/app"
}

# The scripts dask-kubernetes' operator specs call (`dask-scheduler`, `dask-worker`: its
# client's defaults and its test resources), which distributed removed in 2026.6: each
# runs the `dask` subcommand with the same arguments.
recipe_dask_scripts() {
  local stage="$1" name
  mkdir -p "$stage/usr/local/bin"
  for name in scheduler worker; do
    printf '#!/bin/sh\nexec dask %s "$@"\n' "$name" >"$stage/usr/local/bin/dask-$name"
    chmod 0755 "$stage/usr/local/bin/dask-$name"
  done
}

recipe_dask_kube_bin() {
  install -D -m 0755 "${2#f:}" "$1/usr/local/bin/dask-kube"
}

# registry.k8s.io/pause: build/pause/linux/pause.c of the Kubernetes module, compiled as its
# Makefile does (static, -Os, VERSION=v<tag>-<git describe>, here the module's version), stripped.
recipe_pause() {
  local stage="$1" src
  src="$(cd "$RUN_DIR" && GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')/build/pause"
  grep -q "^TAG ?= $PAUSE_TAG\$" "$src/Makefile" || die "$src/Makefile does not build pause $PAUSE_TAG"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-$K8S_VERSION" -o "$stage/pause" "$src/linux/pause.c"
  strip "$stage/pause"
}

# docker.io/library/busybox (its glibc variant, busybox:glibc): Debian's busybox linked against
# glibc, with glibc's libraries and nsswitch.conf, a link per applet in /bin, and the few files
# of upstream's image (passwd, group, /tmp, /root). Not Debian's busybox-static: a static glibc
# cannot load the resolver's modules, so its wget cannot resolve a Service name ("bad address").
# (Debian's busybox 1.35 wget crashes with -T, either variant: tests do not use it.)
recipe_busybox() {
  local stage="$1" deb="$RUN_DIR/busybox-deb" applet
  mmdebstrap --mode=root --variant=extract --include=busybox,libc6 --quiet \
    "$DEBIAN_SUITE" "$deb" "${DEBIAN_SOURCES[@]}"
  install -D -m 0755 "$deb/bin/busybox" "$stage/bin/busybox"
  mkdir -p "$stage/lib64" "$stage/lib/x86_64-linux-gnu"
  cp -a "$deb"/lib64/ld-linux-x86-64.so.2 "$stage/lib64/"
  cp -a "$deb"/lib/x86_64-linux-gnu/*.so* "$stage/lib/x86_64-linux-gnu/"
  rm -rf -- "$deb"
  for applet in $("$stage/bin/busybox" --list); do
    [[ -e "$stage/bin/$applet" ]] || ln -s busybox "$stage/bin/$applet"
  done
  mkdir -p "$stage/etc" "$stage/root" "$stage/tmp" "$stage/home" "$stage/var"
  chmod 0700 "$stage/root"
  chmod 1777 "$stage/tmp"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/home:/bin/false' >"$stage/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$stage/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' 'services: files' >"$stage/etc/nsswitch.conf"
}

# registry.k8s.io/coredns/coredns: the static binary, with the file capability upstream's
# Dockerfile sets (setcap cap_net_bind_service=+ep) so user 65532 can bind :53.
recipe_coredns() {
  install -D -m 0755 "${2#f:}" "$1/coredns"
  # struct vfs_cap_data, revision 2, effective, permitted = 1 << CAP_NET_BIND_SERVICE (10).
  LAYER_OPTS+=(--xattr "coredns=security.capability=0100000200040000000000000000000000000000")
}

# ghcr.io/kubewarden/policy-server: the binary at /policy-server and upstream's user
# (policy-server, 65533, home /tmp) added to the base's passwd and group.
recipe_policy_server_bin() {
  local stage="$1" bin="${2#f:}" base="$3"
  install -D -m 0755 "$bin" "$stage/policy-server"
  mkdir -p "$stage/etc"
  tar -xf "$(layer_blob "$base")" -C "$stage" etc/passwd etc/group
  echo "policy-server:x:65533:65533::/tmp:/sbin/nologin" >>"$stage/etc/passwd"
  echo "policy-server:x:65533:" >>"$stage/etc/group"
}

# ------------------------------------------------------------------ images
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the images based on Debian's python3 set (upstream's dask and python images set
# LANG; neither sets PYTHONUNBUFFERED).
PYTHON_ENV=(--env "$PATH_ENV" --env LANG=C.UTF-8)

base_layer() { layer base "${BASE_PACKAGES[*]}" "${DEBIAN_SOURCES[*]}" "$DEBIAN_SOURCE_DATE_EPOCH"; }

# The layers of the dask image: BASE, PACKAGES, FILES (cache dirs).
dask_layers() {
  BASE="$(base_layer)"
  PACKAGES="$(layer dask-packages "$BASE" "f:$REQUIREMENTS" "f:$CONSTRAINTS" "${PIP_TARGET_FLAGS[*]}")"
  FILES="$(layer dask-files "f:$here/dask/prepare.sh")"
  DASK_IMAGE=(--layer "$BASE" --history "Debian $DEBIAN_SUITE minbase + ${BASE_PACKAGES[*]}"
    --layer "$PACKAGES" --history "pip install -r e2e-tests/requirements.txt (CPython $PYTHON_VERSION)"
    --layer "$FILES" --history "/usr/bin/prepare.sh"
    "${PYTHON_ENV[@]}" --env "PYTHON_VERSION=$PYTHON_VERSION" --env "DASK_VERSION=$DASK_VERSION")
}

# skip NAME: says why NAME cannot be built here, or nothing.
skip() {
  if [[ "$1" == policy-server && ! -x "$POLICY_SERVER_BIN" ]]; then
    echo "$POLICY_SERVER_BIN does not exist (--policy-server-bin PATH)"
  fi
}

# image_args NAME: sets IMAGE_ARGS, the `oci.py image` arguments of NAME, building its layers.
image_args() {
  local l
  case "$1" in
    pause)
      l="$(layer pause "$K8S_VERSION" "$PAUSE_TAG" "$(gcc --version | head -n1)")"
      IMAGE_ARGS=(--layer "$l" --history "pause $PAUSE_TAG from k8s.io/kubernetes@$K8S_VERSION"
        --env "$PATH_ENV" --user 65535:65535 --entrypoint '["/pause"]') ;;
    dask)
      dask_layers
      IMAGE_ARGS=("${DASK_IMAGE[@]}" --entrypoint '["tini","-g","--","/usr/bin/prepare.sh"]') ;;
    dask-kube)
      if [[ ! -x "$DASK_KUBE_BIN" ]]; then
        [[ "$DASK_KUBE_BIN" == */debug/dask-kube ]] || die "$DASK_KUBE_BIN does not exist"
        log "building $DASK_KUBE_BIN"
        (cd "$REPO_ROOT" && CARGO_TARGET_DIR="${DASK_KUBE_BIN%/debug/dask-kube}" \
          cargo build --locked -p dask-kube --bin dask-kube >&2)
      fi
      dask_layers
      # The binary is its own top layer: a code change rebuilds and pushes only that layer.
      l="$(layer dask-kube-bin "f:$DASK_KUBE_BIN")"
      IMAGE_ARGS=("${DASK_IMAGE[@]}" --layer "$l" --history "/usr/local/bin/dask-kube"
        --entrypoint '["dask-kube"]' --cmd '["--help"]') ;;
    dask-kubernetes-dev)
      dask_layers
      l="$(layer dask-scripts)"
      IMAGE_ARGS=("${DASK_IMAGE[@]}" --layer "$l" --history "/usr/local/bin/dask-scheduler, dask-worker"
        --entrypoint '["tini","-g","--","/usr/bin/prepare.sh"]') ;;
    python)
      BASE="$(base_layer)"
      IMAGE_ARGS=(--layer "$BASE" --history "Debian $DEBIAN_SUITE minbase + ${BASE_PACKAGES[*]}"
        "${PYTHON_ENV[@]}" --cmd '["python3"]') ;;
    busybox)
      l="$(layer busybox "${DEBIAN_SOURCES[*]}")"
      IMAGE_ARGS=(--layer "$l" --history "Debian busybox (glibc)" --env "$PATH_ENV" --cmd '["sh"]') ;;
    coredns)
      [[ -x "$NODEPARTS_BIN/coredns" ]] || die "no coredns in $NODEPARTS_BIN"
      l="$(layer coredns "f:$NODEPARTS_BIN/coredns")"
      IMAGE_ARGS=(--layer "$l" --history "coredns $COREDNS_TAG (nodeparts)"
        --env "$PATH_ENV" --user 65532:65532 --workdir / --entrypoint '["/coredns"]') ;;
    policy-server)
      local v
      v="$("$POLICY_SERVER_BIN" --version | head -n1)"
      [[ "$v" == "policy-server ${POLICY_SERVER_TAG#v}" ]] ||
        die "$POLICY_SERVER_BIN is $v, this script tags it $POLICY_SERVER_TAG (POLICY_SERVER_TAG)"
      BASE="$(base_layer)"
      l="$(layer policy-server-bin "f:$POLICY_SERVER_BIN" "$BASE")"
      IMAGE_ARGS=(--layer "$BASE" --history "Debian $DEBIAN_SUITE minbase + ${BASE_PACKAGES[*]}"
        --layer "$l" --history "/policy-server"
        --env "$PATH_ENV" --user 65533:65533 --entrypoint '["/policy-server"]') ;;
  esac
}

# publish NAME: writes the OCI layout, pushes each reference the registry does not hold at
# this digest, appends `REF@DIGEST` lines to $RUN_DIR/digests.
publish() {
  local name="$1" layout digest ref repo have t
  layout="$RUN_DIR/$name.oci"
  digest="$("${OCI[@]}" image --out "$layout" "${IMAGE_ARGS[@]}")"
  local pushed=()
  for ref in $(image_refs "$name"); do
    repo="$REGISTRY/$(mirror_path "$ref")"
    have="$("$CRANE" digest --insecure "$repo" 2>/dev/null || true)"
    if [[ "$have" != "$digest" ]]; then
      t=$(date +%s.%N)
      "$CRANE" push --insecure "$layout" "$repo" >"$RUN_DIR/crane.log" 2>&1 ||
        die "pushing $repo failed: $(cat "$RUN_DIR/crane.log")"
      pushed+=("$ref ($(since "$t") s)")
    fi
    echo "$ref@$digest" >>"$RUN_DIR/digests"
  done
  rm -rf -- "$layout"
  if ((${#pushed[@]})); then
    echo "pushed ${pushed[*]}" >>"$RUN_DIR/report"
  fi
}

touch "$RUN_DIR/report" "$RUN_DIR/digests"
for name in "${NAMES[@]}"; do
  why="$(skip "$name")"
  if [[ -n "$why" ]]; then
    log "skipping $name: $why"
    continue
  fi
  image_args "$name"
  publish "$name"
done
cat "$RUN_DIR/digests"
if [[ -n "$DIGESTS_FILE" ]]; then
  cp "$RUN_DIR/digests" "$DIGESTS_FILE.tmp"
  mv "$DIGESTS_FILE.tmp" "$DIGESTS_FILE"
fi
while read -r line; do log "$line"; done <"$RUN_DIR/report"
log "${#NAMES[@]} images in $(since "$T0") s ($(grep -c '^layer' "$RUN_DIR/report" || true) layers built, $(grep -o '([0-9.]* s)' "$RUN_DIR/report" | grep -c . || true) references pushed)"
