"""dask-kubernetes 2024.4.2's classic KubeCluster (deploy_mode='local'), driven by run.py.

Runs in its own venv (requirements-classic.txt). Starts the cluster (scheduler in this
process, no worker pods), then reads commands on stdin, one per line, and answers one JSON
line each on stdout:

    scale N   -> {"event": "scaled", "n": N, "t_call": <unix s before>, "t_return": <after>}
    rss       -> {"event": "rss", "peak_rss_kib": ..., "vmhwm_kib": ...}
    close     -> cluster.close(), then the rss line, then exit

`cluster.scale(N)` only records the new target and schedules the pod creations on the
cluster's event loop (a thread): when the N pods exist is measured by run.py's watcher,
not here. Peak RSS is this whole process (the in-process scheduler included), as a user
of classic KubeCluster pays it.
"""

import argparse
import json
import logging
import resource
import sys
import time
import warnings


def vmhwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def rss_line() -> None:
    say(event="rss", peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, vmhwm_kib=vmhwm_kib())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--template", required=True, help="worker pod template (JSON or YAML)")
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--name", required=True, help="cluster name (generateName and dask.org/cluster-name)")
    ap.add_argument("--host", required=True, help="scheduler listen address the worker pods can reach (the pod bridge)")
    args = ap.parse_args()

    warnings.simplefilter("ignore", DeprecationWarning)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from dask_kubernetes.classic import KubeCluster

    t0 = time.time()
    cluster = KubeCluster(
        pod_template=args.template,
        name=args.name,
        namespace=args.namespace,
        n_workers=0,
        deploy_mode="local",
        host=args.host,
        port=0,
        dashboard_address="127.0.0.1:0",
    )
    say(event="ready", name=cluster.name, scheduler=cluster.scheduler_address, seconds=time.time() - t0)
    # Unbuffered: a buffered reader would sit on a command until more input arrives.
    stdin = open(0, "rb", buffering=0, closefd=False)
    while True:
        line = stdin.readline().decode()
        if not line:
            break
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "scale" and len(cmd) == 2:
            n = int(cmd[1])
            t_call = time.time()
            cluster.scale(n)
            say(event="scaled", n=n, t_call=t_call, t_return=time.time())
        elif cmd[0] == "rss":
            rss_line()
        elif cmd[0] == "close":
            break
        else:
            say(event="error", message=f"unknown command {line.strip()!r}")
    cluster.close(timeout=60)
    rss_line()
    return 0


if __name__ == "__main__":
    sys.exit(main())
