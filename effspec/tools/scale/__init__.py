"""`effspec scale`: find the compound-scaling phi that meets a MACs, parameter or latency budget.

The scaled model's MACs and parameters are step functions of phi (channels round to the divisor,
repeats round up, the resolution rounds to its divisor) and never decrease as phi grows, since
alpha, beta, gamma >= 1. So the search is a bisection on the exact figures of the ROUNDED model,
computed by effspec's own lowering and analysis (never by the 2^phi formula): the target falls
between two adjacent steps and the closer one wins. Within the winning step every phi gives the
same network, so the written phi is the one with the fewest decimals.

Latency is not a clean function of phi (it is measured), so a latency target is met by measuring
the generated model at a coarse grid of phi and then bisecting between the two bracketing points.

Nothing heavy is imported at module level: torch or Keras load only for a latency target.

Its modules, one job each: ``family`` (the rounded model at any phi), ``solve`` (the search over
phi), ``latency`` (timing a generated model) and ``command`` (the command line and the written spec).
"""

from __future__ import annotations

from effspec.tools.scale.command import run
from effspec.tools.scale.family import DEFAULT_COEFFICIENTS, Candidate, Family, Settings
from effspec.tools.scale.latency import measure_latency
from effspec.tools.scale.solve import PHI_MAX, Outcome, solve_analytic, solve_latency

__all__ = [
    "DEFAULT_COEFFICIENTS",
    "PHI_MAX",
    "Candidate",
    "Family",
    "Outcome",
    "Settings",
    "measure_latency",
    "run",
    "solve_analytic",
    "solve_latency",
]
