#!/usr/bin/env python3
"""The README example end to end, on the local control plane with the policy live.

What a Dask user does, with dask-kube making the cluster:

  1. `dask-kube up -f worker-spec.yml --adapt 1:8 --detach` prints the scheduler address;
  2. a `distributed.Client` computes `da.ones((1000, 1000, 1000), chunks=(100, 100, 10)).mean()`;
  3. while it computes the cluster grows because the scheduler asks for workers, and after it
     goes idle it shrinks back to 1 by graceful retirement;
  4. `dask-kube down` removes everything.

With --check it is the acceptance test: it asserts the result, the growth, the policy's
defaults on every worker pod the apiserver stored, that scale-down lost or recomputed no
task, the return to the minimum, and that nothing is left; then a second scenario kills
dask-kube with SIGKILL, deletes the scheduler pod and expects the garbage collector to
remove the workers and their processes to end.

Needs KUBECONFIG for a running local cluster (e2e-tests/local-cluster/cluster up) and
`dask-kube` (DASK_KUBE, default: the cargo target dir's debug build).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

START = time.monotonic()
WAIT_GROW = 240.0  # bounded waits, not performance limits
WAIT_SHRINK = 300.0
WAIT_GONE = 180.0


def say(message):
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


class CheckFailed(Exception):
    pass


class Checks:
    """Collects assertions so one run reports every failure, not only the first."""

    def __init__(self, enforce):
        self.enforce = enforce
        self.failures = []

    def expect(self, condition, description):
        mark = "ok" if condition else "FAILED"
        say(f"check {mark}: {description}")
        if not condition:
            self.failures.append(description)

    def done(self):
        if self.failures and self.enforce:
            raise CheckFailed("; ".join(self.failures))


# ------------------------------------------------------------------- kubernetes helpers

def kubectl(*args, check=True):
    result = subprocess.run(["kubectl", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result


def kubectl_json(*args):
    return json.loads(kubectl(*args, "-o", "json").stdout)


def cluster_pods(namespace, name, component=None):
    selector = f"dask.org/cluster-name={name}"
    if component:
        selector += f",dask.org/component={component}"
    return kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]


K8S_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def k8s_quantity(text, millis=False):
    """Exact value of a Kubernetes quantity (bytes, or millicores with millis=True)."""
    match = re.fullmatch(r"(\d+)(m|[kMGTP]i?|Ki)?", str(text))
    if not match:
        raise ValueError(f"unsupported quantity {text!r}")
    number, unit = int(match.group(1)), match.group(2) or ""
    if unit == "m":
        return number if millis else number // 1000
    value = number * K8S_UNITS[unit]
    return value * 1000 if millis else value


def flag(args, name):
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def memory_headroom():
    """The webhook's memoryHeadroom in bytes: DASK_POLICY_SETTINGS_JSON's (as the cluster's
    up.d/20-policy-webhook.sh serves it), else the policy's default, 256Mi."""
    settings = json.loads(os.environ.get("DASK_POLICY_SETTINGS_JSON") or "{}")
    return k8s_quantity(settings.get("memoryHeadroom", "256Mi"))


def worker_pod_problems(pod):
    """What a stored worker pod lacks of the policy's defaults (empty when all there)."""
    from dask.utils import parse_bytes

    spec = pod["spec"]
    problems = []
    wanted = [{"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"},
              {"key": "k8s.dask.org_dedicated", "operator": "Equal", "value": "worker", "effect": "NoSchedule"}]
    tolerations = spec.get("tolerations", [])
    for toleration in wanted:
        count = sum(1 for t in tolerations if all(t.get(k) == v for k, v in toleration.items()))
        if count != 1:
            problems.append(f"toleration {toleration['key']} present {count} times")
    if spec.get("restartPolicy") != "Never":
        problems.append(f"restartPolicy {spec.get('restartPolicy')}")
    container = spec["containers"][0]
    args = container.get("command", []) + container.get("args", [])
    if flag(args, "--death-timeout") is None:
        problems.append("no --death-timeout")
    nworkers = int(flag(args, "--nworkers") or 1)
    nthreads = flag(args, "--nthreads")
    memory_limit = flag(args, "--memory-limit")
    limits = container.get("resources", {}).get("limits", {})
    requests = container.get("resources", {}).get("requests", {})
    if nthreads is None or memory_limit is None:
        problems.append("--nthreads or --memory-limit missing")
    else:
        if k8s_quantity(limits.get("cpu", "0"), millis=True) != int(nthreads) * nworkers * 1000:
            problems.append(f"limits.cpu {limits.get('cpu')} != {nthreads} x {nworkers}")
        # The policy's rule: the container holds the workers' limits and at most
        # memoryHeadroom more (the nanny's parent process, page cache).
        workers = parse_bytes(memory_limit) * nworkers
        memory = k8s_quantity(limits.get("memory", "0"))
        if not workers <= memory <= workers + memory_headroom():
            problems.append(f"limits.memory {limits.get('memory')} is not {memory_limit} x {nworkers}"
                            f" plus at most memoryHeadroom {memory_headroom()} bytes")
    # Requests the template gives are kept (here a small CPU request, so workers fit the
    # nodes); missing ones are set equal to the limits. Either way none exceeds its limit.
    for resource in ("cpu", "memory"):
        if resource not in requests:
            problems.append(f"no requests.{resource}")
        elif k8s_quantity(requests[resource], millis=resource == "cpu") > k8s_quantity(
                limits.get(resource, "0"), millis=resource == "cpu"):
            problems.append(f"requests.{resource} {requests[resource]} above its limit {limits.get(resource)}")
    # classic's dedicated-pool preference (the policy's applyDefaultAffinity: preferred).
    preferred = (spec.get("affinity", {}).get("nodeAffinity", {})
                 .get("preferredDuringSchedulingIgnoredDuringExecution", []))
    if not any(term.get("weight") == 100 and {"key": "k8s.dask.org/node-purpose", "operator": "In",
                                               "values": ["worker"]}
               in term.get("preference", {}).get("matchExpressions", []) for term in preferred):
        problems.append("no preferred node affinity k8s.dask.org/node-purpose In [worker]")
    return problems


class PodWatcher(threading.Thread):
    """Polls the apiserver for the cluster's worker pods: counts, a timeline, and the
    stored spec of every worker pod that ever existed (for the defaults check)."""

    def __init__(self, namespace, name):
        super().__init__(daemon=True)
        self.namespace, self.name = namespace, name
        self.seen = {}  # uid -> pod as stored
        self.phases = Counter()
        self.peak = 0
        self.first_extra_pod = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self):
        last = None
        while not self.stopping.is_set():
            try:
                pods = cluster_pods(self.namespace, self.name, "worker")
            except RuntimeError as error:
                say(f"watch: {error}")
                time.sleep(1)
                continue
            phases = Counter(p.get("status", {}).get("phase", "Pending") for p in pods
                             if not p["metadata"].get("deletionTimestamp"))
            with self.lock:
                for pod in pods:
                    self.seen.setdefault(pod["metadata"]["uid"], pod)
                self.phases = phases
                alive = phases["Running"] + phases["Pending"]
                self.peak = max(self.peak, alive)
                if alive > 1 and self.first_extra_pod is None:
                    self.first_extra_pod = time.monotonic()
            summary = ", ".join(f"{n} {phase.lower()}" for phase, n in sorted(phases.items())) or "none"
            if summary != last:
                say(f"worker pods: {summary}")
                last = summary
            self.stopping.wait(0.5)

    def alive(self):
        with self.lock:
            return self.phases["Running"] + self.phases["Pending"]


class DecisionTail(threading.Thread):
    """Prints the detached adapt controller's scaling decisions as they happen (its log,
    written by `dask-kube attach`), without the steady 'hold' lines."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.stopping = threading.Event()

    def run(self):
        position = 0
        while not self.stopping.is_set():
            try:
                with open(self.path) as f:
                    f.seek(position)
                    for line in f:
                        line = self.ANSI.sub("", line.rstrip())
                        if "adapt: scaling" in line or "workers retired" in line or "lost" in line:
                            say("dask-kube " + line.split("dask_kube::scaler: ", 1)[-1])
                    position = f.tell()
            except OSError:
                pass
            self.stopping.wait(0.5)


# ------------------------------------------------------------------------ dask helpers

def transition_counter_plugin():
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TransitionCounter(SchedulerPlugin):
        """Counts, per key, how often it reached memory (more than once = recomputed) and
        whether any task erred; runs inside the scheduler."""

        name = "demo-transition-counter"

        def __init__(self):
            self.memory = {}
            self.erred = 0
            self.lost_workers = 0

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory":
                self.memory[key] = self.memory.get(key, 0) + 1
            elif finish == "erred":
                self.erred += 1

    return TransitionCounter()


def plugin_summary(dask_scheduler):
    plugin = dask_scheduler.plugins["demo-transition-counter"]
    counts = list(plugin.memory.values())
    return {"tasks": len(counts), "recomputed": sum(1 for c in counts if c > 1), "erred": plugin.erred}


def scheduler_worker_count(client):
    return len(client.scheduler_info(n_workers=-1)["workers"])


# ---------------------------------------------------------------------------- scenario

def dask_kube(binary, *args, check=True):
    result = subprocess.run([binary, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"dask-kube {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def leftover_processes(name):
    """Pod processes of this cluster still alive on this machine (the local cluster's nodes
    run their containers here; the runtime sets HOSTNAME=pod name in each)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(f"HOSTNAME={name}".encode()) for e in env):
            found.append(int(pid))
    return found


def wait_until(description, predicate, timeout, interval=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    say(f"gave up waiting {timeout:.0f}s for {description}")
    return False


def placement(namespace, name):
    """Where each pod of the cluster runs: its node and the node's pool
    (k8s.dask.org/node-purpose, or "general"), printed as a table."""
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    pool = {n["metadata"]["name"]: n["metadata"].get("labels", {}).get("k8s.dask.org/node-purpose", "general")
            for n in nodes}
    placed = []
    for pod in cluster_pods(namespace, name):
        node = pod["spec"].get("nodeName") or "-"
        placed.append({"pod": pod["metadata"]["name"], "node": node, "pool": pool.get(node, "-"),
                       "component": pod["metadata"].get("labels", {}).get("dask.org/component", "?")})
    placed.sort(key=lambda p: (p["component"] != "scheduler", p["pod"]))
    say("where every pod of the cluster runs:")
    for p in placed:
        say(f"  {p['component']:<10} {p['pod']:<40} node {p['node']:<10} pool {p['pool']}")
    return placed


def adaptive_scenario(args, checks):
    from distributed import Client
    import dask.array as da

    namespace = args.namespace
    say(f"dask-kube up -f {args.worker_spec} --adapt {args.adapt} "
        f"--target-duration {args.target_duration} --detach")
    up = json.loads(dask_kube(args.dask_kube, "--namespace", namespace, "--output", "json", "up",
                              "-f", args.worker_spec, "--adapt", args.adapt,
                              "--target-duration", args.target_duration, "--detach").stdout)
    name, address = up["name"], up["scheduler_address"]
    say(f"cluster {name}: scheduler {address}, dashboard {up['dashboard']} (ready in {up['ready_seconds']:.1f}s)")
    watcher = PodWatcher(namespace, name)
    watcher.start()
    decisions = DecisionTail(up["log"]) if up.get("log") else None
    if decisions:
        decisions.start()
    summary = {"cluster": name}
    try:
        # TLS by default: the client presents the certificate `up` wrote (its "security").
        from distributed.security import Security

        security = Security(**up["security"]) if up.get("security") else None
        say(f"TLS: {up.get('tls')}; client certificate from {up['security']['tls_client_cert'] if up.get('security') else '-'}")
        client = Client(address, timeout="60s", security=security)
        client.register_plugin(transition_counter_plugin())
        workers_before = scheduler_worker_count(client)
        say(f"client connected; {workers_before} worker(s); computing "
            "da.ones((1000, 1000, 1000), chunks=(100, 100, 10)).mean()")
        array = da.ones((1000, 1000, 1000), chunks=(100, 100, 10))
        load_began = time.monotonic()
        future = client.compute(array.mean())
        peak_connected = workers_before
        first_extra_worker = None
        last_line = None
        while not future.done():
            connected = scheduler_worker_count(client)
            peak_connected = max(peak_connected, connected)
            if connected > 1 and first_extra_worker is None:
                first_extra_worker = time.monotonic()
            progress = client.run_on_scheduler(plugin_summary)
            line = f"computing: {progress['tasks']} tasks done, {connected} workers connected"
            if line.split(",")[1] != (last_line or ",").split(",")[1] or progress["tasks"] % 5 == 0:
                say(line)
            last_line = line
            time.sleep(1.0)
        result = future.result()
        done = time.monotonic()
        tasks = client.run_on_scheduler(plugin_summary)
        say(f"result: {result!r} in {done - load_began:.1f}s ({tasks['tasks']} tasks, "
            f"peak {peak_connected} workers connected, {watcher.peak} worker pods)")
        summary.update(result=result, compute_seconds=round(done - load_began, 1),
                       peak_workers=max(peak_connected, watcher.peak), peak_connected=peak_connected,
                       first_extra_worker_seconds=(round(first_extra_worker - load_began, 1)
                                                   if first_extra_worker else None),
                       tasks=tasks["tasks"])
        placed = placement(namespace, name)
        summary["placement"] = placed
        checks.expect(result == 1.0, f"the mean is exactly 1.0 (got {result!r})")
        workers_on = Counter(p["pool"] for p in placed if p["component"] == "worker")
        scheduler_on = [p["pool"] for p in placed if p["component"] == "scheduler"]
        checks.expect(set(workers_on) == {"worker"},
                      f"every worker pod ran on the Dask worker pool ({dict(workers_on)})")
        checks.expect(scheduler_on and "worker" not in scheduler_on,
                      f"the scheduler ran off the worker pool ({scheduler_on})")
        checks.expect(peak_connected > 1, f"more than one worker ran during the computation ({peak_connected})")

        say("idle: waiting for the cluster to shrink back to 1 worker (graceful retirement)")
        shrunk = wait_until("1 worker", lambda: scheduler_worker_count(client) == 1 and watcher.alive() == 1,
                            WAIT_SHRINK)
        summary["shrink_seconds"] = round(time.monotonic() - done, 1) if shrunk else None
        checks.expect(shrunk, f"back to the minimum of 1 worker after idle ({summary['shrink_seconds']}s)")
        after = client.run_on_scheduler(plugin_summary)
        checks.expect(after["recomputed"] == 0 and after["erred"] == 0,
                      f"no task recomputed or erred through scale-down "
                      f"({after['recomputed']} recomputed, {after['erred']} erred of {after['tasks']})")
        client.close()
    finally:
        watcher.stopping.set()
        watcher.join(5)
        if decisions:
            decisions.stopping.set()
            decisions.join(5)

    with watcher.lock:
        pods = list(watcher.seen.values())
    bad = {p["metadata"]["name"]: worker_pod_problems(p) for p in pods}
    bad = {k: v for k, v in bad.items() if v}
    checks.expect(pods and not bad, f"all {len(pods)} worker pods stored with the policy's defaults {bad or ''}")
    summary["worker_pods_created"] = len(pods)

    say(f"dask-kube down {name}")
    dask_kube(args.dask_kube, "--namespace", namespace, "down", name)
    gone = wait_until("no pods, no service, no processes",
                      lambda: not cluster_pods(namespace, name) and not leftover_processes(name)
                      and kubectl("get", "service", "-n", namespace, f"{name}-scheduler", check=False).returncode != 0,
                      WAIT_GONE)
    summary["pods_left"] = len(cluster_pods(namespace, name))
    summary["processes_left"] = len(leftover_processes(name))
    checks.expect(gone, f"after down: {summary['pods_left']} pods, service gone, "
                        f"{summary['processes_left']} processes left")
    return summary


def sigkill_scenario(args, checks):
    namespace = args.namespace
    say("second scenario: dask-kube up --workers 2 (foreground), then SIGKILL it")
    process = subprocess.Popen([args.dask_kube, "--namespace", namespace, "--output", "json", "up",
                                "-f", args.worker_spec, "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError(f"dask-kube up exited {process.wait()} before it was ready")
    up = json.loads(line)
    name = up["name"]
    running = wait_until("2 running workers", lambda: sum(
        1 for p in cluster_pods(namespace, name, "worker") if p["status"].get("phase") == "Running") == 2, WAIT_GROW)
    checks.expect(running, f"{name}: 2 workers running")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    say(f"dask-kube killed; deleting the scheduler pod {name}")
    kubectl("delete", "pod", "-n", namespace, name, "--wait=false")
    deleted = time.monotonic()
    gone = wait_until("the garbage collector to remove the workers",
                      lambda: not cluster_pods(namespace, name) and not leftover_processes(name), WAIT_GONE)
    seconds = round(time.monotonic() - deleted, 1)
    checks.expect(gone, f"garbage collector removed every pod of {name} and their processes ended ({seconds}s)")
    kubectl("delete", "service", "-n", namespace, f"{name}-scheduler", "--ignore-not-found", check=False)
    return {"gc_seconds": seconds if gone else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="assert, and exit 1 on any failure")
    # The README's worker-spec.yml at the size of the local cluster's nodes (the file says why).
    parser.add_argument("--worker-spec", default="e2e-tests/demo/demo-worker.yml")
    parser.add_argument("--adapt", default="1:8")
    parser.add_argument("--target-duration", default="500ms",
                        help="the scheduler's adaptive target duration (Dask's default: 5s)")
    parser.add_argument("--namespace", default="dask-demo")
    parser.add_argument("--skip-sigkill", action="store_true")
    parser.add_argument("--dask-kube", default=os.environ.get("DASK_KUBE", os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/dask-on-k8s/target")), "debug", "dask-kube")))
    parser.add_argument("--summary-json", help="also write the summary here")
    args = parser.parse_args()

    checks = Checks(args.check)
    kubectl("create", "namespace", args.namespace, check=False)
    summary = adaptive_scenario(args, checks)
    if not args.skip_sigkill:
        summary.update(sigkill_scenario(args, checks))
    summary["wall_seconds"] = round(time.monotonic() - START, 1)
    summary["failures"] = checks.failures

    print("\n== summary")
    print(f"  result                          {summary.get('result')}")
    print(f"  peak workers                    {summary.get('peak_workers')} "
          f"({summary.get('worker_pods_created')} worker pods created in all)")
    print(f"  first extra worker after load   {summary.get('first_extra_worker_seconds')} s")
    print(f"  computation                     {summary.get('compute_seconds')} s, {summary.get('tasks')} tasks")
    print(f"  back to 1 worker after idle     {summary.get('shrink_seconds')} s")
    print(f"  pods left after down            {summary.get('pods_left')}")
    if "gc_seconds" in summary:
        print(f"  GC after SIGKILL + scheduler deleted   {summary['gc_seconds']} s")
    print(f"  wall time                       {summary['wall_seconds']} s")
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    try:
        checks.done()
    except CheckFailed as failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
