"""Error budgets from a float64 reference, not a fixed atol.

For each compared output the torch model is also run in float64 (same weights, cast exactly), and
that run is the reference ``ref``. The float32 torch run's own rounding error
``e_torch = max |torch32 - ref|`` measures how much float32 arithmetic alone moves this output for
this network, input and depth. Keras (another float32 implementation, with its own summation order)
is held to

    max |keras32 - ref|  <=  budget = max(BUDGET_MULTIPLE * e_torch, FLOOR_ULPS * eps32 * scale)

where ``scale = max |ref|`` and ``eps32`` is float32's machine epsilon. The floor only matters when
float32 happens to be exact for torch (a tiny output); it is a few float32 ulps of the output's
magnitude. A genuinely wrong rule (a transposed kernel, a BN epsilon or padding off) moves an output
by a sizeable fraction of ``scale``, orders of magnitude above the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUDGET_MULTIPLE = 16  # Keras may round up to this many times worse than float32 torch does
FLOOR_ULPS = 4  # the budget never goes below 4 float32 ulps of the output's magnitude
EPS32 = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class Row:
    """One compared output (eval) or one group of tensors (train step)."""

    name: str
    shape: str  # e.g. "2x32x112x112", or "1,234 values" for a group of tensors
    scale: float  # max |reference|
    torch_error: float  # max |torch32 - reference|: float32's own rounding, the budget's basis
    keras_error: float  # max |keras32 - reference|: what is held to the budget
    keras_vs_torch: float  # max |keras32 - torch32|, for information
    budget: float

    @property
    def relative(self) -> float:
        """The Keras error as a fraction of the output's scale (max |reference|)."""
        if self.scale > 0:
            return self.keras_error / self.scale
        return 0.0 if self.keras_error == 0 else float("inf")

    @property
    def ok(self) -> bool:
        return bool(self.keras_error <= self.budget)  # NaN fails


def budget_for(torch_error: float, scale: float) -> float:
    return max(BUDGET_MULTIPLE * torch_error, FLOOR_ULPS * EPS32 * scale)


def _max_abs(array: np.ndarray) -> float:
    return float(np.max(np.abs(array))) if array.size else 0.0


def compare(name: str, shape: str, reference: np.ndarray, torch32: np.ndarray, keras32: np.ndarray) -> Row:
    """Errors of both float32 runs against the float64 reference, and the budget Keras is held to."""
    if not reference.shape == torch32.shape == keras32.shape:
        raise ValueError(
            f"{name}: shapes differ: reference {reference.shape}, torch {torch32.shape}, keras {keras32.shape}"
        )
    reference = reference.astype(np.float64)
    torch32 = torch32.astype(np.float64)
    keras32 = keras32.astype(np.float64)
    scale = _max_abs(reference)
    torch_error = _max_abs(torch32 - reference)
    return Row(
        name=name,
        shape=shape,
        scale=scale,
        torch_error=torch_error,
        keras_error=_max_abs(keras32 - reference),
        keras_vs_torch=_max_abs(keras32 - torch32),
        budget=budget_for(torch_error, scale),
    )
