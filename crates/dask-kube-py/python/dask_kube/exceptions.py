"""Exceptions of dask_kube. Each derives from the built-in exception a Python user would
already catch (``FileNotFoundError`` for a missing template file, ``ValueError`` for bad
input, ``ConnectionError``, ``PermissionError``, ``LookupError``, ``TimeoutError``), and
its message is the Rust library's, naming the problem."""


class DaskKubeError(Exception):
    """Any dask_kube failure."""


class DaskKubeOSError(DaskKubeError, OSError):
    """A local file could not be read."""


class TemplateFileNotFound(DaskKubeError, FileNotFoundError):
    """The worker template file does not exist."""


class InvalidTemplate(DaskKubeError, ValueError):
    """A pod template that is not valid YAML or not a usable pod."""


class InvalidConfig(DaskKubeError, ValueError):
    """A Dask config value of the wrong shape."""


class InvalidArgument(DaskKubeError, ValueError):
    """An argument that cannot work (a bad quantity, a bad name, ...)."""


class KubernetesUnreachable(DaskKubeError, ConnectionError):
    """No credentials, or the API server does not answer."""


class Forbidden(DaskKubeError, PermissionError):
    """RBAC refused a call; the message names the verb and resource."""


class ClusterNotFound(DaskKubeError, LookupError):
    """No such cluster or namespace."""


class ClusterTimeout(DaskKubeError, TimeoutError):
    """A bounded wait ran out."""


class SchedulerError(DaskKubeError):
    """The scheduler pod failed or its API cannot be reached."""


class WorkersFailed(DaskKubeError):
    """Every worker pod ended before the awaited workers connected (a flag ``dask worker``
    refuses, an image that exits, OOM at start); the message quotes one pod's log."""


class PartialFailure(DaskKubeError):
    """Part of a batch failed; the message names what is left."""
