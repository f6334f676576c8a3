"""`make bench-python`: dask-kubernetes 2024.4.2's classic KubeCluster and
dask_kube.KubeCluster side by side in one run: time from the constructor to N connected
workers, and the client process's peak RSS. Each measurement is a fresh process
(driver.py) in its side's venv; the repeats rotate the order of the sides; between runs the
namespace must be back to no Dask pods. Prints medians (min-max) and writes JSON.

Standard library only; run it with any python3 (run.sh sets everything up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def dask_pods(kubectl: str, namespace: str) -> list[str]:
    out = subprocess.run(
        [kubectl, "get", "pods", "-n", namespace, "-l", "dask.org/cluster-name", "-o", "name"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.split()


def wait_no_dask_pods(kubectl: str, namespace: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pods := dask_pods(kubectl, namespace):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench-python: pods left after a run: {' '.join(pods)}")
        time.sleep(1)


def measure(side: str, python: str, args, run: int) -> dict:
    name = f"bench-py-{side.replace('-', '')}-{run}"
    cmd = [python, str(HERE / "driver.py"), "--side", side, "--template", args.template, "--n", str(args.n),
           "--name", name, "--namespace", args.namespace, "--timeout", str(args.timeout)]
    if side in ("classic", "dask-kube-local"):
        cmd += ["--host", args.scheduler_host]
    log = Path(args.out_dir) / f"{name}.log"
    with open(log, "w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=args.timeout + 120)
    if done.returncode != 0:
        raise SystemExit(f"bench-python: {side} run {run} failed (exit {done.returncode}); see {log}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(values: list[float], unit: str, scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.2f} {unit} ({min(v):.2f}-{max(v):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4, help="workers (default 4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--template", default=str(HERE.parents[1] / "crates/dask-kube/tests/fixtures/small-worker.yml"))
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--dask-kube-python", required=True, help="python of the venv with dask_kube")
    ap.add_argument("--classic-python", required=True, help="python of the venv with dask-kubernetes 2024.4.2")
    ap.add_argument("--scheduler-host", required=True, help="the node agent's pod bridge address (classic's scheduler)")
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    sides = {"classic": args.classic_python, "dask-kube": args.dask_kube_python,
             "dask-kube-local": args.dask_kube_python}
    results: dict[str, list[dict]] = {s: [] for s in sides}
    wait_no_dask_pods(args.kubectl, args.namespace, 120)
    for run in range(args.repeats):
        order = list(sides)[run % len(sides):] + list(sides)[: run % len(sides)]
        for side in order:
            r = measure(side, sides[side], args, run)
            results[side].append(r)
            print(f"bench-python: run {run} {side}: {r['seconds']:.2f} s to {args.n} workers, "
                  f"peak RSS {r['peak_rss_kib'] / 1024:.1f} MiB", file=sys.stderr, flush=True)
            wait_no_dask_pods(args.kubectl, args.namespace, 120)
    secs = {s: [r["seconds"] for r in rs] for s, rs in results.items()}
    rss = {s: [r["peak_rss_kib"] for r in rs] for s, rs in results.items()}
    ratios = {
        s: (statistics.median(secs[s]) / statistics.median(secs["classic"]),
            statistics.median(rss[s]) / statistics.median(rss["classic"]))
        for s in sides if s != "classic"
    }
    print(f"\nconstructor to {args.n} connected workers, {args.repeats} repeats, median (min-max)\n")
    print("| side | time to N workers | client peak RSS |")
    print("|---|---|---|")
    for s in sides:
        print(f"| {s} | {summary(secs[s], 's')} | {summary(rss[s], 'MiB', 1 / 1024)} |")
    for s, (ratio_t, ratio_m) in ratios.items():
        print(f"| {s} / classic | {ratio_t:.2f}x | {ratio_m:.2f}x |")
    fastest = min(sides, key=lambda s: statistics.median(secs[s]))
    print(f"\nfastest to {args.n} connected workers: {fastest}")
    (Path(args.out_dir) / "results.json").write_text(json.dumps(
        {"n": args.n, "repeats": args.repeats, "results": results,
         "ratios_to_classic": {s: {"time": t, "rss": m} for s, (t, m) in ratios.items()},
         "fastest": fastest}, indent=2))
    print(f"\nlogs and results.json in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
