"""Fixtures that run dask-kubernetes 2026.3.0's own operator tests, unchanged, on the local
cluster against the dask-kube operator that `cluster up` deployed
(e2e-tests/local-cluster/up.d/30-dask-operator.sh), or against upstream's kopf operator
for the reference counts: this file replaces upstream's root conftest
(`dask_kubernetes/conftest.py` in the wheel), whose fixtures start kind, build a docker
image and run kopf in-process. `run-upstream-tests.sh` copies upstream's test files next to
this file and runs pytest on them; `DASK_UPSTREAM_TESTS_OPERATOR` (`dask-kube`, `kopf`)
says which operator.

Same fixture names and shapes as upstream's, so the test files need no edit:
- `k8s_cluster`: the local cluster (found by the rule of e2e-tests/cluster-harness) as
  pytest-kind's own `KindCluster` (its `kubectl(*args) -> str`, `port_forward(target,
  port, *args)` and `kubeconfig_path`), which upstream's root conftest creates with kind.
- `kopf_runner`: `with kopf_runner as runner:` as kopf.testing.KopfRunner. `dask-kube`: the
  operator already runs in the cluster for every namespace; entering checks that it is
  ready, leaving reads its log of that span into `runner.output` and sets `exit_code` 0
  when the same container ran throughout (no restart, no crash). `kopf`: upstream's own
  fixture, `KopfRunner(["run", "-m", "dask_kubernetes.operator", "--verbose",
  "--namespace", ns])` in this process (run-upstream-tests.sh scales the deployed
  operator to 0 meanwhile). A test that does not ask for `kopf_runner` runs with no
  operator, as upstream's does: the deployed one is scaled to 0 for its span.
- `docker_image`: the image upstream's tests and fixtures run, `dask-kubernetes:dev`
  (upstream builds it from its ci/Dockerfile; the local registry serves it:
  images/build.sh's `dask-kubernetes-dev`, with the `dask-scheduler`/`dask-worker` scripts
  upstream's specs call).
- `customresources`: our CRDs (`dask-kube operator crds`, as the hook applies them) for
  both operators: upstream's schema but for raw pod specs (crates/dask-kube/OPERATOR.md).
- `namespace`, `anyio_backend`, and `install_istio`/`install_gateway` as no-ops (upstream
  runs them only with TEST_ISTIO / TEST_DASK_GATEWAY set).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from pytest_kind.cluster import KindCluster

REPO = Path(__file__).resolve().parents[2]
DOCKER_IMAGE = "dask-kubernetes:dev"
#: Which operator the tests run against: the dask-kube one `cluster up` deployed, or kopf.
OPERATORS = ("dask-kube", "kopf")
OPERATOR = os.environ.get("DASK_UPSTREAM_TESTS_OPERATOR", "dask-kube")
#: Where up.d/30-dask-operator.sh runs it (crates/dask-kube/deploy/operator/operator.yaml).
OPERATOR_NAMESPACE = "dask-kube-operator"
OPERATOR_SELECTOR = "app.kubernetes.io/name=dask-kube-operator"
#: What it logs once every watch has listed (dask_kube::OPERATOR_READY_LINE).
OPERATOR_READY_LINE = "dask-kube-operator ready"
OPERATOR_READY_WAIT = 60
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


def dask_kube_binary() -> str:
    """`$DASK_KUBE_BIN`, else the debug build under $CARGO_TARGET_DIR (for `operator crds`)."""
    explicit = os.environ.get("DASK_KUBE_BIN")
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/dask-on-k8s/target"))
    return str(target / "debug" / "dask-kube")


class LocalCluster(KindCluster):
    """pytest-kind's KindCluster, the class upstream's tests use, over the local cluster.

    Only what kind does is not used (`create`, `delete`, `load_docker_image`: the cluster
    is already up and its registry serves the image); `kubectl()` and `port_forward()` are
    pytest-kind's own. That matters for port_forward: pytest-kind's runs all of its 10
    attempts (each a fresh `kubectl port-forward` held 1 s, a pod not yet running retried),
    so it yields after about 10 s, which upstream's tests that port-forward to the
    scheduler Service the moment a worker pod exists rely on.
    """

    def __init__(self, kubeconfig: Path, kubectl: Path):
        super().__init__(name="local-cluster", kubeconfig=kubeconfig, kubectl_path=kubectl)


class DeployedOperatorRunner:
    """kopf.testing.KopfRunner's interface over the operator deployed in the cluster."""

    def __init__(self, cluster: "LocalCluster"):
        self.cluster = cluster
        self.output = ""
        self.exit_code: int | None = None
        self.exception: BaseException | None = None
        self._since = ""
        self._container: tuple[str, int] | None = None

    def _pod(self) -> tuple[str, int, bool]:
        """The operator pod's name, its container's restart count, and whether it runs."""
        pods = json.loads(
            self.cluster.kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR, "-o", "json")
        )["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if len(live) != 1:
            raise RuntimeError(
                f"{len(live)} dask-kube operator pods in namespace {OPERATOR_NAMESPACE}, not 1: "
                "is the cluster up with up.d/30-dask-operator.sh (and not paused for kopf)?"
            )
        pod = live[0]
        status = (pod.get("status", {}).get("containerStatuses") or [{}])[0]
        return pod["metadata"]["name"], int(status.get("restartCount", 0)), "running" in status.get("state", {})

    def _log(self, since: str | None = None) -> str:
        args = ["logs", "-n", OPERATOR_NAMESPACE, f"pod/{self._container[0] if self._container else ''}"]
        if since:
            args.append(f"--since-time={since}")
        return self.cluster.kubectl(*args)

    def __enter__(self) -> "DeployedOperatorRunner":
        # Whole seconds: --since-time reads RFC 3339, and a line of this second is kept.
        self._since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        deadline = time.monotonic() + OPERATOR_READY_WAIT
        while True:
            name, restarts, running = self._pod()
            self._container = (name, restarts)
            if running and OPERATOR_READY_LINE in self._log():
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dask-kube operator ({name}) is not ready after {OPERATOR_READY_WAIT} s")
            time.sleep(0.5)

    def __exit__(self, typ, value, tb) -> None:
        try:
            name, restarts, running = self._pod()
            self.output = self._log(self._since)
            same = self._container == (name, restarts) and running
        except (RuntimeError, subprocess.CalledProcessError) as e:
            self.exception, same = e, False
        self.exit_code = 0 if same else 1
        if not same and self.exception is None:
            self.exception = RuntimeError(
                f"the dask-kube operator restarted or stopped during the test: {self._container} -> {name}, "
                f"{restarts} restarts, running={running}"
            )


def pytest_configure() -> None:
    if OPERATOR not in OPERATORS:
        raise pytest.UsageError(f"DASK_UPSTREAM_TESTS_OPERATOR={OPERATOR!r}: one of {', '.join(OPERATORS)}")
    for name in ["httpcore", "httpx"]:
        logging.getLogger(name).disabled = True


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[LocalCluster]:
    path = kubeconfig_path()
    server = yaml.safe_load(path.read_text())["clusters"][0]["cluster"]["server"]
    if urllib.parse.urlparse(server).hostname not in LOOPBACK:
        pytest.fail(f"{path} points at {server}, not loopback: tests talk to loopback only")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH")
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    yield LocalCluster(path, Path(kubectl))
    if previous is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = previous


@pytest.fixture()
def kopf_runner(k8s_cluster: LocalCluster, namespace: str):
    if OPERATOR == "kopf":
        from kopf.testing import KopfRunner

        return KopfRunner(["run", "-m", "dask_kubernetes.operator", "--verbose", "--namespace", namespace])
    return DeployedOperatorRunner(k8s_cluster)


@pytest.fixture(autouse=True)
def operator_only_with_runner(request: pytest.FixtureRequest, k8s_cluster: LocalCluster) -> Iterator[None]:
    """Upstream's tests assume an operator runs only while a test holds `kopf_runner`
    (kopf runs in the test's process, started by that fixture): a test that does not ask
    for it, `test_cluster_without_operator`, expects no operator to answer. The deployed
    operator serves every namespace all the time, so for such a test it is scaled to 0 for
    the test's span, as run-upstream-tests.sh does for the whole kopf pass, and brought
    back, ready, after it."""
    if OPERATOR != "dask-kube" or "kopf_runner" in request.fixturenames:
        yield
        return
    deployment = ["-n", OPERATOR_NAMESPACE, "deployment/dask-kube-operator"]
    k8s_cluster.kubectl("scale", *deployment, "--replicas=0")
    deadline = time.monotonic() + OPERATOR_READY_WAIT
    while k8s_cluster.kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR, "-o", "name").strip():
        if time.monotonic() > deadline:
            pytest.fail(f"the dask-kube operator's pod is still there {OPERATOR_READY_WAIT} s after scaling it to 0")
        time.sleep(0.5)
    try:
        yield
    finally:
        k8s_cluster.kubectl("scale", *deployment, "--replicas=1")
        k8s_cluster.kubectl("rollout", "status", *deployment, f"--timeout={OPERATOR_READY_WAIT}s")


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
    crds = subprocess.run([dask_kube_binary(), "operator", "crds"], capture_output=True, text=True, check=True).stdout
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
