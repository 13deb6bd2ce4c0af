"""The search over phi: a bisection on the exact figures of the rounded models (MACs and parameters
never decrease as phi grows), or, for latency, a coarse grid of measurements and a bisection between
the two that bracket the target."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from effspec.tools.scale.family import Candidate, Family

#: The largest phi considered (B0 at phi 12: 1200 px, ~0.9 TMACs): beyond that a target is "absurd".
PHI_MAX = 12.0
#: How close the chosen model must be to a reachable target.
TOLERANCE = 0.05
#: Bisection stops when phi is known to this precision.
PHI_EPS = 1e-7

Metric = Literal["macs", "params", "latency"]


def _first_at_least(value: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The smallest phi in [lo, hi] (to PHI_EPS) with value(phi) >= target; value is non-decreasing."""
    if value(lo) >= target:
        return lo
    while hi - lo > PHI_EPS:
        mid = (lo + hi) / 2
        if value(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def step_interval(family: Family, phi: float) -> tuple[float, float]:
    """[start, end) of the phi range that gives the same rounded model as ``phi``."""
    key = family.at(phi).key
    start = 0.0 if family.at(0.0).key == key else _first_at_least(lambda p: family.at(p).key >= key, 1, 0.0, phi)
    # `key >= key` is monotone too: (macs, params, resolution) never decrease with phi.
    if family.at(PHI_MAX).key == key:
        return start, PHI_MAX
    end = _first_at_least(lambda p: family.at(p).key > key, 1, phi, PHI_MAX)
    return start, end


def roundest(start: float, end: float) -> float:
    """The number with the fewest decimals in [start, end)."""
    for decimals in range(0, 10):
        scale = 10**decimals
        value = math.ceil(start * scale - 1e-9) / scale
        if start <= value < end:
            return round(value, decimals)
    return start


def figure(candidate: Candidate, metric: Metric) -> float:
    if metric == "macs":
        return float(candidate.macs)
    if metric == "params":
        return float(candidate.params)
    assert candidate.latency_ms is not None
    return candidate.latency_ms


def relative_error(value: float, target: float) -> float:
    return (value - target) / target


@dataclass(frozen=True)
class Outcome:
    best: Candidate
    table: list[Candidate]
    reachable: bool  # the target lies within the family's range (phi in [0, PHI_MAX])
    floor: Candidate
    ceiling: Candidate


def _neighbours(family: Family, best: Candidate, count: int = 2) -> list[Candidate]:
    """``best`` with ``count`` distinct rounded models on each side, each at its roundest phi."""
    rows = [best]
    start, end = step_interval(family, best.phi)
    lo, hi = start, end
    for _ in range(count):
        if lo <= 0:
            break
        s, e = step_interval(family, max(0.0, lo - PHI_EPS))
        rows.insert(0, family.at(roundest(s, e)))
        lo = s
    for _ in range(count):
        if hi >= PHI_MAX:
            break
        s, e = step_interval(family, hi)
        rows.append(family.at(roundest(s, e)))
        hi = e
    return rows


def solve_analytic(family: Family, metric: Metric, target: float) -> Outcome:
    """The rounded model whose MACs or parameters are closest to ``target``."""

    def value(phi: float) -> float:
        return figure(family.at(phi), metric)

    floor, ceiling = family.at(0.0), family.at(PHI_MAX)
    above = _first_at_least(value, target, 0.0, PHI_MAX)
    options = [family.at(above)]
    if above > 0:
        options.append(family.at(max(0.0, above - PHI_EPS)))
    chosen = min(options, key=lambda c: abs(relative_error(figure(c, metric), target)))
    start, end = step_interval(family, chosen.phi)
    best = family.at(roundest(start, end))
    assert best.key == chosen.key, (best, chosen)
    reachable = figure(floor, metric) <= target <= figure(ceiling, metric)
    return Outcome(best, _neighbours(family, best), reachable, floor, ceiling)


def solve_latency(family: Family, target_ms: float, measure: Callable[[Candidate], float]) -> Outcome:
    """Measure a coarse grid of phi, then bisect between the two measurements around the target."""
    cache: dict[tuple[int, int, int], Candidate] = {}

    def timed(phi: float) -> Candidate:
        plain = family.at(phi)
        if plain.key not in cache:
            cache[plain.key] = dataclasses.replace(plain, latency_ms=measure(plain))
        return dataclasses.replace(cache[plain.key], phi=phi)

    grid = [0.0]
    lo = timed(0.0)
    floor = lo
    hi: Candidate | None = None
    phi = 0.0
    while phi < PHI_MAX:
        phi = min(PHI_MAX, phi + 1.0)
        point = timed(phi)
        grid.append(phi)
        if figure(point, "latency") >= target_ms:
            hi = point
            break
        lo = point
    if hi is None:  # the largest model is still faster than the target
        return Outcome(lo, [floor, lo], False, floor, lo)
    for _ in range(6):  # 1/64 of a phi unit: far below the measurement noise
        if hi.phi - lo.phi < 1 / 64 or family.at(lo.phi).key == family.at(hi.phi).key:
            break
        mid = timed((lo.phi + hi.phi) / 2)
        if figure(mid, "latency") >= target_ms:
            hi = mid
        else:
            lo = mid
    measured = sorted({c.key: c for c in (floor, lo, hi)}.values(), key=lambda c: c.phi)
    best = min((lo, hi), key=lambda c: abs(relative_error(figure(c, "latency"), target_ms)))
    start, end = step_interval(family, best.phi)
    best = dataclasses.replace(best, phi=roundest(start, end))
    table = sorted({c.key: c for c in (*measured, best)}.values(), key=lambda c: c.macs)
    table = [best if c.key == best.key else c for c in table]
    reachable = figure(floor, "latency") <= target_ms
    return Outcome(best, table, reachable, floor, hi)


def explicit_refine(family: Family, best: Candidate, metric: Metric, target: float | None) -> Candidate:
    """Explicit multipliers (4 decimals) from the compound ``best``; for a MACs target also the
    resolution (a multiple of the divisor) that brings MACs closest to it, width and depth fixed."""
    width, depth = round(best.width, 4), round(best.depth, 4)
    candidate = family.explicit(best.phi, width, depth, best.resolution)
    if metric != "macs" or target is None:
        return candidate
    divisor = family.settings.resolution_divisor
    options = [candidate]
    for step in range(1, 9):
        for sign in (-1, 1):
            res = best.resolution + sign * step * divisor
            if res >= divisor:
                try:
                    options.append(family.explicit(best.phi, width, depth, res))
                except Exception:  # a resolution too small for the strides: not an option
                    continue
    return min(options, key=lambda c: abs(relative_error(c.macs, target)))
