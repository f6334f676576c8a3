#!/usr/bin/env python3
"""make bench-policy: `kwctl bench` of the policy against the floor, side by side.

Runs `kwctl bench` on each side in turn (ours, floor, ours, floor, ...) so both see the
same machine load, reads the mean time of `validate` from each report, and prints the
per-run means, the median per side and the ratio ours / floor. The floor is
`minimal-policy` (this directory): the SDK's request parse, one toleration added, the
object returned, which is the least a mutating policy does on the same request.

Usage: run.py --kwctl KWCTL --request REQUEST.json [--runs 3] [--kwctl-arg=ARG ...]
              NAME=MODULE.wasm [NAME=MODULE.wasm ...] NAME=FLOOR.wasm
The last module is the floor; each other one gets its ratio to it, and the first one its
ratio to each one between (a second floor, or an earlier build, measured in the same
alternation). Only the standard library.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# tiny-bench's report, as kwctl 1.36 prints it for the `validate` label:
#   validate [35.4 thousand iterations in 4.88s with 100.0 samples]:
#       elapsed [min mean max]: [66.68µs 132.98µs 256.21µs] (sample data: med = ...)
REPORT = re.compile(
    r"^validate \[[^\]]*\]:\s*\n\s*elapsed\s*\[min mean max\]:\s*\[(\S+) (\S+) (\S+)\]",
    re.MULTILINE,
)
UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def microseconds(text: str) -> float:
    """`66.68µs` -> 66.68; tiny-bench picks ns, µs, ms or s."""
    match = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text)
    if not match:
        raise ValueError(f"not a tiny-bench duration: {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def validate_figures(report: str) -> tuple[float, float]:
    """The (min, mean) of `validate` in one `kwctl bench` report, in microseconds."""
    match = REPORT.search(ANSI.sub("", report))
    if not match:
        raise ValueError("no `validate` figures in kwctl bench's output:\n" + report)
    return microseconds(match.group(1)), microseconds(match.group(2))


def bench(kwctl: str, module: str, request: str, extra: list[str]) -> tuple[float, float]:
    command = [kwctl, "bench", "--request-path", request, *extra, module]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench-policy: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return validate_figures(done.stdout)


def load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return f.read().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kwctl", required=True)
    parser.add_argument("--request", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kwctl-arg", action="append", default=[], dest="extra")
    parser.add_argument("sides", nargs="+", metavar="NAME=MODULE")
    args = parser.parse_args()
    if len(args.sides) < 2:
        parser.error("give the module and the floor")
    sides = [tuple(side.split("=", 1)) for side in args.sides]
    for name, module in sides:
        print(f"{name}: {module} ({os.path.getsize(module):,} bytes)")
    print(f"request: {args.request}; {args.runs} alternating runs; load average {load()}")

    means: dict[str, list[float]] = {name: [] for name, _ in sides}
    mins: dict[str, list[float]] = {name: [] for name, _ in sides}
    for run in range(1, args.runs + 1):
        for name, module in sides:
            low, mean = bench(args.kwctl, module, args.request, args.extra)
            means[name].append(mean)
            mins[name].append(low)
            print(
                f"  run {run} {name}: validate mean {mean:8.2f} us, min {low:8.2f} us", flush=True
            )

    floor = sides[-1][0]
    medians = {name: statistics.median(values) for name, values in means.items()}
    min_medians = {name: statistics.median(values) for name, values in mins.items()}
    print(f"load average at the end {load()}")
    width = max(9 * args.runs + 2, 20)
    label = max(len(name) for name, _ in sides) + 2
    print(f"{'':{label}}{'validate mean, us':>{width}}{'median':>10}   {'min':>10}")
    for name, values in means.items():
        runs = " ".join(f"{v:8.2f}" for v in values)
        print(f"{name:{label}}{runs:>{width}}{medians[name]:10.2f}   {min_medians[name]:10.2f}")
    first = sides[0][0]
    pairs = [(name, floor) for name, _ in sides[:-1]]
    pairs += [(first, name) for name, _ in sides[1:-1]]
    for name, base in pairs:
        print(
            f"ratio {name} / {base}: {medians[name] / medians[base]:.2f}x "
            f"(medians of the means; of the minimums, which load disturbs least: "
            f"{min_medians[name] / min_medians[base]:.2f}x)"
        )


if __name__ == "__main__":
    main()
