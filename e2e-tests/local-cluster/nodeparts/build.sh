#!/usr/bin/env bash
# Build (or reuse from cache) the node parts of the local cluster that are not in the
# k8s.io/kubernetes module: containerd and its runc shim, runc, the CNI plugins, crictl,
# CoreDNS, an OCI registry (distribution) and crane (builds and pushes images without a
# container engine). Each is `go install <module>/<pkg>@<version>` from the Go module
# proxy: the module's own go.mod and go.sum pin its dependencies, exactly as its
# maintainers release it (none of these modules has replace directives).
#
#   nodeparts/build.sh          build what is missing, print the bin dir on stdout
#   nodeparts/build.sh --list   print NAME MODULE@VERSION per part
#
# Binaries: ${XDG_CACHE_HOME:-~/.cache}/dask-on-k8s/nodeparts/<hash>/bin, <hash> over this
# script (so a version bump builds into a fresh dir). runc needs cgo and libseccomp-dev
# (Debian; e2e-tests/setup.sh installs it). Env: GO_BUILD_P (default 2).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# name | package@version | CGO_ENABLED | build tags
PARTS=(
  "containerd|github.com/containerd/containerd/v2/cmd/containerd@v2.4.2|0|no_btrfs no_devmapper no_zfs"
  "containerd-shim-runc-v2|github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@v2.4.2|0|"
  "ctr|github.com/containerd/containerd/v2/cmd/ctr@v2.4.2|0|no_btrfs no_devmapper no_zfs"
  "runc|github.com/opencontainers/runc@v1.5.3|1|seccomp"
  "bridge|github.com/containernetworking/plugins/plugins/main/bridge@v1.10.0|0|"
  "loopback|github.com/containernetworking/plugins/plugins/main/loopback@v1.10.0|0|"
  "host-local|github.com/containernetworking/plugins/plugins/ipam/host-local@v1.10.0|0|"
  "portmap|github.com/containernetworking/plugins/plugins/meta/portmap@v1.10.0|0|"
  "crictl|sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0|0|"
  "coredns|github.com/coredns/coredns@v1.15.0|0|"
  "registry|github.com/distribution/distribution/v3/cmd/registry@v3.1.2|0|"
  "crane|github.com/google/go-containerregistry/cmd/crane@v0.22.1|0|"
)

if [[ "${1:-}" == --list ]]; then
  for p in "${PARTS[@]}"; do IFS='|' read -r name pkg _ _ <<<"$p"; echo "$name $pkg"; done
  exit 0
fi

command -v go >/dev/null || { echo "nodeparts: 'go' not found in PATH" >&2; exit 1; }
hash="$(sha256sum "$here/build.sh" | cut -c1-12)"
root="${XDG_CACHE_HOME:-$HOME/.cache}/dask-on-k8s/nodeparts"
out="$root/$hash"
bin="$out/bin"
mkdir -p "$bin"
exec 9>"$out/.build.lock"
flock 9

t0=$(date +%s)
built=()
for p in "${PARTS[@]}"; do
  IFS='|' read -r name pkg cgo tags <<<"$p"
  [[ -x "$bin/$name" ]] && continue
  echo "nodeparts: building $name ($pkg)" >&2
  # GOFLAGS from the environment (-mod=..., -buildvcs) would apply to the installed module.
  if ! GOFLAGS= GOBIN="$bin.tmp" CGO_ENABLED="$cgo" \
      go install -p "${GO_BUILD_P:-2}" -trimpath -ldflags "-s -w" ${tags:+-tags "$tags"} "$pkg" \
      >>"$out/build.log" 2>&1; then
    echo "nodeparts: building $name failed; last lines of $out/build.log:" >&2
    tail -n 30 "$out/build.log" >&2
    exit 1
  fi
  # `go install` names the binary after the package's last path element.
  src="$bin.tmp/$(basename "${pkg%@*}")"
  mv -f "$src" "$bin/$name"
  built+=("$name")
done
rmdir "$bin.tmp" 2>/dev/null || true
if ((${#built[@]})); then
  echo "nodeparts: built ${built[*]} in $(( $(date +%s) - t0 ))s into $bin" >&2
fi
# Prune builds of other versions of this script that no running process uses.
for d in "$root"/*/; do
  d="${d%/}"
  [[ "$d" == "$out" ]] && continue
  in_use=0
  for pr in /proc/[0-9]*; do
    [[ "$(readlink "$pr/exe" 2>/dev/null)" == "$d"/* ]] && { in_use=1; break; }
  done
  ((in_use)) || { rm -rf -- "$d"; echo "nodeparts: pruned $d" >&2; }
done
echo "$bin"
