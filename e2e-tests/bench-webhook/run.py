#!/usr/bin/env python3
"""Kubewarden's policy-server as the local cluster's webhook, under a burst of worker pods.

One run, two sides, alternating: a burst of N worker pod creations (`dask-kube scale NAME N`
on a cluster whose workers never schedule, so only admission and storage are measured) with
the webhook Kubewarden's controller writes for the README's ClusterAdmissionPolicy, and the
same burst with that webhook configuration removed (the baseline). For the webhook side the
apiserver's own metrics give the admission latency: the difference of
`apiserver_admission_webhook_admission_duration_seconds` before and after the burst, for the
policy's webhook, p50/p99 estimated within the histogram's buckets as Prometheus'
histogram_quantile does; errors are the webhook requests that did not answer 200, rejections
and fail-opens over the same window. Every pod of the webhook side must carry the policy's
defaults.

    e2e-tests/bench-webhook/run.py [--pods 1000] [--repeats 3]

Needs the local cluster up (its env: `eval "$(e2e-tests/local-cluster/cluster env)"`) and
dask-kube (DASK_KUBE, default the cargo target dir's debug build).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "crates/dask-kube/tests/fixtures"
WEBHOOK = "clusterwide-dask-worker-defaults"
WEBHOOK_NAME = f"{WEBHOOK}.kubewarden.admission"
STATE_DIR = Path(os.environ.get("DASK_K8S_STATE_DIR") or Path.home() / ".cache/dask-on-k8s/cluster")
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache/dask-on-k8s/target")
DASK_KUBE = os.environ.get("DASK_KUBE") or str(TARGET / "debug/dask-kube")


def run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return out


def kubectl(*args: str, check: bool = True) -> str:
    return run("kubectl", *args, check=check).stdout


# ---------------------------------------------------------------- apiserver metrics

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics() -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        m = SAMPLE.match(line)
        if m and m["name"].startswith("apiserver_admission_webhook"):
            out.append((m["name"], dict(LABEL.findall(m["labels"])), float(m["value"])))
    return out


def histogram(samples, name: str, webhook: str) -> dict[float, float]:
    """Cumulative bucket counts (le -> count) of `name` for `webhook`, CREATE, summed over the
    other labels."""
    buckets: dict[float, float] = {}
    for metric, labels, value in samples:
        if metric == name + "_bucket" and labels.get("name") == webhook and labels.get("operation") == "CREATE":
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    return buckets


def counter(samples, name: str, webhook: str, **match: str) -> float:
    return sum(v for metric, labels, v in samples
               if metric == name and labels.get("name") == webhook
               and all(labels.get(k) == want for k, want in match.items()))


def non_200(samples, webhook: str) -> float:
    return sum(v for metric, labels, v in samples
               if metric == "apiserver_admission_webhook_request_total" and labels.get("name") == webhook
               and labels.get("code") != "200")


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation within the bucket holding rank q."""
    edges = sorted(buckets)
    total = buckets[edges[-1]] if edges else 0
    if total <= 0:
        return None
    rank = q * total
    lower_edge, lower_count = 0.0, 0.0
    for le in edges:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower_edge
            return lower_edge + (le - lower_edge) * (rank - lower_count) / max(count - lower_count, 1e-12)
        lower_edge, lower_count = le, count
    return edges[-1]


# ---------------------------------------------------------------- the burst

def dask_kube(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_STATE_HOME=str(state), DASK_CONFIG=str(state / "none"),
               DASK_ROOT_CONFIG=str(state / "none"))
    return run(DASK_KUBE, *args, check=check, env=env)


def burst(ns: str, n: int) -> tuple[float, str, dict, Path]:
    """`dask-kube scale` 0 -> n on a new cluster of never-scheduled workers; returns the time
    of the scale, the cluster name, and dask-kube's JSON report."""
    with tempfile.TemporaryDirectory() as d:
        state = Path(d)
        up = json.loads(dask_kube(state, "-n", ns, "-o", "json", "up", "-f", str(FIXTURES / "pending-worker.yml"),
                                  "--scheduler-template", str(FIXTURES / "plain-scheduler.yml"),
                                  "--detach").stdout)
        name = up["name"]
        t0 = time.monotonic()
        scaled = dask_kube(state, "-n", ns, "-o", "json", "scale", name, str(n))
        seconds = time.monotonic() - t0
        report = json.loads(scaled.stdout) if scaled.stdout.strip().startswith("{") else {}
        return seconds, name, report, state


def defaulted_pods(ns: str, name: str) -> tuple[int, int]:
    pods = json.loads(kubectl("-n", ns, "get", "pods", "-o", "json", "-l",
                              f"dask.org/cluster-name={name},dask.org/component=worker"))["items"]
    ok = sum(1 for p in pods if any(t.get("key") == "k8s.dask.org/dedicated"
                                    for t in p["spec"].get("tolerations", [])))
    return len(pods), ok


def down(ns: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        dask_kube(Path(d), "-n", ns, "down", name, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    webhook_file = STATE_DIR / "policy-server/webhook.json"
    if not webhook_file.exists():
        sys.exit(f"no {webhook_file}: is the local cluster up (with up.d/20-policy-server.sh)?")
    ns = f"bench-webhook-{os.getpid()}"
    kubectl("create", "namespace", ns)
    results: dict[str, list[float]] = {"webhook": [], "no webhook": []}
    latency = {"p50": [], "p99": []}
    errors = rejections = fail_open = 0.0
    try:
        for repeat in range(args.repeats):
            order = ["webhook", "no webhook"] if repeat % 2 == 0 else ["no webhook", "webhook"]
            for side in order:
                if side == "no webhook":
                    kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK)
                before = metrics()
                seconds, name, _report, _ = burst(ns, args.pods)
                after = metrics()
                if side == "no webhook":
                    kubectl("apply", "-f", str(webhook_file))
                    time.sleep(1)  # the apiserver's webhook configuration cache
                total, ok = defaulted_pods(ns, name)
                if total != args.pods:
                    sys.exit(f"{side}: {total} pods, not {args.pods}")
                if side == "webhook":
                    if ok != total:
                        sys.exit(f"{total - ok} pods were not defaulted by the policy")
                    name_h = "apiserver_admission_webhook_admission_duration_seconds"
                    b0 = histogram(before, name_h, WEBHOOK_NAME)
                    b1 = histogram(after, name_h, WEBHOOK_NAME)
                    delta = {le: b1.get(le, 0) - b0.get(le, 0) for le in b1}
                    latency["p50"].append(quantile(0.5, delta) or 0.0)
                    latency["p99"].append(quantile(0.99, delta) or 0.0)
                    errors += non_200(after, WEBHOOK_NAME) - non_200(before, WEBHOOK_NAME)
                    rejections += (counter(after, "apiserver_admission_webhook_rejection_count", WEBHOOK_NAME)
                                   - counter(before, "apiserver_admission_webhook_rejection_count", WEBHOOK_NAME))
                    fail_open += (counter(after, "apiserver_admission_webhook_fail_open_count", WEBHOOK_NAME)
                                  - counter(before, "apiserver_admission_webhook_fail_open_count", WEBHOOK_NAME))
                results[side].append(seconds)
                print(f"repeat {repeat + 1} {side:>10}: {args.pods} worker pods created in {seconds:.2f}s", flush=True)
                down(ns, name)
    finally:
        if not kubectl("get", "mutatingwebhookconfiguration", WEBHOOK, check=False):
            kubectl("apply", "-f", str(webhook_file), check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)

    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print(f"burst of {args.pods} worker pods (dask-kube scale 0 -> {args.pods}), {args.repeats} repeats, medians (min-max):")
    for side, values in results.items():
        print(f"  {side:>10}: {med[side]:.2f}s ({min(values):.2f}-{max(values):.2f})")
    print(f"  ratio webhook / no webhook: {med['webhook'] / med['no webhook']:.2f}x")
    print(f"  policy-server admission latency (apiserver metrics, histogram_quantile): "
          f"p50 {1000 * statistics.median(latency['p50']):.1f} ms, p99 {1000 * statistics.median(latency['p99']):.1f} ms")
    print(f"  webhook errors (non-200 answers) {errors:.0f}, rejections {rejections:.0f}, fail-opens {fail_open:.0f}")
    print("WEBHOOK " + json.dumps({"pods": args.pods, "repeats": args.repeats,
                                   "webhook_s": med["webhook"], "no_webhook_s": med["no webhook"],
                                   "p50_ms": 1000 * statistics.median(latency["p50"]),
                                   "p99_ms": 1000 * statistics.median(latency["p99"]),
                                   "errors": errors, "rejections": rejections, "fail_open": fail_open}))
    return 1 if errors or rejections or fail_open else 0


if __name__ == "__main__":
    sys.exit(main())
