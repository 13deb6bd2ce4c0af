"""The search's candidates: the grid, the points near the FLOPs ratio, the picks and their spec files."""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from effspec.support.errors import UsageError

DEFAULT_GRID = "alpha=1.0:2.0:0.05,beta=1.0:1.5:0.05,gamma=1.0:1.5:0.05"
MACS_TOLERANCE = 0.10  # the real MACs ratio must be within 10% of the requested one
COEFFICIENTS = ("alpha", "beta", "gamma")

Grid = dict[str, list[float]]  # each coefficient's values


@dataclass(frozen=True)
class Candidate:
    alpha: float
    beta: float
    gamma: float
    macs: int
    params: int
    resolution: int
    macs_ratio: float

    @property
    def flops_ratio(self) -> float:
        return self.alpha * self.beta**2 * self.gamma**2

    @property
    def tag(self) -> str:
        return f"a{round(self.alpha * 1000)}-b{round(self.beta * 1000)}-g{round(self.gamma * 1000)}"


def _axis(part: str) -> tuple[str, list[float]]:
    """``alpha=START:STOP:STEP`` (or ``alpha=VALUE``) -> the coefficient and its values."""
    name, _, spans = part.partition("=")
    name = name.strip()
    if name not in COEFFICIENTS:
        raise UsageError(f"--grid: expected alpha=, beta= or gamma=, found {part!r}")
    try:
        numbers = [float(x) for x in spans.split(":")]
    except ValueError:
        raise UsageError(f"--grid {name}: expected START:STOP:STEP numbers, found {spans!r}") from None
    if len(numbers) == 1:
        numbers = [numbers[0], numbers[0], 1.0]
    if len(numbers) != 3 or numbers[2] <= 0 or numbers[1] < numbers[0] or not all(map(math.isfinite, numbers)):
        raise UsageError(f"--grid {name}: expected START:STOP:STEP with START <= STOP and STEP > 0, found {spans!r}")
    start, stop, step = numbers
    if start < 1:
        raise UsageError(f"--grid {name}: coefficients must be >= 1, found {start:g}")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > 1000:
        raise UsageError(f"--grid {name}: {count} values; expected at most 1000")
    return name, [round(start + i * step, 6) for i in range(count)]


def parse_grid(text: str) -> Grid:
    """``alpha=1.0:2.0:0.05,beta=...`` -> the values of each coefficient (missing ones: the default grid)."""
    axes = dict(_axis(p.strip()) for p in text.split(",") if p.strip())
    defaults = {} if text == DEFAULT_GRID else parse_grid(DEFAULT_GRID)
    grid = {name: axes.get(name) or defaults[name] for name in COEFFICIENTS}
    from effspec.core.limits import check_grid

    check_grid("--grid", {name: len(values) for name, values in grid.items()})  # before any point is built
    return grid


def enumerate_candidates(
    spec_path: Path, grid: Grid, ratio: float, ratio_tolerance: float, divisor: int
) -> tuple[list[Candidate], int]:
    """The grid points near the FLOPs ratio whose rounded phi = 1 model meets it; and the base's MACs."""
    from effspec.tools.scale import Family, Settings

    base_family = Family(spec_path, Settings(1.0, 1.0, 1.0, divisor, False))
    base_macs = base_family.at(0.0).macs
    out = []
    for alpha, beta, gamma in itertools.product(*(grid[name] for name in COEFFICIENTS)):
        if abs(alpha * beta**2 * gamma**2 - ratio) > ratio_tolerance * ratio:
            continue
        model = base_family.with_settings(Settings(alpha, beta, gamma, divisor, False)).at(1.0)
        macs_ratio = model.macs / base_macs
        if abs(macs_ratio - ratio) <= MACS_TOLERANCE * ratio:
            out.append(Candidate(alpha, beta, gamma, model.macs, model.params, model.resolution, macs_ratio))
    # Coefficients that round to the same network at phi = 1 are one candidate: keep the one whose
    # alpha * beta^2 * gamma^2 is closest to the ratio.
    unique: dict[tuple[int, int, int], Candidate] = {}
    for c in sorted(out, key=lambda c: (abs(c.flops_ratio - ratio), c.alpha, c.beta, c.gamma)):
        unique.setdefault((c.macs, c.params, c.resolution), c)
    return list(unique.values()), base_macs


def pick(candidates: list[Candidate], trials: int) -> list[Candidate]:
    """``trials`` candidates spread evenly over the list (sorted by alpha, beta, gamma)."""
    ordered = sorted(candidates, key=lambda c: (c.alpha, c.beta, c.gamma))
    if trials >= len(ordered):
        return ordered
    if trials == 1:
        return [ordered[len(ordered) // 2]]
    return [ordered[round(i * (len(ordered) - 1) / (trials - 1))] for i in range(trials)]


def candidate_spec_text(base: Path, out: Path, name: str, c: Candidate, divisor: int, phi: float, note: str) -> str:
    """A spec that extends ``base`` (relative to ``out``'s folder) with the candidate's compound scaling."""
    extends = Path(os.path.relpath(base.resolve(), out.resolve().parent)).as_posix()
    return (
        f"# {note}\n"
        f"extends: {json.dumps(extends)}\n"
        f"name: {name}\n"
        f"scaling: {{method: compound, phi: {phi:g}, alpha: {c.alpha:g}, beta: {c.beta:g}, gamma: {c.gamma:g}, "
        f"resolution_divisor: {divisor}}}\n"
    )
