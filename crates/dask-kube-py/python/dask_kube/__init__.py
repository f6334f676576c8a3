"""Dask clusters on Kubernetes from a worker pod template: dask-kubernetes' classic
``KubeCluster`` API on the dask-kube Rust library.

    from dask_kube import KubeCluster

    cluster = KubeCluster.from_yaml("worker-spec.yml")
    cluster.scale_up(10)
    cluster.adapt(minimum=1, maximum=100)
"""

import atexit

from . import _native, exceptions
from ._native import __version__
from .cluster import KubeCluster
from .exceptions import (
    ClusterNotFound,
    ClusterTimeout,
    DaskKubeError,
    Forbidden,
    InvalidArgument,
    InvalidConfig,
    InvalidTemplate,
    KubernetesUnreachable,
    PartialFailure,
    SchedulerError,
    TemplateFileNotFound,
    WorkersFailed,
)
from .objects import KubeConfig, clean_pod_template, make_pod_spec

# Before the interpreter finalizes, stop handing results to Python from the Rust runtime's
# threads (waiting for the ones in progress): one that lands during finalization crashes
# the process. Clusters still open are closed by their own finalizers, which block.
atexit.register(_native.close_at_interpreter_exit)

__all__ = [
    "ClusterNotFound",
    "ClusterTimeout",
    "DaskKubeError",
    "Forbidden",
    "InvalidArgument",
    "InvalidConfig",
    "InvalidTemplate",
    "KubeCluster",
    "KubeConfig",
    "KubernetesUnreachable",
    "PartialFailure",
    "SchedulerError",
    "TemplateFileNotFound",
    "WorkersFailed",
    "__version__",
    "clean_pod_template",
    "exceptions",
    "make_pod_spec",
]
