"""One measurement of `make bench-python`, run in the venv of the side it measures: the
time from a `KubeCluster(...)` constructor to N workers connected to its scheduler, and
this process's peak RSS. Prints one JSON line on stdout; closes the cluster before exiting.

    python driver.py --side dask-kube --template small-worker.yml --n 4 --name bench-py-0
    python driver.py --side classic --template small-worker.yml --n 4 --name bench-py-0 --host 10.244.0.1

The sides, as a Dask user writes them:
  dask-kube  `dask_kube.KubeCluster(template, n_workers=N)`: scheduler in a pod, reached
             through dask-kube's port-forward.
  dask-kube-local
             `dask_kube.KubeCluster(template, n_workers=N, deploy_mode="local", host=BRIDGE)`:
             the scheduler in this process, as classic's below.
  classic    dask-kubernetes 2024.4.2 `dask_kubernetes.classic.KubeCluster(template,
             n_workers=N, deploy_mode="local", host=BRIDGE)`: the scheduler runs in this
             process, listening on the nodes' bridge (NODE_GATEWAY) so its worker pods reach it.
  classic-remote
             the same with classic's default `deploy_mode="remote"`: the scheduler in a pod
             behind a ClusterIP Service, as dask_kube's default. Classic forces the
             scheduler's args to `dask-scheduler`, a command distributed no longer installs;
             classic-scheduler.yml (beside this file) is its scheduler pod template, whose
             `sh -c 'exec dask scheduler'` takes that arg as $0. Everything else is classic's
             defaults, as a user outside the cluster gets them.
Timed: from just before the constructor to `client.wait_for_workers(N)` returning (the
imports are not timed). Peak RSS: VmHWM of this process (not ru_maxrss, which Linux
carries over from the parent across exec), imports included, as the user's process pays it.
Machine CPU: the CPU-seconds the whole machine was busy during the timed window
(/proc/stat), which says whether a side was waiting or computing (2 cores give at most
2 CPU-seconds per second).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

# The one reader of a process's peak RSS (stdlib only, importable from any venv).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench-scale"))
from classic_driver import vmhwm_kib  # noqa: E402


def machine_busy_seconds() -> float:
    """CPU-seconds the machine has been busy since boot: /proc/stat's first line minus
    idle and iowait (guest time is already counted in user)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["dask-kube", "dask-kube-local", "classic", "classic-remote"], required=True)
    ap.add_argument("--template", required=True, help="worker pod template (YAML)")
    ap.add_argument("--n", type=int, required=True, help="workers to start and await")
    ap.add_argument("--name", required=True, help="cluster name")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--host", help="classic, dask-kube-local: the scheduler's listen address (the pod bridge)")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()

    warnings.simplefilter("ignore", DeprecationWarning)
    from distributed import Client

    if args.side in ("classic", "dask-kube-local") and not args.host:
        ap.error(f"--side {args.side} needs --host (the nodes' bridge address, NODE_GATEWAY)")
    local = dict(deploy_mode="local", host=args.host, port=0, dashboard_address="127.0.0.1:0")
    if args.side == "classic":
        from dask_kubernetes.classic import KubeCluster

        kwargs = local
    elif args.side == "classic-remote":
        import yaml
        from dask_kubernetes.classic import KubeCluster

        scheduler_template = yaml.safe_load((Path(__file__).parent / "classic-scheduler.yml").read_text())
        kwargs = dict(deploy_mode="remote", scheduler_pod_template=scheduler_template)
    elif args.side == "dask-kube-local":
        from dask_kube import KubeCluster

        kwargs = local
    else:
        from dask_kube import KubeCluster

        kwargs = {}
    busy0 = machine_busy_seconds()
    t0 = time.perf_counter()
    cluster = KubeCluster(args.template, name=args.name, namespace=args.namespace, n_workers=args.n, **kwargs)
    client = Client(cluster)
    client.wait_for_workers(args.n, timeout=args.timeout)
    seconds = time.perf_counter() - t0
    busy = machine_busy_seconds() - busy0
    # The workers compute, not only connect.
    assert client.submit(sum, [1, 2]).result() == 3
    peak = vmhwm_kib()
    client.close()
    cluster.close()
    print(json.dumps({"side": args.side, "n": args.n, "seconds": seconds, "machine_cpu_seconds": busy,
                      "peak_rss_kib": peak}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
