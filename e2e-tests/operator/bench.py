#!/usr/bin/env python3
"""The dask-kube operator and dask-kubernetes' own (kopf, from the same 2026.3.0 wheel) side by
side on the local cluster, in one run (issue 26):

  connected  time from `kubectl apply` of a DaskCluster of N workers (N = 10, 100) to N
             workers connected to its scheduler
  pending    time from `kubectl apply` of a DaskCluster of N workers no node can take
             (N = 1,000, 10,000: a nodeSelector no node has) to N worker pods, and back to
             0 after deleting it; the raw creator of bench-scale (`rawcreate`, N concurrent
             POSTs of the pod the dask-kube operator creates, raw_worker_pod) is the reference
  reaction   a worker pod of the N = 10 cluster deleted: time until N workers are connected
             again, none in the deleted pod
  scale-down the N = 10 cluster with scattered data on every worker, scaled to 5 with
             `kubectl scale daskcluster`: time to 5 workers, and keys lost
  process    each operator's peak RSS (VmHWM) and CPU seconds (utime + stime), from
             /proc/<pid> of its process, per session and per scenario

Both operators run on this machine as processes of their own, for the bench namespace only
(`dask-kube operator run -n NS --scheduler-access port-forward`; `kopf run -m
dask_kubernetes.operator.controller --namespace NS`, the module upstream's image runs: `-m
dask_kubernetes.operator`, as upstream's in-process test fixture says it, registers no handler
in a process of its own, since there the test files import the controller), one at a time, with
the operator `cluster up` deployed in the cluster scaled to 0 meanwhile (and back at the end).
Both get the same DaskCluster resources (upstream's shape, `dask scheduler` / `dask worker`
of the project's image). An operator is "ready" once a probe DaskCluster got its phase.
Worker pods are counted by one watcher that is neither operator (`rawcreate watch` of the
namespace's `dask.org/component=worker` pods, bench-scale's); connected workers by the
scheduler's `/json/identity.json` through a `kubectl port-forward` to its Service. Repeats
alternate which operator goes first; tables give the median (min-max) and ratios; no time
is asserted. A phase that times out is reported with how far it got.

Only the local cluster is contacted (the apiserver of $KUBECONFIG, refused unless loopback).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SIDES = ("dask-kube", "kopf")
NAMESPACE = "bench-operator"
IMAGE = "ghcr.io/dask/dask:latest"
WORKER_SELECTOR = "dask.org/component=worker"
DEPLOYED = ("dask-kube-operator", "deployment/dask-kube-operator")
#: What the dask-kube operator logs once every watch has listed (OPERATOR_READY_LINE).
READY_LINE = "dask-kube-operator ready"
#: The scheduler's routes with the JSON API, so both operators retire through it.
ROUTES = ('["distributed.http.scheduler.prometheus","distributed.http.scheduler.info",'
          '"distributed.http.scheduler.json","distributed.http.health","distributed.http.proxy",'
          '"distributed.http.statics","distributed.http.scheduler.api"]')
#: Goals of issue 26, reported (not asserted).
RAW_FACTOR_GOAL = 1.25
MEMORY_FACTOR_GOAL = 0.1


def _bench_scale():
    """bench-scale's run.py (standard library only): its pod watcher and table helpers."""
    spec = importlib.util.spec_from_file_location("bench_scale_run", REPO / "e2e-tests/bench-scale/run.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bs = _bench_scale()
BenchError = bs.BenchError


def log(msg: str) -> None:
    print(f"bench-operator: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ pure parts (tested)


def dask_cluster(name: str, namespace: str, replicas: int, pending: bool = False) -> dict:
    """The DaskCluster both operators get: upstream's shape (make_cluster_spec) with
    today's `dask scheduler` / `dask worker`, small workers (the policy's flags and limits
    agree: 200 MB + its 256 MiB headroom >= 440 MiB), and for `pending` a nodeSelector no
    node has."""
    worker = {
        "containers": [{
            "name": "worker",
            "image": IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "args": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", "1",
                     "--memory-limit", "200MB", "--no-dashboard", "--death-timeout", "60"],
            "resources": {"limits": {"cpu": "1", "memory": "440Mi"},
                          "requests": {"cpu": "10m", "memory": "440Mi"}},
        }],
    }
    if pending:
        worker["nodeSelector"] = {"bench-scale.dask.org/node": "none-has-this-label"}
    scheduler = {
        "containers": [{
            "name": "scheduler",
            "image": IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "args": ["dask", "scheduler", "--host", "0.0.0.0"],
            "env": [{"name": "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES", "value": ROUTES}],
            "ports": [{"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                      {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"},
                               "initialDelaySeconds": 0, "periodSeconds": 1},
            "resources": {"requests": {"cpu": "10m", "memory": "256Mi"}},
        }],
    }
    service = {
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
        "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                  {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"}],
    }
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "worker": {"replicas": replicas, "spec": worker},
            "scheduler": {"spec": scheduler, "service": service},
        },
    }


def raw_worker_pod(cluster: dict) -> dict:
    """The pod the raw creator posts N times for `cluster`: its worker pod as the dask-kube
    operator creates it (upstream's worker Deployment template as a bare pod: the group's
    labels, DASK_WORKER_NAME and DASK_SCHEDULER_ADDRESS, restartPolicy Never), so the
    reference does the same work per pod as the operators. Two differences, both because
    the raw creator has neither a name per pod nor an owner: no ownerReferences (the garbage
    collector would delete a pod whose owner does not exist), and DASK_WORKER_NAME a name of
    the same length (the pod's own name comes from generateName)."""
    name = cluster["metadata"]["name"]
    namespace = cluster["metadata"]["namespace"]
    group = f"{name}-default"
    spec = copy.deepcopy(cluster["spec"]["worker"]["spec"])
    env = {
        "DASK_WORKER_NAME": f"{group}-worker-{'0' * 10}",
        "DASK_SCHEDULER_ADDRESS": f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:8786",
    }
    for container in spec["containers"]:
        have = {e["name"] for e in container.get("env", [])}
        container.setdefault("env", []).extend(
            {"name": k, "value": v} for k, v in env.items() if k not in have)
    spec.setdefault("restartPolicy", "Never")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {
            "dask.org/cluster-name": name,
            "dask.org/workergroup-name": group,
            "dask.org/component": "worker",
            "sidecar.istio.io/inject": "false",
        }},
        "spec": spec,
    }


def raw_pod_differences(raw: dict, created: dict) -> list[str]:
    """Where the raw creator's pod differs from a worker pod an operator created, in what
    the operator sets (labels, each container's args and env, restartPolicy), apart from the
    two differences raw_worker_pod names: empty when the reference posts the same pod."""
    unnamed = ("DASK_WORKER_NAME",)

    def shape(pod: dict) -> dict:
        spec = pod.get("spec", {})
        return {
            "labels": pod.get("metadata", {}).get("labels", {}),
            "restartPolicy": spec.get("restartPolicy"),
            "containers": [{
                "name": c.get("name"),
                "args": c.get("args"),
                "env": [e for e in c.get("env", []) if e.get("name") not in unnamed],
            } for c in spec.get("containers", [])],
        }

    want, got = shape(raw), shape(created)
    return [f"{k}: raw {want[k]!r}, created {got[k]!r}" for k in want if want[k] != got[k]]


def proc_usage(status_text: str, stat_text: str, ticks_per_second: int) -> tuple[int, float]:
    """Peak RSS (KiB, `VmHWM` of /proc/PID/status) and CPU seconds (utime + stime of
    /proc/PID/stat, fields 14 and 15, counted after the command name's closing paren)."""
    peak = 0
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    fields = stat_text[stat_text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    cpu = (int(fields[11]) + int(fields[12])) / ticks_per_second
    return peak, cpu


def back_to_n(addresses: list[str], n: int, gone_ip: str) -> bool:
    """Whether `n` workers are connected and none at the deleted pod's IP."""
    hosts = [a.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]") for a in addresses]
    return len(addresses) == n and gone_ip not in hosts


def lost_keys(who_has: dict, keys: list[str]) -> int:
    """Keys no worker holds (the scheduler's `who_has`)."""
    return sum(1 for k in keys if not who_has.get(k))


def forwarded_port(line: str) -> int | None:
    """The local port of `kubectl port-forward`'s first line."""
    m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
    return int(m.group(1)) if m else None


@dataclass
class Result:
    """One measured thing: which operator (or `raw`), what, N, repeat, seconds (None: timed
    out, with `reached`), and extra figures."""

    side: str
    what: str
    n: int
    repeat: int
    seconds: float | None
    reached: int | None = None
    extra: dict = field(default_factory=dict)


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _cell(results: list[Result]) -> str:
    done = [r.seconds for r in results if r.seconds is not None]
    timed_out = [r for r in results if r.seconds is None]
    text = bs.fmt_s(done) if done else "-"
    if timed_out:
        text += f"; {len(timed_out)} timed out (reached {max(r.reached or 0 for r in timed_out)})"
    return text


def report(results: list[Result], sessions: list[dict], meta: dict) -> str:
    """The side-by-side tables (markdown)."""

    def pick(side: str, what: str, n: int) -> list[Result]:
        return [r for r in results if r.side == side and r.what == what and r.n == n]

    def med(side: str, what: str, n: int) -> float | None:
        rs = pick(side, what, n)
        if not rs or any(r.seconds is None for r in rs):
            return None
        return _med([r.seconds for r in rs])

    def fastest(what: str, n: int, sides: tuple[str, ...]) -> str:
        meds = {s: med(s, what, n) for s in sides}
        known = {s: m for s, m in meds.items() if m is not None}
        return min(known, key=known.get) if known else "-"

    lines = [f"# dask-kube operator vs kopf ({meta.get('when', '?')})", "",
             f"Machine: {meta.get('machine', '?')}; dask-kube {meta.get('dask_kube', '?')}; "
             f"dask-kubernetes {meta.get('dask_kubernetes', '?')}; repeats {meta.get('repeats', '?')}.", ""]
    goals = []
    ns_connected = sorted({r.n for r in results if r.what == "connected"})
    if ns_connected:
        lines += ["## kubectl apply to N workers connected", "",
                  "| N | dask-kube | kopf | dask-kube / kopf | fastest |", "|---|---|---|---|---|"]
        for n in ns_connected:
            f = fastest("connected", n, SIDES)
            goals.append(("fastest", f"connected N={n}", f == "dask-kube"))
            lines.append(f"| {n} | {_cell(pick('dask-kube', 'connected', n))} | {_cell(pick('kopf', 'connected', n))} "
                         f"| {bs.ratio(med('dask-kube', 'connected', n), med('kopf', 'connected', n))} | {f} |")
        lines.append("")
    ns_pending = sorted({r.n for r in results if r.what == "pending"})
    if ns_pending:
        lines += ["## kubectl apply to N worker pods (Pending), and back to 0 after deleting the DaskCluster", "",
                  "| N | raw | dask-kube | kopf | dask-kube / raw | dask-kube / kopf | fastest | raw: to 0 "
                  "| dask-kube: to 0 | kopf: to 0 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for n in ns_pending:
            f = fastest("pending", n, SIDES)
            dk, raw = med("dask-kube", "pending", n), med("raw", "pending", n)
            goals.append(("fastest", f"pending N={n}", f == "dask-kube"))
            goals.append((f"within {RAW_FACTOR_GOAL}x raw", f"pending N={n}",
                          dk is not None and raw is not None and dk <= RAW_FACTOR_GOAL * raw))
            lines.append(
                f"| {n} | {_cell(pick('raw', 'pending', n))} | {_cell(pick('dask-kube', 'pending', n))} "
                f"| {_cell(pick('kopf', 'pending', n))} | {bs.ratio(dk, raw)} "
                f"| {bs.ratio(dk, med('kopf', 'pending', n))} | {f} | {_cell(pick('raw', 'to-zero', n))} "
                f"| {_cell(pick('dask-kube', 'to-zero', n))} | {_cell(pick('kopf', 'to-zero', n))} |")
        lines.append("")
        checked = [r.extra["raw_pod_differences"] for r in results
                   if r.what == "pending" and "raw_pod_differences" in r.extra]
        differences = sorted({d for ds in checked for d in ds})
        if not checked:
            lines.append("The raw creator's pod was not compared with an operator's (no dask-kube run reached N).")
        elif differences:
            lines.append("The raw creator's pod differs from the dask-kube operator's: " + "; ".join(differences) + ".")
        else:
            lines.append("The raw creator posts the dask-kube operator's worker pod (labels, args, env, "
                         "restartPolicy compared with a created one; no owner, a worker name of the same length).")
        lines.append("")
    for what, title in (("reaction", "A deleted worker pod: delete to N workers connected again"),
                        ("scale-down", "Scale-down with data on every worker (kubectl scale daskcluster)")):
        ns = sorted({r.n for r in results if r.what == what})
        if not ns:
            continue
        header = "| N | dask-kube | kopf | dask-kube / kopf |"
        if what == "scale-down":
            header += " dask-kube: keys lost | kopf: keys lost |"
        lines += [f"## {title}", "", header, "|" + "---|" * (header.count("|") - 1)]
        for n in ns:
            row = (f"| {n} | {_cell(pick('dask-kube', what, n))} | {_cell(pick('kopf', what, n))} "
                   f"| {bs.ratio(med('dask-kube', what, n), med('kopf', what, n))} |")
            if what == "scale-down":
                for side in SIDES:
                    lost = [r.extra.get("lost") for r in pick(side, what, n)]
                    keys = [r.extra.get("keys") for r in pick(side, what, n)]
                    row += f" {', '.join(f'{a}/{b}' for a, b in zip(lost, keys)) or '-'} |"
            lines.append(row)
        lines.append("")
    if sessions:
        lines += ["## The operator processes (per session: every scenario above, one repeat)", "",
                  "| | dask-kube | kopf | dask-kube / kopf |", "|---|---|---|---|"]
        rss = {s: _med([x["peak_rss_kib"] for x in sessions if x["side"] == s]) for s in SIDES}
        cpu = {s: _med([x["cpu_seconds"] for x in sessions if x["side"] == s]) for s in SIDES}
        lines.append(f"| peak RSS | {bs.mb(rss['dask-kube'])} | {bs.mb(rss['kopf'])} | {bs.ratio(rss['dask-kube'], rss['kopf'])} |")
        lines.append(f"| CPU seconds | {cpu['dask-kube'] or 0:.1f} | {cpu['kopf'] or 0:.1f} | {bs.ratio(cpu['dask-kube'], cpu['kopf'])} |")
        per = sorted({(k.split(":")[0], int(k.split(":")[1])) for x in sessions for k in x.get("cpu_by_scenario", {})})
        for what, n in per:
            key = f"{what}:{n}"
            c = {s: _med([x["cpu_by_scenario"][key] for x in sessions if x["side"] == s and key in x.get("cpu_by_scenario", {})]) for s in SIDES}
            lines.append(f"| CPU seconds, {what} N={n} | {c['dask-kube'] or 0:.1f} | {c['kopf'] or 0:.1f} | {bs.ratio(c['dask-kube'], c['kopf'])} |")
        goals.append((f"at most {MEMORY_FACTOR_GOAL}x kopf's memory", "peak RSS",
                      rss["dask-kube"] is not None and rss["kopf"] is not None
                      and rss["dask-kube"] <= MEMORY_FACTOR_GOAL * rss["kopf"]))
        lines.append("")
    if goals:
        lines += ["## Goals (issue 26), as measured here", ""]
        lines += [f"- {goal}, {what}: {'met' if ok else 'NOT met'}" for goal, what, ok in goals]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------- the cluster


class Kubectl:
    def __init__(self, kubectl: str, logs) -> None:
        self.kubectl = kubectl
        self.logs = logs

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        out = subprocess.run([self.kubectl, *args], input=stdin, capture_output=True, text=True)
        if check and out.returncode != 0:
            raise BenchError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def apply(self, obj: dict) -> None:
        self("apply", "-f", "-", stdin=json.dumps(obj))

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json"))


class PortForward:
    """`kubectl port-forward TARGET :PORT`, its local port."""

    def __init__(self, kubectl: str, namespace: str, target: str, port: int, logs) -> None:
        self.proc = subprocess.Popen([kubectl, "port-forward", "-n", namespace, target, f":{port}"],
                                     stdout=subprocess.PIPE, stderr=logs, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = forwarded_port(line)
        if self.port is None:
            self.close()
            raise BenchError(f"kubectl port-forward {target}: {line.strip() or 'no output'}")
        # Keep draining its stdout (one line per connection) so it never blocks.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Operator:
    """One operator process, its /proc figures sampled until it stops."""

    def __init__(self, side: str, cmd: list[str], env: dict, log_path: Path) -> None:
        self.side = side
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.last: tuple[int, float] = (0, 0.0)
        self.stop_sampling = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def usage(self) -> tuple[int, float]:
        """(peak RSS KiB, CPU seconds) now; the last known once the process is gone."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
            self.last = proc_usage(status, stat, self.ticks)
        except (OSError, ValueError, IndexError):
            pass
        return self.last

    def _sample(self) -> None:
        while not self.stop_sampling.wait(0.5):
            self.usage()

    def log_text(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> tuple[int, float]:
        usage = self.usage()
        self.stop_sampling.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log_file.close()
        return usage


class Bench:
    def __init__(self, a: argparse.Namespace, out_dir: Path) -> None:
        self.a = a
        self.out_dir = out_dir
        self.logs = open(out_dir / "tools.log", "a")
        self.k = Kubectl(a.kubectl, self.logs)
        self.ns = a.namespace
        self.results: list[Result] = []
        self.sessions: list[dict] = []
        self.deployed_replicas: str | None = None
        self.watcher = None

    # -- set-up
    def pause_deployed(self) -> None:
        ns, deployment = DEPLOYED
        replicas = self.k("get", deployment, "-n", ns, "--ignore-not-found", "-o", "jsonpath={.spec.replicas}").strip()
        if replicas and replicas != "0":
            log(f"scaling the deployed operator ({ns}/{deployment}) to 0 for the bench")
            self.k("scale", deployment, "-n", ns, "--replicas=0")
            self.k("wait", "--for=delete", "pod", "-n", ns, "-l", "app.kubernetes.io/name=dask-kube-operator",
                   "--timeout=120s", check=False)
            self.deployed_replicas = replicas

    def restore_deployed(self) -> None:
        if self.deployed_replicas:
            ns, deployment = DEPLOYED
            log(f"scaling the deployed operator back to {self.deployed_replicas}")
            self.k("scale", deployment, "-n", ns, f"--replicas={self.deployed_replicas}", check=False)

    def prepare(self) -> None:
        crds = subprocess.run([self.a.dask_kube, "operator", "crds"], capture_output=True, text=True, check=True).stdout
        self.k("apply", "-f", "-", stdin=crds)
        if not self.k("get", "namespace", self.ns, "--ignore-not-found").strip():
            self.k("create", "namespace", self.ns)
        self.watcher = bs.PodCountWatcher(self.a.rawcreate, self.ns, self.logs)
        self.clean()

    def clean(self) -> None:
        """Nothing of an earlier run: DaskClusters (finalizers a stopped kopf left dropped),
        then any worker pod."""
        for name in self.k("get", "daskclusters", "-n", self.ns, "-o", "name").split():
            self.k("patch", name, "-n", self.ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            self.k("delete", name, "-n", self.ns, "--wait=false", check=False)
        subprocess.run([self.a.rawcreate, "delete", "-n", self.ns, "--selector", WORKER_SELECTOR],
                       stdout=self.logs, stderr=self.logs, check=False)
        self.watcher.wait_for(0, time.time(), 1800)

    # -- operators
    def start(self, side: str, repeat: int) -> Operator:
        env = {**os.environ, "NO_COLOR": "1"}
        if side == "dask-kube":
            cmd = [self.a.dask_kube, "operator", "run", "-n", self.ns, "--scheduler-access", "port-forward",
                   "--log", "dask_kube=info"]
        else:
            cmd = [self.a.kopf_python, "-m", "kopf", "run", "-m", "dask_kubernetes.operator.controller", "--namespace", self.ns]
        op = Operator(side, cmd, env, self.out_dir / f"{side}-{repeat}.log")
        t0 = time.time()
        # Ready: it acts on a DaskCluster (the same test for both).
        probe = dask_cluster("bop-probe", self.ns, 0)
        self.k.apply(probe)
        while True:
            phase = self.k("get", "daskcluster", "bop-probe", "-n", self.ns, "-o", "jsonpath={.status.phase}", check=False)
            if phase.strip():
                break
            if op.proc.poll() is not None:
                raise BenchError(f"{side} exited at start ({op.proc.returncode}): {op.log_text()[-2000:]}")
            if time.time() - t0 > 120:
                raise BenchError(f"{side} did not act on a DaskCluster within 120 s: {op.log_text()[-2000:]}")
            time.sleep(0.2)
        self.delete_cluster("bop-probe", 0)
        log(f"{side} ready after {time.time() - t0:.1f}s")
        return op

    def delete_cluster(self, name: str, n_pods: int) -> float | None:
        """Deletes the DaskCluster; seconds until no worker pod is left (None: timed out).
        Then waits (untimed) until the resource and every pod of the cluster are gone, so
        nothing of it runs during the next scenario."""
        t0 = time.time()
        self.k("delete", "daskcluster", name, "-n", self.ns, "--wait=false", check=False)
        try:
            t = self.watcher.wait_for(0, t0, self.timeout(n_pods)) - t0
        except BenchError as e:
            log(f"{name}: {e}")
            t = None
        deadline = time.time() + 120
        while (self.k("get", "daskcluster", name, "-n", self.ns, "--ignore-not-found", "-o", "name").strip()
               or self.k("get", "pods", "-n", self.ns, "-l", f"dask.org/cluster-name={name}", "-o", "name").strip()):
            if time.time() > deadline:
                log(f"DaskCluster {name} or its pods are still there 120 s after its workers went")
                break
            time.sleep(0.5)
        return t

    def timeout(self, n: int) -> float:
        return self.a.phase_timeout or 120 + 0.5 * n

    # -- observing a scheduler
    def scheduler_ready(self, name: str, deadline: float) -> None:
        selector = f"dask.org/cluster-name={name},dask.org/component=scheduler"
        while True:
            pods = self.k.json("get", "pods", "-n", self.ns, "-l", selector)["items"]
            if any(c.get("type") == "Ready" and c.get("status") == "True"
                   for p in pods for c in p.get("status", {}).get("conditions", [])):
                return
            if time.time() > deadline:
                raise BenchError(f"the scheduler of {name} is not ready")
            time.sleep(0.25)

    def worker_addresses(self, dashboard: PortForward) -> list[str] | None:
        """The scheduler's workers; None when they could not be read (with 100 workers
        starting on 2 cores, the read through the port-forward times out: no reading, not
        0 workers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{dashboard.port}/json/identity.json", timeout=5) as r:
                return list(json.load(r).get("workers", {}))
        except (OSError, ValueError):
            return None

    def wait_connected(self, dashboard: PortForward, cond, deadline: float) -> tuple[float | None, int]:
        """When `cond` held of the workers, and the last count read (what a timed-out phase
        reached; a failed read does not count as 0)."""
        n = 0
        while time.time() < deadline:
            addresses = self.worker_addresses(dashboard)
            if addresses is not None:
                n = len(addresses)
                if cond(addresses):
                    return time.time(), n
            time.sleep(0.25)
        return None, n

    # -- scenarios
    def connected(self, side: str, op: Operator, n: int, repeat: int) -> None:
        name = f"bop-c{n}"
        cpu0 = op.usage()[1]
        t0 = time.time()
        self.k.apply(dask_cluster(name, self.ns, n))
        deadline = t0 + self.timeout(n)
        self.scheduler_ready(name, deadline)
        dashboard = PortForward(self.a.kubectl, self.ns, f"service/{name}-scheduler", 8787, self.logs)
        try:
            t, reached = self.wait_connected(dashboard, lambda a: len(a) == n, deadline)
            self.results.append(Result(side, "connected", n, repeat, None if t is None else t - t0, reached))
            log(f"{side}: {n} workers connected in {'-' if t is None else f'{t - t0:.2f}s'}")
            if t is not None and n == self.a.reaction_n:
                self.reaction(side, name, n, repeat, dashboard)
                self.scale_down(side, name, n, repeat, dashboard)
        finally:
            dashboard.close()
            self.delete_cluster(name, n)
        op_key = f"connected:{n}"
        self.sessions_cpu[op_key] = op.usage()[1] - cpu0

    def reaction(self, side: str, name: str, n: int, repeat: int, dashboard: PortForward) -> None:
        pods = self.k.json("get", "pods", "-n", self.ns, "-l", f"dask.org/cluster-name={name},{WORKER_SELECTOR}")["items"]
        victim = next(p for p in pods if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp"))
        ip = victim["status"]["podIP"]
        t0 = time.time()
        self.k("delete", "pod", victim["metadata"]["name"], "-n", self.ns, "--wait=false")
        t, reached = self.wait_connected(dashboard, lambda a: back_to_n(a, n, ip), t0 + self.timeout(n))
        self.results.append(Result(side, "reaction", n, repeat, None if t is None else t - t0, reached))
        log(f"{side}: a deleted worker pod replaced in {'-' if t is None else f'{t - t0:.2f}s'}")

    def scale_down(self, side: str, name: str, n: int, repeat: int, dashboard: PortForward) -> None:
        from distributed import Client

        target = n // 2
        comm = PortForward(self.a.kubectl, self.ns, f"service/{name}-scheduler", 8786, self.logs)
        try:
            with Client(f"tcp://127.0.0.1:{comm.port}", direct_to_workers=False, timeout=60) as client:
                workers = list(client.scheduler_info()["workers"])
                futures = []
                for w in workers:
                    futures += client.scatter([os.urandom(self.a.key_bytes) for _ in range(self.a.keys_per_worker)],
                                              workers=[w], direct=False, hash=False)
                keys = [f.key for f in futures]
                held = client.who_has(futures)
                if lost_keys(held, keys):
                    raise BenchError(f"{side}: scattered data is missing before the scale-down")
                t0 = time.time()
                self.k("scale", "daskcluster", name, "-n", self.ns, f"--replicas={target}")
                t, reached = self.wait_connected(dashboard, lambda a: len(a) == target, t0 + self.timeout(n))
                if t is not None:
                    # The pods go too (the count must stay at the target).
                    self.watcher.wait_for(target, t0, self.timeout(n))
                time.sleep(2)
                lost = lost_keys(client.who_has(futures), keys)
        finally:
            comm.close()
        self.results.append(Result(side, "scale-down", n, repeat, None if t is None else t - t0, reached,
                                   {"lost": lost, "keys": len(keys)}))
        log(f"{side}: scaled {n} -> {target} in {'-' if t is None else f'{t - t0:.2f}s'}, {lost} of {len(keys)} keys lost")

    def pending_cluster(self, n: int) -> dict:
        """The DaskCluster of the N Pending pods scenario, whose worker pod the raw creator posts."""
        return dask_cluster(f"bop-p{n}", self.ns, n, pending=True)

    def pending(self, side: str, op: Operator, n: int, repeat: int) -> None:
        cluster = self.pending_cluster(n)
        name = cluster["metadata"]["name"]
        cpu0 = op.usage()[1]
        t0 = time.time()
        self.k.apply(cluster)
        try:
            t = self.watcher.wait_for(n, t0, self.timeout(n)) - t0
            reached = n
        except BenchError as e:
            log(f"{side}: {e}")
            t, reached = None, self.watcher.count()
        extra = {}
        if side == "dask-kube" and reached:
            extra["raw_pod_differences"] = self.raw_pod_check(cluster)
        self.results.append(Result(side, "pending", n, repeat, t, reached, extra))
        log(f"{side}: {n} worker pods in {'-' if t is None else f'{t:.2f}s'}")
        to_zero = self.delete_cluster(name, n)
        self.results.append(Result(side, "to-zero", n, repeat, to_zero,
                                   None if to_zero is not None else self.watcher.count()))
        self.sessions_cpu[f"pending:{n}"] = op.usage()[1] - cpu0

    def raw_pod_check(self, cluster: dict) -> list[str]:
        """One of `cluster`'s worker pods, as the operator created it, against the raw creator's."""
        name = cluster["metadata"]["name"]
        query = f"labelSelector=dask.org/cluster-name%3D{name},dask.org/component%3Dworker&limit=1"
        created = json.loads(self.k("get", "--raw", f"/api/v1/namespaces/{self.ns}/pods?{query}"))["items"][0]
        differences = raw_pod_differences(raw_worker_pod(cluster), created)
        for d in differences:
            log(f"the raw creator's pod differs from the operator's: {d}")
        return differences

    def raw(self, n: int, repeat: int) -> None:
        pod = self.out_dir / f"raw-worker-{n}.json"
        pod.write_text(json.dumps(raw_worker_pod(self.pending_cluster(n))))
        t0 = time.time()
        subprocess.run([self.a.rawcreate, "create", "-n", self.ns, "--pod", str(pod), "--count", str(n),
                        "--concurrency", str(self.a.concurrency), "--generate-name", "raw-worker-"],
                       stdout=self.logs, stderr=self.logs, check=True, timeout=self.timeout(n))
        t = self.watcher.wait_for(n, t0, self.timeout(n)) - t0
        self.results.append(Result("raw", "pending", n, repeat, t, n))
        t1 = time.time()
        subprocess.run([self.a.rawcreate, "delete", "-n", self.ns, "--selector", WORKER_SELECTOR,
                        "--concurrency", str(self.a.concurrency)], stdout=self.logs, stderr=self.logs, check=True)
        self.results.append(Result("raw", "to-zero", n, repeat, self.watcher.wait_for(0, t1, self.timeout(n)) - t1, 0))
        log(f"raw: {n} pods in {t:.2f}s")

    def session(self, side: str, repeat: int) -> None:
        self.sessions_cpu: dict[str, float] = {}
        op = self.start(side, repeat)
        try:
            for n in self.a.connected:
                self.connected(side, op, n, repeat)
            for n in self.a.pending:
                self.pending(side, op, n, repeat)
        finally:
            peak, cpu = op.stop()
            self.sessions.append({"side": side, "repeat": repeat, "peak_rss_kib": peak, "cpu_seconds": cpu,
                                  "cpu_by_scenario": dict(self.sessions_cpu)})
            log(f"{side}: peak RSS {peak / 1024:.1f} MB, {cpu:.1f} CPU seconds")
            self.clean()

    def run(self) -> None:
        self.pause_deployed()
        try:
            self.prepare()
            for repeat in range(self.a.repeats):
                order = self.a.sides if repeat % 2 == 0 else list(reversed(self.a.sides))
                for n in self.a.pending:
                    self.raw(n, repeat)
                for side in order:
                    self.session(side, repeat)
                self.save()
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            self.restore_deployed()

    def save(self) -> None:
        (self.out_dir / "results.json").write_text(json.dumps(
            {"results": [asdict(r) for r in self.results], "sessions": self.sessions}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    ap.add_argument("--connected", default=env("BENCH_OPERATOR_CONNECTED", "10,100"),
                    help="N of the connected-workers scenario (env BENCH_OPERATOR_CONNECTED)")
    ap.add_argument("--pending", default=env("BENCH_OPERATOR_PENDING", "1000,10000"),
                    help="N of the Pending-pods scenario (env BENCH_OPERATOR_PENDING)")
    ap.add_argument("--repeats", type=int, default=int(env("BENCH_OPERATOR_REPEATS", "3")))
    ap.add_argument("--sides", default=",".join(SIDES), help="dask-kube,kopf or one of them")
    ap.add_argument("--reaction-n", type=int, default=10, help="the connected N whose cluster also runs the "
                    "deleted-pod and scale-down scenarios")
    ap.add_argument("--keys-per-worker", type=int, default=10)
    ap.add_argument("--key-bytes", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=int(env("BENCH_RAW_CONCURRENCY", "64")),
                    help="rawcreate's requests in flight")
    ap.add_argument("--phase-timeout", type=float, default=0, help="seconds (default 120 + 0.5 N)")
    ap.add_argument("--namespace", default=NAMESPACE)
    ap.add_argument("--dask-kube", required=True, help="the dask-kube binary (`cargo build --release`, as users build it)")
    ap.add_argument("--kopf-python", required=True, help="python of the venv with dask-kubernetes 2026.3.0 (kopf)")
    ap.add_argument("--rawcreate", required=True, help="bench-scale's rawcreate")
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--out-dir", default=env("BENCH_OUT_DIR", ""))
    ap.add_argument("--machine", default=f"{os.cpu_count()} cores (shared), load {os.getloadavg()[0]:.1f} at start")
    a = ap.parse_args()
    a.connected = [int(x) for x in a.connected.split(",") if x.strip()]
    a.pending = [int(x) for x in a.pending.split(",") if x.strip()]
    a.sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    if any(s not in SIDES for s in a.sides) or a.repeats < 1:
        ap.error("--sides is dask-kube,kopf; --repeats >= 1")
    for tool in (a.dask_kube, a.kopf_python, a.rawcreate, a.kubectl):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found")
    server = bs.check_loopback(a.kubectl)
    out_dir = Path(a.out_dir) if a.out_dir else Path(tempfile.mkdtemp(prefix="bench-operator-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = subprocess.run([a.kopf_python, "-c", "import dask_kubernetes, kopf; print(dask_kubernetes.__version__, kopf.__version__)"],
                              capture_output=True, text=True).stdout.split()
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": a.machine, "repeats": a.repeats,
            "dask_kube": subprocess.run([a.dask_kube, "--version"], capture_output=True, text=True).stdout.strip(),
            "dask_kubernetes": " / kopf ".join(versions) or "?"}
    log(f"apiserver {server}, namespace {a.namespace}, connected N={a.connected}, pending N={a.pending}, "
        f"repeats {a.repeats}; logs in {out_dir}")
    bench = Bench(a, out_dir)
    # `kill` (SIGTERM; a background run ignores SIGINT) ends the run through its cleanup:
    # the bench's operator stopped, the deployed one scaled back.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    started = time.time()
    try:
        bench.run()
    finally:
        bench.save()
        meta["wall_seconds"] = round(time.time() - started)
        text = report(bench.results, bench.sessions, meta)
        (out_dir / "report.md").write_text(text + "\n")
        print(text)
        log(f"done in {time.time() - started:.0f}s; {out_dir}/report.md, results.json")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"ERROR: {e}")
        sys.exit(1)
