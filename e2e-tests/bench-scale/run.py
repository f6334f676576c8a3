#!/usr/bin/env python3
"""Side-by-side scale benchmark (issue 14): time to N Pending worker pods and back to 0.

Three creators, one run, the same worker pod template (Pending: a nodeSelector no node
has), the policy webhook live:

  raw        rawcreate/: N concurrent POSTs of the same pod over one HTTP/2 connection
             (--concurrency, default 64), then one metadata-only list and concurrent
             DELETEs: the apiserver's own limit on this machine.
  classic    dask-kubernetes 2024.4.2 classic KubeCluster(deploy_mode='local') in its own
             venv (classic_driver.py): cluster.scale(N), then cluster.scale(0).
  dask-kube  the dask-kube binary: `dask-kube up --detach` once (scheduler pod runs),
             then `dask-kube scale NAME N` and `dask-kube scale NAME 0`.

"N pods exist" / "none remain" is decided for all three by one watcher that belongs to
none of them (`rawcreate watch`: list + watch of the namespace's worker pods, a timestamp
for every change of the count). A phase's time runs from just before the command is given
(process spawned, or scale() called) to the watcher's first timestamp at the target count.
Repeats rotate the order of the three sides; the table reports medians (and min-max).

Peak RSS: dask-kube and rawcreate from /usr/bin/time's %M ("Maximum resident set size"
of -v) of each process (wait4's ru_maxrss without GNU time, which over-reports: it starts
at this Python process's RSS); classic from getrusage(SELF) in
its own process (the in-process scheduler included), read when it closes; one classic
process per N, so its figure is the peak over that N's repeats.

Apiserver side: /metrics is scraped before and after every phase (outside the timed
window): 429s answered, requests rejected by API priority and fairness, and the policy
webhook's admission latency (histogram, so p50/p99 are bucket upper bounds).

Only talks to the local cluster: the apiserver of $KUBECONFIG (refused unless it is on
loopback) and the classic scheduler on the nodes' bridge (NODE_GATEWAY).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIDES = ("raw", "classic", "dask-kube")
WATCH_SELECTOR = "dask.org/component=worker"
RAW_CLUSTER = "bench-raw"
CLASSIC_CLUSTER = "bench-classic"
DASK_KUBE_CLUSTER = "bench-dk"
WEBHOOK = "clusterwide-dask-worker-defaults.kubewarden.admission"
GNU_TIME = "/usr/bin/time"


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"bench-scale: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- the watcher


class PodCountWatcher:
    """`rawcreate watch`: every change of the number of worker pods, with its time."""

    def __init__(self, rawcreate: str, namespace: str, log_file) -> None:
        self.events: list[tuple[float, int]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [rawcreate, "watch", "-n", namespace, "--selector", WATCH_SELECTOR, "--timeout", "3h"],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            ns, count = line.split()
            with self.cond:
                self.events.append((int(ns) / 1e9, int(count)))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def count(self) -> int | None:
        with self.cond:
            return self.events[-1][1] if self.events else None

    def wait_for(self, target: int, since: float, timeout: float) -> float:
        """Time of the first change at or after `since` that made the count `target`
        (or `since` itself if the count already was `target`)."""
        deadline = time.time() + timeout
        with self.cond:
            times = [e[0] for e in self.events]
            i = bisect.bisect_left(times, since)
            if i > 0 and self.events[i - 1][1] == target and i == len(self.events):
                return since
            while True:
                while i < len(self.events):  # only the events not looked at yet
                    t, n = self.events[i]
                    i += 1
                    if n == target:
                        return t
                if self.proc.poll() is not None and not self.thread.is_alive():
                    raise BenchError(f"the pod watcher exited (code {self.proc.returncode})")
                left = deadline - time.time()
                if left <= 0:
                    raise BenchError(
                        f"timed out after {timeout:.0f}s waiting for {target} worker pods (now {self.count()})"
                    )
                self.cond.wait(min(left, 1.0))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------- processes, RSS


class Reaped:
    """A child process reaped by wait4 in a thread: exit time, code and peak RSS."""

    def __init__(self, proc: subprocess.Popen, rss_file: str | None = None) -> None:
        self.proc = proc
        self.rss_file = rss_file
        self.done = threading.Event()
        self.code: int | None = None
        self.maxrss_kib = 0
        self.t_exit = 0.0
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.t_exit = time.time()
        self.code = os.waitstatus_to_exitcode(status)
        self.maxrss_kib = usage.ru_maxrss
        if self.rss_file:
            try:
                self.maxrss_kib = int(Path(self.rss_file).read_text().split()[-1])
            except (OSError, ValueError, IndexError):
                self.maxrss_kib = 0  # unknown rather than wrong
        self.proc.returncode = self.code  # reaped here: Popen must not wait again
        self.done.set()

    def wait(self, timeout: float) -> int:
        if not self.done.wait(timeout):
            self.proc.kill()
            self.done.wait(10)
            raise BenchError(f"{self.proc.args[0]} did not finish within {timeout:.0f}s (killed)")
        return self.code if self.code is not None else -1


# --------------------------------------------------------------- apiserver metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(kubectl: str) -> dict:
    """The apiserver figures the report needs, as cumulative counters."""
    text = subprocess.run([kubectl, "get", "--raw", "/metrics"], check=True, capture_output=True, text=True).stdout
    out = {"429": 0.0, "pod_create_5xx": 0.0, "apf_rejected": 0.0, "webhook_count": 0.0, "webhook_sum": 0.0, "webhook_buckets": {},
           "webhook_rejections": 0.0}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), dict(_LABEL.findall(m.group(3) or "")), float(m.group(4))
        if name == "apiserver_request_total" and labels.get("code") == "429":
            out["429"] += value
        elif (name == "apiserver_request_total" and labels.get("code", "").startswith("5")
              and labels.get("resource") == "pods" and labels.get("verb") in ("POST", "CREATE")):
            out["pod_create_5xx"] += value  # e.g. the webhook timed out: failurePolicy Fail
        elif name == "apiserver_flowcontrol_rejected_requests_total":
            out["apf_rejected"] += value
        elif name.startswith("apiserver_admission_webhook_admission_duration_seconds") and labels.get("name") == WEBHOOK:
            if name.endswith("_bucket"):
                le = float(labels["le"])
                out["webhook_buckets"][le] = out["webhook_buckets"].get(le, 0.0) + value
            elif name.endswith("_count"):
                out["webhook_count"] += value
            elif name.endswith("_sum"):
                out["webhook_sum"] += value
        elif name == "apiserver_admission_webhook_rejection_count" and labels.get("name") == WEBHOOK:
            out["webhook_rejections"] += value
    return out


def metrics_delta(before: dict, after: dict) -> dict:
    n = after["webhook_count"] - before["webhook_count"]
    buckets = sorted((le, after["webhook_buckets"].get(le, 0) - before["webhook_buckets"].get(le, 0))
                     for le in after["webhook_buckets"])

    def quantile(q: float) -> float | None:
        if n <= 0:
            return None
        for le, cum in buckets:
            if cum >= q * n:
                return le
        return math.inf

    return {
        "429": int(after["429"] - before["429"]),
        "apf_rejected": int(after["apf_rejected"] - before["apf_rejected"]),
        "pod_create_5xx": int(after.get("pod_create_5xx", 0) - before.get("pod_create_5xx", 0)),
        "webhook_calls": int(n),
        "webhook_mean_ms": (after["webhook_sum"] - before["webhook_sum"]) / n * 1000 if n > 0 else None,
        "webhook_p50_le_ms": None if quantile(0.5) is None else quantile(0.5) * 1000,
        "webhook_p99_le_ms": None if quantile(0.99) is None else quantile(0.99) * 1000,
        "webhook_rejections": int(after["webhook_rejections"] - before["webhook_rejections"]),
    }


# ------------------------------------------------------------------------ the sides


@dataclass
class Phase:
    side: str
    n: int
    repeat: int
    direction: str  # "up" (0 -> N) or "down" (N -> 0)
    seconds: float
    tool_seconds: float | None = None  # until the tool's process exited / call returned
    peak_rss_kib: int | None = None
    apiserver: dict = field(default_factory=dict)
    tool_report: dict | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, out_dir: Path) -> None:
        self.a = args
        self.out_dir = out_dir
        self.logs = open(out_dir / "tools.log", "a")
        self.phases: list[Phase] = []
        self.classic_rss: dict[int, int] = {}
        self.classic_proc: subprocess.Popen | None = None
        self.watcher: PodCountWatcher | None = None
        self.dk_env = dict(os.environ, XDG_STATE_HOME=str(out_dir / "dask-kube-state"))
        self.raw_pod = out_dir / "raw-worker.json"
        pod = json.loads(Path(args.worker_template).read_text())
        pod.setdefault("metadata", {}).setdefault("labels", {}).update(
            {"dask.org/cluster-name": RAW_CLUSTER, "app": "dask"})
        self.raw_pod.write_text(json.dumps(pod))

    # -- tools
    def run_tool(self, cmd: list[str], env=None) -> Reaped:
        self.logs.write(f"===== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n")
        self.logs.flush()
        rss_file = None
        if os.access(GNU_TIME, os.X_OK):
            # wait4's ru_maxrss of a child this (large) Python process spawns starts at this
            # process's own RSS (Linux keeps the pre-exec peak); GNU time forks from a small
            # process, so its %M is the tool's own peak.
            fd, rss_file = tempfile.mkstemp(prefix="rss-", dir=self.out_dir)
            os.close(fd)
            cmd = [GNU_TIME, "-f", "%M", "-o", rss_file, *cmd]
        return Reaped(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.logs, text=True, env=env), rss_file)

    def timeout(self, n: int) -> float:
        return self.a.phase_timeout or 60 + n * 0.3

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([self.a.kubectl, *args], capture_output=True, text=True, check=check)

    # -- setup / teardown
    def prepare(self) -> None:
        ns = self.a.namespace
        if self.kubectl("get", "namespace", ns, check=False).returncode != 0:
            self.kubectl("create", "namespace", ns)
            for _ in range(100):  # the default ServiceAccount comes from the controller-manager
                if self.kubectl("-n", ns, "get", "serviceaccount", "default", check=False).returncode == 0:
                    break
                time.sleep(0.2)
        self.cleanup_pods()
        self.watcher = PodCountWatcher(self.a.rawcreate, ns, self.logs)
        self.watcher.wait_for(0, time.time(), 60)

    def cleanup_pods(self) -> None:
        subprocess.run([self.a.dask_kube, "down", DASK_KUBE_CLUSTER, "-n", self.a.namespace],
                       stdout=self.logs, stderr=self.logs, env=self.dk_env, check=False)
        subprocess.run([self.a.rawcreate, "delete", "-n", self.a.namespace, "--selector", WATCH_SELECTOR],
                       stdout=self.logs, stderr=self.logs, check=False)

    def dask_kube_up(self) -> None:
        cmd = [self.a.dask_kube, "up", "-f", self.a.worker_template, "--scheduler-template",
               self.a.scheduler_template, "--name", DASK_KUBE_CLUSTER, "--detach", "-n", self.a.namespace,
               "-o", "json"]
        log("dask-kube up (scheduler pod)")
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.dk_env, timeout=300)
        self.logs.write(p.stderr)
        if p.returncode != 0:
            raise BenchError(f"dask-kube up failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
        log(f"dask-kube cluster up: {p.stdout.strip()[:300]}")

    def dask_kube_down(self) -> None:
        subprocess.run([self.a.dask_kube, "down", DASK_KUBE_CLUSTER, "-n", self.a.namespace],
                       stdout=self.logs, stderr=self.logs, env=self.dk_env, check=False, timeout=300)

    def classic_start(self) -> None:
        cmd = [self.a.classic_python, str(HERE / "classic_driver.py"), "--template", self.a.worker_template,
               "--namespace", self.a.namespace, "--name", CLASSIC_CLUSTER, "--host", self.a.scheduler_host]
        self.logs.write(f"===== {' '.join(cmd)}\n")
        self.logs.flush()
        self.classic_proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=self.logs, text=True)
        ready = self.classic_read()
        if ready.get("event") != "ready":
            raise BenchError(f"classic KubeCluster did not start: {ready}")
        log(f"classic KubeCluster ready in {ready['seconds']:.1f}s, scheduler {ready['scheduler']}")

    def classic_read(self) -> dict:
        assert self.classic_proc and self.classic_proc.stdout
        line = self.classic_proc.stdout.readline()
        if not line:
            raise BenchError(f"the classic driver exited (code {self.classic_proc.wait()}); see tools.log")
        return json.loads(line)

    def classic_send(self, cmd: str) -> dict:
        assert self.classic_proc and self.classic_proc.stdin
        self.classic_proc.stdin.write(cmd + "\n")
        self.classic_proc.stdin.flush()
        return self.classic_read()

    def classic_close(self) -> int | None:
        if not self.classic_proc:
            return None
        try:
            rss = self.classic_send("close")
            self.classic_proc.wait(90)
            return rss.get("peak_rss_kib")
        except (BenchError, BrokenPipeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            log(f"classic driver did not close cleanly: {e}")
            self.classic_proc.kill()
            return None
        finally:
            self.classic_proc = None

    # -- one phase
    def phase(self, side: str, n: int, repeat: int, direction: str) -> Phase:
        assert self.watcher
        target = n if direction == "up" else 0
        before = scrape(self.a.kubectl) if self.a.metrics else None
        tool: Reaped | None = None
        classic_answer = None
        t0 = time.time()
        if side == "raw":
            if direction == "up":
                tool = self.run_tool([self.a.rawcreate, "create", "-n", self.a.namespace, "--pod", str(self.raw_pod),
                                      "--generate-name", f"{RAW_CLUSTER}-worker-", "--count", str(n),
                                      "--concurrency", str(self.a.concurrency)])
            else:
                tool = self.run_tool([self.a.rawcreate, "delete", "-n", self.a.namespace, "--selector",
                                      f"dask.org/cluster-name={RAW_CLUSTER}", "--concurrency",
                                      str(self.a.concurrency)])
        elif side == "classic":
            classic_answer = self.classic_send(f"scale {target}")
            if classic_answer.get("event") != "scaled":
                raise BenchError(f"classic scale({target}) failed: {classic_answer}")
        else:
            tool = self.run_tool([self.a.dask_kube, "scale", DASK_KUBE_CLUSTER, str(target), "-n",
                                  self.a.namespace], env=self.dk_env)
        t_reached = self.watcher.wait_for(target, t0, self.timeout(n))
        ph = Phase(side, n, repeat, direction, seconds=t_reached - t0)
        if tool:
            code = tool.wait(self.timeout(n))
            out = tool.proc.stdout.read() if tool.proc.stdout else ""
            if code != 0:
                raise BenchError(f"{side} {direction} to {target} exited {code}: {out.strip()[-500:]}")
            ph.tool_seconds = tool.t_exit - t0
            ph.peak_rss_kib = tool.maxrss_kib
            if side == "raw" and out.strip():
                ph.tool_report = json.loads(out.strip().splitlines()[-1])
        elif classic_answer:
            ph.tool_seconds = classic_answer["t_return"] - t0
        # Exactly the target, and it stays so once the tool is done.
        time.sleep(self.a.settle)
        if self.watcher.count() != target:
            raise BenchError(f"{side}: {self.watcher.count()} worker pods after {direction}, expected {target}")
        if before is not None:
            ph.apiserver = metrics_delta(before, scrape(self.a.kubectl))
        self.phases.append(ph)
        extra = ""
        if ph.apiserver:
            extra = (f"; webhook calls {ph.apiserver['webhook_calls']}, p99<={ph.apiserver['webhook_p99_le_ms']} ms,"
                     f" 429s {ph.apiserver['429']}")
        log(f"N={n} #{repeat} {side:9s} {direction:4s} {ph.seconds:7.2f}s"
            + (f" (tool done {ph.tool_seconds:.2f}s)" if ph.tool_seconds is not None else "") + extra)
        return ph

    def run(self) -> None:
        self.prepare()
        try:
            if "dask-kube" in self.a.sides:
                self.dask_kube_up()
            for n in self.a.n:
                if "classic" in self.a.sides:
                    self.classic_start()
                for r in range(self.a.repeats):
                    order = [s for s in SIDES if s in self.a.sides]
                    k = r % len(order)
                    for side in order[k:] + order[:k]:
                        self.phase(side, n, r + 1, "up")
                        self.phase(side, n, r + 1, "down")
                if "classic" in self.a.sides:
                    rss = self.classic_close()
                    if rss:
                        self.classic_rss[n] = rss
        finally:
            # Cleanup failing (e.g. a binary gone) must not hide the figures measured.
            for step in (self.classic_close if self.classic_proc else None,
                         self.dask_kube_down if "dask-kube" in self.a.sides else None,
                         self.cleanup_pods, self.watcher.stop if self.watcher else None):
                if step is None:
                    continue
                try:
                    step()
                except (OSError, subprocess.SubprocessError, BenchError) as e:
                    log(f"cleanup step {step.__name__} failed: {e}")


# --------------------------------------------------------------------------- report


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt_s(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = statistics.median(xs)
    return f"{m:.2f} s" if len(xs) == 1 else f"{m:.2f} s ({min(xs):.2f}-{max(xs):.2f})"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def mb(kib: float | None) -> str:
    return f"{kib / 1024:.1f} MB" if kib else "-"


def report(bench: Bench, meta: dict) -> str:
    ph = bench.phases

    def times(side: str, n: int, d: str) -> list[float]:
        return [p.seconds for p in ph if p.side == side and p.n == n and p.direction == d]

    lines = [
        f"## bench-scale: Pending worker pods, side by side ({meta['when']})",
        "",
        f"{meta['machine']}; dask-kube {meta['dask_kube_commit']}; classic = dask-kubernetes 2024.4.2 "
        f"KubeCluster(deploy_mode='local'); raw = rawcreate, {bench.a.concurrency} concurrent requests over HTTP/2; "
        f"policy webhook live; {bench.a.repeats} repeat(s), median (min-max).",
        "",
        "| N | raw: time to N pods | classic: time to N pods | dask-kube: time to N pods | dask-kube / raw | dask-kube / classic | fastest |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in bench.a.n:
        t = {s: times(s, n, "up") for s in SIDES}
        fastest = min((s for s in SIDES if t[s]), key=lambda s: med(t[s]), default="-")
        lines.append(f"| {n} | {fmt_s(t['raw'])} | {fmt_s(t['classic'])} | {fmt_s(t['dask-kube'])} | "
                     f"{ratio(med(t['dask-kube']), med(t['raw']))} | {ratio(med(t['dask-kube']), med(t['classic']))} | {fastest} |")
    lines += [
        "",
        "| N | raw: scale back to 0 | classic: scale back to 0 | dask-kube: scale back to 0 | dask-kube / raw | dask-kube / classic | fastest |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in bench.a.n:
        t = {s: times(s, n, "down") for s in SIDES}
        fastest = min((s for s in SIDES if t[s]), key=lambda s: med(t[s]), default="-")
        lines.append(f"| {n} | {fmt_s(t['raw'])} | {fmt_s(t['classic'])} | {fmt_s(t['dask-kube'])} | "
                     f"{ratio(med(t['dask-kube']), med(t['raw']))} | {ratio(med(t['dask-kube']), med(t['classic']))} | {fastest} |")
    lines += [
        "",
        "| N | client peak RSS: classic (whole process, scheduler included) | dask-kube `scale N` / `scale 0` | rawcreate create / delete |",
        "|---|---|---|---|",
    ]
    for n in bench.a.n:
        def peak(side: str, d: str) -> int | None:
            xs = [p.peak_rss_kib for p in ph if p.side == side and p.n == n and p.direction == d and p.peak_rss_kib]
            return max(xs) if xs else None
        lines.append(f"| {n} | {mb(bench.classic_rss.get(n))} | {mb(peak('dask-kube', 'up'))} / {mb(peak('dask-kube', 'down'))} | "
                     f"{mb(peak('raw', 'up'))} / {mb(peak('raw', 'down'))} |")
    if any(p.apiserver for p in ph):
        lines += [
            "",
            "Apiserver side per phase (from its /metrics; webhook latency is a histogram bucket bound):",
            "",
            "| N | side | direction | 429s | pod POSTs answered 5xx | APF rejected | webhook calls | webhook mean | webhook p50 <= | webhook p99 <= |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n in bench.a.n:
            for s in SIDES:
                for d in ("up", "down"):
                    sel = [p.apiserver for p in ph if p.side == s and p.n == n and p.direction == d and p.apiserver]
                    if not sel:
                        continue
                    def agg(key: str, f=max):
                        xs = [x[key] for x in sel if x.get(key) is not None]
                        return f(xs) if xs else None
                    mean = agg("webhook_mean_ms", med)
                    p50, p99 = agg("webhook_p50_le_ms", med), agg("webhook_p99_le_ms")
                    lines.append(f"| {n} | {s} | {d} | {sum(x['429'] for x in sel)} | {sum(x.get('pod_create_5xx', 0) for x in sel)} | "
                                 f"{sum(x['apf_rejected'] for x in sel)} | "
                                 f"{agg('webhook_calls', sum)} | {'-' if mean is None else f'{mean:.1f} ms'} | "
                                 f"{'-' if p50 is None else f'{p50:g} ms'} | {'-' if p99 is None else f'{p99:g} ms (max over repeats)'} |")
    raw = [p.tool_report for p in ph if p.side == "raw" and p.tool_report]
    if raw:
        lines += ["", "rawcreate's own view (HTTP statuses, per-request latency):", ""]
        for p in ph:
            if p.side == "raw" and p.tool_report:
                r = p.tool_report
                lines.append(f"- N={p.n} #{p.repeat} {r['op']}: {r['succeeded']}/{r['requested']} in {r['seconds']:.2f}s "
                             f"({r['per_second']:.0f}/s), statuses {r['statuses']}, retries {r['retries']}, "
                             f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, {'/'.join(r['protocols'])}")
    lines += ["", "Times run from the command (process spawn / scale() call) to the independent watcher seeing "
              "exactly N (or 0) worker pods."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def check_loopback(kubectl: str) -> str:
    server = subprocess.run([kubectl, "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    host = urllib.parse.urlparse(server).hostname or ""
    if not (host in ("localhost", "::1") or host.startswith("127.")):
        raise BenchError(f"refusing to benchmark {server}: only a local (loopback) cluster is allowed")
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    ap.add_argument("--n", default=env("BENCH_N", "100,1000"), help="pod counts, comma separated (env BENCH_N)")
    ap.add_argument("--repeats", type=int, default=int(env("BENCH_REPEATS", "3")), help="repeats per N (env BENCH_REPEATS)")
    ap.add_argument("--sides", default=env("BENCH_SIDES", ",".join(SIDES)), help="subset of raw,classic,dask-kube")
    ap.add_argument("--concurrency", type=int, default=int(env("BENCH_RAW_CONCURRENCY", "64")),
                    help="rawcreate requests in flight (env BENCH_RAW_CONCURRENCY)")
    ap.add_argument("--namespace", default=env("BENCH_NAMESPACE", "bench-scale"))
    ap.add_argument("--rawcreate", required=True)
    ap.add_argument("--dask-kube", required=True)
    ap.add_argument("--classic-python", required=True, help="python of the venv with requirements-classic.txt")
    ap.add_argument("--scheduler-host", required=True, help="classic scheduler listen address (the pod bridge's)")
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--worker-template", default=str(HERE / "worker-pending.json"))
    ap.add_argument("--scheduler-template", default=str(HERE / "scheduler.json"))
    ap.add_argument("--settle", type=float, default=float(env("BENCH_SETTLE", "1.5")),
                    help="seconds between phases (the count must still be exact after it)")
    ap.add_argument("--phase-timeout", type=float, default=0, help="seconds (default 60 + 0.3 N)")
    ap.add_argument("--no-metrics", dest="metrics", action="store_false", help="do not scrape the apiserver's /metrics")
    ap.add_argument("--out-dir", default=env("BENCH_OUT_DIR", ""), help="results and logs (default a new temp dir)")
    ap.add_argument("--machine", default=env("BENCH_MACHINE", f"{os.cpu_count()} cores (shared)"))
    ap.add_argument("--dask-kube-commit", default=env("BENCH_DASK_KUBE_COMMIT", "?"))
    a = ap.parse_args()
    a.n = [int(x) for x in a.n.split(",") if x.strip()]
    a.sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    bad = [s for s in a.sides if s not in SIDES]
    if bad or not a.n or min(a.n) < 1 or a.repeats < 1:
        ap.error(f"bad --sides {bad} / --n / --repeats")
    a.worker_template = str(Path(a.worker_template).resolve())
    a.scheduler_template = str(Path(a.scheduler_template).resolve())
    for tool in (a.rawcreate, a.dask_kube, a.classic_python, a.kubectl):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found")
    server = check_loopback(a.kubectl)
    out_dir = Path(a.out_dir) if a.out_dir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"apiserver {server}, namespace {a.namespace}, N={a.n}, repeats={a.repeats}, sides={a.sides}; logs in {out_dir}")
    bench = Bench(a, out_dir)
    started = time.time()
    try:
        bench.run()
    finally:
        meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "machine": a.machine,
                "dask_kube_commit": a.dask_kube_commit, "wall_seconds": time.time() - started}
        (out_dir / "results.json").write_text(json.dumps(
            {"meta": meta, "args": {k: v for k, v in vars(a).items()}, "classic_peak_rss_kib": bench.classic_rss,
             "phases": [p.__dict__ for p in bench.phases]}, indent=1))
    text = report(bench, meta)
    (out_dir / "report.md").write_text(text + "\n")
    print(text)
    log(f"done in {time.time() - started:.0f}s; {out_dir}/results.json, report.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"ERROR: {e}")
        sys.exit(1)
