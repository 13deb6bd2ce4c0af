"""Whole-process wall time of `effspec compile` and `effspec info` for one spec (target: < 0.3 s median).

Usage: python benchmarks/compile_speed.py [--spec specs/efficientnet-b0.yaml] [--runs 15]
Prints the median and min over fresh processes, and the ratio to a bare `python -c pass` start-up
measured in the same run (the floor no CLI can beat). Every run validates the spec in full
(there is no build cache). `--only compile` times just the compile command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _time(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/efficientnet-b0.yaml")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", choices=["info", "compile"], help="time one command only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        commands = {
            "info": [sys.executable, "-m", "effspec.cli", "info", args.spec],
            "info --json": [sys.executable, "-m", "effspec.cli", "info", args.spec, "--json"],
            "compile (all backends)": [sys.executable, "-m", "effspec.cli", "compile", args.spec, "-o", out],
        }
        if args.only:
            commands = {name: cmd for name, cmd in commands.items() if name.startswith(args.only)}
        cases = [("python -c pass (floor)", [sys.executable, "-c", "pass"], {})]
        cases += [(f"effspec {name}", cmd, {}) for name, cmd in commands.items()]
        floor = None
        print(f"{'command':40} {'median s':>9} {'min s':>7} {'x floor':>8}")
        for name, cmd, extra_env in cases:
            times = _time(cmd, args.runs, {**os.environ, **extra_env})
            median = statistics.median(times)
            floor = floor or median
            verdict = "" if "floor" in name else ("  ok (< 0.3 s)" if median < 0.3 else "  SLOW (>= 0.3 s)")
            print(f"{name:40} {median:9.3f} {min(times):7.3f} {median / floor:8.2f}{verdict}")


if __name__ == "__main__":
    main()
