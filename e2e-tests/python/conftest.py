"""How the Python suite finds the local cluster (`e2e-tests/local-cluster/cluster up`), by
the same rule as the Rust suites (e2e-tests/cluster-harness): the kubeconfig in
$DASK_K8S_STATE_DIR, else the first $KUBECONFIG entry, else the default state dir's; its
server must be loopback and answer. Without one, cluster tests are SKIPPED (never passed);
with DASK_K8S_REQUIRE_CLUSTER=1 (the integration tier) they fail instead."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SMALL_WORKER = REPO / "crates/dask-kube/tests/fixtures/small-worker.yml"
README_WORKER = REPO / "worker-spec.yml"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def kubeconfig_path() -> Path:
    state_dir = os.environ.get("DASK_K8S_STATE_DIR")
    if state_dir:
        return Path(state_dir) / "kubeconfig"
    first = os.environ.get("KUBECONFIG", "").split(":")[0]
    if first:
        return Path(first)
    return Path.home() / ".cache/dask-on-k8s/cluster/kubeconfig"


def _why_no_cluster(path: Path) -> str | None:
    if not path.is_file():
        return f"no kubeconfig at {path}"
    config = yaml.safe_load(path.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    url = urllib.parse.urlparse(server)
    if url.hostname not in LOOPBACK:
        return f"{path} points at {server}, not loopback: tests talk to loopback only"
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=10):
            return None
    except OSError as e:
        return f"the apiserver at {server} does not answer: {e}"


@pytest.fixture(scope="session")
def local_cluster() -> Path:
    """The local cluster's kubeconfig, exported as $KUBECONFIG for the library."""
    path = kubeconfig_path()
    why = _why_no_cluster(path)
    if why:
        message = f"needs the local cluster ({why}); start it with e2e-tests/local-cluster/cluster up"
        if os.environ.get("DASK_K8S_REQUIRE_CLUSTER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    os.environ["KUBECONFIG"] = str(path)
    return path


class Kubectl:
    """kubectl against the local cluster, for what the tests check from outside."""

    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
        return out.stdout

    def pods(self, cluster: str, namespace: str = "default") -> list[dict]:
        out = self("get", "pods", "-n", namespace, "-l", f"dask.org/cluster-name={cluster}", "-o", "json")
        return json.loads(out)["items"]

    def services(self, cluster: str, namespace: str = "default") -> list[dict]:
        out = self("get", "services", "-n", namespace, "-l", f"dask.org/cluster-name={cluster}", "-o", "json")
        return json.loads(out)["items"]

    def wait_gone(self, cluster: str, namespace: str = "default", timeout: float = 90) -> list[str]:
        """Waits until the cluster has no pods and no Service; returns what is left."""
        deadline = time.monotonic() + timeout
        while True:
            left = [p["metadata"]["name"] for p in self.pods(cluster, namespace)]
            left += ["service/" + s["metadata"]["name"] for s in self.services(cluster, namespace)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)


@pytest.fixture(scope="session")
def kubectl(local_cluster) -> Kubectl:
    return Kubectl(local_cluster)


@pytest.fixture
def small_worker() -> str:
    return str(SMALL_WORKER)


@pytest.fixture(scope="session")
def pod_bridge_address(local_cluster) -> str:
    """This machine's address on the nodes' network (the gateway every node routes through):
    where a scheduler in this process (deploy_mode="local") is reachable from worker pods
    (bench-scale/lib.sh reads it so too)."""
    state_dir = Path(os.environ.get("DASK_K8S_STATE_DIR") or Path.home() / ".cache/dask-on-k8s/cluster")
    env = (state_dir / "cluster.env").read_text()
    return next(line.split("=", 1)[1].strip() for line in env.splitlines() if line.startswith("NODE_GATEWAY="))
