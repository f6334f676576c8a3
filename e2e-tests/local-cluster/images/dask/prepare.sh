#!/bin/bash
# The ENTRYPOINT of ghcr.io/dask/dask (`tini -g -- /usr/bin/prepare.sh`), as upstream's
# base/prepare.sh in github.com/dask/dask-docker: install what the environment asks for, then
# exec the container's command. This image has Debian's Python and no conda: the conda
# variables are refused by name instead of being ignored, and pip comes from Debian
# (EXTRA_APT_PACKAGES="python3-pip") since the image does not ship it.

set -ex -o pipefail

# We start by adding extra apt packages, since pip modules may required library
if [ "$EXTRA_APT_PACKAGES" ]; then
    echo "EXTRA_APT_PACKAGES environment variable found.  Installing."
    apt update -y
    apt install -y $EXTRA_APT_PACKAGES
fi

if [ -e "/opt/app/environment.yml" ] || [ "$EXTRA_CONDA_PACKAGES" ] || [ "$USE_MAMBA" == "true" ]; then
    echo "environment.yml, EXTRA_CONDA_PACKAGES and USE_MAMBA need conda, which this image (Debian's python3) does not have; use EXTRA_APT_PACKAGES or EXTRA_PIP_PACKAGES" >&2
    exit 1
fi

if [ "$EXTRA_PIP_PACKAGES" ]; then
    echo "EXTRA_PIP_PACKAGES environment variable found.  Installing".
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "EXTRA_PIP_PACKAGES needs pip: add python3-pip to EXTRA_APT_PACKAGES" >&2
        exit 1
    fi
    python3 -m pip install --break-system-packages $EXTRA_PIP_PACKAGES
fi

# Run extra commands
exec "$@"
