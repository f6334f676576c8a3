#!/usr/bin/env bash
# Installs the dask_kube Python package (crates/dask-kube-py: PyO3 + maturin, maturin pinned
# in requirements.txt from PyPI as the build backend, cargo from this machine) and the test
# tools into a venv (`make venv` runs it). Build caches stay outside the checkout: cargo's
# in $CARGO_TARGET_DIR (a rebuild only relinks what changed), pip's in ~/.cache/pip.
#
#   VENV=~/.cache/dask-on-k8s/venv e2e-tests/python/install.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$HOME/.cache/dask-on-k8s/venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dask-on-k8s/target}"
# Same lock file as every other build of the workspace.
export MATURIN_PEP517_ARGS="${MATURIN_PEP517_ARGS:---locked}"
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)

# By the interpreter's real path: a venv made through a link (CI's toolbox PATH) breaks
# when the link's directory goes.
[[ -x "$VENV/bin/python" ]] || "$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')" -m venv --clear "$VENV"
"${PIP[@]}" -r "$REPO/e2e-tests/requirements.txt" -r "$REPO/e2e-tests/python/requirements.txt"
t0=$SECONDS
# maturin's build backend runs `maturin` by name; never let it fetch a Rust toolchain of its
# own (cargo comes from the set-up).
export PATH="$VENV/bin:$PATH" MATURIN_NO_INSTALL_RUST=1
# --no-build-isolation: the venv's pinned maturin builds it (no per-build download).
"${PIP[@]}" --force-reinstall --no-deps --no-build-isolation "$REPO/crates/dask-kube-py"
"$VENV/bin/python" -c 'import dask_kube; print(f"dask_kube {dask_kube.__version__} installed in", __import__("sys").prefix)'
echo "install.sh: package built and installed in $((SECONDS - t0))s" >&2
