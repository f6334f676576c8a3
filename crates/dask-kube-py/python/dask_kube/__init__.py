"""Dask clusters on Kubernetes from a worker pod template: dask-kubernetes' classic
``KubeCluster`` API on the dask-kube Rust library.

    from dask_kube import KubeCluster

    cluster = KubeCluster.from_yaml("worker-spec.yml")
    cluster.scale_up(10)
    cluster.adapt(minimum=1, maximum=100)
"""

from . import exceptions
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
)
from .objects import KubeConfig, clean_pod_template, make_pod_spec

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
    "__version__",
    "clean_pod_template",
    "exceptions",
    "make_pod_spec",
]
