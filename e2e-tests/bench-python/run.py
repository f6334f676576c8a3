"""`make bench-python`: dask-kubernetes 2024.4.2's classic KubeCluster and
dask_kube.KubeCluster side by side in one run: time from the constructor to N connected
workers, the CPU the machine spent meanwhile, and the client process's peak RSS. Each
measurement is a fresh process (driver.py) in its side's venv; the repeats rotate the order
of the sides; between runs the namespace must be back to no Dask pods. Prints medians
(min-max), the ratios of like to like (scheduler in a pod: dask-kube / classic-remote;
scheduler in the client process: dask-kube-local / classic) and dask-kube / classic, and
writes JSON.

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
SIDES = ["classic", "classic-remote", "dask-kube", "dask-kube-local"]
# Sides whose scheduler runs in the driver process, listening on the pod bridge.
LOCAL_SCHEDULER_SIDES = ("classic", "dask-kube-local")
# (side, baseline, what they have in common): the ratios printed, like to like first.
RATIOS = [
    ("dask-kube", "classic-remote", "scheduler in a pod"),
    ("dask-kube-local", "classic", "scheduler in the client process"),
    ("dask-kube", "classic", "dask_kube's default vs classic's local scheduler"),
]


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
    if side in LOCAL_SCHEDULER_SIDES:
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
    ap.add_argument("--scheduler-host", required=True, help="the nodes' bridge address, NODE_GATEWAY (classic's scheduler)")
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--sides", default=",".join(SIDES),
                    help=f"comma-separated subset of {','.join(SIDES)} (default: all)")
    args = ap.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    pythons = {"classic": args.classic_python, "classic-remote": args.classic_python,
               "dask-kube": args.dask_kube_python, "dask-kube-local": args.dask_kube_python}
    sides = [s for s in args.sides.split(",") if s]
    if unknown := [s for s in sides if s not in SIDES]:
        ap.error(f"unknown side(s) {', '.join(unknown)}; the sides are {', '.join(SIDES)}")
    results: dict[str, list[dict]] = {s: [] for s in sides}
    wait_no_dask_pods(args.kubectl, args.namespace, 120)
    for run in range(args.repeats):
        order = sides[run % len(sides):] + sides[: run % len(sides)]
        for side in order:
            r = measure(side, pythons[side], args, run)
            results[side].append(r)
            print(f"bench-python: run {run} {side}: {r['seconds']:.2f} s to {args.n} workers, "
                  f"machine CPU {r['machine_cpu_seconds']:.2f} s, peak RSS {r['peak_rss_kib'] / 1024:.1f} MiB",
                  file=sys.stderr, flush=True)
            wait_no_dask_pods(args.kubectl, args.namespace, 120)
    median = {key: {s: statistics.median(r[key] for r in rs) for s, rs in results.items()}
              for key in ("seconds", "peak_rss_kib")}
    print(f"\nconstructor to {args.n} connected workers, {args.repeats} repeats, median (min-max)\n")
    print("| side | time to N workers | machine CPU meanwhile | client peak RSS |")
    print("|---|---|---|---|")
    for s in sides:
        rs = results[s]
        print(f"| {s} | {summary([r['seconds'] for r in rs], 's')} "
              f"| {summary([r['machine_cpu_seconds'] for r in rs], 's')} "
              f"| {summary([r['peak_rss_kib'] for r in rs], 'MiB', 1 / 1024)} |")
    ratios = {}
    for side, base, common in RATIOS:
        if side in results and base in results:
            t = median["seconds"][side] / median["seconds"][base]
            m = median["peak_rss_kib"][side] / median["peak_rss_kib"][base]
            ratios[f"{side}/{base}"] = {"time": t, "rss": m, "common": common}
            print(f"| {side} / {base} ({common}) | {t:.2f}x | | {m:.2f}x |")
    fastest = min(sides, key=lambda s: median["seconds"][s])
    print(f"\nfastest to {args.n} connected workers: {fastest}")
    (Path(args.out_dir) / "results.json").write_text(json.dumps(
        {"n": args.n, "repeats": args.repeats, "results": results, "ratios": ratios, "fastest": fastest},
        indent=2))
    print(f"\nlogs and results.json in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
