#!/usr/bin/env bash
# Brings a machine from nothing to able to run `make demo` and `make test`: Debian
# packages, the pinned Rust toolchain with its components and the wasm target, Go,
# Kubewarden's kwctl and policy-server, and the Python venv. Idempotent: when everything is there it changes nothing, touches no
# network and takes well under a second (the venv is make's job: `make venv`).
#
#   e2e-tests/setup.sh            install what is missing (root, Debian 12)
#   e2e-tests/setup.sh --check    only say what is missing, exit 1 if anything is
#   e2e-tests/setup.sh --packages print the Debian packages the tests use, one per line
#   e2e-tests/setup.sh --toolbox DIR
#                                 make DIR a PATH holding only what this script provides
#   e2e-tests/setup.sh --check-commands DIR
#                                 fail unless every command the tests call is in DIR
# CI builds the toolbox, checks the commands, and runs the set-up and the policy's bats suite
# with PATH=DIR, so a tool the tests call that this script does not install fails loudly.
#
# What the tests call, and where it comes from, is declared once, here:
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian packages the tests, the Makefile and the local cluster use, beyond Debian's
# Essential/required set:
#   iproute2 (ip, ss: the nodes' network namespaces, bridge, routes), nftables (nft: kube-proxy's
#   nftables mode and the CNI portmap plugin call it), libseccomp-dev (runc is built with cgo
#   and seccomp, local-cluster/nodeparts/build.sh), openssl (cluster PKI), curl (health
#   checks, dashboard links), jq (bats), bats (policy.bats), procps (pgrep, ps),
#   util-linux (setsid, flock, unshare, nsenter), psmisc (fuser), git (cluster finds the
#   repo root), make, gcc/libc6-dev/binutils (build scripts of Rust crates, cgo),
#   ca-certificates (registries), time (GNU time: peak RSS in make bench-scale), mmdebstrap
#   (the Debian root filesystems of the local cluster's images, local-cluster/images/build.sh;
#   libc6-dev's static libc builds their pause), python3-venv is not needed: the venv is made with the
#   machine's Python 3.11 (pyenv or Debian's python3 + python3-venv).
DEBIAN_PACKAGES=(iproute2 nftables libseccomp-dev openssl curl jq bats procps util-linux psmisc git make gcc libc6-dev binutils ca-certificates time mmdebstrap)

# Commands the tests, the Makefile and the local cluster's scripts call by name (kubectl is
# not here: the cluster builds its own, same-version one into its state dir). CI checks that
# each resolves to something this script provides (--toolbox).
TEST_COMMANDS=(bash sh env make cargo rustup rustc go python3 kwctl policy-server git cc gcc as ld ip ss nft openssl
  curl jq bats pgrep pkill ps kill setsid flock unshare nsenter mount umount fuser awk sed
  grep tr head tail cut sort uniq wc seq sleep date mktemp realpath readlink basename dirname
  stat getconf sha256sum base64 timeout xargs find tee cat cp mv rm mkdir chmod ln touch id
  hostname printf mmdebstrap chroot install strip readelf cmp)

# The Rust toolchain: rust-toolchain.toml is the source of truth.
RUST_CHANNEL="$(awk -F'"' '/^channel/{print $2}' "$REPO/rust-toolchain.toml")"
RUST_COMPONENTS=(rustfmt clippy)
RUST_TARGETS=(wasm32-wasip1)
# Go: the control plane's go.mod says which (k8s.io/kubernetes v1.37 needs 1.26).
GO_MIN="$(awk '$1=="go"{print $2}' "$REPO/e2e-tests/local-cluster/controlplane/go.mod")"
# Python: distributed 2026.8 supports 3.10+.
PYTHON_MIN=3.10

# Kubewarden's own tools: kwctl runs the policy's tests (policy.bats), policy-server is the
# local cluster's admission webhook. They are in no package registry. Where the checkout has
# ../shared/bin (this project's machines and CI: Kubewarden's source at this version, built
# as ../shared/bin/README.md says) they are linked from there; elsewhere they come from
# Kubewarden's release (kwctl-linux-x86_64.zip, verified with cosign when cosign is
# installed, as Kubewarden's kwctl-installer action does; policy-server is released only as
# the image ghcr.io/kubewarden/policy-server, so its static binary is copied out of that
# image with crane). Kubewarden publishes no sha256 for either, only Sigstore bundles; that
# path needs the internet and is not run here. Both land in $TOOLS_BIN, which the Makefile
# puts first on PATH.
KUBEWARDEN_VERSION=v1.36.0-beta.1
KUBEWARDEN_TOOLS=(kwctl policy-server)
KUBEWARDEN_RELEASES=https://github.com/kubewarden/adm-controller/releases/download
CRANE_MODULE=github.com/google/go-containerregistry/cmd/crane@v0.22.1
CACHE_DIR="${CACHE_DIR:-$HOME/.cache/dask-on-k8s}"
TOOLS_BIN="$CACHE_DIR/bin"
SHARED_BIN="$(cd "$REPO/.." && pwd)/shared/bin"

log() { echo "setup: $*" >&2; }

missing_packages() {
  local p
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

go_problem() {
  command -v go >/dev/null 2>&1 || { echo "go not found (need Go >= $GO_MIN: https://go.dev/dl or the machine image)"; return; }
  local v
  v="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
  version_ge "$v" "$GO_MIN" || echo "go $v is older than $GO_MIN (control plane go.mod)"
}

python_problem() {
  command -v python3 >/dev/null 2>&1 || { echo "python3 not found (need >= $PYTHON_MIN)"; return; }
  local v
  v="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  version_ge "$v" "$PYTHON_MIN" || { echo "python3 $v is older than $PYTHON_MIN"; return; }
  python3 -c 'import venv, ensurepip' 2>/dev/null || echo "python3 has no venv/ensurepip module (Debian: apt-get install python3-venv)"
}

rust_missing() {
  command -v rustup >/dev/null 2>&1 || { echo "rustup"; return; }
  rustup toolchain list | grep -q "^$RUST_CHANNEL" || { echo "toolchain:$RUST_CHANNEL"; return; }
  local installed c t
  installed="$(rustup component list --installed --toolchain "$RUST_CHANNEL" 2>/dev/null)"
  for c in "${RUST_COMPONENTS[@]}"; do grep -q "^$c" <<<"$installed" || echo "component:$c"; done
  installed="$(rustup target list --installed --toolchain "$RUST_CHANNEL" 2>/dev/null)"
  for t in "${RUST_TARGETS[@]}"; do grep -qx "$t" <<<"$installed" || echo "target:$t"; done
}

# Prints each Kubewarden tool missing from $TOOLS_BIN or not at $KUBEWARDEN_VERSION.
kubewarden_missing() {
  local t
  for t in "${KUBEWARDEN_TOOLS[@]}"; do
    [[ "$("$TOOLS_BIN/$t" --version 2>/dev/null | head -n1)" == "$t ${KUBEWARDEN_VERSION#v}" ]] || echo "$t"
  done
}

# Kubewarden's release of one tool into $TOOLS_BIN (internet only; see KUBEWARDEN_VERSION).
download_kubewarden_tool() {
  local tool="$1" tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  case "$tool" in
    kwctl)
      curl -fsSL -o "$tmp/kwctl.zip" "$KUBEWARDEN_RELEASES/$KUBEWARDEN_VERSION/kwctl-linux-x86_64.zip"
      python3 -m zipfile -e "$tmp/kwctl.zip" "$tmp"
      if command -v cosign >/dev/null 2>&1; then
        cosign verify-blob --bundle "$tmp/kwctl-linux-x86_64.bundle.sigstore" \
          --certificate-oidc-issuer https://token.actions.githubusercontent.com \
          --certificate-identity "https://github.com/kubewarden/adm-controller/.github/workflows/build-kwctl.yml@refs/tags/$KUBEWARDEN_VERSION" \
          "$tmp/kwctl-linux-x86_64"
      else
        log "cosign not installed: the kwctl download is not verified against its Sigstore bundle"
      fi
      install -m 0755 "$tmp/kwctl-linux-x86_64" "$TOOLS_BIN/kwctl" ;;
    policy-server)
      GOBIN="$tmp" go install "$CRANE_MODULE"
      "$tmp/crane" export --platform linux/amd64 "ghcr.io/kubewarden/policy-server:$KUBEWARDEN_VERSION" - |
        tar -x -C "$tmp" policy-server
      install -m 0755 "$tmp/policy-server" "$TOOLS_BIN/policy-server" ;;
  esac
}

install_kubewarden() {
  local t
  mkdir -p "$TOOLS_BIN"
  for t in $(kubewarden_missing); do
    if [[ -x "$SHARED_BIN/$t" ]]; then
      log "linking $t from $SHARED_BIN"
      ln -sfn "$SHARED_BIN/$t" "$TOOLS_BIN/$t"
    else
      log "downloading $t $KUBEWARDEN_VERSION from Kubewarden's release"
      download_kubewarden_tool "$t"
    fi
  done
}

check() {
  local problems=() p
  while read -r p; do [[ -n "$p" ]] && problems+=("Kubewarden's $p $KUBEWARDEN_VERSION in $TOOLS_BIN (make setup)"); done < <(kubewarden_missing)
  while read -r p; do [[ -n "$p" ]] && problems+=("Debian package $p (apt-get install $p)"); done < <(missing_packages)
  while read -r p; do [[ -n "$p" ]] && problems+=("Rust $p (rustup; rust-toolchain.toml pins $RUST_CHANNEL)"); done < <(rust_missing)
  p="$(go_problem)"; [[ -z "$p" ]] || problems+=("$p")
  p="$(python_problem)"; [[ -z "$p" ]] || problems+=("$p")
  if ((${#problems[@]})); then
    printf 'setup: missing: %s\n' "${problems[@]}" >&2
    return 1
  fi
  log "everything the tests need is installed (Rust $RUST_CHANNEL + ${RUST_TARGETS[*]}, Go >= $GO_MIN, Python >= $PYTHON_MIN, kwctl and policy-server $KUBEWARDEN_VERSION, ${#DEBIAN_PACKAGES[@]} Debian packages)"
}

install() {
  local need=() item
  mapfile -t need < <(missing_packages)
  if ((${#need[@]})); then
    [[ "$(id -u)" == 0 ]] || { log "need root to install: ${need[*]}"; exit 1; }
    log "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  command -v rustup >/dev/null 2>&1 || { log "rustup not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
  # rustup does not add components or targets to a toolchain that is already installed
  # (and RUSTUP_AUTO_INSTALL=0 turns off installing it on first use): do it here, and
  # only what is missing, so a ready machine makes no network call.
  for item in $(rust_missing); do
    case "$item" in
      toolchain:*)
        log "installing Rust $RUST_CHANNEL"
        rustup toolchain install "$RUST_CHANNEL" --profile minimal \
          --component "$(IFS=,; echo "${RUST_COMPONENTS[*]}")" --target "$(IFS=,; echo "${RUST_TARGETS[*]}")" ;;
      component:*) log "adding Rust component ${item#*:}"; rustup component add --toolchain "$RUST_CHANNEL" "${item#*:}" ;;
      target:*) log "adding Rust target ${item#*:}"; rustup target add --toolchain "$RUST_CHANNEL" "${item#*:}" ;;
    esac
  done
  install_kubewarden
  check
}

# A directory of links to exactly what this script provides: Debian's Essential and
# required packages (on every Debian system), the packages above, the Rust toolchain
# (rustup's proxies), Go, Python, kwctl and policy-server.
toolbox() {
  local dir="$1" pkg f
  rm -rf "$dir"
  mkdir -p "$dir"
  local pkgs
  pkgs="$( { dpkg-query -W -f='${Package} ${Essential} ${Priority}\n' | awk '$2=="yes" || $3=="required" {print $1}'; printf '%s\n' "${DEBIAN_PACKAGES[@]}"; } | sort -u)"
  for pkg in $pkgs; do
    dpkg-query -L "$pkg" 2>/dev/null | grep -E '^/(usr/)?s?bin/[^/]+$' || true
  done | while read -r f; do
    [[ -x "$f" && ! -d "$f" ]] && ln -sf "$f" "$dir/$(basename "$f")"
  done
  # Debian's alternatives (cc, awk, ...) are links that point through /etc/alternatives.
  for f in /usr/bin/cc /usr/bin/c++ /usr/bin/awk /usr/bin/pager; do
    [[ -e "$f" ]] && ln -sf "$f" "$dir/$(basename "$f")"
  done
  for f in "$(dirname "$(command -v rustup)")"/*; do ln -sf "$f" "$dir/$(basename "$f")"; done
  for f in "$(dirname "$(readlink -f "$(command -v go)")")"/*; do ln -sf "$f" "$dir/$(basename "$f")"; done
  local py
  py="$(python3 -c 'import sys; print(sys.executable)')"
  ln -sf "$py" "$dir/python3"
  for f in "${KUBEWARDEN_TOOLS[@]}"; do
    [[ -x "$TOOLS_BIN/$f" ]] && ln -sf "$TOOLS_BIN/$f" "$dir/$f"
  done
  log "toolbox $dir: $(find "$dir" -maxdepth 1 | wc -l) commands"
}

# Fails naming every command of TEST_COMMANDS that DIR (a --toolbox) does not provide.
check_commands() {
  local dir="$1" c missing=()
  for c in "${TEST_COMMANDS[@]}"; do [[ -x "$dir/$c" ]] || missing+=("$c"); done
  if ((${#missing[@]})); then
    echo "setup: the tests call commands the set-up does not provide: ${missing[*]}" >&2
    return 1
  fi
  log "all ${#TEST_COMMANDS[@]} commands the tests call come from the set-up"
}

case "${1:-}" in
  "") install ;;
  --check-commands) check_commands "${2:?--check-commands TOOLBOX_DIR}" ;;
  --check) check ;;
  --packages) printf '%s\n' "${DEBIAN_PACKAGES[@]}" ;;
  --toolbox) toolbox "${2:?--toolbox DIR}" ;;
  *) echo "usage: $0 [--check | --packages | --toolbox DIR | --check-commands DIR]" >&2; exit 2 ;;
esac
