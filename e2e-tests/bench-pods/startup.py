#!/usr/bin/env python3
"""Pod startup latency on the local cluster, measured as Kubernetes' SIG Scalability SLO
defines it: from a pod's creation to all its containers reported running, observed through a
watch, with the image already on the node (the SLO excludes image pulls): p99 <= 5 s.

N worker pods of a template (default: a Dask worker of the test template, pointing at a
scheduler address nobody serves, so each worker process starts for real and waits) are
created in a fresh namespace with one `kubectl create` of a List; a watch started before the
create observes when each pod is ADDED and when it is first reported Running with every
container started. Latency = Running seen - ADDED seen (both times on this machine's monotonic
clock, so no clock skew and no 1-second creationTimestamp rounding). Before the timed run the
image is pulled on every node that can take the pods (one pod per node, deleted).

    e2e-tests/bench-pods/startup.py [--pods 100] [--template FILE] [--keep]

Prints p50/p90/p99/max and a JSON summary line (`STARTUP {...}`). Needs a cluster up
(`e2e-tests/local-cluster/cluster up`, its kubectl on PATH via `cluster env`).
"""
from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_TEMPLATE = REPO / "crates/dask-kube/tests/fixtures/small-worker.yml"
REQUESTS = {"cpu": "10m", "memory": "128Mi"}


def kubectl(*args: str, stdin: str | None = None) -> str:
    out = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


class Api:
    """The apiserver of the current kubeconfig, through urllib (a watch is a long GET)."""

    def __init__(self) -> None:
        cfg = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.server = cluster["server"]
        self.ctx = ssl.create_default_context()
        import base64
        import tempfile

        ca = tempfile.NamedTemporaryFile(delete=False, suffix=".crt")
        ca.write(base64.b64decode(cluster["certificate-authority-data"]))
        ca.close()
        self.ctx.load_verify_locations(ca.name)
        self.headers = {"Authorization": f"Bearer {user['token']}"} if "token" in user else {}
        if "client-certificate" in user:
            self.ctx.load_cert_chain(user["client-certificate"], user["client-key"])

    def watch(self, path: str):
        req = urllib.request.Request(self.server + path, headers=self.headers)
        with urllib.request.urlopen(req, context=self.ctx, timeout=600) as resp:
            for line in resp:
                yield json.loads(line)


def started(pod: dict) -> bool:
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    return (
        status.get("phase") == "Running"
        and len(containers) == len(pod["spec"]["containers"])
        and all((c.get("state") or {}).get("running") for c in containers)
    )


def worker_pod(template: dict, name: str, scheduler: str) -> dict:
    pod = json.loads(json.dumps(template))
    pod.setdefault("apiVersion", "v1")
    pod["kind"] = "Pod"
    meta = pod.setdefault("metadata", {})
    meta["name"] = name
    meta.setdefault("labels", {})["bench"] = "startup"
    container = pod["spec"]["containers"][0]
    # A worker that starts for real and waits for its scheduler (nobody serves this address).
    container["args"] = [*container.get("args", []), scheduler]
    for c in pod["spec"]["containers"]:
        c["imagePullPolicy"] = "IfNotPresent"
        # Requests small enough for N pods to fit the nodes' real capacity (2 CPUs each here);
        # the limits, which Dask reads, stay as the template says.
        c.setdefault("resources", {})["requests"] = dict(REQUESTS)
    return pod


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    ap.add_argument("--keep", action="store_true", help="leave the namespace (default: delete it)")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()

    template = yaml.safe_load(args.template.read_text())
    ns = f"bench-startup-{os.getpid()}"
    api = Api()
    kubectl("create", "namespace", ns)
    try:
        nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
        # Pre-pull: one pod per node that can take the template's pods.
        warm = [worker_pod(template, f"warm-{i}", "tcp://127.0.0.1:1") for i, _ in enumerate(nodes)]
        for i, (pod, node) in enumerate(zip(warm, nodes)):
            pod["spec"]["nodeName"] = node["metadata"]["name"]
        kubectl("-n", ns, "create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": warm}))
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            pods = json.loads(kubectl("-n", ns, "get", "pods", "-o", "json"))["items"]
            if all(started(p) or (p.get("status") or {}).get("phase") in ("Failed", "Succeeded") for p in pods):
                break
            time.sleep(0.5)
        kubectl("-n", ns, "delete", "pods", "--all", "--wait=true", "--grace-period=1")

        added: dict[str, float] = {}
        running: dict[str, float] = {}
        done = threading.Event()

        def observe() -> None:
            for ev in api.watch(f"/api/v1/namespaces/{ns}/pods?watch=1&labelSelector=bench%3Dstartup&allowWatchBookmarks=false"):
                now = time.monotonic()
                pod = ev["object"]
                name = pod["metadata"]["name"]
                if ev["type"] == "ADDED":
                    added.setdefault(name, now)
                if started(pod):
                    running.setdefault(name, now)
                if len(running) >= args.pods:
                    done.set()
                    return

        threading.Thread(target=observe, daemon=True).start()
        time.sleep(0.5)  # the watch is established
        pods = [worker_pod(template, f"w-{i:04d}", "tcp://127.0.0.1:1") for i in range(args.pods)]
        t0 = time.monotonic()
        kubectl("-n", ns, "create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
        created = time.monotonic() - t0
        if not done.wait(args.timeout):
            print(f"only {len(running)} of {args.pods} pods running after {args.timeout}s", file=sys.stderr)
            return 1
        lat = [running[n] - added[n] for n in running if n in added]
        summary = {
            "pods": args.pods,
            "create_s": round(created, 2),
            "p50_s": round(percentile(lat, 50), 3),
            "p90_s": round(percentile(lat, 90), 3),
            "p99_s": round(percentile(lat, 99), 3),
            "max_s": round(max(lat), 3),
            "all_running_s": round(max(running.values()) - t0, 2),
        }
        print(
            f"pod startup latency of {args.pods} pods (created in {created:.1f}s): "
            f"p50 {summary['p50_s']:.2f}s, p90 {summary['p90_s']:.2f}s, p99 {summary['p99_s']:.2f}s, "
            f"max {summary['max_s']:.2f}s (SLO: p99 <= 5s); all running {summary['all_running_s']:.1f}s after the create"
        )
        print("STARTUP " + json.dumps(summary))
        return 0
    finally:
        if not args.keep:
            subprocess.run(["kubectl", "delete", "namespace", ns, "--wait=false"], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
