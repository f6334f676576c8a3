"""dask_kube against the local cluster: a real kube-apiserver, real nodes (kubelet,
containerd) running the scheduler and workers as real `dask` processes in containers, the dask-worker-defaults policy as a live
webhook. Skipped (never passed) without the cluster; see conftest.py."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import dask
import dask.array as da
import dask.config
import distributed
import pytest
import yaml

import dask_kube
from dask_kube import KubeCluster, make_pod_spec

pytestmark = pytest.mark.timeout(600)

# The README example asks for up to 10 (here: 3) workers; the machine has 2 cores.
WORKERS = int(os.environ.get("DASK_KUBE_TEST_WORKERS", "3"))


def figure(name: str, value: str) -> None:
    """A measured figure, printed at the end of the run (conftest collects them)."""
    FIGURES.append(f"{name}: {value}")
    print(f"figure: {name}: {value}", file=sys.__stderr__, flush=True)


FIGURES: list[str] = []


def assert_scale_2_to_1_keeps_the_data(cluster, client) -> None:
    """Data on both workers; scaling to 1 retires one worker, which moves it, not loses it."""
    futures = client.map(lambda i: i * 10, range(20), pure=False)
    client.gather(futures)
    report = cluster.scale(1)
    assert len(report["retired"]) == 1, report
    assert sum(client.gather(futures)) == sum(i * 10 for i in range(20))
    assert len(client.scheduler_info()["workers"]) == 1


def test_readme_example_with_only_the_import_changed(kubectl, small_worker):
    t0 = time.monotonic()
    # --- the README example, `from dask_kubernetes import KubeCluster` changed ---
    cluster = KubeCluster.from_yaml(small_worker)
    cluster.scale_up(WORKERS)  # specify number of nodes explicitly
    cluster.wait_for_workers(WORKERS, timeout=180)
    figure(f"constructor to {WORKERS} connected workers", f"{time.monotonic() - t0:.1f}s")
    cluster.adapt(minimum=1, maximum=WORKERS)  # or dynamically scale based on current workload
    client = distributed.Client(cluster)
    array = da.ones((1000, 1000, 1000), chunks=(100, 100, 10))
    t1 = time.monotonic()
    result = array.mean().compute()
    figure("da.ones((1000,1000,1000), chunks=(100,100,10)).mean()", f"{time.monotonic() - t1:.1f}s")
    assert result == 1.0
    # --- what every Dask cluster manager has ---
    name = cluster.name
    assert name.startswith("dask-")
    assert cluster.scheduler_address.startswith("tls://127.0.0.1:"), "TLS by default"
    assert cluster.security.require_encryption
    assert cluster.dashboard_link.startswith("http://127.0.0.1:") and cluster.dashboard_link.endswith("/status")
    assert f"KubeCluster({name}, '{cluster.scheduler_address}'" in repr(cluster)
    assert name in cluster._repr_html_()
    assert cluster.scheduler_info["workers"]
    pods = kubectl.pods(name)
    workers = [p for p in pods if p["metadata"]["labels"]["dask.org/component"] == "worker"]
    assert 1 <= len(workers) <= WORKERS
    for pod in workers:
        # Defaults applied client-side; every object owned by the scheduler pod.
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["metadata"]["ownerReferences"][0]["name"] == name
    # Keyed as upstream: "Scheduler", and each worker by its Dask name (its pod's).
    logs = cluster.get_logs()
    assert "Scheduler" in logs and "Cluster" in logs, list(logs)
    assert {p["metadata"]["name"] for p in workers} <= set(logs), list(logs)
    assert "Scheduler" in cluster.logs() and "Cluster" not in cluster.logs()
    # The Service is named as the operator names it.
    assert [s["metadata"]["name"] for s in kubectl.services(name)] == [f"{name}-scheduler"]
    # classic's attributes: the pods as they run, read the way V1Pod objects were.
    assert cluster.pod_template.spec.containers[0].env is not None
    assert cluster.scheduler_pod_template.metadata.name == name
    client.close()
    t2 = time.monotonic()
    cluster.close()
    figure("close()", f"{time.monotonic() - t2:.1f}s")
    assert kubectl.wait_gone(name, timeout=10) == []


def test_a_client_needs_the_clusters_certificate(kubectl, small_worker):
    """TLS by default (a certificate authority made for the cluster): Client(cluster) presents
    cluster.security and computes; a plain tcp:// client at the same port is refused. With
    security=False the cluster is classic's open tcp://."""
    from distributed.security import Security

    with KubeCluster(small_worker, n_workers=1, name="py-tls-{uuid}") as cluster:
        cluster.wait_for_workers(1, timeout=180)
        assert cluster.scheduler_address.startswith("tls://")
        with distributed.Client(cluster) as client:
            assert client.submit(lambda: 20 + 22).result() == 42
        host_port = cluster.scheduler_address.split("://", 1)[1]
        with pytest.raises((OSError, TimeoutError)):
            distributed.Client(f"tcp://{host_port}", security=Security(), timeout="5s")
        secret = json.loads(kubectl("get", "secret", "-n", "default", f"{cluster.name}-tls", "-o", "json"))
        assert secret["metadata"]["ownerReferences"][0]["name"] == cluster.name
        name = cluster.name
    assert kubectl.wait_gone(name, timeout=10) == []
    with KubeCluster(small_worker, n_workers=1, name="py-open-{uuid}", security=False) as cluster:
        cluster.wait_for_workers(1, timeout=180)
        assert cluster.scheduler_address.startswith("tcp://")
        assert not cluster.security.require_encryption
        with distributed.Client(cluster) as client:
            assert client.submit(lambda: 20 + 22).result() == 42
        name = cluster.name
    assert kubectl.wait_gone(name, timeout=10) == []


def test_context_manager_and_scale_down_retires_before_deleting(kubectl, small_worker):
    with KubeCluster(small_worker, n_workers=2, name="py-ctx-{uuid}") as cluster:
        cluster.wait_for_workers(2, timeout=180)
        with distributed.Client(cluster) as client:
            assert_scale_2_to_1_keeps_the_data(cluster, client)
        kept = [p["pod"] for p in cluster.pods() if p["connected"]]
        assert len(kept) == 1, cluster.pods()
        name = cluster.name
    assert kubectl.wait_gone(name, timeout=10) == []


def test_deploy_mode_local_runs_the_scheduler_in_this_process(kubectl, small_worker, pod_bridge_address):
    """Classic's deploy_mode="local": the scheduler in this process, only worker pods in
    the cluster (no Service, owned by nothing); scale-down retires through the local
    scheduler's HTTP API; adapt runs here without a warning; close() leaves nothing."""
    with dask.config.set({"kubernetes.deploy-mode": "local"}):
        cluster = KubeCluster(small_worker, host=pod_bridge_address, n_workers=2, name="py-local-{uuid}")
    with cluster:
        name = cluster.name
        scheduler = cluster.scheduler
        assert scheduler is not None and scheduler.status == distributed.core.Status.running
        assert cluster.scheduler_address == scheduler.address
        assert cluster.scheduler_address.startswith(f"tcp://{pod_bridge_address}:")
        assert cluster.dashboard_link.endswith("/status")
        pods = kubectl.pods(name)
        assert sorted(p["metadata"]["labels"]["dask.org/component"] for p in pods) == ["worker", "worker"]
        assert all("ownerReferences" not in p["metadata"] for p in pods), pods
        assert kubectl.services(name) == []
        with distributed.Client(cluster) as client:
            assert_scale_2_to_1_keeps_the_data(cluster, client)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                cluster.adapt(minimum=1, maximum=2)
            assert cluster._adaptive.periodic_callback
    assert scheduler.status == distributed.core.Status.closed
    assert cluster.scheduler is None
    assert kubectl.wait_gone(name, timeout=10) == []


def test_count_max_caps_scale_and_adapt_with_a_warning(kubectl, small_worker):
    """kubernetes.count.max is a cap, said out loud, as the CLI says it on stderr."""
    with dask.config.set({"kubernetes.count.max": 1}):
        with KubeCluster(small_worker, name="py-cap-{uuid}") as cluster:
            with pytest.warns(UserWarning, match="asked for 3 workers; capped at 1 by kubernetes.count.max"):
                report = cluster.scale(3)
            assert report["target"] == 1 and len(report["created"]) == 1, report
            cluster.wait_for_workers(1, timeout=180)
            with pytest.warns(UserWarning, match="asked for 4 workers; capped at 1 by kubernetes.count.max"):
                cluster.adapt(minimum=1, maximum=4)
            assert cluster._adaptive.maximum == 1
            assert len([p for p in kubectl.pods(cluster.name) if p["metadata"]["labels"]["dask.org/component"] == "worker"]) == 1
            name = cluster.name
    assert kubectl.wait_gone(name, timeout=10) == []


def test_kube_cluster_from_a_dask_yaml_config_file(kubectl, tmp_path, small_worker):
    """KubeCluster() with nothing but Dask config: a YAML file named by $DASK_CONFIG, read
    by dask itself in a fresh interpreter."""
    config = tmp_path / "dask.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kubernetes": {
                    "worker-template-path": small_worker,
                    "name": "py-config-{uuid}",
                    "count": {"start": 1, "max": 2},
                    "env": {"FROM_DASK_CONFIG": "yes"},
                },
                "distributed": {"dashboard": {"link": "http://{host}:{port}/proxy/{JUPYTERHUB_USER}/status"}},
            }
        )
    )
    script = textwrap.dedent(
        """
        import json, dask_kube
        cluster = dask_kube.KubeCluster()
        cluster.wait_for_workers(1, timeout=180)
        report = cluster.scale(5)  # above kubernetes.count.max
        print(json.dumps({"name": cluster.name, "dashboard": cluster.dashboard_link,
                          "target": report["target"], "pods": cluster.pods()}))
        cluster.close()
        """
    )
    env = dict(os.environ, DASK_CONFIG=str(config), JUPYTERHUB_USER="ada")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    figure(
        "python -c 'KubeCluster() from config, 1 worker, scale, close'",
        f"{time.monotonic() - t0:.1f}s; peak RSS of the largest child so far "
        f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB",
    )
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
    assert result["name"].startswith("py-config-")
    assert result["dashboard"].endswith("/proxy/ada/status")
    assert result["target"] == 2
    assert kubectl.wait_gone(result["name"], timeout=10) == []


def test_make_pod_spec_pods_pass_the_live_policy_unchanged(kubectl, tmp_path):
    """The webhook (the compiled policy behind the apiserver) changes nothing in a
    make_pod_spec pod, while it does default a bare worker pod (the control)."""

    def dry_run(pod: dict) -> dict:
        path = tmp_path / "pod.json"
        path.write_text(json.dumps(pod))
        return json.loads(kubectl("create", "--dry-run=server", "-o", "json", "-f", str(path)))

    def api_defaulted(env: list[dict]) -> list[dict]:
        """The apiserver's own defaulting (not the policy's): fieldRef.apiVersion is v1."""
        env = json.loads(json.dumps(env))
        for var in env:
            field_ref = var.get("valueFrom", {}).get("fieldRef")
            if field_ref is not None:
                field_ref.setdefault("apiVersion", "v1")
        return env

    labels = {"dask.org/component": "worker", "app": "dask"}
    for kwargs in (
        dict(threads_per_worker=2, memory_limit="6GB", memory_request="6GB", cpu_limit=2, cpu_request=2),
        dict(threads_per_worker=1, memory_limit="1GiB"),
    ):
        pod = make_pod_spec(image="ghcr.io/dask/dask:latest", labels=labels, **kwargs)
        pod["metadata"]["name"] = "py-make-pod-spec"
        stored = dry_run(pod)
        mine, theirs = dict(pod["spec"]["containers"][0]), stored["spec"]["containers"][0]
        mine["env"] = api_defaulted(mine["env"])
        for field in ("args", "env", "resources"):
            assert theirs[field] == mine[field], (field, theirs[field], mine[field])
        assert stored["spec"]["restartPolicy"] == "Never"
        assert [t for t in stored["spec"]["tolerations"] if t["key"].startswith("k8s.dask.org")] == pod["spec"]["tolerations"]
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "py-bare-worker", "labels": labels},
        "spec": {"containers": [{"name": "w", "image": "i", "args": ["dask", "worker", "--nthreads", "2"]}]},
    }
    stored = dry_run(bare)
    assert stored["spec"]["restartPolicy"] == "Never", "the webhook is not defaulting pods"
    assert "--death-timeout" in stored["spec"]["containers"][0]["args"]


def test_operator_style_cluster_and_from_name(kubectl):
    """KubeCluster(name=, image=, n_workers=, resources=, env=) without a template, then
    KubeCluster.from_name: closing the attached handle leaves the cluster running."""
    with KubeCluster(
        name="py-operator-{uuid}",
        image="ghcr.io/dask/dask:latest",
        n_workers=1,
        resources={"limits": {"cpu": "250m", "memory": "512M"}, "requests": {"cpu": "250m", "memory": "512M"}},
        env={"FROM_ARGUMENT": "1"},
    ) as cluster:
        cluster.wait_for_workers(1, timeout=180)
        (pod,) = [p for p in kubectl.pods(cluster.name) if p["metadata"]["labels"]["dask.org/component"] == "worker"]
        args = pod["spec"]["containers"][0]["args"]
        assert args[:2] == ["dask", "worker"] and "--memory-limit" in args and "--nthreads" in args
        assert {"name": "FROM_ARGUMENT", "value": "1"} in pod["spec"]["containers"][0]["env"]
        attached = KubeCluster.from_name(cluster.name)
        assert attached.name == cluster.name
        with distributed.Client(attached) as client:
            assert client.submit(lambda: 41 + 1).result() == 42
        attached.close()
        assert len(kubectl.pods(cluster.name)) == 2, "from_name's close must not delete the cluster"
        name = cluster.name
    assert kubectl.wait_gone(name, timeout=10) == []
    with pytest.raises(LookupError, match=name):
        KubeCluster.from_name(name)


def _dask_cluster(kubectl, name: str) -> dict | None:
    out = kubectl("get", "daskclusters.kubernetes.dask.org", name, "-o", "json", "--ignore-not-found")
    return json.loads(out) if out.strip() else None


def test_operator_mode_one_client_both_ways(kubectl, small_worker):
    """deploy_mode="operator" with the operator `cluster up` installed
    (up.d/30-dask-operator.sh): the same KubeCluster creates a DaskCluster that the operator
    makes into a scheduler and workers; scale, a second worker group, create_mode and
    from_name act on the resources; close deletes it and the operator's objects go."""
    t0 = time.monotonic()
    with KubeCluster(small_worker, name="py-op-{uuid}", n_workers=1, deploy_mode="operator") as cluster:
        figure("deploy_mode='operator': constructor to a scheduler that answers", f"{time.monotonic() - t0:.1f}s")
        name = cluster.name
        resource = _dask_cluster(kubectl, name)
        assert resource is not None and resource["status"]["phase"] == "Running", resource
        assert resource["spec"]["worker"]["replicas"] == 1
        with distributed.Client(cluster) as client:
            client.wait_for_workers(1, timeout=180)
            figure("deploy_mode='operator': constructor to 1 connected worker", f"{time.monotonic() - t0:.1f}s")
            assert client.submit(lambda: 41 + 1).result() == 42
            futures = client.map(lambda i: i * 10, range(20), pure=False)
            client.gather(futures)
            report = cluster.scale(2)
            assert (report["before"], report["target"]) == (1, 2), report
            client.wait_for_workers(2, timeout=180)
            cluster.add_worker_group("extra", n_workers=1)
            client.wait_for_workers(3, timeout=180)
            groups = {p["metadata"]["labels"].get("dask.org/workergroup-name") for p in kubectl.pods(name)
                      if p["metadata"]["labels"]["dask.org/component"] == "worker"}
            assert groups == {f"{name}-default", f"{name}-extra"}, groups
            cluster.delete_worker_group("extra")
            cluster.scale(1)
            deadline = time.monotonic() + 180
            while len(client.scheduler_info()["workers"]) > 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(client.scheduler_info()["workers"]) == 1
            # Retired before deleted: the data moved to the worker that stays.
            assert sum(client.gather(futures)) == sum(i * 10 for i in range(20))
        with pytest.raises(dask_kube.InvalidArgument, match="already exists"):
            KubeCluster(small_worker, name=name, deploy_mode="operator", create_mode="CREATE_ONLY")
        connected = KubeCluster(small_worker, name=name, deploy_mode="operator")  # CREATE_OR_CONNECT
        assert connected.shutdown_on_close is False
        connected.close()
        attached = KubeCluster.from_name(name, deploy_mode="operator")
        with distributed.Client(attached) as client:
            assert client.submit(lambda: 1 + 1).result() == 2
        attached.close()
        assert _dask_cluster(kubectl, name) is not None, "closing what was reached must not delete it"
    assert _dask_cluster(kubectl, name) is None
    assert kubectl.wait_gone(name, timeout=120) == []
    with pytest.raises(LookupError, match=name):
        KubeCluster.from_name(name, deploy_mode="operator")


def test_auth_kubeconfig_reaches_the_cluster_without_kubeconfig_env(kubectl, local_cluster, small_worker, monkeypatch):
    """auth=KubeConfig(config_file=) for a new cluster and for from_name, with $KUBECONFIG
    pointing nowhere."""
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    auth = dask_kube.KubeConfig(config_file=local_cluster)
    with KubeCluster(small_worker, n_workers=1, name="py-auth-{uuid}", auth=auth) as cluster:
        name = cluster.name
        again = KubeCluster.from_name(name, auth=[auth])
        try:
            assert again.name == name and again.scheduler_address
            assert [len(p["connected"]) for p in again.pods()] == [1]
        finally:
            again.close()  # from_name: leaves the cluster running
        assert len(kubectl.pods(name)) == 2
    assert kubectl.wait_gone(name, timeout=10) == []


def test_async_api_runs_on_the_callers_loop_without_blocking_it(kubectl, small_worker):
    async def main():
        ticks = []

        async def heartbeat():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)

        beat = asyncio.ensure_future(heartbeat())
        async with KubeCluster(small_worker, n_workers=1, asynchronous=True, name="py-async-{uuid}") as cluster:
            await cluster.wait_for_workers(1, timeout=180)
            async with distributed.Client(cluster, asynchronous=True) as client:
                total = await client.compute(da.ones((200, 200), chunks=(50, 50)).sum())
            report = await cluster.scale(0)
            name = cluster.name
        beat.cancel()
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        return total, report, name, max(gaps), len(ticks)

    total, report, name, worst_gap, n_ticks = asyncio.run(main())
    assert total == 200 * 200
    assert report["target"] == 0
    figure("async start+compute+close: longest event-loop stall", f"{worst_gap * 1000:.0f}ms over {n_ticks} ticks")
    # A loop blocked by start (scheduler pod + port-forward take seconds) would show it.
    assert worst_gap < 2.0, worst_gap
    assert kubectl.wait_gone(name, timeout=10) == []


CHILD = textwrap.dedent(
    """
    import signal, sys, time, dask_kube
    # Ctrl-C as in a terminal, even when the tests run as a background job of a
    # non-interactive shell, which starts its children with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mode, template = sys.argv[1], sys.argv[2]
    if mode == "start":
        print("starting", flush=True)
        cluster = dask_kube.KubeCluster(template, name="py-sigint-start-{uuid}", quiet=True)
        print("STARTED", flush=True)
    elif mode == "scale":
        # argv[3]: a scheduler pod that runs (the workers' template keeps them Pending).
        import json
        cluster = dask_kube.KubeCluster(template, name="py-sigint-scale-{uuid}", quiet=True, n_workers=0,
                                        scheduler_pod_template=json.loads(sys.argv[3]))
        print("NAME", cluster.name, flush=True)
        try:
            cluster.scale(400)  # Pending pods: see test_ctrl_c_during_scale_deletes_the_pods_it_made
            print("SCALED", flush=True)
            time.sleep(120)  # where a late interrupt lands when the scale was quicker
        except KeyboardInterrupt:
            print("INTERRUPTED", len(cluster.pods()), flush=True)
        cluster.close()
    elif mode == "hold":
        cluster = dask_kube.KubeCluster(template, name="py-sigkill-{uuid}", quiet=True, n_workers=1)
        cluster.wait_for_workers(1, timeout=180)
        print("NAME", cluster.name, flush=True)
        time.sleep(600)
    """
)


def _child(mode: str, template: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, template, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cluster_names(kubectl, prefix: str) -> set[str]:
    out = json.loads(kubectl("get", "pods", "-l", "dask.org/component=scheduler", "-o", "json"))
    return {p["metadata"]["name"] for p in out["items"] if p["metadata"]["name"].startswith(prefix)}


def test_ctrl_c_during_start_leaves_nothing(kubectl, small_worker):
    child = _child("start", small_worker)
    deadline = time.monotonic() + 120
    names: set[str] = set()
    while not names and time.monotonic() < deadline and child.poll() is None:
        names = _cluster_names(kubectl, "py-sigint-start-")
        time.sleep(0.1)
    assert names, "the scheduler pod never appeared"
    child.send_signal(signal.SIGINT)  # Ctrl-C while the constructor waits for the scheduler
    _, stderr = child.communicate(timeout=120)
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr, stderr
    for name in names:
        assert kubectl.wait_gone(name, timeout=30) == [], name


def test_ctrl_c_during_scale_deletes_the_pods_it_made(kubectl, small_worker, tmp_path):
    # The child scales to 400 workers, enough that creating them takes longer than this test
    # needs to see the first two and send SIGINT; they stay Pending (a nodeSelector no node
    # has), so no 400 Python processes start on this machine.
    pending = yaml.safe_load(Path(small_worker).read_text())
    pending["spec"]["nodeSelector"] = {"dask-kube-test/no-such-node": "true"}
    template = tmp_path / "pending-worker.yml"
    template.write_text(yaml.safe_dump(pending))
    scheduler = yaml.safe_load(Path(small_worker).read_text())
    scheduler["metadata"]["labels"]["dask.org/component"] = "scheduler"
    scheduler["spec"]["containers"][0]["args"] = ["dask", "scheduler"]
    child = _child("scale", str(template), json.dumps(scheduler))
    line = child.stdout.readline()
    assert line.startswith("NAME"), child.stderr.read() if child.poll() is not None else line
    name = line.split()[1]
    # Interrupt once some of the worker pods exist.
    deadline = time.monotonic() + 60
    while len(kubectl.pods(name)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr
    line = stdout.strip().splitlines()[-1]
    if "SCALED" in stdout:
        pytest.skip("the scale call finished before the interrupt arrived")
    assert line == "INTERRUPTED 0", (line, stderr)
    assert kubectl.wait_gone(name, timeout=30) == []


def test_sigkilled_client_leaves_a_cluster_the_garbage_collector_removes(kubectl, small_worker):
    child = _child("hold", small_worker)
    line = child.stdout.readline()
    assert line.startswith("NAME"), child.stderr.read() if child.poll() is not None else line
    name = line.split()[1]
    child.send_signal(signal.SIGKILL)  # no atexit, no finalizer
    child.wait(timeout=30)
    pods = kubectl.pods(name)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]  # scheduler + worker survive
    assert kubectl.services(name)
    kubectl("delete", "pod", name, "--wait=false")
    assert kubectl.wait_gone(name, timeout=120) == []


def test_close_runs_at_interpreter_exit(kubectl, small_worker):
    script = textwrap.dedent(
        f"""
        import dask_kube
        cluster = dask_kube.KubeCluster({small_worker!r}, name="py-atexit-{{uuid}}", n_workers=1, quiet=True)
        print(cluster.name, flush=True)
        # no close(): the interpreter exits
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    name = out.stdout.split()[-1]
    assert kubectl.wait_gone(name, timeout=10) == []


def test_forbidden_names_verb_and_resource(kubectl, tmp_path, small_worker, monkeypatch):
    kubectl("create", "serviceaccount", "py-no-rights", check=False)
    token = kubectl("create", "token", "py-no-rights").strip()
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    config["users"] = [{"name": "no-rights", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "no-rights"
    limited = tmp_path / "kubeconfig"
    limited.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(limited))
    with pytest.raises(PermissionError) as info:
        KubeCluster(small_worker, n_workers=0)
    assert isinstance(info.value, dask_kube.Forbidden)
    assert "create pods" in str(info.value), str(info.value)


def test_workers_that_cannot_start_raise_workers_failed_and_leave_nothing(kubectl, tmp_path, small_worker):
    # A typo in a flag: `dask worker` takes `--memory-limt` as a preload argument, refuses
    # the extra `1GB` and exits. The constructor says so with the worker's log instead of
    # waiting out its timeout for workers that cannot come.
    template = yaml.safe_load(Path(small_worker).read_text())
    args = template["spec"]["containers"][0]["args"]
    args[args.index("--memory-limit")] = "--memory-limt"
    typo = tmp_path / "typo-worker.yml"
    typo.write_text(yaml.safe_dump(template))
    name = f"py-typo-{os.getpid()}"
    with pytest.raises(dask_kube.WorkersFailed, match="every worker pod ended") as info:
        KubeCluster(str(typo), name=name, n_workers=2)
    assert "Usage: dask worker" in str(info.value), str(info.value)
    assert kubectl.wait_gone(name, timeout=30) == []


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request):
    yield
    if FIGURES:
        terminal = request.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line("")
            for line in FIGURES:
                terminal.write_line(f"figure: {line}")


def test_adapt_goes_on_in_the_cluster_after_python_exits(kubectl, small_worker):
    """With deploy/rbac.yaml in the namespace, adapt() hands adapting to the cluster's
    controller pod: the Python process exits (shutdown_on_close=False) and the cluster
    still starts its minimum; from_name(...).adapt changes the range from another process;
    close() deletes everything, the controller pod first."""
    ns = f"py-ctl-{os.urandom(3).hex()}"
    kubectl("create", "namespace", ns)
    try:
        kubectl("apply", "-n", ns, "-f", str(Path(__file__).resolve().parents[2] / "crates/dask-kube/deploy/rbac.yaml"))
        script = textwrap.dedent(
            f"""
            import json, warnings, dask_kube
            warnings.simplefilter("error")  # adapting from this process would warn
            cluster = dask_kube.KubeCluster({small_worker!r}, name="py-ctl-{{uuid}}", namespace={ns!r},
                                            n_workers=0, shutdown_on_close=False)
            cluster.adapt(minimum=1, maximum=2)
            print(json.dumps({{"name": cluster.name}}))
            """
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        exited = time.monotonic()
        name = json.loads(out.stdout.strip().splitlines()[-1])["name"]

        def component(kind):
            return [p for p in kubectl.pods(name, ns) if p["metadata"]["labels"]["dask.org/component"] == kind]

        (controller,) = component("controller")
        assert "1:2" in controller["spec"]["containers"][0]["args"]
        deadline = time.monotonic() + 180
        while not [p for p in component("worker") if p["status"].get("phase") == "Running"]:
            assert time.monotonic() < deadline, "the controller did not start the minimum worker"
            time.sleep(0.5)
        figure("python adapt(1, 2), process exited, minimum worker running", f"{time.monotonic() - exited:.1f}s later")

        cluster = KubeCluster.from_name(name, namespace=ns, shutdown_on_close=True)
        cluster.adapt(minimum=0, maximum=3)
        (controller,) = component("controller")
        assert "0:3" in controller["spec"]["containers"][0]["args"]
        cluster.close()
        assert kubectl.wait_gone(name, ns, timeout=30) == []
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_dask_config_set_caps_a_running_clusters_next_scale(small_worker, kubectl):
    """Issue 25's measurement: `dask.config.set({"kubernetes.count.max": 1})` after the
    cluster started, then `scale(10)`: 5 workers had connected half a second later. The
    library reads `dask.config` when it scales: one worker pod, and a warning saying so."""
    with KubeCluster(small_worker, n_workers=0, name="py-cap-{uuid}") as cluster:
        with dask.config.set({"kubernetes.count.max": 1}):
            with pytest.warns(UserWarning, match="capped at 1 by kubernetes.count.max"):
                report = cluster.scale(10)
        assert report["target"] == 1, report
        workers = [p for p in kubectl.pods(cluster.name) if p["metadata"]["labels"]["dask.org/component"] == "worker"]
        assert len(workers) == 1, [p["metadata"]["name"] for p in workers]
