#!/usr/bin/env bash
# Build (or reuse from cache) the `localkube` binary and print its path on stdout.
#
# Binary cache: ${XDG_CACHE_HOME:-$HOME/.cache}/dask-on-k8s/localkube/<k8s-version>-<hash>/localkube
# where <hash> covers go.sum, go.mod, the Go sources and this script, so any change
# (including a version bump via gen-gomod.sh) builds into a fresh directory.
# Go module/build caches are the Go defaults (GOMODCACHE, GOCACHE), outside the checkout.
#
# Env: LOCALKUBE_FORCE_BUILD=1 rebuilds even when cached; GO_BUILD_P (default 2).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH (need Go >= $(awk '$1=="go"{print $2}' go.mod))" >&2; exit 1; }

k8s_ver="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)"
[[ "$k8s_ver" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || { echo "build.sh: cannot read k8s.io/kubernetes version from go.mod" >&2; exit 1; }
major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
hash="$(cat go.sum go.mod ./*.go build.sh | sha256sum | cut -c1-12)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/dask-on-k8s/localkube"
out_dir="${cache_root}/${k8s_ver}-${hash}"
bin="${out_dir}/localkube"

if [[ -x "$bin" && "${LOCALKUBE_FORCE_BUILD:-0}" != 1 ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$out_dir"
exec 9>"${out_dir}/.build.lock"
flock 9
if [[ -x "$bin" && "${LOCALKUBE_FORCE_BUILD:-0}" != 1 ]]; then  # built by a concurrent caller
  echo "$bin"; exit 0
fi

vpkg=k8s.io/component-base/version
ldflags="-s -w -X ${vpkg}.gitVersion=${k8s_ver} -X ${vpkg}.gitMajor=${major} -X ${vpkg}.gitMinor=${minor} -X ${vpkg}.gitTreeState=clean"
echo "build.sh: building localkube ${k8s_ver} into ${out_dir} (a cold build takes ~6-9 min and ~3 GB RAM on 2 cores; a warm one ~15 s; log: ${out_dir}/build.log)" >&2
start=$(date +%s)
if ! go build -mod=readonly -buildvcs=false -p "${GO_BUILD_P:-2}" -ldflags "$ldflags" -o "${bin}.tmp" . >"${out_dir}/build.log" 2>&1; then
  echo "build.sh: go build failed; last lines of ${out_dir}/build.log:" >&2
  tail -n 40 "${out_dir}/build.log" >&2
  rm -f "${bin}.tmp"
  exit 1
fi
mv -f "${bin}.tmp" "$bin"
# Prune other cached builds that no running process uses (each is ~130 MB).
for d in "$cache_root"/*/; do
  d="${d%/}"
  [[ "$d" == "$out_dir" ]] && continue
  in_use=0
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/exe" 2>/dev/null)" == "$d"/* ]] && { in_use=1; break; }
  done
  if ((in_use == 0)); then rm -rf -- "$d"; echo "build.sh: pruned old build $d" >&2; fi
done
echo "build.sh: built in $(( $(date +%s) - start ))s: $bin ($(du -h "$bin" | cut -f1))" >&2
echo "$bin"
