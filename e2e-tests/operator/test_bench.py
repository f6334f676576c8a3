"""The pure parts of bench.py, no cluster: the DaskCluster both operators get, reading
/proc, when a deleted worker counts as replaced, lost keys, kubectl port-forward's line, and
the report's tables and goals. Run without the upstream tests' conftest (which needs the
cluster): `pytest --noconftest e2e-tests/operator/test_bench.py` (`make unit` does)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("bench_operator", HERE / "bench.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_operator"] = bench
_spec.loader.exec_module(bench)
Result = bench.Result


def test_both_operators_get_upstreams_shape_with_todays_commands():
    c = bench.dask_cluster("bop-c10", "ns", 10)
    assert (c["apiVersion"], c["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    assert c["spec"]["worker"]["replicas"] == 10
    worker = c["spec"]["worker"]["spec"]["containers"][0]
    assert worker["args"][:4] == ["dask", "worker", "--name", "$(DASK_WORKER_NAME)"]
    assert "nodeSelector" not in c["spec"]["worker"]["spec"]
    scheduler = c["spec"]["scheduler"]["spec"]["containers"][0]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    assert "distributed.http.scheduler.api" in scheduler["env"][0]["value"]
    assert c["spec"]["scheduler"]["service"]["selector"] == {
        "dask.org/cluster-name": "bop-c10", "dask.org/component": "scheduler"}
    pending = bench.dask_cluster("bop-p1000", "ns", 1000, pending=True)
    assert pending["spec"]["worker"]["spec"]["nodeSelector"] == {"bench-scale.dask.org/node": "none-has-this-label"}


def test_the_worker_passes_the_policy_unchanged_in_size():
    """The flags and limits agree as the policy requires (200 MB + its 256 MiB headroom
    >= the 440 MiB limit >= 200 MB), so the webhook refuses neither operator's workers."""
    limit = 440 * 2**20
    flags = 200_000_000
    assert flags <= limit <= flags + 256 * 2**20
    worker = bench.dask_cluster("x", "ns", 1)["spec"]["worker"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["memory"] == "440Mi"
    assert worker["args"][worker["args"].index("--memory-limit") + 1] == "200MB"


def test_the_dask_cluster_is_a_valid_resource_for_our_crd():
    """The CRD's schema (dask-kube operator crds) requires what the resource has."""
    crds = (REPO / "crates/dask-kube/deploy/operator/crds.yaml").read_text()
    assert "name: daskclusters.kubernetes.dask.org" in crds
    c = bench.dask_cluster("x", "ns", 1)
    assert set(c["spec"]) == {"worker", "scheduler"} and set(c["spec"]["scheduler"]) == {"spec", "service"}


@pytest.mark.parametrize(
    "stat, peak, cpu",
    [
        pytest.param("1234 (dask-kube) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 5 1 2",
                     2048, 3.0, id="plain-name"),
        pytest.param("77 (kopf (x) run) R 1 77 77 0 -1 0 0 0 0 0 1000 1000 0 0 20 0 1 0 1 1 1",
                     2048, 20.0, id="parens-in-the-name"),
    ],
)
def test_proc_usage_reads_peak_rss_and_cpu(stat, peak, cpu):
    status = "Name:\tx\nVmPeak:\t  9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n"
    assert bench.proc_usage(status, stat, 100) == (peak, cpu)


@pytest.mark.parametrize(
    "addresses, replaced",
    [
        pytest.param(["tcp://10.244.1.5:4000", "tcp://10.244.1.6:4000"], True, id="back-without-the-deleted-ip"),
        pytest.param(["tcp://10.244.1.5:4000", "tcp://10.244.1.9:4000"], False, id="the-deleted-worker-still-there"),
        pytest.param(["tcp://10.244.1.5:4000"], False, id="one-short"),
        pytest.param(["tcp://10.244.1.5:4000", "tls://10.244.1.7:4000"], True, id="tls"),
    ],
)
def test_a_deleted_worker_is_replaced_when_n_are_back_without_its_ip(addresses, replaced):
    assert bench.back_to_n(addresses, 2, "10.244.1.9") is replaced


def test_lost_keys_are_those_no_worker_holds():
    assert bench.lost_keys({"a": ["tcp://w:1"], "b": [], "c": ["tcp://w:2"]}, ["a", "b", "c", "d"]) == 2


@pytest.mark.parametrize(
    "line, port",
    [("Forwarding from 127.0.0.1:41235 -> 8787\n", 41235), ("error: unable to forward\n", None)],
)
def test_the_port_kubectl_forwards(line, port):
    assert bench.forwarded_port(line) == port


def _results():
    r = []
    for rep, (dk, kopf, raw) in enumerate([(2.0, 8.0, None), (3.0, 9.0, None), (2.5, 10.0, None)]):
        r += [Result("dask-kube", "connected", 10, rep, dk), Result("kopf", "connected", 10, rep, kopf)]
    for rep, (dk, kopf, raw) in enumerate([(11.0, None, 10.0), (12.0, None, 10.0)]):
        r += [Result("dask-kube", "pending", 1000, rep, dk, 1000), Result("kopf", "pending", 1000, rep, kopf, 640),
              Result("raw", "pending", 1000, rep, raw, 1000)]
    r += [Result("dask-kube", "scale-down", 10, 0, 4.0, 5, {"lost": 0, "keys": 100}),
          Result("kopf", "scale-down", 10, 0, 20.0, 5, {"lost": 3, "keys": 100})]
    return r


def test_the_report_puts_both_operators_side_by_side_with_medians_ratios_and_goals():
    sessions = [{"side": "dask-kube", "peak_rss_kib": 30 * 1024, "cpu_seconds": 10.0,
                 "cpu_by_scenario": {"connected:10": 1.0, "pending:1000": 5.0}},
                {"side": "kopf", "peak_rss_kib": 400 * 1024, "cpu_seconds": 100.0,
                 "cpu_by_scenario": {"connected:10": 20.0, "pending:1000": 60.0}}]
    text = bench.report(_results(), sessions, {"when": "now", "repeats": 3})
    assert "| 10 | 2.50 s (2.00-3.00) | 9.00 s (8.00-10.00) | 0.28x | dask-kube |" in text
    # kopf timed out in every repeat: no median, how far it got.
    assert "2 timed out (reached 640)" in text
    assert "| 1000 | 10.00 s (10.00-10.00) | 11.50 s (11.00-12.00) |" in text
    assert "| 0/100 | 3/100 |" in text
    assert "| peak RSS | 30.0 MB | 400.0 MB | 0.07x |" in text
    assert "| CPU seconds, pending N=1000 | 5.0 | 60.0 | 0.08x |" in text
    assert "- fastest, connected N=10: met" in text
    assert "- fastest, pending N=1000: met" in text  # kopf never got there
    assert "- within 1.25x raw, pending N=1000: met" in text  # 11.5 <= 12.5
    assert "- at most 0.1x kopf's memory, peak RSS: met" in text


def test_goals_not_met_are_said():
    results = [Result("dask-kube", "pending", 100, 0, 20.0, 100), Result("raw", "pending", 100, 0, 10.0, 100),
               Result("kopf", "pending", 100, 0, 15.0, 100)]
    text = bench.report(results, [], {})
    assert "- fastest, pending N=100: NOT met" in text
    assert "- within 1.25x raw, pending N=100: NOT met" in text


def test_the_command_line_says_what_it_needs():
    out = subprocess.run([sys.executable, str(HERE / "bench.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--kopf-python" in out.stdout and "--rawcreate" in out.stdout


def _operator_pod(cluster: dict) -> dict:
    """A worker pod as the dask-kube operator's worker_pod makes it (operator/manifests.rs):
    the group's labels, the two env vars, restartPolicy Never, an owner and its own name."""
    name, ns = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    spec = json.loads(json.dumps(cluster["spec"]["worker"]["spec"]))
    pod_name = f"{name}-default-worker-3f9a0c2b1d"
    for c in spec["containers"]:
        c["env"] = [{"name": "DASK_WORKER_NAME", "value": pod_name},
                    {"name": "DASK_SCHEDULER_ADDRESS",
                     "value": f"tcp://{name}-scheduler.{ns}.svc.cluster.local:8786"}]
    spec["restartPolicy"] = "Never"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "labels": {
                "dask.org/cluster-name": name, "dask.org/workergroup-name": f"{name}-default",
                "dask.org/component": "worker", "sidecar.istio.io/inject": "false"},
                "ownerReferences": [{"kind": "DaskWorkerGroup", "name": f"{name}-default", "uid": "u"}]},
            "spec": spec}


def test_the_raw_creator_posts_the_operators_worker_pod():
    cluster = bench.dask_cluster("bop-p1000", "bench-operator", 1000, pending=True)
    raw = bench.raw_worker_pod(cluster)
    created = _operator_pod(cluster)
    assert bench.raw_pod_differences(raw, created) == []
    assert "ownerReferences" not in raw["metadata"] and "name" not in raw["metadata"]
    worker_name = next(e["value"] for e in raw["spec"]["containers"][0]["env"] if e["name"] == "DASK_WORKER_NAME")
    assert len(worker_name) == len(created["metadata"]["name"])
    assert raw["spec"]["nodeSelector"] == cluster["spec"]["worker"]["spec"]["nodeSelector"]
    assert "env" not in cluster["spec"]["worker"]["spec"]["containers"][0], "the DaskCluster is left as it was"


@pytest.mark.parametrize("change, named", [
    (lambda p: p["metadata"]["labels"].pop("sidecar.istio.io/inject"), "labels"),
    (lambda p: p["spec"]["containers"][0]["args"].append("--nworkers"), "containers"),
    (lambda p: p["spec"]["containers"][0]["env"].pop(), "containers"),
    (lambda p: p["spec"].update(restartPolicy="Always"), "restartPolicy"),
])
def test_a_raw_pod_unlike_the_operators_is_named(change, named):
    cluster = bench.dask_cluster("bop-p10", "ns", 10, pending=True)
    created = _operator_pod(cluster)
    change(created)
    differences = bench.raw_pod_differences(bench.raw_worker_pod(cluster), created)
    assert len(differences) == 1 and differences[0].startswith(f"{named}: ")


def test_the_report_says_whether_the_raw_pod_was_the_operators():
    ok = [Result("raw", "pending", 10, 0, 1.0, 10),
          Result("dask-kube", "pending", 10, 0, 1.2, 10, {"raw_pod_differences": []})]
    assert "The raw creator posts the dask-kube operator's worker pod" in bench.report(ok, [], {})
    differs = ok[:1] + [Result("dask-kube", "pending", 10, 0, 1.2, 10, {"raw_pod_differences": ["labels: x"]})]
    assert "differs from the dask-kube operator's: labels: x." in bench.report(differs, [], {})
    assert "was not compared" in bench.report(ok[:1], [], {})
