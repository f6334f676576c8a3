"""`make bench-tls`: the README example's time on a dask-kube cluster with TLS (its own
certificate authority, the default) and without (`--tls off`), side by side. Each run is a
fresh cluster (`dask-kube up --workers W --detach`), the computation through the address it
printed (tls_client.py's "readme" mode: a distributed.Client with the certificate `up` wrote,
or none), then `dask-kube down`; the repeats alternate which side goes first. Prints the
medians (min-max) of the computation and of `up`, and the ratio TLS / plain.

Run it with the venv's Python (run.sh does): the client side needs distributed."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SIDES = {"tls": "cluster-ca", "plain": "off"}


def run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"bench-tls: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def measure(side: str, args, state: str) -> dict:
    env = dict(os.environ, XDG_STATE_HOME=state)
    base = [args.dask_kube, "-n", args.namespace, "-o", "json"]
    started = time.perf_counter()
    up = json.loads(run(base + ["up", "-f", args.template, "--workers", str(args.workers), "--detach",
                                "--tls", SIDES[side]], env, 600).stdout)
    up_seconds = time.perf_counter() - started
    try:
        security = json.dumps(up["security"] or {})
        seen = json.loads(run([sys.executable, args.client, "readme", up["scheduler_address"], security],
                              env, 1200).stdout.splitlines()[-1])
        if seen["mean"] != 1.0:
            raise SystemExit(f"bench-tls: wrong result on {side}: {seen}")
    finally:
        run(base[:-2] + ["down", up["name"]], env, 300)
    return {"side": side, "up": up_seconds, "compute": seen["seconds"], "workers": seen["workers"]}


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f}s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dask-kube", required=True)
    parser.add_argument("--template", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--machine", default="")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as state:
        for repeat in range(args.repeats):
            order = ["tls", "plain"] if repeat % 2 == 0 else ["plain", "tls"]
            for side in order:
                result = measure(side, args, state)
                print(f"bench-tls: run {repeat + 1} {side}: README example {result['compute']:.2f}s "
                      f"on {result['workers']} workers, up {result['up']:.2f}s", file=sys.stderr, flush=True)
                results.append(result)
    by = {side: [r for r in results if r["side"] == side] for side in SIDES}
    print(f"bench-tls: {args.repeats} runs per side, {args.workers} workers, {args.machine}")
    print(f"{'':24}{'TLS (cluster CA)':>28}{'plain tcp://':>28}{'TLS / plain':>14}")
    for what, label in [("compute", "README example"), ("up", "up --detach")]:
        tls = [r[what] for r in by["tls"]]
        plain = [r[what] for r in by["plain"]]
        ratio = statistics.median(tls) / statistics.median(plain)
        print(f"{label:24}{summary(tls):>28}{summary(plain):>28}{ratio:>13.2f}x")
    print(json.dumps({"runs": results}))


if __name__ == "__main__":
    main()
