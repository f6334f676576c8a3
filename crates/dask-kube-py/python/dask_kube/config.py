"""Registers dask_kube's Dask config defaults (``kubernetes.yaml`` beside this file) as
dask-kubernetes registers its own, so ``dask.config.get("kubernetes.count.max")`` works after
``import dask_kube``. Unlike dask-kubernetes, no copy is written to ``~/.config/dask``: a file
there would turn these defaults into the user's settings."""

from __future__ import annotations

import os

import dask.config
import yaml

#: The defaults file.
PATH = os.path.join(os.path.dirname(__file__), "kubernetes.yaml")

with open(PATH) as f:
    defaults = yaml.safe_load(f)

dask.config.update_defaults(defaults)
