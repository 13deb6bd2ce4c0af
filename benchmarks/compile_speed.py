"""Whole-process wall time of `effspec compile` and `effspec info` for one spec (target: < 0.3 s median).

Usage: python benchmarks/compile_speed.py [--spec specs/efficientnet-b0.yaml] [--runs 15]
Prints the median and min over fresh processes, and the ratio to a bare `python -c pass` start-up
measured in the same run (the floor no CLI can beat).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def _time(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/efficientnet-b0.yaml")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cases = {
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
            "effspec info": [sys.executable, "-m", "effspec.cli", "info", args.spec],
            "effspec info --json": [sys.executable, "-m", "effspec.cli", "info", args.spec, "--json"],
            "effspec compile (all backends)": [sys.executable, "-m", "effspec.cli", "compile", args.spec, "-o", out],
        }
        floor = None
        print(f"{'command':34} {'median s':>9} {'min s':>7} {'x floor':>8}")
        for name, cmd in cases.items():
            times = _time(cmd, args.runs)
            median = statistics.median(times)
            floor = floor or median
            verdict = "" if "floor" in name else ("  ok (< 0.3 s)" if median < 0.3 else "  SLOW (>= 0.3 s)")
            print(f"{name:34} {median:9.3f} {min(times):7.3f} {median / floor:8.2f}{verdict}")


if __name__ == "__main__":
    main()
