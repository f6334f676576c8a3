#!/usr/bin/env bash
# Tests of images/build.sh against a throwaway registry (distribution, from nodeparts) on
# 127.0.0.1:5999 with a temporary storage dir: every image has the config and the files it
# must and runs in a chroot of its exported root filesystem; a second run pushes nothing; a
# changed dask-kube binary rebuilds and pushes only the dask-kube image's top layer; small
# layers built in an empty cache come out byte for byte the same. Prints the times of each
# run (no time is asserted). Needs root, like build.sh. Leaves no process and no file behind
# except the build cache (~/.cache/dask-on-k8s/images), which it leaves as it found it.
#
#   images/test.sh [--policy-server-bin PATH] [--dask-kube-bin PATH]
set -euo pipefail
# Failures inside $(...) stop the script too.
shopt -s inherit_errexit
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$here/../../.." && pwd)"
PORT="${IMAGES_TEST_PORT:-5999}"
REG="127.0.0.1:$PORT"
BUILD_ARGS=("$@")

fail() { echo "images/test: FAIL: $*" >&2; exit 1; }
ok() { echo "images/test: ok: $*" >&2; }
note() { echo "images/test: $*" >&2; }

NODEPARTS_BIN="$("$REPO_ROOT/e2e-tests/local-cluster/nodeparts/build.sh")"
CRANE="$NODEPARTS_BIN/crane"
TMP="$(mktemp -d /tmp/images-test.XXXXXX)"
REGISTRY_PID=""
cleanup() {
  if [[ -n "$REGISTRY_PID" ]]; then
    kill "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
  fi
  # Roots were only ever mounted inside `unshare -m`, so nothing is mounted under $TMP.
  rm -rf -- "$TMP"
}
trap cleanup EXIT

cat >"$TMP/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $TMP/storage
http:
  addr: $REG
EOF
"$NODEPARTS_BIN/registry" serve "$TMP/registry.yml" >"$TMP/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do
  curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break
  kill -0 "$REGISTRY_PID" 2>/dev/null || { cat "$TMP/registry.log" >&2; fail "registry did not start"; }
  sleep 0.1
done
curl -fsS "http://$REG/v2/" >/dev/null || fail "registry on $REG does not answer"

# run LABEL ARGS...: build.sh against the test registry; stdout to $TMP/LABEL.out, stderr
# to $TMP/LABEL.err, the time to $TMP/LABEL.time.
run() {
  local label="$1" t0 t1
  shift
  t0=$(date +%s.%N)
  if ! "$here/build.sh" --registry "$REG" --nodeparts-bin "$NODEPARTS_BIN" --digests "$TMP/$label.digests" \
      "$@" >"$TMP/$label.out" 2>"$TMP/$label.err"; then
    cat "$TMP/$label.err" >&2
    fail "build.sh $label failed"
  fi
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }' >"$TMP/$label.time"
  note "$label run: $(cat "$TMP/$label.time") s; $(tail -n1 "$TMP/$label.err" | sed 's/^images: //')"
}

# --------------------------------------------------------------- first run: the images
run first "${BUILD_ARGS[@]}"
cmp -s "$TMP/first.out" "$TMP/first.digests" || fail "--digests file differs from stdout"
grep -q '^ghcr.io/kubewarden/policy-server' "$TMP/first.out" && HAVE_POLICY_SERVER=1 || HAVE_POLICY_SERVER=0
expected_refs="$("$here/build.sh" --list | awk -v ps="$HAVE_POLICY_SERVER" '$1 != "policy-server" || ps { for (i = 2; i <= NF; i++) print $i }' | sort)"
[[ "$(sed 's/@.*//' "$TMP/first.out" | sort)" == "$expected_refs" ]] ||
  fail "references printed: $(sed 's/@.*//' "$TMP/first.out" | tr '\n' ' '), expected: $(echo $expected_refs)"
while read -r line; do
  ref="${line%@*}" digest="${line#*@}"
  repo="$REG/${ref#*/}"
  [[ "$("$CRANE" digest --insecure "$repo")" == "$digest" ]] || fail "$repo is not at $digest"
done <"$TMP/first.out"
ok "one REF@sha256:DIGEST line per reference ($(wc -l <"$TMP/first.out")), each what the registry serves at REF's mirror path"

digest_of() { grep "^$1@" "$TMP/first.out" | sed 's/.*@//'; }

# check_config REF EXPR: the image config (JSON) as `c` makes the Python expression true.
check_config() {
  "$CRANE" config --insecure "$REG/${1#*/}" >"$TMP/config.json"
  python3 - "$TMP/config.json" "$2" <<'EOF' || fail "$1: config does not satisfy $2: $(cat "$TMP/config.json")"
import json, sys
c = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2], {"c": c, "cfg": c["config"]}) else 1)
EOF
}

# rootfs REF: exports REF's flattened file system into a fresh dir, prints the dir.
rootfs() {
  local dir="$TMP/root-$(echo "$1" | tr '/:' '__')"
  rm -rf -- "$dir"
  mkdir -p "$dir"
  "$CRANE" export --insecure "$REG/${1#*/}" - | tar -x -C "$dir"
  echo "$dir"
}

# in_root DIR CMD...: runs CMD chrooted in DIR with its own /proc (a private mount and pid
# namespace, so nothing stays mounted and nothing outlives it).
in_root() {
  local dir="$1"
  shift
  mkdir -p "$dir/proc"
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    unshare -m -p -f --mount-proc="$dir/proc" chroot "$dir" "$@"
}

DASK_PIN="$(sed -n 's/^distributed==//p' "$REPO_ROOT/e2e-tests/requirements.txt")"

# dask
check_config ghcr.io/dask/dask:latest \
  'cfg["Entrypoint"] == ["tini", "-g", "--", "/usr/bin/prepare.sh"] and "Cmd" not in cfg and c["architecture"] == "amd64" and c["os"] == "linux" and any(e.startswith("PATH=") for e in cfg["Env"])'
[[ "$(digest_of ghcr.io/dask/dask:latest)" == "$(digest_of "ghcr.io/dask/dask:$DASK_PIN")" ]] || fail "dask :latest and :$DASK_PIN differ"
root="$(rootfs ghcr.io/dask/dask:latest)"
# Counted before anything runs in the root (python writes the .pyc it misses).
n_py="$(find "$root/usr/local/lib/python3.11/dist-packages/distributed" -name '*.py' | wc -l)"
n_pyc="$(find "$root/usr/local/lib/python3.11/dist-packages/distributed" -name '*.cpython-311.pyc' | wc -l)"
((n_pyc >= n_py)) || fail "distributed has $n_py .py but $n_pyc .pyc"
v="$(in_root "$root" python3 -c 'import distributed; print(distributed.__version__)')"
[[ "$v" == "$DASK_PIN" ]] || fail "distributed in the dask image is $v, the pin is $DASK_PIN"
v="$(in_root "$root" dask --version)"
[[ "$v" == *"$DASK_PIN"* ]] || fail "dask --version: $v"
# The ENTRYPOINT chain as a container runs it: tini, prepare.sh, then args as given.
v="$(in_root "$root" tini -g -- /usr/bin/prepare.sh dask worker --help 2>/dev/null | head -n1)"
[[ "$v" == "Usage: dask worker"* ]] || fail "ENTRYPOINT + args [dask, worker, --help]: $v"
v="$(in_root "$root" python -c 'import numpy, dask.array, prometheus_client; print(int(dask.array.ones(10).sum().compute()))')"
[[ "$v" == 10 ]] || fail "python -c dask.array: $v"
head -n1 "$root/usr/local/bin/dask" | grep -qx '#!/usr/bin/python3' || fail "dask script: $(head -n1 "$root/usr/local/bin/dask")"
# Importing writes no .pyc: every one the image has is valid for its own python3.
touch "$TMP/before-import"
in_root "$root" python3 -c 'import distributed.cli.dask_worker, dask.array'
stale="$(find "$root/usr" -name '*.pyc' -newer "$TMP/before-import" | head -n3)"
[[ -z "$stale" ]] || fail "importing distributed wrote .pyc files (stale or missing in the image): $stale"
ok "dask: tini + prepare.sh ENTRYPOINT, distributed $DASK_PIN for /usr/bin/python3, dask and python on PATH, .pyc for every module"

# Worker start with and without the .pyc (a figure, not a check): PYTHONDONTWRITEBYTECODE so
# each run without .pyc compiles as every new container would.
time_import() {
  local best=999 i t0 t1 t
  for i in 1 2 3; do
    t0=$(date +%s.%N)
    in_root "$1" env PYTHONDONTWRITEBYTECODE=1 dask worker --help >/dev/null
    t1=$(date +%s.%N)
    t="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
    best="$(awk -v a="$best" -v b="$t" 'BEGIN { print (b < a ? b : a) }')"
  done
  echo "$best"
}
with="$(time_import "$root")"
find "$root/usr/local/lib/python3.11/dist-packages" -name __pycache__ -prune -exec rm -rf {} +
without="$(time_import "$root")"
note "figure: \`dask worker --help\` (imports distributed) in the dask image: ${with} s with .pyc, ${without} s without (best of 3)"
rm -rf -- "$root"

# dask-kube
check_config ghcr.io/dask-on-k8s/dask-kube:latest 'cfg["Entrypoint"] == ["dask-kube"] and cfg["Cmd"] == ["--help"]'
"$CRANE" manifest --insecure "$REG/dask/dask:latest" >"$TMP/dask.manifest"
"$CRANE" manifest --insecure "$REG/dask-on-k8s/dask-kube:latest" >"$TMP/dask-kube.manifest"
python3 - "$TMP/dask.manifest" "$TMP/dask-kube.manifest" <<'EOF' || fail "dask-kube is not the dask image's layers plus one"
import json, sys
dask, kube = (json.load(open(p))["layers"] for p in sys.argv[1:])
sys.exit(0 if kube[:-1] == dask and len(kube) == len(dask) + 1 else 1)
EOF
root="$(rootfs ghcr.io/dask-on-k8s/dask-kube:latest)"
v="$(in_root "$root" dask-kube --version)"
version="$("$here/build.sh" --list | awk '$1 == "dask-kube" { split($2, ref, ":"); print ref[2] }')"
[[ "$v" == "dask-kube $version" ]] || fail "dask-kube --version: $v, the image is tagged $version"
v="$(in_root "$root" python -c 'import distributed; print(distributed.__version__)')"
[[ "$v" == "$DASK_PIN" ]] || fail "python in the dask-kube image: $v"
rm -rf -- "$root"
ok "dask-kube: the dask image's layers + /usr/local/bin/dask-kube, ENTRYPOINT dask-kube, CMD --help"

# dask-kubernetes:dev (upstream's operator tests): the dask image + the two scripts
check_config docker.io/library/dask-kubernetes:dev 'cfg["Entrypoint"] == ["tini", "-g", "--", "/usr/bin/prepare.sh"] and "Cmd" not in cfg'
"$CRANE" manifest --insecure "$REG/library/dask-kubernetes:dev" >"$TMP/dask-kubernetes-dev.manifest"
python3 - "$TMP/dask.manifest" "$TMP/dask-kubernetes-dev.manifest" <<'EOF2' || fail "dask-kubernetes:dev is not the dask image's layers plus one"
import json, sys
dask, dev = (json.load(open(p))["layers"] for p in sys.argv[1:])
sys.exit(0 if dev[:-1] == dask and len(dev) == len(dask) + 1 else 1)
EOF2
root="$(rootfs docker.io/library/dask-kubernetes:dev)"
v="$(in_root "$root" tini -g -- /usr/bin/prepare.sh dask-worker --help 2>/dev/null | head -n1)"
[[ "$v" == "Usage: dask worker"* ]] || fail "ENTRYPOINT + args [dask-worker, --help]: $v"
v="$(in_root "$root" dask-scheduler --help 2>/dev/null | head -n1)"
[[ "$v" == "Usage: dask scheduler"* ]] || fail "dask-scheduler --help: $v"
rm -rf -- "$root"
ok "dask-kubernetes:dev: the dask image's layers + /usr/local/bin/dask-scheduler and dask-worker (exec dask scheduler/worker)"

# python
check_config docker.io/library/python:3.11 'cfg["Cmd"] == ["python3"] and "Entrypoint" not in cfg'
root="$(rootfs docker.io/library/python:3.11)"
v="$(in_root "$root" python -c 'import sys, ssl, json; print("%d.%d" % sys.version_info[:2])')"
[[ "$v" == 3.11 ]] || fail "python in python:3.11 is $v"
in_root "$root" python3 -c 'print(1)' >/dev/null || fail "python3 in python:3.11"
rm -rf -- "$root"
ok "python:3.11: Debian's python3 3.11 as python and python3, CMD python3"

# busybox
check_config docker.io/library/busybox:latest 'cfg["Cmd"] == ["sh"] and "Entrypoint" not in cfg'
root="$(rootfs docker.io/library/busybox:latest)"
v="$(in_root "$root" sh -c 'echo hi; sleep 0; cat /etc/passwd | head -n1; hostname')"
[[ "$v" == $'hi\nroot:x:0:0:root:/root:/bin/sh\n'"$(hostname)" ]] || fail "busybox sh: $v"
others="$(find "$root" -type f | grep -v -e '^'"$root"'/etc/' -e '^'"$root"'/lib/x86_64-linux-gnu/' -e '^'"$root"'/lib64/' | sed "s|^$root||")"
[[ "$others" == /bin/busybox ]] || fail "busybox has files besides /bin/busybox, glibc and /etc: $others"
grep -qx 'hosts: files dns' "$root/etc/nsswitch.conf" || fail "busybox: no nsswitch.conf for the resolver"
rm -rf -- "$root"
ok "busybox: glibc busybox (its wget resolves Service names), applets linked in /bin, CMD sh"

# pause
check_config registry.k8s.io/pause:3.10.2 'cfg["Entrypoint"] == ["/pause"] and cfg["User"] == "65535:65535"'
root="$(rootfs registry.k8s.io/pause:3.10.2)"
[[ "$(cd "$root" && find . -mindepth 1)" == ./pause ]] || fail "pause image holds more than /pause: $(cd "$root" && find . -mindepth 1)"
readelf -l "$root/pause" | grep -q INTERP && fail "pause is dynamically linked"
v="$("$root/pause" -v)"
[[ "$v" == "pause.c v3.10.2-"* ]] || fail "pause -v: $v"
rm -rf -- "$root"
ok "pause: one static /pause ($v), user 65535"

# coredns
check_config registry.k8s.io/coredns/coredns:v1.15.0 'cfg["Entrypoint"] == ["/coredns"] and cfg["User"] == "65532:65532"'
"$CRANE" export --insecure "$REG/coredns/coredns:v1.15.0" - | python3 -c '
import sys, tarfile
t = tarfile.open(fileobj=sys.stdin.buffer, mode="r|")
names = {m.name: m for m in t}
cap = names["coredns"].pax_headers.get("SCHILY.xattr.security.capability", "")
sys.exit(0 if list(names) == ["coredns"] and cap.encode("latin-1").hex() == "0100000200040000000000000000000000000000" else 1)
' || fail "coredns: not /coredns alone with cap_net_bind_service=+ep"
readelf -l "$NODEPARTS_BIN/coredns" | grep -q INTERP && fail "coredns is dynamically linked"
ok "coredns: static /coredns with cap_net_bind_service=+ep, user 65532"

# policy-server
if ((HAVE_POLICY_SERVER)); then
  ref="$(grep -o '^ghcr.io/kubewarden/policy-server:[^@]*' "$TMP/first.out")"
  check_config "$ref" 'cfg["Entrypoint"] == ["/policy-server"] and cfg["User"] == "65533:65533"'
  root="$(rootfs "$ref")"
  v="$(in_root "$root" /policy-server --version | head -n1)"
  [[ "$v" == "policy-server ${ref##*:v}" ]] || fail "policy-server --version: $v"
  grep -qx 'policy-server:x:65533:65533::/tmp:/sbin/nologin' "$root/etc/passwd" || fail "no policy-server user"
  rm -rf -- "$root"
  ok "policy-server: /policy-server runs on the base ($v), user 65533"
else
  note "policy-server was skipped by build.sh (no binary), not checked"
fi

# --------------------------------------------------------------- second run: nothing to do
run second "${BUILD_ARGS[@]}"
cmp -s "$TMP/first.out" "$TMP/second.out" || fail "the second run printed other digests"
grep -q '^images: pushed' "$TMP/second.err" && fail "the second run pushed: $(grep '^images: pushed' "$TMP/second.err")"
grep -q '^images: layer' "$TMP/second.err" && fail "the second run built: $(grep '^images: layer' "$TMP/second.err")"
ok "second run: same digests, nothing built, nothing pushed"

# --------------------------------------------------------------- a changed dask-kube binary
bin="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}/debug/dask-kube"
for ((i = 0; i + 1 < ${#BUILD_ARGS[@]}; i++)); do
  [[ "${BUILD_ARGS[i]}" == --dask-kube-bin ]] && bin="${BUILD_ARGS[i + 1]}"
done
cp "$bin" "$TMP/dask-kube"
printf 'changed' >>"$TMP/dask-kube" # trailing bytes: another binary that still runs
run changed --dask-kube-bin "$TMP/dask-kube" dask dask-kube
[[ "$(grep '^images: layer' "$TMP/changed.err" | sed 's/ built.*//')" == "images: layer dask-kube-bin" ]] ||
  fail "a changed binary built: $(grep '^images: layer' "$TMP/changed.err" | tr '\n' ' ')"
[[ "$(grep '^images: pushed' "$TMP/changed.err" | grep -o 'ghcr[^ ]*' | sort)" == "$("$here/build.sh" --list | awk '$1 == "dask-kube" { for (i = 2; i <= NF; i++) print $i }' | sort)" ]] ||
  fail "a changed binary pushed: $(grep '^images: pushed' "$TMP/changed.err")"
grep -q "^ghcr.io/dask/dask:latest@$(digest_of ghcr.io/dask/dask:latest)\$" "$TMP/changed.out" || fail "the dask image changed"
"$CRANE" manifest --insecure "$REG/dask-on-k8s/dask-kube:latest" >"$TMP/dask-kube.changed.manifest"
python3 - "$TMP/dask-kube.manifest" "$TMP/dask-kube.changed.manifest" <<'EOF' || fail "more than the top layer of dask-kube changed"
import json, sys
a, b = (json.load(open(p))["layers"] for p in sys.argv[1:])
sys.exit(0 if a[:-1] == b[:-1] and a[-1] != b[-1] else 1)
EOF
ok "changed dask-kube binary: only the dask-kube-bin layer built, only dask-kube pushed, lower layers identical"
root="$(rootfs ghcr.io/dask-on-k8s/dask-kube:latest)"
cmp -s "$root/usr/local/bin/dask-kube" "$TMP/dask-kube" || fail "the pushed dask-kube is not the changed binary"
rm -rf -- "$root"
# Put the cache back as it was (the build keeps one version of each layer).
run restore "${BUILD_ARGS[@]}" dask-kube >/dev/null

# --------------------------------------------------------------- reproducible small layers
XDG_CACHE_HOME="$TMP/cache" run fresh-cache --policy-server-bin /nonexistent pause busybox coredns
for ref in registry.k8s.io/pause:3.10.2 docker.io/library/busybox:latest registry.k8s.io/coredns/coredns:v1.15.0; do
  grep -qx "$ref@$(digest_of "$ref")" "$TMP/fresh-cache.out" || fail "$ref built in an empty cache has another digest"
done
ok "pause, busybox and coredns built again in an empty cache: the same digests"

note "times: first run $(cat "$TMP/first.time") s, second (warm) run $(cat "$TMP/second.time") s, changed binary $(cat "$TMP/changed.time") s"
note "PASS"
