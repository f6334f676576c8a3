"""Fixtures that run dask-kubernetes 2026.3.0's own operator tests against dask-kube-operator
on the local cluster, unchanged: this file replaces upstream's root conftest
(`dask_kubernetes/conftest.py` in the wheel), whose fixtures start kind, build a docker
image and run kopf in-process. `run-upstream-tests.sh` copies upstream's test files next to
this file and runs pytest on them.

Same fixture names and shapes as upstream's, so the test files need no edit:
- `k8s_cluster`: the local cluster (found by the rule of e2e-tests/cluster-harness), with
  `kubectl(*args) -> str`, `port_forward(target, port, *args)` and `kubeconfig_path`, as
  pytest-kind's `KindCluster`.
- `kopf_runner`: `with kopf_runner as runner:` starts `dask-kube-operator run` for the test
  namespace (outside the cluster, as kopf runs in upstream's tests: schedulers reached by
  port-forward) and stops it at the end; `runner.output` is its log, `runner.exit_code`
  and `runner.exception` as kopf.testing.KopfRunner's.
- `docker_image`: the image upstream's tests and fixtures run, `dask-kubernetes:dev`
  (upstream builds it from its ci/Dockerfile; here the local registry must serve it: see
  README.md, it needs the `dask-scheduler`/`dask-worker` scripts upstream's specs call).
- `customresources`: our CRDs (`dask-kube-operator crds`), not upstream's.
- `namespace`, `anyio_backend`, and `install_istio`/`install_gateway` as no-ops (upstream
  runs them only with TEST_ISTIO / TEST_DASK_GATEWAY set).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER_IMAGE = "dask-kubernetes:dev"
OPERATOR_READY_LINE = "dask-kube-operator ready"
OPERATOR_STARTUP = 30
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def kubeconfig_path() -> Path:
    """The local cluster's kubeconfig, by e2e-tests/cluster-harness's rule."""
    state_dir = os.environ.get("DASK_K8S_STATE_DIR")
    if state_dir:
        return Path(state_dir) / "kubeconfig"
    first = os.environ.get("KUBECONFIG", "").split(":")[0]
    if first:
        return Path(first)
    return Path.home() / ".cache/dask-on-k8s/cluster/kubeconfig"


def operator_binary() -> str:
    """`$DASK_KUBE_OPERATOR_BIN`, else the debug build under $CARGO_TARGET_DIR."""
    explicit = os.environ.get("DASK_KUBE_OPERATOR_BIN")
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/dask-on-k8s/target"))
    return str(target / "debug" / "dask-kube-operator")


class LocalCluster:
    """pytest-kind's KindCluster, as upstream's tests use it, over the local cluster."""

    def __init__(self, kubeconfig: Path):
        self.kubeconfig_path = kubeconfig

    def kubectl(self, *args: str) -> str:
        out = subprocess.run(
            ["kubectl", *args],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig_path)},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    @contextlib.contextmanager
    def port_forward(self, target: str, remote_port: int, *args: str) -> Iterator[int]:
        """`kubectl port-forward TARGET :REMOTE_PORT ARGS`; yields the local port."""
        proc = subprocess.Popen(
            ["kubectl", "port-forward", target, f":{remote_port}", *args],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            port = None
            while port is None and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    raise RuntimeError(f"kubectl port-forward {target} exited: {proc.returncode}")
                match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
                if match:
                    port = int(match.group(1))
            if port is None:
                raise RuntimeError(f"kubectl port-forward {target} printed no local port within 60 s")
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


class OperatorRunner:
    """kopf.testing.KopfRunner's interface over a `dask-kube-operator run` process."""

    def __init__(self, namespace: str, kubeconfig: Path):
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.output = ""
        self.exit_code: int | None = None
        self.exception: BaseException | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> "OperatorRunner":
        self._log = tempfile.NamedTemporaryFile("w+", prefix="dask-kube-operator-", suffix=".log")
        self._proc = subprocess.Popen(
            [operator_binary(), "run", "--namespace", self.namespace, "--scheduler-access", "port-forward"],
            env={
                **os.environ,
                "KUBECONFIG": str(self.kubeconfig),
                "RUST_LOG": os.environ.get("RUST_LOG", "dask_kube_operator=info"),
                "NO_COLOR": "1",
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + OPERATOR_STARTUP
        while OPERATOR_READY_LINE not in self._read():
            if self._proc.poll() is not None:
                raise RuntimeError(f"dask-kube-operator exited at start ({self._proc.returncode}):\n{self._read()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dask-kube-operator did not start within {OPERATOR_STARTUP} s:\n{self._read()}")
            time.sleep(0.1)
        return self

    def _read(self) -> str:
        assert self._log is not None
        self._log.flush()
        with open(self._log.name) as f:
            return f.read()

    def __exit__(self, typ, value, tb) -> None:
        assert self._proc is not None
        # SIGTERM: the controllers shut down gracefully (kube-runtime's shutdown_on_signal).
        self._proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self.exit_code = self._proc.wait()
        self.output = self._read()
        if self.exit_code != 0:
            self.exception = RuntimeError(f"dask-kube-operator exited with {self.exit_code}")
        if self._log is not None:
            self._log.close()


def pytest_configure() -> None:
    for name in ["httpcore", "httpx"]:
        logging.getLogger(name).disabled = True


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[LocalCluster]:
    path = kubeconfig_path()
    server = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]
    if urllib.parse.urlparse(server).hostname not in LOOPBACK:
        pytest.fail(f"{path} points at {server}, not loopback: tests talk to loopback only")
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not on PATH")
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    yield LocalCluster(path)
    if previous is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = previous


@pytest.fixture()
def kopf_runner(k8s_cluster: LocalCluster, namespace: str) -> OperatorRunner:
    return OperatorRunner(namespace, k8s_cluster.kubeconfig_path)


@pytest.fixture(scope="session")
def docker_image() -> str:
    return DOCKER_IMAGE


@pytest.fixture(scope="session", autouse=True)
def install_istio(k8s_cluster: LocalCluster) -> None:
    if os.environ.get("TEST_ISTIO"):
        pytest.fail("TEST_ISTIO is not supported on the local cluster")


@pytest.fixture(scope="session", autouse=True)
def install_gateway(k8s_cluster: LocalCluster) -> Iterator[None]:
    if os.environ.get("TEST_DASK_GATEWAY"):
        pytest.fail("TEST_DASK_GATEWAY is not supported on the local cluster")
    yield


@pytest.fixture(autouse=True)
def namespace(k8s_cluster: LocalCluster) -> Iterator[str]:
    ns = "dask-k8s-pytest-" + uuid.uuid4().hex[:10]
    k8s_cluster.kubectl("create", "ns", ns)
    yield ns
    k8s_cluster.kubectl("delete", "ns", ns, "--wait=false", "--ignore-not-found=true")


@pytest.fixture(scope="session", autouse=True)
def customresources(k8s_cluster: LocalCluster) -> Iterator[None]:
    crds = subprocess.run([operator_binary(), "crds"], capture_output=True, text=True, check=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(crds)
        f.flush()
        k8s_cluster.kubectl("apply", "-f", f.name)
        for name in ["daskclusters", "daskworkergroups", "daskautoscalers", "daskjobs"]:
            k8s_cluster.kubectl("wait", "--for=condition=established", "--timeout=60s", f"crd/{name}.kubernetes.dask.org")
    yield


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
