"""How many CPUs this process may use: the one helper behind the trainers' default thread and
data-worker counts (and any command that sizes a thread pool).

``os.cpu_count()`` counts the machine's cores, not this process's share: a container limited by a
cgroup CPU quota, or a job pinned to some cores (taskset, Slurm, torchrun's NUMA binding), sees
all of them. Torch then starts one intra-op thread per core and data workers on top, and on a
2-core machine one epoch of the tiny spec took 18.2 s instead of 4.1 s with one thread.

Nor does the affinity mask say which of those CPUs are free: with one busy process on one of 2
cores, torch with 2 intra-op threads ran B0 inference about 2x slower than with 1 (every parallel
region waits for the thread that shares its core). ``free_cpus`` subtracts the CPUs other
processes keep busy at the moment it is called (benchmarks/results/cpu_2core_idle.md).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup (v2 or v1) CPU quota; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``cpu.max`` in v2, ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` in v1), or None when there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def split_cpus(processes: int = 1, workers: int | None = None) -> tuple[int, int]:
    """(compute threads, data workers) for each of ``processes`` processes sharing this machine's
    usable CPUs. Data workers default to none on up to 4 CPUs per process (each would take a core
    from the compute threads), else a quarter of them (at most 8); the compute threads get what
    the workers leave, at least 1."""
    share = max(1, usable_cpus() // max(1, processes))
    if workers is None:
        workers = 0 if share <= 4 else min(8, share // 4)
    return max(1, share - workers), workers


def free_cpus(interval: float = 0.1, stat: Path = Path("/proc/stat")) -> int:
    """``usable_cpus()`` less the CPUs other processes keep busy now: the busy time of this process's
    CPUs (affinity mask) over ``interval`` seconds from ``stat``, less this process's own, rounded to
    whole CPUs; at least 1. ``usable_cpus()`` when the counters cannot be read (not Linux)."""
    usable = usable_cpus()
    before, start, own = _busy_seconds(stat), time.monotonic(), _own_seconds()
    if before is None:
        return usable
    time.sleep(interval)
    after = _busy_seconds(stat)
    if after is None:
        return usable
    others = ((after - before) - (_own_seconds() - own)) / (time.monotonic() - start)
    return max(1, min(usable, usable - int(others + 0.5)))


def _busy_seconds(stat: Path) -> float | None:
    """Seconds the CPUs in this process's affinity mask spent not idle since boot, from /proc/stat."""
    try:
        cpus = os.sched_getaffinity(0)
        lines = stat.read_text().splitlines()
    except (AttributeError, OSError):
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
            ticks += sum(values) - values[3] - values[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system
