"""The family of one base spec: its architecture at any phi (or explicit multipliers), each a
rounded model with its exact parameters and MACs from effspec's own lowering and analysis."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from effspec.core.analysis import Report
    from effspec.core.ir import Model
    from effspec.core.schema import CompoundScaling, ExplicitScaling

#: Default coefficients when the base spec has no compound scaling (EfficientNet's grid-search result).
DEFAULT_COEFFICIENTS = (1.2, 1.1, 1.15)


@dataclass(frozen=True)
class Candidate:
    """One rounded model of the family."""

    phi: float
    width: float
    depth: float
    resolution: int
    params: int
    macs: int
    blocks: int
    latency_ms: float | None = None

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.macs, self.params, self.resolution)


@dataclass(frozen=True)
class Settings:
    alpha: float
    beta: float
    gamma: float
    resolution_divisor: int
    explicit: bool


class Family:
    """The base spec's architecture scaled by any phi (its own `scaling` section replaced)."""

    def __init__(self, spec_path: str | Path, settings: Settings) -> None:
        from effspec.core.loader import load_spec

        self.path = Path(spec_path)
        self.loaded = load_spec(self.path)
        self.settings = settings
        self._memo: dict[float, Candidate] = {}
        self._models: dict[tuple[int, int, int], Model] = {}

    def with_settings(self, settings: Settings) -> Family:
        """The same loaded base with other coefficients (no second load)."""
        other = copy.copy(self)
        other.settings, other._memo = settings, {}
        return other

    def _build(self, scaling: CompoundScaling | ExplicitScaling) -> tuple[Model, Report]:
        from effspec.core.analysis import analyze
        from effspec.core.loader import with_scaling
        from effspec.core.lower import lower
        from effspec.core.scaling import resolve_multipliers
        from effspec.core.verify import verify

        loaded = with_scaling(self.loaded, scaling)
        model = verify(lower(loaded, resolve_multipliers(loaded.spec)), loaded)
        return model, analyze(model)

    def compound(self, phi: float) -> CompoundScaling:
        from effspec.core.schema import CompoundScaling

        s = self.settings
        return CompoundScaling(
            method="compound",
            phi=phi,
            alpha=s.alpha,
            beta=s.beta,
            gamma=s.gamma,
            resolution_divisor=s.resolution_divisor,
        )

    def at(self, phi: float) -> Candidate:
        """The rounded model at ``phi`` (compound rule)."""
        if phi not in self._memo:
            model, report = self._build(self.compound(phi))
            self._memo[phi] = self._candidate(phi, model, report)
        return self._memo[phi]

    def explicit(self, phi: float, width: float, depth: float, resolution: int) -> Candidate:
        from effspec.core.schema import ExplicitScaling

        scaling = ExplicitScaling(method="explicit", width=width, depth=depth, resolution=resolution)
        model, report = self._build(scaling)
        return self._candidate(phi, model, report)

    def _candidate(self, phi: float, model: Model, report: Report) -> Candidate:
        candidate = Candidate(
            phi=phi,
            width=model.width,
            depth=model.depth,
            resolution=model.resolution,
            params=report.total.params,
            macs=report.total.macs,
            blocks=len(model.blocks),
        )
        self._models.setdefault(candidate.key, model)
        return candidate

    def model_of(self, candidate: Candidate) -> Model:
        return self._models[candidate.key]
