"""The `effspec scale` command: read the flags, settle the coefficients, solve for phi, print the
table and write the spec (built once more from the file as written to check its figures)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from effspec.support import output
from effspec.support.errors import UsageError
from effspec.tools.scale.family import DEFAULT_COEFFICIENTS, Candidate, Family, Settings
from effspec.tools.scale.latency import measure_latency
from effspec.tools.scale.solve import (
    PHI_MAX,
    TOLERANCE,
    Metric,
    Outcome,
    explicit_refine,
    figure,
    relative_error,
    solve_analytic,
    solve_latency,
)

UNITS: dict[Metric, str] = {"macs": "MACs", "params": "parameters", "latency": "ms"}


@dataclass(frozen=True)
class Request:
    """The command line, checked: what to meet, how to measure it, where to write."""

    spec: Path
    out: Path
    metric: Metric
    target: float
    backend: str | None
    device: str
    batch: int
    explicit: bool
    name: str | None
    alpha: float | None
    beta: float | None
    gamma: float | None
    resolution_divisor: int | None

    @property
    def shown_target(self) -> str:
        if self.metric == "latency":
            return f"{self.target:g} ms"
        return f"{_fmt_count(self.target)} {UNITS[self.metric]} ({self.target:,.0f})"


def _fmt_count(value: float) -> str:
    if abs(value) >= 1e15:
        return f"{value:.3g}"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def _table(rows: list[Candidate], best: Candidate, metric: Metric, target: float) -> str:
    header = ["", "phi", "width", "depth", "resolution", "blocks", "params", "MACs"]
    if metric == "latency":
        header.append("latency ms")
    header.append("vs target")
    lines = [header]
    for c in rows:
        cells = [
            "->" if c.key == best.key else "",
            f"{c.phi:g}",
            f"{c.width:.4g}",
            f"{c.depth:.4g}",
            str(c.resolution),
            str(c.blocks),
            f"{c.params:,}",
            f"{c.macs:,}",
        ]
        if metric == "latency":
            cells.append(f"{c.latency_ms:.2f}" if c.latency_ms is not None else "")
        value = figure(c, metric) if (metric != "latency" or c.latency_ms is not None) else None
        cells.append(f"{100 * relative_error(value, target):+.1f}%" if value is not None else "")
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = []
    for i, r in enumerate(lines):
        out.append(
            "  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(r, widths, strict=True)))
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in out)


def _name_for(out: Path, base_name: str, explicit_name: str | None) -> str:
    import re

    pattern = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
    if explicit_name is not None:
        if not pattern.match(explicit_name) or len(explicit_name) > 64:
            raise UsageError(f"--name {explicit_name!r}: expected lowercase letters, digits and single dashes")
        return explicit_name
    stem = out.name.split(".")[0].lower().replace("_", "-")
    if pattern.match(stem) and len(stem) <= 64:
        return stem
    return f"{base_name[:57]}-scaled"


def render_spec(
    base: Path, out: Path, name: str, scaling: dict[str, float | str], comment: list[str], description: str
) -> str:
    import json
    import re

    import yaml

    def scalar(value: object) -> str:  # plain YAML where it reads back as itself (not `yes`, `null`), else JSON
        if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_./-]+", value) and not value[0].isdigit():
            if yaml.safe_load(f"k: {value}") == {"k": value}:
                return value
        return json.dumps(value)

    extends = Path(os.path.relpath(base.resolve(), out.resolve().parent)).as_posix()
    inner = ", ".join(f"{key}: {scalar(value)}" for key, value in scaling.items())
    lines = [f"# {line}" for line in comment]
    lines += [
        f"extends: {scalar(extends)}",
        f"name: {name}",
        f"description: {json.dumps(description)}",
        f"scaling: {{{inner}}}",
    ]
    return "\n".join(lines) + "\n"


def _check_against_schema(alpha: float, beta: float, gamma: float, divisor: int) -> None:
    """The flags as the scaling section they will become: the schema's bounds, its messages."""
    import pydantic

    from effspec.core.schema import CompoundScaling

    try:
        CompoundScaling(method="compound", phi=0.0, alpha=alpha, beta=beta, gamma=gamma, resolution_divisor=divisor)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "scaling"
        raise UsageError(f"{flag}: {first['msg'].lower()}, found {first.get('input')!r}") from None


def _parse_target(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"expected a number such as 1e9, found {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"expected a positive finite target, found {text!r}")
    return value


def _request(args: argparse.Namespace) -> Request:
    spec_path = Path(args.spec)
    if not spec_path.is_file():
        raise UsageError(f"spec not found: {spec_path}")
    metric: Metric
    if args.target_macs is not None:
        metric, target = "macs", _parse_target(args.target_macs)
    elif args.target_params is not None:
        metric, target = "params", _parse_target(args.target_params)
    else:
        metric, target = "latency", _parse_target(args.target_latency)
        if args.backend is None:
            raise UsageError("--target-latency needs --backend torch or --backend keras")
    if metric != "latency" and (args.backend or args.device or args.batch):
        raise UsageError("--backend, --device and --batch go with --target-latency")
    return Request(
        spec=spec_path,
        out=Path(args.output),
        metric=metric,
        target=target,
        backend=args.backend,
        device=args.device or "cpu",
        batch=args.batch or 1,
        explicit=bool(args.explicit),
        name=args.name,
        alpha=args.alpha,
        beta=args.beta,
        gamma=args.gamma,
        resolution_divisor=args.resolution_divisor,
    )


def _settings(request: Request) -> Settings:
    """The coefficients: the flags, else the base spec's compound scaling, else EfficientNet's."""
    from effspec.core.loader import load_spec
    from effspec.core.schema import CompoundScaling, ExplicitScaling

    base_scaling = load_spec(request.spec).spec.scaling
    alpha, beta, gamma = DEFAULT_COEFFICIENTS
    divisor = 8
    if isinstance(base_scaling, CompoundScaling):
        alpha, beta, gamma = base_scaling.alpha, base_scaling.beta, base_scaling.gamma
        divisor = base_scaling.resolution_divisor
        if request.explicit:
            raise UsageError(
                f"{request.spec} uses compound scaling, and `extends` merges mappings: an explicit scaling "
                "cannot replace it; drop --explicit"
            )
    alpha = request.alpha if request.alpha is not None else alpha
    beta = request.beta if request.beta is not None else beta
    gamma = request.gamma if request.gamma is not None else gamma
    divisor = request.resolution_divisor if request.resolution_divisor is not None else divisor
    for label, value in (("--alpha", alpha), ("--beta", beta), ("--gamma", gamma)):
        if not (math.isfinite(value) and 1 <= value <= 4):
            raise UsageError(f"{label}: expected a coefficient in [1, 4], found {value:g}")
    if divisor < 1:
        raise UsageError(f"--resolution-divisor: expected a positive integer, found {divisor}")
    if alpha == beta == gamma == 1:
        raise UsageError("--alpha, --beta and --gamma are all 1: phi would change nothing")
    _check_against_schema(alpha, beta, gamma, divisor)
    # An explicit base cannot take a compound section (extends merges mappings): write explicit.
    explicit = request.explicit or isinstance(base_scaling, ExplicitScaling)
    return Settings(alpha, beta, gamma, divisor, explicit)


def _solve(family: Family, request: Request) -> Outcome:
    if request.metric != "latency":
        return solve_analytic(family, request.metric, request.target)
    backend, device, batch = request.backend or "", request.device, request.batch
    print(
        f"measuring the generated {backend} model on {device}, batch {batch}: 5 warm-up runs, median of 20",
        file=sys.stderr,
    )

    def measure(c: Candidate) -> float:
        ms = measure_latency(family.model_of(c), backend, device, batch)
        print(f"  phi {c.phi:g}: resolution {c.resolution}, {c.macs / 1e9:.2f} GMACs, {ms:.2f} ms", file=sys.stderr)
        return ms

    return solve_latency(family, request.target, measure)


def _check_reachable(outcome: Outcome, request: Request) -> None:
    metric, target = request.metric, request.target
    if outcome.reachable or abs(relative_error(figure(outcome.best, metric), target)) <= TOLERANCE:
        return
    lo = figure(outcome.floor, metric)
    nearest = outcome.floor if target < lo else outcome.ceiling
    where = "below the base's floor" if target < lo else f"beyond phi {PHI_MAX:g}"
    value = figure(nearest, metric)
    shown = f"{value:.2f} ms" if metric == "latency" else f"{value:,.0f} {UNITS[metric]}"
    raise UsageError(
        f"target {request.shown_target} is unreachable ({where}): the nearest reachable model has {shown} "
        f"(phi {nearest.phi:g}, resolution {nearest.resolution})"
    )


def _chosen(family: Family, outcome: Outcome, request: Request) -> Candidate:
    """The model to write: the solved one, or its explicit multipliers (fitted for a MACs target)."""
    best = outcome.best
    if not family.settings.explicit:
        return best
    refined = explicit_refine(family, best, request.metric, request.target if request.metric == "macs" else None)
    if request.metric == "latency":
        refined = dataclasses.replace(refined, latency_ms=best.latency_ms)
    return refined


def _report(family: Family, outcome: Outcome, best: Candidate, request: Request) -> float:
    """Print the chosen model among its neighbours; its relative error against the target."""
    s, metric, target = family.settings, request.metric, request.target
    coefficients = f"alpha {s.alpha:g}, beta {s.beta:g}, gamma {s.gamma:g}"
    print(f"{family.loaded.spec.name}: target {request.shown_target}; {coefficients}")
    if metric == "latency":
        print(f"latency: generated {request.backend} model, {request.device}, batch {request.batch}, median of 20")
    print(_table([best if c.key == outcome.best.key else c for c in outcome.table], best, metric, target))
    error = relative_error(figure(best, metric), target)
    if abs(error) > TOLERANCE:
        print(
            f"warning: rounding allows no model within {TOLERANCE:.0%} of the target; the closest is "
            f"{100 * error:+.1f}% off",
            file=sys.stderr,
        )
    return error


def _scaling_section(best: Candidate, s: Settings) -> dict[str, float | str]:
    if s.explicit:
        return {"method": "explicit", "width": best.width, "depth": best.depth, "resolution": best.resolution}
    return {
        "method": "compound",
        "phi": best.phi,
        "alpha": s.alpha,
        "beta": s.beta,
        "gamma": s.gamma,
        "resolution_divisor": s.resolution_divisor,
    }


def _write(family: Family, best: Candidate, error: float, request: Request, inputs: list[Path]) -> None:
    """Write the spec; the file as written must build to the figures shown."""
    from effspec.emit.pipeline import build

    s, out = family.settings, request.out
    name = _name_for(out, family.loaded.spec.name, request.name)
    measured = f", {best.latency_ms:.2f} ms" if best.latency_ms is not None else ""
    comment = [
        f"Written by `effspec scale` for a target of {request.shown_target}:",
        f"phi {best.phi:g} (alpha {s.alpha:g}, beta {s.beta:g}, gamma {s.gamma:g}) gives {best.params:,} parameters, "
        f"{best.macs:,} MACs{measured} ({100 * error:+.1f}%).",
    ]
    description = f"{family.loaded.spec.name} scaled to {request.shown_target} (phi {best.phi:g}) by effspec scale."
    text = render_spec(request.spec, out, name, _scaling_section(best, s), comment, description)
    with output.staged_file(out, inputs=inputs, parents=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
        compiled = build(tmp)
        total = compiled.report.total
        if (total.params, total.macs) != (best.params, best.macs):
            raise RuntimeError(
                f"written spec builds to {total.params:,} / {total.macs:,}, not {best.params:,} / {best.macs:,}"
            )
    print(f"wrote {out} ({name}: {total.params:,} parameters, {total.macs:,} MACs, {100 * error:+.1f}% vs target)")


def run(args: argparse.Namespace) -> int:
    from effspec.core.loader import resolve

    request = _request(args)
    # The output is checked before any work: a folder, a FIFO, or one of the inputs (the spec, a base
    # in its extends chain) is refused at once.
    inputs = [Path(source) for source, _ in resolve(request.spec).sources]
    output.check_early(request.out, "-o", inputs)
    family = Family(request.spec, _settings(request))
    outcome = _solve(family, request)
    _check_reachable(outcome, request)
    best = _chosen(family, outcome, request)
    error = _report(family, outcome, best, request)
    _write(family, best, error, request, inputs)
    return 0
