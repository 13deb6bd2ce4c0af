"""The check's result and how it prints: a per-output table, or JSON."""

from __future__ import annotations

from dataclasses import dataclass

from effspec.equivalence.budget import BUDGET_MULTIPLE, FLOOR_ULPS, Row


@dataclass(frozen=True)
class CheckResult:
    spec: str
    spec_name: str  # SPEC_NAME of the checked model
    mode: str  # "eval" or "train-step"
    resolution: int
    batch: int
    seed: int
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def failures(self) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if not row.ok)


COLUMNS = ("output", "shape", "scale", "torch32 err", "keras err", "keras rel", "budget", "keras-torch", "")


def _number(value: float) -> str:
    return f"{value:.2e}"


def table(result: CheckResult) -> str:
    title = (
        f"{result.spec}: {result.mode} check at {result.resolution}x{result.resolution}, "
        f"batch {result.batch}, seed {result.seed}"
    )
    rule = (
        f"errors are max |x - ref| against a float64 torch run (ref); budget = max({BUDGET_MULTIPLE} x torch32 err, "
        f"{FLOOR_ULPS} float32 ulps of scale); keras rel = keras err / scale"
    )
    body = [
        (
            row.name,
            row.shape,
            _number(row.scale),
            _number(row.torch_error),
            _number(row.keras_error),
            _number(row.relative),
            _number(row.budget),
            _number(row.keras_vs_torch),
            "ok" if row.ok else "OVER BUDGET",
        )
        for row in result.rows
    ]
    widths = [max(len(line[i]) for line in (COLUMNS, *body)) for i in range(len(COLUMNS))]
    lines = [title, rule, ""]
    for line in (COLUMNS, *body):
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        cells[-1] = line[-1]
        lines.append("  ".join(cells).rstrip())
    lines.extend(["", *result.notes])
    verdict = "all within budget" if result.ok else f"{len(result.failures)} of {len(result.rows)} over budget"
    lines.append(f"{result.spec_name}: {verdict}")
    return "\n".join(lines)


def as_json(result: CheckResult) -> dict:
    return {
        "spec": result.spec,
        "spec_name": result.spec_name,
        "mode": result.mode,
        "resolution": result.resolution,
        "batch": result.batch,
        "seed": result.seed,
        "budget_multiple": BUDGET_MULTIPLE,
        "floor_ulps": FLOOR_ULPS,
        "ok": result.ok,
        "notes": list(result.notes),
        "rows": [
            {
                "name": row.name,
                "shape": row.shape,
                "scale": row.scale,
                "torch_error": row.torch_error,
                "keras_error": row.keras_error,
                "keras_relative_error": row.relative,
                "keras_vs_torch": row.keras_vs_torch,
                "budget": row.budget,
                "ok": row.ok,
            }
            for row in result.rows
        ],
    }
