"""Compound scaling as pure functions (EfficientNet section 3.3; constants in docs/reference.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from effspec.core.schema import CompoundScaling, ExplicitScaling, Spec, Stage

FLOPS_TARGET = 2.0
FLOPS_TOLERANCE = 0.1


@dataclass(frozen=True)
class Multipliers:
    """The resolved scaling of one model: multipliers plus absolute resolution and regularization."""

    width: float
    depth: float
    resolution: int
    dropout: float
    drop_path_rate: float


def round_channels(channels: float, width: float, divisor: int, round_limit: float) -> int:
    """Scale ``channels`` by ``width`` and round to a multiple of ``divisor``.

    Rounds to the nearest multiple (never below ``divisor``); when that loses more than
    ``1 - round_limit`` of the scaled width it adds one more ``divisor`` (the 10% rule; 0 disables).
    """
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < round_limit * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float, rounding: str = "ceil") -> int:
    """Scale a stage's block count by ``depth``: rounded up (``ceil``, EfficientNet) or to the
    nearest integer (``round``, ties to even as Python rounds; TinyNet), never below 1."""
    if rounding == "round":
        return max(1, round(depth * repeats))
    return max(1, int(math.ceil(depth * repeats)))


def stage_repeats(stage: Stage, depth: float, rounding: str) -> int:
    """A stage's scaled block count: ``round_repeats``, or as written when ``scale_depth`` is false."""
    return round_repeats(stage.repeats, depth, rounding) if stage.scale_depth else stage.repeats


def scaled_resolution(base: int, gamma: float, phi: float, divisor: int = 1) -> int:
    """``base * gamma**phi`` rounded to the nearest multiple of ``divisor``."""
    return max(divisor, int(round(base * gamma**phi / divisor)) * divisor)


def depth_fractions(total_blocks: int) -> list[float]:
    """Each block's depth fraction: block i of N (global index over the SCALED count) is at i / N."""
    return [index / total_blocks for index in range(total_blocks)]


def drop_path_rate(base_rate: float, depth_fraction: float) -> float:
    """Stochastic depth, the one rule: a block at depth fraction i / N drops its residual branch with
    probability base * i / N. Generated models print each block's fraction (``BlockConfig.depth_fraction``)
    and multiply the rate chosen at build time by it, this same product."""
    return base_rate * depth_fraction


def flops_ratio(scaling: CompoundScaling) -> float:
    """alpha * beta^2 * gamma^2: FLOPs grow by this factor per unit of phi (the paper picks ~2)."""
    return scaling.alpha * scaling.beta**2 * scaling.gamma**2


def scaling_warnings(spec: Spec) -> list[str]:
    """Soft problems worth telling the user about (not errors)."""
    scaling = spec.scaling
    if isinstance(scaling, CompoundScaling):
        ratio = flops_ratio(scaling)
        if abs(ratio - FLOPS_TARGET) > FLOPS_TOLERANCE:
            return [
                f"scaling: alpha * beta^2 * gamma^2 = {ratio:.3f}, far from {FLOPS_TARGET:g}: "
                f"FLOPs will grow by {ratio:.2f}x (not 2x) per unit of phi"
            ]
    return []


def resolve_multipliers(spec: Spec) -> Multipliers:
    """The width/depth multipliers, absolute resolution, dropout and drop-path rate of ``spec``."""
    scaling = spec.scaling
    dropout, drop_path = spec.head.dropout, spec.defaults.drop_path_rate
    if isinstance(scaling, CompoundScaling):
        width, depth = scaling.beta**scaling.phi, scaling.alpha**scaling.phi
        resolution = scaled_resolution(spec.input.resolution, scaling.gamma, scaling.phi, scaling.resolution_divisor)
    elif isinstance(scaling, ExplicitScaling):
        width, depth = scaling.width, scaling.depth
        resolution = scaling.resolution or spec.input.resolution
    else:
        width, depth, resolution = 1.0, 1.0, spec.input.resolution
    if scaling is not None:
        dropout = scaling.dropout if scaling.dropout is not None else dropout
        drop_path = scaling.drop_path_rate if scaling.drop_path_rate is not None else drop_path
    return Multipliers(width, depth, resolution, dropout, drop_path)
