"""Dask clusters on Kubernetes from a worker pod template: dask-kubernetes' classic
``KubeCluster`` API on the dask-kube Rust library.

    from dask_kube import KubeCluster

    cluster = KubeCluster.from_yaml("worker-spec.yml")
    cluster.scale_up(10)
    cluster.adapt(minimum=1, maximum=100)
"""

import atexit

from . import config  # registers the Dask config defaults (kubernetes.yaml)
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
from .objects import (
    ClusterAuth,
    InCluster,
    KubeAuth,
    KubeConfig,
    PodDict,
    clean_pod_template,
    make_pod_spec,
)

# Before the interpreter finalizes, stop handing results to Python from the Rust runtime's
# threads (waiting for the ones in progress): one that lands during finalization crashes
# the process. Clusters still open are closed by their own finalizers, which block.
atexit.register(_native.close_at_interpreter_exit)

__all__ = [
    "ClusterAuth",
    "ClusterNotFound",
    "ClusterTimeout",
    "DaskKubeError",
    "Forbidden",
    "InCluster",
    "InvalidArgument",
    "InvalidConfig",
    "InvalidTemplate",
    "KubeAuth",
    "KubeCluster",
    "KubeConfig",
    "KubernetesUnreachable",
    "PartialFailure",
    "PodDict",
    "SchedulerError",
    "TemplateFileNotFound",
    "WorkersFailed",
    "__version__",
    "clean_pod_template",
    "config",
    "exceptions",
    "make_pod_spec",
]
