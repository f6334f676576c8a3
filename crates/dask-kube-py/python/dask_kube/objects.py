"""Pod templates as users hand them to ``KubeCluster``: dicts, YAML files, and
``kubernetes.client`` model objects (``V1Pod``), turned into plain dicts with the
Kubernetes API's field names; and ``make_pod_spec``, computed by the Rust
``dask-worker-spec`` crate the policy also runs."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Mapping

from . import _native


def clean_pod_template(pod: Any) -> dict:
    """A pod as a dict with the API's (camelCase) field names.

    Accepts a dict, or a ``kubernetes.client`` model (anything with ``attribute_map`` and
    ``openapi_types``, or at least ``to_dict()``): the fields are converted the way the
    client's ``ApiClient.sanitize_for_serialization`` does, without needing the
    ``kubernetes`` package.
    """
    out = _sanitize(pod)
    if not isinstance(out, dict):
        raise TypeError(
            f"a pod template must be a mapping, a YAML file path or a pod object, not {type(pod).__name__}"
        )
    return out


def _sanitize(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return obj.isoformat()
    attribute_map = getattr(obj, "attribute_map", None)
    openapi_types = getattr(obj, "openapi_types", None)
    if isinstance(attribute_map, Mapping) and isinstance(openapi_types, Mapping):
        return {
            attribute_map[attr]: _sanitize(getattr(obj, attr))
            for attr in openapi_types
            if getattr(obj, attr, None) is not None
        }
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return _sanitize(to_dict())
    raise TypeError(f"cannot turn {type(obj).__name__} into part of a pod")


def template_argument(pod_template: Any) -> dict:
    """``KubeCluster``'s ``pod_template`` as options: a file path or a dict."""
    if pod_template is None:
        return {}
    if isinstance(pod_template, (str, os.PathLike)):
        return {"worker_template_path": os.path.expanduser(os.fspath(pod_template))}
    return {"worker_template": clean_pod_template(pod_template)}


def scheduler_template_argument(pod_template: Any) -> dict | None:
    """``scheduler_pod_template`` as a dict (a path is read and checked by Rust)."""
    if pod_template is None:
        return None
    if isinstance(pod_template, (str, os.PathLike)):
        return json.loads(_native.read_template(os.path.expanduser(os.fspath(pod_template))))
    return clean_pod_template(pod_template)


def make_pod_spec(
    image: str,
    labels: Mapping[str, str] | None = None,
    threads_per_worker: int = 1,
    env: Mapping[str, Any] | None = None,
    extra_container_config: Mapping[str, Any] | None = None,
    extra_pod_config: Mapping[str, Any] | None = None,
    memory_limit: str | int | None = None,
    memory_request: str | int | None = None,
    cpu_limit: str | int | float | None = None,
    cpu_request: str | int | float | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict:
    """A worker pod for ``image``, as dask-kubernetes' ``make_pod_spec`` made it.

    The result is a dict (not a ``V1Pod``) with the worker defaults already applied by
    the same Rust code the dask-worker-defaults policy runs: ``restartPolicy: Never``,
    the dedicated-node tolerations, ``--death-timeout``, and resources that agree with
    ``--nthreads``/``--memory-limit`` (``memory_limit="6GB"`` is ``--memory-limit 6GB``
    for the worker and ``6G`` for Kubernetes). The policy finds nothing to change in it.

    >>> pod = make_pod_spec(image="ghcr.io/dask/dask:latest", memory_limit="4G",
    ...                     memory_request="4G", cpu_limit=1, cpu_request=1)
    >>> pod["spec"]["containers"][0]["resources"]["limits"]
    {'cpu': '1', 'memory': '4G'}
    """

    def text(value):
        return None if value is None else str(value)

    if not isinstance(threads_per_worker, int) or isinstance(threads_per_worker, bool):
        raise TypeError(f"threads_per_worker must be an int, not {threads_per_worker!r}")
    if threads_per_worker < 1:
        from .exceptions import InvalidArgument

        raise InvalidArgument(f"threads_per_worker must be at least 1, not {threads_per_worker}")
    args = {
        "image": image,
        "labels": {str(k): str(v) for k, v in (labels or {}).items()},
        "threads_per_worker": threads_per_worker,
        "env": {str(k): str(v) for k, v in (env or {}).items()},
        "extra_container_config": _sanitize(dict(extra_container_config or {})),
        "extra_pod_config": _sanitize(dict(extra_pod_config or {})),
        "memory_limit": text(memory_limit),
        "memory_request": text(memory_request),
        "cpu_limit": text(cpu_limit),
        "cpu_request": text(cpu_request),
        "annotations": {str(k): str(v) for k, v in (annotations or {}).items()},
    }
    pod, warnings = _native.make_pod_spec(json.dumps(args))
    for warning in warnings:
        import warnings as _warnings

        _warnings.warn(warning, stacklevel=2)
    return json.loads(pod)


class KubeConfig:
    """dask-kubernetes classic's ``auth=KubeConfig(config_file=, context=)``: connect with
    this kubeconfig file and/or context instead of ``$KUBECONFIG`` and its current
    context. (``persist_config`` is accepted for compatibility; nothing is persisted.)"""

    def __init__(self, config_file: str | os.PathLike | None = None, context: str | None = None, persist_config: bool = True):
        self.config_file = os.path.expanduser(os.fspath(config_file)) if config_file is not None else None
        self.context = context

    def __repr__(self) -> str:
        return f"KubeConfig(config_file={self.config_file!r}, context={self.context!r})"


def auth_argument(auth: Any) -> dict:
    """``auth=`` as options. A ``KubeConfig`` (this module's, or classic dask-kubernetes'
    with the same attributes), or a list of authenticators as classic's ``ClusterAuth``
    took, of which the first ``KubeConfig`` is used (``InCluster`` and the default: the
    library's own chain, in-cluster service account then ``$KUBECONFIG``)."""
    if auth is None:
        return {}
    for item in auth if isinstance(auth, (list, tuple)) else [auth]:
        if type(item).__name__ == "KubeConfig" and hasattr(item, "config_file"):
            return {"kubeconfig": item.config_file, "context": getattr(item, "context", None)}
        if type(item).__name__ != "InCluster":
            raise TypeError(f"auth= takes KubeConfig(config_file=, context=) or a list of them, not {item!r}")
    return {}
