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


def plain_pod(pod: Any) -> dict:
    """A pod as a plain dict with the API's (camelCase) field names.

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


def clean_pod_template(pod_template: Any, apply_default_affinity: str = "preferred", pod_type: str = "worker") -> "PodDict":
    """Classic dask-kubernetes' ``clean_pod_template``: the pod (a dict or a pod object) as a
    :class:`PodDict`, with the dedicated-pool node affinity of ``pod_type`` (``worker`` or
    ``scheduler``) that ``apply_default_affinity`` (``preferred``, ``required``, ``none``)
    asks for, applied by the same library function ``KubeCluster`` uses."""
    pod = plain_pod(pod_template)
    return PodDict(json.loads(_native.apply_default_affinity(json.dumps(pod), pod_type, apply_default_affinity)))


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


def make_pod_spec(
    image: str,
    labels: Mapping[str, str] | None = None,
    threads_per_worker: int = 1,
    env: Mapping[str, Any] | None = None,
    extra_container_config: Mapping[str, Any] | None = None,
    extra_pod_config: Mapping[str, Any] | None = None,
    resources: str | None = None,
    memory_limit: str | int | None = None,
    memory_request: str | int | None = None,
    cpu_limit: str | int | float | None = None,
    cpu_request: str | int | float | None = None,
    gpu_limit: int | None = None,
    annotations: Mapping[str, str] | None = None,
) -> "PodDict":
    """A worker pod for ``image``, as dask-kubernetes' ``make_pod_spec`` made it, with its
    arguments in classic's order (``resources`` is ``dask worker --resources``, e.g.
    ``"GPU=2 MEM=10e9"``; ``gpu_limit`` the ``nvidia.com/gpu`` limit).

    The result is a :class:`PodDict`: a dict with the API's field names that also reads
    the way classic's ``V1Pod`` did (``pod.spec.containers[0].args``). The worker defaults
    are already applied by the same Rust code the dask-worker-defaults policy runs:
    ``restartPolicy: Never``, the dedicated-node tolerations, ``--death-timeout``, and
    resources that agree with ``--nthreads``/``--memory-limit`` (``memory_limit="6GB"`` is
    ``--memory-limit 6GB`` for the worker and ``6G`` for Kubernetes). The policy finds
    nothing to change in it.

    >>> pod = make_pod_spec(image="ghcr.io/dask/dask:latest", memory_limit="4G",
    ...                     memory_request="4G", cpu_limit=1, cpu_request=1)
    >>> pod.spec.containers[0].resources.limits
    {'cpu': '1', 'memory': '4G'}
    """

    def text(value):
        return None if value is None else str(value)

    if not isinstance(threads_per_worker, int) or isinstance(threads_per_worker, bool):
        raise TypeError(f"threads_per_worker must be an int, not {threads_per_worker!r}")
    if gpu_limit is not None and (not isinstance(gpu_limit, int) or isinstance(gpu_limit, bool)):
        raise TypeError(f"gpu_limit must be an int, not {gpu_limit!r}")
    args = {
        "image": image,
        "labels": {str(k): str(v) for k, v in (labels or {}).items()},
        "threads_per_worker": threads_per_worker,
        "env": {str(k): str(v) for k, v in (env or {}).items()},
        "extra_container_config": _sanitize(dict(extra_container_config or {})),
        "extra_pod_config": _sanitize(dict(extra_pod_config or {})),
        "resources": text(resources),
        "memory_limit": text(memory_limit),
        "memory_request": text(memory_request),
        "cpu_limit": text(cpu_limit),
        "cpu_request": text(cpu_request),
        "gpu_limit": gpu_limit,
        "annotations": {str(k): str(v) for k, v in (annotations or {}).items()},
    }
    pod, warnings = _native.make_pod_spec(json.dumps(args))
    for warning in warnings:
        import warnings as _warnings

        _warnings.warn(warning, stacklevel=2)
    return PodDict(json.loads(pod))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


class PodDict(dict):
    """A Kubernetes object as a dict with the API's (camelCase) field names that also reads
    and writes the way classic dask-kubernetes' ``kubernetes.client`` models did:
    ``pod.spec.containers[0].args``, ``pod.metadata.labels["x"] = "y"``,
    ``pod.spec.restart_policy`` (snake_case names map to the API's). A field that is not
    there reads as ``None``, as a model's unset attribute does. It is still a dict, so it
    goes to ``json.dumps``, ``KubeCluster(pod)`` and ``yaml.safe_dump`` unchanged.
    (``values``/``items``/``keys`` are the dict's methods; read those fields with ``[]``.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in list(self.items()):
            dict.__setitem__(self, key, _wrap(value))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        for key in (_camel(name), name):
            if key in self:
                return self[key]
        return None

    def __setattr__(self, name: str, value) -> None:
        key = name if name in self else _camel(name)
        self[key] = _wrap(value)

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, _wrap(value))

    def to_dict(self) -> dict:
        """A plain dict (what a model's ``to_dict()`` gives)."""
        return json.loads(json.dumps(self))


def _wrap(value):
    if isinstance(value, PodDict):
        return value
    if isinstance(value, Mapping):
        return PodDict(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class ClusterAuth:
    """dask-kubernetes classic's credentials: pass one, or a list tried in order, as
    ``KubeCluster(auth=...)``. The default is ``[InCluster(), KubeConfig()]``: the pod's
    service account, then ``$KUBECONFIG`` / ``~/.kube/config``."""

    DEFAULT: list = []

    def _credentials(self) -> Any:
        raise NotImplementedError

    async def load(self) -> None:
        """Checks that these credentials load (the file, context or in-cluster account is
        there); raises ``KubernetesUnreachable`` saying why when not. Unlike classic, it
        sets no process-wide default: pass ``auth=`` to each cluster."""
        await _native.check_credentials(json.dumps([self._credentials()]))

    @staticmethod
    async def load_first(auth: Any = None) -> None:
        """Checks that the first of ``auth`` (default :attr:`DEFAULT`) that loads does."""
        await _native.check_credentials(json.dumps(auth_argument(auth) or auth_argument(ClusterAuth.DEFAULT)))


class InCluster(ClusterAuth):
    """The service account of the pod this process runs in."""

    def _credentials(self) -> Any:
        return "in_cluster"

    def __repr__(self) -> str:
        return "InCluster()"


class KubeConfig(ClusterAuth):
    """dask-kubernetes classic's ``KubeConfig(config_file=, context=)``: connect with this
    kubeconfig file and/or context instead of ``$KUBECONFIG`` and its current context.
    (``persist_config`` is accepted for compatibility; nothing is written back.)"""

    def __init__(self, config_file: str | os.PathLike | None = None, context: str | None = None, persist_config: bool = True):
        self.config_file = os.path.expanduser(os.fspath(config_file)) if config_file is not None else None
        self.context = context
        self.persist_config = persist_config

    def _credentials(self) -> Any:
        return {"kubeconfig": {"path": self.config_file, "context": self.context}}

    def __repr__(self) -> str:
        return f"KubeConfig(config_file={self.config_file!r}, context={self.context!r})"


class KubeAuth(ClusterAuth):
    """dask-kubernetes classic's ``KubeAuth(host, **kwargs)``: an API server given
    explicitly. Understood: ``username``, ``password``, ``api_key`` (``{"authorization":
    "Bearer <token>"}`` or the token; with ``api_key_prefix``), ``ssl_ca_cert``,
    ``cert_file``, ``key_file``, ``verify_ssl``; ``debug``, ``proxy`` and
    ``assert_hostname`` are accepted and not used."""

    _IGNORED = {"debug", "proxy", "assert_hostname"}

    def __init__(self, host: str, **kwargs):
        unknown = set(kwargs) - {"username", "password", "api_key", "api_key_prefix", "ssl_ca_cert",
                                 "cert_file", "key_file", "verify_ssl"} - self._IGNORED
        if unknown:
            raise TypeError(f"KubeAuth() got unexpected arguments: {', '.join(sorted(unknown))}")
        self.host = host
        self.kwargs = kwargs

    def _credentials(self) -> Any:
        k = self.kwargs
        token = k.get("api_key")
        if isinstance(token, Mapping):
            token = token.get("authorization") or token.get("BearerToken")
            prefix = (k.get("api_key_prefix") or {}).get("authorization") if isinstance(k.get("api_key_prefix"), Mapping) else None
            if token and prefix and not token.startswith(prefix):
                token = f"{prefix} {token}"
        if isinstance(token, str) and token.lower().startswith("bearer "):
            token = token[len("bearer "):]
        explicit = {
            "host": self.host,
            "token": token,
            "username": k.get("username"),
            "password": k.get("password"),
            "ssl_ca_cert": k.get("ssl_ca_cert"),
            "cert_file": k.get("cert_file"),
            "key_file": k.get("key_file"),
            "verify_ssl": k.get("verify_ssl"),
        }
        return {"explicit": {key: value for key, value in explicit.items() if value is not None}}

    def __repr__(self) -> str:
        return f"KubeAuth(host={self.host!r})"


ClusterAuth.DEFAULT = [InCluster(), KubeConfig()]


def auth_argument(auth: Any) -> list:
    """``auth=`` as the credentials the Rust library tries in order: one authenticator or a
    list, this module's or classic dask-kubernetes' (recognised by class name and
    attributes, so code importing them from ``dask_kubernetes`` keeps working). ``None``:
    the library's default chain."""
    if auth is None:
        return []
    out = []
    for item in auth if isinstance(auth, (list, tuple)) else [auth]:
        if isinstance(item, ClusterAuth):
            out.append(item._credentials())
        elif type(item).__name__ == "InCluster":
            out.append("in_cluster")
        elif type(item).__name__ == "KubeConfig" and hasattr(item, "config_file"):
            out.append(KubeConfig(item.config_file, getattr(item, "context", None))._credentials())
        elif type(item).__name__ == "KubeAuth" and hasattr(item, "config"):
            config = item.config
            out.append(
                KubeAuth(
                    config.host,
                    username=getattr(config, "username", None) or None,
                    password=getattr(config, "password", None) or None,
                    api_key=dict(getattr(config, "api_key", None) or {}) or None,
                    ssl_ca_cert=getattr(config, "ssl_ca_cert", None),
                    cert_file=getattr(config, "cert_file", None),
                    key_file=getattr(config, "key_file", None),
                    verify_ssl=getattr(config, "verify_ssl", None),
                )._credentials()
            )
        else:
            raise TypeError(
                f"auth= takes KubeConfig(config_file=, context=), InCluster(), KubeAuth(host, ...) "
                f"or a list of them, not {item!r}"
            )
    return out
