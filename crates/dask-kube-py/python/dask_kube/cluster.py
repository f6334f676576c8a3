"""``KubeCluster``: a ``distributed.deploy.Cluster`` whose pods, scaling, adapt loop and
teardown are the dask-kube Rust library's. Only what Dask's own classes need is Python:
the scheduler connection (``scheduler_comm``), ``scheduler_info``, the repr and widget,
the sync/async duality, and closing at interpreter exit."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import warnings
import weakref
from typing import Any, Mapping

import dask.config
from dask.utils import parse_bytes, parse_timedelta
from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from distributed.utils import Log, Logs

from . import _native
from .exceptions import DaskKubeError
from .objects import PodDict, auth_argument, plain_pod



def _seconds(value: Any, what: str) -> float:
    seconds = parse_timedelta(value, default="seconds")
    if seconds is None or seconds < 0:
        raise ValueError(f"{what} must be a duration >= 0, not {value!r}")
    return float(seconds)


def _duration_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return f"{value}s"
    return str(value)


def _seconds_or_none(value: Any, what: str) -> float | None:
    return None if value is None else _seconds(value, what)


def _template_source(template: Any) -> dict | None:
    """A pod template argument as the library's template source: a YAML file (read, and
    ``${VAR}`` expanded, by the library, as classic's ``from_yaml``) or a pod value."""
    if template is None:
        return None
    if isinstance(template, (str, os.PathLike)):
        return {"file": os.path.expanduser(os.fspath(template))}
    return {"pod": plain_pod(template)}


def _access(port_forward_cluster_ip: bool | None) -> str:
    """Operator-era ``port_forward_cluster_ip``: True always port-forwards, False always
    uses the Service's address, None decides (the Service inside the cluster)."""
    return {None: "auto", True: "port_forward", False: "direct"}[
        None if port_forward_cluster_ip is None else bool(port_forward_cluster_ip)
    ]


def _tls_mode(security: Any, deploy_mode: str) -> str | None:
    """Classic's ``security=`` as the library's TLS mode of a scheduler pod: ``None`` (the
    default, ``kubernetes.tls``, else a certificate authority per cluster) or ``True`` give
    the cluster its own CA; a ``Security`` is the user's own TLS, which the pod templates
    configure as with classic; ``False`` is plain ``tcp://``. A local scheduler
    (``deploy_mode="local"``) takes ``security`` itself, as classic's."""
    from distributed.security import Security

    if security is not None and not isinstance(security, (bool, Security)):
        raise TypeError(
            f"security must be a distributed.security.Security, True or False, not {type(security).__name__}"
        )
    if deploy_mode == "local":
        return None
    if security is None:
        return None
    if security is True:
        return "cluster-ca"
    if security is False:
        return "off"
    return "provided"


def _client_security(tls_json: str, given: Any):
    """``KubeCluster.security``: the client's side of the cluster's TLS. With the cluster's
    own CA, its certificate in memory (``Security`` takes PEM text as well as paths); with
    the templates' own TLS, the ``Security`` given; without TLS, Dask's default."""
    from distributed.security import Security

    tls = json.loads(tls_json)
    if "cert" in tls:
        return Security(
            require_encryption=True,
            tls_ca_file=tls["ca"],
            tls_client_cert=tls["cert"],
            tls_client_key=tls["key"],
        )
    if isinstance(given, Security):
        return given
    if tls["mode"] == "provided":
        raise ValueError(
            "the cluster's TLS is the pod templates' own (provided): pass security=Security(...) "
            "with the client's certificate"
        )
    return Security()


def _config_now() -> str:
    """The process's Dask config and environment of this moment, as JSON: the library
    calls this when it needs a value (the cap before each scale and adapt), so
    ``dask.config.set`` applies to what a running cluster does next."""
    return json.dumps({"config": _python_config(), "environ": sorted(os.environ.items())}, default=str)


def _python_config() -> dict:
    """The parts of the Python process's Dask config the Rust side reads. ``dask.config``
    already holds the YAML files, ``DASK_*`` variables, the defaults dask_kube registers
    and ``dask.config.set`` overrides."""
    return {
        "kubernetes": dask.config.get("kubernetes", default={}) or {},
        "distributed": {
            "dashboard": {"link": dask.config.get("distributed.dashboard.link", default=None)},
            "adaptive": {
                "target-duration": dask.config.get(
                    "distributed.adaptive.target-duration", default=None
                )
            },
        },
    }


#: The scheduler HTTP route with ``/api/v1`` (retire_workers, adaptive_target), which a
#: scheduler pod gets through DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES.
_API_ROUTE = "distributed.http.scheduler.api"

#: Where the scheduler runs: a pod dask-kube makes, this process, or a pod the operator of
#: the cluster makes from a ``DaskCluster``.
_DEPLOY_MODES = ("remote", "local", "operator")


def _create_mode(create_mode: Any, deploy_mode: str, attach: str | None) -> str | None:
    """Operator-era ``create_mode=`` (dask-kubernetes' ``CreateMode`` or its name), else
    ``kubernetes.create-mode`` (default ``CREATE_OR_CONNECT``), for a ``DaskCluster``;
    ``None`` where there is none (the scheduler pod is created, or reached by ``from_name``)."""
    from .exceptions import InvalidArgument

    if deploy_mode != "operator":
        if create_mode is not None:
            raise InvalidArgument(
                "create_mode= is for a DaskCluster resource (deploy_mode='operator'); with "
                f"deploy_mode={deploy_mode!r} a cluster is created, or reached with KubeCluster.from_name"
            )
        return None
    if attach is not None:
        return "CONNECT_ONLY"
    if create_mode is None:
        create_mode = dask.config.get("kubernetes.create-mode", default=None) or "CREATE_OR_CONNECT"
    mode = str(getattr(create_mode, "value", create_mode)).upper().replace("-", "_")
    if mode not in ("CREATE_ONLY", "CREATE_OR_CONNECT", "CONNECT_ONLY"):
        raise InvalidArgument(f"create_mode={create_mode!r}: CREATE_ONLY, CREATE_OR_CONNECT or CONNECT_ONLY")
    return mode


#: ``deploy_mode="local"`` listen settings: argument, Dask config key, classic's default.
_LOCAL_LISTEN = {
    "host": ("kubernetes.host", "0.0.0.0"),
    "port": ("kubernetes.port", 0),
    "interface": ("kubernetes.interface", None),
    "protocol": ("kubernetes.protocol", "tcp://"),
    "dashboard_address": ("kubernetes.dashboard_address", ":8787"),
}


def _deploy_mode(
    deploy_mode: str | None, attach: str | None, listen: dict, shutdown_on_close: bool | None
) -> str:
    """``deploy_mode=``, else ``kubernetes.deploy-mode``, else ``"remote"``; what only
    the other mode uses is refused rather than ignored."""
    from .exceptions import InvalidArgument

    if attach is not None:
        if deploy_mode == "local":
            raise InvalidArgument("from_name reconnects to a scheduler pod: deploy_mode='local' cannot apply")
        return "operator" if deploy_mode == "operator" else "remote"
    mode = deploy_mode if deploy_mode is not None else dask.config.get("kubernetes.deploy-mode", default=None)
    mode = mode or "remote"
    if mode not in _DEPLOY_MODES:
        raise InvalidArgument(
            f"deploy_mode={mode!r}: 'remote' (the scheduler in a pod, the default), "
            "'local' (the scheduler in this Python process) or 'operator' (a DaskCluster "
            "resource the cluster's operator makes)"
        )
    given = sorted(k for k, v in listen.items() if v is not None)
    if mode != "local" and given:
        raise InvalidArgument(
            f"{', '.join(given)}: where a local scheduler listens; the scheduler runs in a pod "
            f"(deploy_mode={mode!r}): pass deploy_mode='local' to run it in this process"
        )
    if mode == "local" and shutdown_on_close is False:
        raise InvalidArgument(
            "shutdown_on_close=False keeps the cluster after this process; with deploy_mode='local' "
            "its scheduler is this process"
        )
    return mode


def _local_scheduler_options(listen: dict, idle_timeout: Any) -> dict:
    """The ``distributed.Scheduler`` arguments of a local scheduler."""
    options = {
        key: value if value is not None else dask.config.get(config_key, default=default)
        for key, value in listen.items()
        for config_key, default in [_LOCAL_LISTEN[key]]
    }
    if options["dashboard_address"] is None:
        options["dashboard_address"] = _LOCAL_LISTEN["dashboard_address"][1]
    if idle_timeout is not None:
        options["idle_timeout"] = _seconds(idle_timeout, "idle_timeout")
    return options


def _api_host(options: dict) -> str:
    """Where this process reaches its own scheduler's HTTP server: the dashboard's host,
    loopback when it listens on every address."""
    host = str(options["dashboard_address"]).rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _finalize(native, shutdown: bool) -> None:
    """At interpreter exit or garbage collection: close (or detach) a cluster that was not
    closed, blocking with the GIL released (the event loop may be gone by then)."""
    try:
        if native.is_closed():
            return
        if shutdown:
            native.close_blocking()
        else:
            native.detach_blocking()
    except Exception as e:  # noqa: BLE001 - nothing can be raised at exit
        print(f"dask_kube: closing cluster {native.name} at exit failed: {e}", file=sys.stderr)


class _RustAdaptive:
    """What ``cluster.adapt()`` returns: the Rust adapt loop, shaped like
    ``distributed.deploy.Adaptive`` where ``Cluster`` looks at it."""

    def __init__(self, cluster: "KubeCluster", minimum: int, maximum: int):
        self._cluster = weakref.ref(cluster)
        self.minimum = minimum
        self.maximum = maximum

    @property
    def periodic_callback(self) -> bool:
        cluster = self._cluster()
        return bool(cluster and cluster._native and cluster._native.is_adapting())

    def stop(self) -> None:
        cluster = self._cluster()
        if cluster is not None and cluster._native is not None and not cluster._native.is_closed():
            cluster.sync(cluster._native.stop_adapting)

    def __repr__(self) -> str:
        return f"<RustAdaptive: minimum={self.minimum} maximum={self.maximum}>"


class KubeCluster(Cluster):
    """A Dask cluster on Kubernetes: a scheduler pod, a Service, and worker pods made from
    a pod template, with every object owned by the scheduler pod (deleting it removes the
    rest through the garbage collector).

    Parameters
    ----------
    pod_template : dict, str path, or pod object, optional
        The worker pod (dask-kubernetes' ``worker-spec.yml``; a file's ``$VAR``/``${VAR}``
        are expanded from the environment, as classic). Default:
        ``kubernetes.worker-template-path`` / ``kubernetes.worker-template``; without any,
        an operator-style worker from ``image`` (``kubernetes.image``).
    name : str, optional
        Cluster name, or a template like ``dask-{user}-{uuid}`` (``kubernetes.name``).
    namespace : str, optional
        Default ``kubernetes.namespace``, then the kubeconfig context's.
    n_workers : int, optional
        Workers to start with (``kubernetes.count.start``).
    env : dict, optional
        Environment variables of the scheduler and the workers (over ``kubernetes.env``).
    scheduler_pod_template : dict, str path, or pod object, optional
        The scheduler pod (``kubernetes.scheduler-template``); default derived from the
        worker template, as classic: its volumes and placement kept (not the worker's
        resources, which a scheduler does not use).
    idle_timeout : str or number, optional
        The scheduler shuts down after this long without clients (``--idle-timeout``).
    apply_default_affinity : {"preferred", "required", "none"}
        Classic's dedicated-pool node affinity (``kubernetes.apply-default-affinity``).
    image, resources, worker_command :
        Operator-era arguments, used when there is no template (``resources`` checked
        as upstream: a mapping of ``limits`` and ``requests``).
    scheduler_service_type : str, optional
        The Service's type (``kubernetes.scheduler-service-type``, ``ClusterIP``).
    resource_timeout : number, optional
        Seconds the scheduler pod may take to run (``kubernetes.resource-timeout``).
    port_forward_cluster_ip : bool, optional
        True: reach the scheduler by port-forward; False: by the Service's address; None
        (``kubernetes.port-forward-cluster-ip``): the Service inside the cluster.
    scheduler_forward_port : int, optional
        The local port of the forwarded dashboard (``kubernetes.scheduler-forward-port``).
    custom_cluster_spec : dict or str path, optional
        A ``DaskCluster`` resource (``kubernetes.custom-cluster-spec``) to make the cluster
        from: its name, worker and scheduler specs, replicas, Service type, idle timeout.
    jupyter : bool
        Start Jupyter on the scheduler (``kubernetes.scheduler-jupyter``); see
        :attr:`jupyter_link`.
    scheduler_service_wait_timeout, scheduler_service_name_resolution_retries : optional
        Accepted for classic code: dask-kube reaches the scheduler through port-forward or
        the Service's name, and never waits for a LoadBalancer address or for the name to
        resolve.
    deploy_mode : {"remote", "local", "operator"}, optional
        Where the scheduler runs (``kubernetes.deploy-mode``, default ``"remote"``):
        ``"remote"`` in a scheduler pod behind a Service, so the cluster outlives this
        process and a controller pod can adapt it; ``"local"`` in this Python process,
        as dask-kubernetes classic's ``deploy_mode="local"``: one Python process fewer
        to start (faster to the first connected worker where cores are few), but the
        worker pods must reach this process, and the cluster ends with it;
        ``"operator"`` as dask-kubernetes' operator-era client: a ``DaskCluster``
        resource (the same pods as ``"remote"``) that the cluster's operator
        (``dask-kube operator``, or upstream's) makes into a scheduler Deployment, its
        Service and worker groups; ``scale`` sets a group's replicas, ``adapt`` is a
        ``DaskAutoscaler``, ``close`` deletes the resource.
    create_mode : CreateMode or str, optional
        ``deploy_mode="operator"`` only, as dask-kubernetes' operator-era client
        (``kubernetes.create-mode``): ``CREATE_OR_CONNECT`` (the default) connects to the
        ``DaskCluster`` of that name when it exists, ``CREATE_ONLY`` refuses it,
        ``CONNECT_ONLY`` refuses to create one.
    host, port, interface, protocol, dashboard_address :
        ``deploy_mode="local"`` only: where the scheduler in this process listens
        (``kubernetes.host`` ``"0.0.0.0"``, ``kubernetes.port`` 0,
        ``kubernetes.interface``, ``kubernetes.protocol`` ``"tcp://"``,
        ``kubernetes.dashboard_address`` ``":8787"``, as classic). Its address must be
        one the worker pods can connect to.
    security : distributed.security.Security or bool, optional
        TLS between this client, the scheduler and the workers. Default (``None``, or
        ``True``; ``kubernetes.tls``): a certificate authority made for this cluster, its
        certificate in a Secret owned by the scheduler pod and mounted into the scheduler
        and worker pods; ``cluster.security`` is the client's copy, which ``Client(cluster)``
        uses. A ``Security``: the pod templates configure Dask's TLS with their own
        certificates (classic's way) and this is the client's. ``False``: plain ``tcp://``,
        open to anyone who reaches the scheduler. With ``deploy_mode="local"`` it is the
        local scheduler's, as classic.
    shutdown_on_close : bool
        Delete the cluster on ``close()`` and at interpreter exit (default True; False
        for ``from_name`` and for a ``DaskCluster`` this client connected to).
    auth : ClusterAuth or list, optional
        ``KubeConfig(config_file=, context=)``, ``InCluster()``, ``KubeAuth(host, ...)`` or
        a list tried in order, instead of the default chain (in-cluster service account,
        ``$KUBECONFIG``, ``~/.kube/config``).
    asynchronous, loop, quiet :
        As for every ``distributed`` cluster manager.
    """

    def __init__(
        self,
        pod_template: Any = None,
        name: str | None = None,
        namespace: str | None = None,
        n_workers: int | None = None,
        env: Mapping[str, Any] | None = None,
        scheduler_pod_template: Any = None,
        idle_timeout: Any = None,
        image: str | None = None,
        resources: Mapping[str, Any] | None = None,
        worker_command: str | list[str] | None = None,
        scheduler_options: list[str] | None = None,
        apply_default_affinity: str | None = None,
        scheduler_service_type: str | None = None,
        resource_timeout: Any = None,
        port_forward_cluster_ip: bool | None = None,
        scheduler_forward_port: int | None = None,
        custom_cluster_spec: Any = None,
        create_mode: Any = None,
        jupyter: bool | None = None,
        scheduler_service_wait_timeout: Any = None,
        scheduler_service_name_resolution_retries: int | None = None,
        deploy_mode: str | None = None,
        host: str | None = None,
        port: int | None = None,
        interface: str | None = None,
        protocol: str | None = None,
        dashboard_address: str | None = None,
        security: Any = None,
        shutdown_on_close: bool | None = None,
        auth: Any = None,
        asynchronous: bool = False,
        loop=None,
        quiet: bool = False,
        _attach: str | None = None,
    ):
        local_listen = dict(
            host=host, port=port, interface=interface, protocol=protocol, dashboard_address=dashboard_address
        )
        self._deploy_mode = _deploy_mode(deploy_mode, _attach, local_listen, shutdown_on_close)
        self._create_mode = _create_mode(create_mode, self._deploy_mode, _attach)
        self._local_scheduler_options = (
            _local_scheduler_options(local_listen, idle_timeout) if self._deploy_mode == "local" else None
        )
        tls_mode = _tls_mode(security, self._deploy_mode)
        self._security_arg = security
        if self._local_scheduler_options is not None and security is True:
            from .exceptions import InvalidArgument

            raise InvalidArgument(
                "security=True makes a certificate authority for a scheduler pod; with "
                "deploy_mode='local' pass the local scheduler's Security(...)"
            )
        if self._local_scheduler_options is not None and security not in (None, False):
            self._local_scheduler_options["security"] = security
        self.security = None
        self.scheduler = None
        if n_workers is not None and (
            not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 0
        ):
            raise ValueError(f"n_workers must be a whole number >= 0, not {n_workers!r}")
        if env is not None and not isinstance(env, Mapping):
            # The operator's list form.
            env = {str(e["name"]): e.get("value", "") for e in env}
        self._native = None
        self._pending = None
        self._finalizer = None
        self._attach = _attach
        self._n_workers = n_workers
        # None: decided at start (True, but False for a DaskCluster this client connected to).
        self.shutdown_on_close = shutdown_on_close
        self._worker_pod = None
        self._scheduler_pod = None
        if jupyter is None:
            jupyter = bool(dask.config.get("kubernetes.scheduler-jupyter", default=False))
        self.jupyter = jupyter
        if custom_cluster_spec is None:
            custom_cluster_spec = dask.config.get("kubernetes.custom-cluster-spec", default=None)
        if isinstance(custom_cluster_spec, (str, os.PathLike)):
            import yaml

            with open(os.path.expanduser(os.fspath(custom_cluster_spec))) as f:
                custom_cluster_spec = yaml.safe_load(f)
        if port_forward_cluster_ip is None:
            port_forward_cluster_ip = dask.config.get("kubernetes.port-forward-cluster-ip", default=None)
        if scheduler_forward_port is None:
            scheduler_forward_port = dask.config.get("kubernetes.scheduler-forward-port", default=None)
        request = {
            "worker_template": _template_source(pod_template),
            "scheduler_template": _template_source(scheduler_pod_template),
            "image": image,
            "resources": dict(resources) if isinstance(resources, Mapping) else resources,
            "worker_command": worker_command,
            "name": name,
            "namespace": namespace,
            "env": {str(k): str(v) for k, v in (env or {}).items()},
            "n_workers": n_workers,
            # A local scheduler takes its idle timeout itself (_local_scheduler_options).
            "idle_timeout": None if self._deploy_mode == "local" else _duration_text(idle_timeout),
            "scheduler_options": [str(o) for o in (scheduler_options or [])],
            "jupyter": bool(jupyter),
            "scheduler_service_type": scheduler_service_type,
            "resource_timeout": _seconds_or_none(resource_timeout, "resource_timeout"),
            "apply_default_affinity": apply_default_affinity,
            "access": _access(port_forward_cluster_ip),
            "dashboard_port": int(scheduler_forward_port or 0),
            "tls": tls_mode,
        }
        self._auth = auth_argument(auth)
        self._options = {
            "request": {k: v for k, v in request.items() if v is not None},
            "custom_cluster_spec": custom_cluster_spec,
            "config": _python_config(),
            "environ": sorted(os.environ.items()),
            "auth": self._auth,
        }
        if custom_cluster_spec is not None and name is None:
            name = custom_cluster_spec.get("metadata", {}).get("name")
        self._reconnect = {
            "namespace": namespace,
            "access": request["access"],
            "dashboard_port": request["dashboard_port"],
            "config": self._options["config"],
            "environ": self._options["environ"],
            "auth": self._auth,
        }
        super().__init__(asynchronous=asynchronous, loop=loop, quiet=quiet, name=name or _attach)
        if not self.asynchronous:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException as e:
                # Ctrl-C or a failure: nothing half-made is left behind.
                self._abort_start_blocking(e)
                raise

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, yaml_path: str | os.PathLike, **kwargs) -> "KubeCluster":
        """A cluster from a worker pod template file (dask-kubernetes' ``worker-spec.yml``)."""
        return cls(os.fspath(yaml_path), **kwargs)

    @classmethod
    def from_dict(cls, pod_spec: Mapping[str, Any], **kwargs) -> "KubeCluster":
        """A cluster from a worker pod template given as a dict."""
        if not isinstance(pod_spec, Mapping):
            raise TypeError(f"from_dict needs a mapping, not {type(pod_spec).__name__}")
        return cls(dict(pod_spec), **kwargs)

    @classmethod
    def from_name(cls, name: str, namespace: str | None = None, **kwargs) -> "KubeCluster":
        """Reconnects to a running cluster (what ``dask-kube attach`` does). Closing it
        leaves the cluster running unless ``shutdown_on_close=True``."""
        kwargs.setdefault("shutdown_on_close", False)
        return cls(namespace=namespace, _attach=name, **kwargs)

    def __await__(self):
        async def _():
            if self.status == Status.created:
                await self._start()
            return self

        return _().__await__()

    async def _start(self):
        started_workers = False
        try:
            if self._native is None:
                if self._deploy_mode == "operator":
                    await self._start_dask_cluster()
                    started_workers = True
                elif self._attach is not None:
                    self._native = await _native.connect(
                        self._attach, json.dumps(self._reconnect, default=str), _config_now
                    )
                else:
                    if self._deploy_mode == "local":
                        await self._start_local_scheduler()
                    self._pending = await _native.prepare(json.dumps(self._options, default=str), _config_now)
                    self.name = self._pending.name
                    manifests = json.loads(self._pending.manifests)
                    self._scheduler_pod = next(
                        (m for m in manifests if m["metadata"]["labels"].get("dask.org/component") == "scheduler"
                         and m["kind"] == "Pod"),
                        None,
                    )
                    try:
                        # The library's `up` (the CLI's): scheduler and the request's workers
                        # created together and awaited until connected.
                        self._native = await self._pending.start()
                    finally:
                        self._drain_messages(self._pending)
                    self._warn_if_capped(json.loads(self._native.start_report), stacklevel=5)
                    started_workers = True
            self._worker_pod = json.loads(self._native.worker_pod)
            self.name = self._native.name
            if self.shutdown_on_close is None:
                self.shutdown_on_close = True
            self._finalizer = weakref.finalize(
                self, _finalize, self._native, self.shutdown_on_close
            )
            if self._deploy_mode == "local":
                from distributed.security import Security

                self.security = self.scheduler.security if self.scheduler is not None else Security()
            else:
                self.security = _client_security(self._native.tls, self._security_arg)
            self.scheduler_comm = rpc(
                self._native.scheduler_address,
                connection_args=self.security.get_connection_args("client"),
            )
            await super()._start()
            if self._n_workers and not started_workers:
                await self._scale(self._n_workers)
        except BaseException as e:
            await self._abort_start(e)
            raise

    async def _start_dask_cluster(self):
        """``deploy_mode="operator"``: the ``DaskCluster`` of these arguments created (or
        the one of that name reached, as ``create_mode`` says) and made by the cluster's
        operator; returns once its scheduler answers. Its workers are not awaited, as
        upstream's client does not await them."""
        options = self._options
        if self._attach is not None:
            options = {**options, "request": {**options["request"], "name": self._attach}}
        self._native = await _native.operator_start(
            json.dumps(options, default=str), self._create_mode, _config_now
        )
        if self.shutdown_on_close is None:
            # Upstream's default: delete what this client created, not what it reached.
            self.shutdown_on_close = self._native.created
        self._log(
            f"{'created' if self._native.created else 'connected to'} DaskCluster {self._native.name} "
            f"in namespace {self._native.namespace}"
        )

    async def _start_local_scheduler(self):
        """``deploy_mode="local"``: the scheduler in this process, with the HTTP API
        routes the library scales and retires through (as the scheduler pod has them);
        the worker pods connect to its address."""
        from distributed import Scheduler

        routes = list(dask.config.get("distributed.scheduler.http.routes", default=[]) or [])
        if _API_ROUTE not in routes:
            routes.append(_API_ROUTE)
        with dask.config.set({"distributed.scheduler.http.routes": routes}):
            self.scheduler = Scheduler(**self._local_scheduler_options)
        await self.scheduler
        dashboard = getattr(self.scheduler, "http_server", None)
        if dashboard is None or not dashboard.port:
            raise RuntimeError("deploy_mode='local' needs the scheduler's HTTP server (dashboard_address)")
        self._options["request"]["scheduler_address"] = self.scheduler.address
        self._options["request"]["scheduler_api_address"] = (
            f"{_api_host(self._local_scheduler_options)}:{dashboard.port}"
        )

    async def _close_local_scheduler(self):
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None and scheduler.status != Status.closed:
            await scheduler.close()

    def _needs_cleanup(self, error: BaseException) -> bool:
        """Whether a failed start may have left something: not when the library's own
        start failed (it deleted what it made), but after Ctrl-C / cancellation, or a
        failure once the cluster existed."""
        if self._attach is not None:
            return False
        if self._deploy_mode == "operator":
            # The start deletes a DaskCluster it created and then failed with; one that was
            # reached (create_mode) is not this client's to delete.
            return self._native is not None and self._native.created and not self._native.is_closed()
        if self._native is not None:
            return not self._native.is_closed()
        return self._pending is not None and not isinstance(error, DaskKubeError)

    async def _abort_start(self, error: BaseException):
        try:
            await self._close_local_scheduler()
        except Exception as e:  # noqa: BLE001 - the original error is what the user sees
            self._log(f"closing the local scheduler after a failed start failed: {e}")
        if not self._needs_cleanup(error):
            return
        try:
            if self._native is not None:
                await self._native.close()
            else:
                await asyncio.get_running_loop().run_in_executor(None, self._pending.abort)
        except Exception as e:  # noqa: BLE001 - the original error is what the user sees
            self._log(f"deleting the cluster after a failed start failed: {e}")

    def _abort_start_blocking(self, error: BaseException):
        """After Ctrl-C or a failure in a blocking constructor: wait for the start's undo,
        then delete whatever exists of the cluster (GIL released)."""
        try:
            if self._needs_cleanup(error):
                if self._native is not None:
                    self._native.close_blocking()
                else:
                    self._pending.abort()
        except Exception as e:  # noqa: BLE001 - the original error is what the user sees
            print(f"dask_kube: deleting the cluster after a failed start failed: {e}", file=sys.stderr)
        finally:
            if self.scheduler is not None:
                try:
                    self.sync(self._close_local_scheduler)
                except BaseException as e:  # noqa: BLE001 - the original error is what the user sees
                    print(f"dask_kube: closing the local scheduler failed: {e}", file=sys.stderr)
            if self._finalizer is not None:
                self._finalizer.detach()
            self.status = Status.closed
            self._loop_runner.stop()

    def _drain_messages(self, source) -> None:
        for message in source.take_messages():
            self._log(message)

    # -- what a Dask cluster manager has ---------------------------------------------

    @property
    def namespace(self) -> str | None:
        return self._native.namespace if self._native else None

    @property
    def dashboard_link(self) -> str:
        # The scheduler's dashboard through dask-kube's local listener (or the Service),
        # formatted with distributed.dashboard.link; a local scheduler's as distributed
        # formats any in-process one.
        if self._deploy_mode == "local":
            return super().dashboard_link
        return self._native.dashboard_link if self._native else ""

    @property
    def pod_template(self) -> PodDict | None:
        """The worker pod new workers are made from, as classic exposes it (cluster labels,
        the scheduler address and the worker defaults set); ``pod_template.spec.containers[0]``
        reads as it did. ``None`` before the cluster started."""
        return PodDict(self._worker_pod) if self._worker_pod is not None else None

    @property
    def scheduler_pod_template(self) -> PodDict | None:
        """The scheduler pod this cluster made; ``None`` before it started, for a cluster
        reached by ``from_name`` and with ``deploy_mode="local"``."""
        return PodDict(self._scheduler_pod) if self._scheduler_pod is not None else None

    @property
    def jupyter_link(self) -> str:
        """Jupyter on the scheduler (``jupyter=True``), beside the dashboard."""
        if not self.jupyter:
            raise RuntimeError("KubeCluster not started with jupyter enabled")
        return self.dashboard_link.replace("/status", "/jupyter/lab")

    def _interruptible(self, method, *args, **kwargs):
        """``self.sync`` for calls that create things: Ctrl-C waits (GIL released) until
        the cancelled operation has deleted what it made, then propagates. In asynchronous
        code the call is scheduled at once: awaiting it is optional, as with
        ``SpecCluster.scale``."""
        if self.asynchronous:
            return asyncio.ensure_future(method(*args, **kwargs))
        try:
            return self.sync(method, *args, **kwargs)
        except KeyboardInterrupt:
            if self._native is not None:
                self._native.wait_idle()
            raise

    def _workers_for(self, n: int, memory: Any, cores: Any) -> int:
        """``n`` raised to what ``memory`` and ``cores`` need, as ``SpecCluster.scale``
        computes it: each worker pod brings its ``--nthreads`` x ``--nworkers`` threads and
        ``--memory-limit`` x ``--nworkers`` bytes."""
        if memory is None and cores is None:
            return n
        threads, memory_bytes = _native.worker_capacity(json.dumps(self._worker_pod or {}))
        if cores is not None:
            if not threads:
                raise ValueError("to use scale(cores=...) the worker pods' command must give --nthreads")
            n = max(n, math.ceil(cores / threads))
        if memory is not None:
            if not memory_bytes:
                raise ValueError("to use scale(memory=...) the worker pods' command must give --memory-limit in bytes")
            n = max(n, math.ceil(parse_bytes(memory) / memory_bytes))
        return n

    def scale(
        self,
        n: int = 0,
        memory: Any = None,
        cores: Any = None,
        *,
        force: bool = False,
        worker_group: str | None = None,
    ):
        """Scales to ``n`` workers, or to enough for ``memory`` (``"100 GB"``) and ``cores``.
        Scale-down deletes ended and pending pods first, then retires connected workers
        through the scheduler (their data moves first) and deletes only the pods it
        confirms; ``force=True`` skips retiring. With ``deploy_mode="operator"`` it sets
        the replicas of ``worker_group`` (``"default"``, or one added with
        ``add_worker_group``) and the operator does the rest, retiring as well. In
        asynchronous code, awaiting the result is optional."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"scale needs a whole number of workers >= 0, not {n!r}")
        if worker_group not in (None, "default") and self._deploy_mode != "operator":
            from .exceptions import InvalidArgument

            raise InvalidArgument(
                f"scale(worker_group={worker_group!r}): worker groups are DaskWorkerGroup resources "
                "(deploy_mode='operator'); this cluster has one group of workers"
            )
        n = self._workers_for(n, memory, cores)
        self._stop_adaptive()
        group = {} if worker_group is None else {"worker_group": worker_group}
        return self._interruptible(self._scale, n, force, **group)

    def scale_up(self, n: int, **kwargs):
        """Scales to ``n`` workers (dask-kubernetes' classic name)."""
        return self.scale(n, **kwargs)

    def _operator_only(self, what: str) -> None:
        if self._deploy_mode != "operator":
            from .exceptions import InvalidArgument

            raise InvalidArgument(
                f"{what}: worker groups are DaskWorkerGroup resources (deploy_mode='operator'); "
                "this cluster has one group of workers"
            )

    def add_worker_group(
        self,
        name: str,
        n_workers: int = 3,
        image: str | None = None,
        resources: Mapping[str, Any] | None = None,
        worker_command: Any = None,
        env: Any = None,
        custom_spec: Mapping[str, Any] | None = None,
    ):
        """``deploy_mode="operator"``: adds worker group ``<cluster>-<name>`` of ``n_workers``
        workers, a ``DaskWorkerGroup`` with ``custom_spec`` (its ``spec.worker``) or the
        default group's worker spec; ``scale(n, worker_group=name)`` scales it. ``image``,
        ``resources``, ``worker_command`` and ``env`` are refused: pass them in
        ``custom_spec`` (the default group's spec is ``cluster.pod_template``)."""
        self._operator_only("add_worker_group")
        given = [k for k, v in (("image", image), ("resources", resources),
                                ("worker_command", worker_command), ("env", env)) if v is not None]
        if given:
            from .exceptions import InvalidArgument

            raise InvalidArgument(
                f"add_worker_group({', '.join(given)}=...): give the group's worker spec as custom_spec "
                "(a DaskWorkerGroup's spec.worker); without it the default group's spec is used"
            )
        worker = json.dumps(dict(custom_spec)) if custom_spec is not None else None
        return self.sync(self._native.add_worker_group, name, int(n_workers), worker)

    def delete_worker_group(self, name: str):
        """``deploy_mode="operator"``: deletes worker group ``<cluster>-<name>`` and its workers."""
        self._operator_only("delete_worker_group")
        return self.sync(self._native.delete_worker_group, name)

    async def _scale(self, n: int, force: bool = False, worker_group: str | None = None) -> dict:
        if self._deploy_mode == "operator":
            report = json.loads(await self._native.scale(n, force, worker_group or "default"))
            self._log(f"worker group {report['worker_group']}: {report['before']} -> {report['target']} workers")
            return report
        report = json.loads(await self._native.scale(n, force))
        self._warn_if_capped(report, stacklevel=4)
        if report.get("created") or report.get("retired") or report.get("deleted"):
            self._log(
                f"scaled from {report['before']} to {report['target']} workers: "
                f"{len(report['created'])} created, {len(report['retired'])} retired, "
                f"{len(report['deleted'])} deleted"
            )
        return report

    @staticmethod
    def _warn_if_capped(report: dict, stacklevel: int) -> None:
        """Asked above kubernetes.count.max: only the cap was created and awaited. Said
        out loud, as the CLI says it on stderr."""
        capped = report.get("capped")
        if capped:
            warnings.warn(
                f"asked for {capped['requested']} workers; capped at {capped['max']} "
                "by kubernetes.count.max",
                stacklevel=stacklevel,
            )

    def _stop_adaptive(self):
        if self._adaptive is not None:
            adaptive, self._adaptive = self._adaptive, None
            if self.asynchronous:
                asyncio.ensure_future(self._native.stop_adapting())
            else:
                adaptive.stop()

    def adapt(
        self,
        minimum: int | None = None,
        maximum: int | float | None = None,
        target_duration: Any = None,
        wait_count: int | None = None,
        interval: Any = None,
        cooldown: Any = None,
        max_scale_down_step: int | None = None,
        start_window: int | None = None,
        in_cluster: bool = True,
        minimum_cores=None,
        maximum_cores=None,
        minimum_memory=None,
        maximum_memory=None,
        Adaptive=None,
        **kwargs,
    ) -> _RustAdaptive:
        """Adapts between ``minimum`` (default 0) and ``maximum`` (default
        ``kubernetes.count.max``, else no cap) workers with the Rust adapt loop: the
        scheduler's adaptive target polled every ``interval``, scale-up at once, scale-down
        after ``wait_count`` agreeing polls and ``cooldown`` after a change (defaults 1 s, 3,
        15 s), retiring before deleting, lost workers replaced: at most ``start_window``
        replacements starting at once (default 10, or half the connected workers when more),
        so workers that cannot connect are not all replaced by pods that fail the same way.
        ``minimum_cores`` /
        ``maximum_cores`` / ``minimum_memory`` / ``maximum_memory`` become worker counts as
        ``SpecCluster.adapt`` makes them. ``target_duration`` sets the scheduler's
        ``distributed.adaptive.target-duration`` (lower asks for more workers). With
        ``in_cluster`` (the default) the cluster's controller pod adapts, so adapting goes
        on when this process ends or sleeps (``shutdown_on_close=False``); where the
        namespace has no ``dask-kube-controller`` ServiceAccount (``deploy/rbac.yaml``) this
        process adapts, with a warning saying why."""
        if Adaptive is not None:
            raise TypeError("adapt(Adaptive=...) is not supported: the Rust adapt loop adapts")
        if kwargs:
            raise TypeError(f"adapt() got unexpected arguments: {', '.join(sorted(kwargs))}")
        if maximum == math.inf:
            maximum = None
        if minimum_cores is not None or minimum_memory is not None:
            minimum = self._workers_for(minimum or 0, minimum_memory, minimum_cores)
        if maximum_cores is not None or maximum_memory is not None:
            # The most workers that stay within the cores and memory given.
            bounds = []
            threads, memory_bytes = _native.worker_capacity(json.dumps(self._worker_pod or {}))
            if maximum_cores is not None and threads:
                bounds.append(int(maximum_cores // threads))
            if maximum_memory is not None and memory_bytes:
                bounds.append(int(parse_bytes(maximum_memory) // memory_bytes))
            if bounds:
                maximum = min([*bounds] + ([int(maximum)] if maximum is not None else []))
        for value, what in ((minimum, "minimum"), (maximum, "maximum")):
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"adapt {what} must be a whole number >= 0, not {value!r}")
        if target_duration is not None:
            seconds = _seconds(target_duration, "target_duration")
            self.sync(self._set_target_duration, seconds) if not self.asynchronous else (
                asyncio.ensure_future(self._set_target_duration(seconds))
            )
        tuning = {
            "interval": _seconds_or_none(interval, "interval"),
            "wait_count": None if wait_count is None else int(wait_count),
            "cooldown": _seconds_or_none(cooldown, "cooldown"),
            "max_scale_down_step": max_scale_down_step,
            "start_window": None if start_window is None else int(start_window),
        }
        started = json.loads(
            self._native.adapt(
                None if minimum is None else int(minimum),
                None if maximum is None else int(min(maximum, 2**32 - 1)),
                json.dumps({k: v for k, v in tuning.items() if v is not None}),
                # A local scheduler has no pod for a controller pod to belong to.
                bool(in_cluster) and self._deploy_mode != "local",
            )
        )
        if started["controller_unavailable"]:
            warnings.warn(
                f"adapting from this process, which must stay alive: {started['controller_unavailable']}",
                stacklevel=2,
            )
        self._warn_if_capped(started, stacklevel=3)
        self._adaptive = _RustAdaptive(self, started["minimum"], started["maximum"])
        controller = started["controller"]
        if self._deploy_mode != "operator" and controller:
            controller = f"pod {controller}"
        where = f"in the cluster ({controller})" if controller else "from this process"
        self._log(f"adapting between {started['minimum']} and {started['maximum']} workers {where}")
        return self._adaptive

    async def _set_target_duration(self, seconds: float) -> None:
        """Sets ``distributed.adaptive.target-duration`` in the scheduler process, which
        its ``adaptive_target`` (polled by the adapt loop) reads."""
        from distributed.protocol.pickle import dumps

        def set_target_duration(value=seconds):
            import dask.config

            dask.config.set({"distributed.adaptive.target-duration": f"{value}s"})

        response = await self.scheduler_comm.run_function(
            function=dumps(set_target_duration), args=dumps(()), kwargs=dumps({}), wait=True
        )
        if response.get("status") == "error":
            from distributed.core import clean_exception

            _, exc, tb = clean_exception(**response)
            raise exc.with_traceback(tb)

    async def _workers(self) -> list[dict]:
        return json.loads(await self._native.workers())

    def pods(self) -> list[dict]:
        """Worker pods: name, phase, why it ended, connected Dask worker addresses."""
        return self.sync(self._workers)

    async def _get_logs(self, cluster=True, scheduler=True, workers=True):
        logs = Logs()
        if self._pending is not None:
            self._drain_messages(self._pending)
        if cluster:
            logs["Cluster"] = Log("\n".join(line for _, line in self._cluster_manager_logs))
        pod_logs = json.loads(await self._native.logs())
        for pod, text in pod_logs.items():
            is_scheduler = pod == self._native.name
            if is_scheduler and scheduler:
                logs["Scheduler"] = Log(text)
            elif not is_scheduler and (workers is True or (workers and pod in set(workers))):
                # A worker's Dask name is its pod's (the worker defaults name it so).
                logs[pod] = Log(text)
        return logs

    def logs(self, scheduler: bool = True, workers: Any = True):
        """Pod logs keyed as classic's ``logs``: ``"Scheduler"`` and each worker by name
        (its pod's); no ``"Cluster"`` entry, which ``get_logs`` adds."""
        return self.get_logs(cluster=False, scheduler=scheduler, workers=workers)

    async def _close(self):
        if self.status == Status.closed:
            return
        # The Rust close stops the adapt loop; distributed's _close would call
        # _RustAdaptive.stop through sync() from the loop's own thread.
        self._adaptive = None
        await super()._close()
        native = self._native
        if self._finalizer is not None:
            self._finalizer.detach()
        try:
            if native is None or native.is_closed():
                return
            if self.shutdown_on_close:
                # A local scheduler is still up here: the workers are retired through it.
                report = json.loads(await native.close())
                self._log(f"deleted cluster {native.name}: {report['deleted_pods']} pods")
            else:
                await native.detach()
        finally:
            await self._close_local_scheduler()

    def __repr__(self) -> str:
        if self._native is None:
            return f"{type(self).__name__}({self.name!r}, not started)"
        return super().__repr__()
