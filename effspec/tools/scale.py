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
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from effspec.support import output
from effspec.support.errors import UsageError

#: Default coefficients when the base spec has no compound scaling (EfficientNet's grid-search result).
DEFAULT_COEFFICIENTS = (1.2, 1.1, 1.15)
#: The largest phi considered (B0 at phi 12: 1200 px, ~0.9 TMACs): beyond that a target is "absurd".
PHI_MAX = 12.0
#: How close the chosen model must be to a reachable target.
TOLERANCE = 0.05
#: Bisection stops when phi is known to this precision.
PHI_EPS = 1e-7


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
        self._models: dict[tuple[int, int, int], object] = {}

    def with_settings(self, settings: Settings) -> Family:
        """The same loaded base with other coefficients (no second load)."""
        other = copy.copy(self)
        other.settings, other._memo = settings, {}
        return other

    def _build(self, scaling: object) -> tuple[object, object]:
        from effspec.core.analysis import analyze
        from effspec.core.lower import lower
        from effspec.core.scaling import resolve_multipliers
        from effspec.core.verify import verify

        spec = self.loaded.spec.model_copy(update={"scaling": scaling})
        loaded = dataclasses.replace(self.loaded, spec=spec)
        model = verify(lower(loaded, resolve_multipliers(spec)), loaded)
        return model, analyze(model)

    def compound(self, phi: float) -> object:
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

    def _candidate(self, phi: float, model: object, report: object) -> Candidate:
        candidate = Candidate(
            phi=phi,
            width=model.width,  # type: ignore[attr-defined]
            depth=model.depth,  # type: ignore[attr-defined]
            resolution=model.resolution,  # type: ignore[attr-defined]
            params=report.total.params,  # type: ignore[attr-defined]
            macs=report.total.macs,  # type: ignore[attr-defined]
            blocks=len(model.blocks),  # type: ignore[attr-defined]
        )
        self._models.setdefault(candidate.key, model)
        return candidate

    def model_of(self, candidate: Candidate) -> object:
        return self._models[candidate.key]


# ---------------------------------------------------------------------------------------------
# The search over phi


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


def figure(candidate: Candidate, metric: str) -> float:
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


def solve_analytic(family: Family, metric: str, target: float) -> Outcome:
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
    hi = None
    phi = 0.0
    while phi < PHI_MAX:
        phi = min(PHI_MAX, phi + 1.0)
        point = timed(phi)
        grid.append(phi)
        if point.latency_ms >= target_ms:  # type: ignore[operator]
            hi = point
            break
        lo = point
    if hi is None:  # the largest model is still faster than the target
        return Outcome(lo, [floor, lo], False, floor, lo)
    for _ in range(6):  # 1/64 of a phi unit: far below the measurement noise
        if hi.phi - lo.phi < 1 / 64 or family.at(lo.phi).key == family.at(hi.phi).key:
            break
        mid = timed((lo.phi + hi.phi) / 2)
        if mid.latency_ms >= target_ms:  # type: ignore[operator]
            hi = mid
        else:
            lo = mid
    measured = sorted({c.key: c for c in (floor, lo, hi)}.values(), key=lambda c: c.phi)
    best = min((lo, hi), key=lambda c: abs(relative_error(c.latency_ms, target_ms)))  # type: ignore[arg-type]
    start, end = step_interval(family, best.phi)
    best = dataclasses.replace(best, phi=roundest(start, end))
    table = sorted({c.key: c for c in (*measured, best)}.values(), key=lambda c: c.macs)
    table = [best if c.key == best.key else c for c in table]
    reachable = floor.latency_ms <= target_ms  # type: ignore[operator]
    return Outcome(best, table, reachable, floor, hi)


def explicit_refine(family: Family, best: Candidate, metric: str, target: float | None) -> Candidate:
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


# ---------------------------------------------------------------------------------------------
# Latency of the generated model


def measure_latency(model: object, backend: str, device: str, batch: int, repeats: int = 20) -> float:
    """Median milliseconds of one forward pass of the generated ``backend`` model (after warm-up)."""
    import sys
    import tempfile
    import time

    from effspec.emit.modules import import_file
    from effspec.emit.pipeline import emit

    files = emit(model, [backend])  # type: ignore[arg-type]
    (rel, texts), *_ = files.items()
    with tempfile.TemporaryDirectory(prefix="effspec-latency-") as tmp:
        path = Path(tmp) / "model.py"
        path.write_text(texts["model.py"], encoding="utf-8")
        module = import_file(path, f"_effspec_latency_{abs(hash(rel))}_{len(sys.modules)}")
        res = model.resolution  # type: ignore[attr-defined]
        channels = model.input.channels  # type: ignore[attr-defined]
        times = []
        if backend == "torch":
            import torch

            if device == "cuda" and not torch.cuda.is_available():
                raise UsageError("--device cuda: torch sees no CUDA device")
            net = module.build_model().eval().to(device)
            x = torch.randn(batch, channels, res, res, device=device)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            with torch.inference_mode():
                for i in range(repeats + 5):
                    sync()
                    t0 = time.perf_counter()
                    net(x)
                    sync()
                    if i >= 5:
                        times.append(time.perf_counter() - t0)
        else:
            import keras
            import numpy as np

            if device == "cuda" and not _keras_sees_a_gpu():
                raise UsageError(f"--device cuda: Keras ({keras.backend.backend()} backend) sees no GPU")
            with keras.device("gpu:0" if device == "cuda" else "cpu:0"):
                net = module.build_model(input_shape=(res, res, channels))
                x = np.random.default_rng(0).standard_normal((batch, res, res, channels)).astype("float32")
                for i in range(repeats + 5):  # predict_on_batch: the compiled inference step, not eager calls
                    t0 = time.perf_counter()
                    net.predict_on_batch(x)
                    if i >= 5:
                        times.append(time.perf_counter() - t0)
        sys.modules.pop(module.__name__, None)
    times.sort()
    return 1000 * times[len(times) // 2]


def _keras_sees_a_gpu() -> bool:
    import keras

    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if name == "torch":
        import torch

        return torch.cuda.is_available()
    if name == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    return False


# ---------------------------------------------------------------------------------------------
# The command


def _fmt_count(value: float) -> str:
    if abs(value) >= 1e15:
        return f"{value:.3g}"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def _table(rows: list[Candidate], best: Candidate, metric: str, target: float) -> str:
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
    base: Path, out: Path, name: str, scaling: dict[str, object], comment: list[str], description: str
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


def run(args: object) -> int:  # noqa: C901 - one linear command
    import sys

    a = args  # argparse.Namespace
    spec_path = Path(a.spec)  # type: ignore[attr-defined]
    if not spec_path.is_file():
        raise UsageError(f"spec not found: {spec_path}")
    if a.target_macs is not None:  # type: ignore[attr-defined]
        metric, target = "macs", _parse_target(a.target_macs)  # type: ignore[attr-defined]
    elif a.target_params is not None:  # type: ignore[attr-defined]
        metric, target = "params", _parse_target(a.target_params)  # type: ignore[attr-defined]
    else:
        metric, target = "latency", _parse_target(a.target_latency)  # type: ignore[attr-defined]
        if a.backend is None:  # type: ignore[attr-defined]
            raise UsageError("--target-latency needs --backend torch or --backend keras")
    if metric != "latency" and (a.backend or a.device or a.batch):  # type: ignore[attr-defined]
        raise UsageError("--backend, --device and --batch go with --target-latency")

    from effspec.core.loader import load_spec, resolve
    from effspec.core.schema import CompoundScaling, ExplicitScaling

    # The output is checked before any work: a folder, a FIFO, or one of the inputs (the spec, a base
    # in its extends chain) is refused at once.
    out = Path(a.output)  # type: ignore[attr-defined]
    inputs = [Path(source) for source, _ in resolve(spec_path).sources]
    output.check_early(out, "-o", inputs)
    base_spec = load_spec(spec_path).spec
    base_scaling = base_spec.scaling
    alpha, beta, gamma = DEFAULT_COEFFICIENTS
    divisor = 8
    if isinstance(base_scaling, CompoundScaling):
        alpha, beta, gamma = base_scaling.alpha, base_scaling.beta, base_scaling.gamma
        divisor = base_scaling.resolution_divisor
        if a.explicit:  # type: ignore[attr-defined]
            raise UsageError(
                f"{spec_path} uses compound scaling, and `extends` merges mappings: an explicit scaling "
                "cannot replace it; drop --explicit"
            )
    alpha = a.alpha if a.alpha is not None else alpha  # type: ignore[attr-defined]
    beta = a.beta if a.beta is not None else beta  # type: ignore[attr-defined]
    gamma = a.gamma if a.gamma is not None else gamma  # type: ignore[attr-defined]
    divisor = a.resolution_divisor if a.resolution_divisor is not None else divisor  # type: ignore[attr-defined]
    for label, value in (("--alpha", alpha), ("--beta", beta), ("--gamma", gamma)):
        if not (math.isfinite(value) and 1 <= value <= 4):
            raise UsageError(f"{label}: expected a coefficient in [1, 4], found {value:g}")
    if divisor < 1:
        raise UsageError(f"--resolution-divisor: expected a positive integer, found {divisor}")
    if alpha == beta == gamma == 1:
        raise UsageError("--alpha, --beta and --gamma are all 1: phi would change nothing")
    _check_against_schema(alpha, beta, gamma, divisor)
    # An explicit base cannot take a compound section (extends merges mappings): write explicit.
    explicit = bool(a.explicit) or isinstance(base_scaling, ExplicitScaling)  # type: ignore[attr-defined]
    family = Family(spec_path, Settings(alpha, beta, gamma, divisor, explicit))

    if metric == "latency":
        backend, device = a.backend, a.device or "cpu"  # type: ignore[attr-defined]
        batch = a.batch or 1  # type: ignore[attr-defined]
        print(
            f"measuring the generated {backend} model on {device}, batch {batch}: 5 warm-up runs, median of 20",
            file=sys.stderr,
        )

        def measure(c: Candidate) -> float:
            ms = measure_latency(family.model_of(c), backend, device, batch)
            print(f"  phi {c.phi:g}: resolution {c.resolution}, {c.macs / 1e9:.2f} GMACs, {ms:.2f} ms", file=sys.stderr)
            return ms

        outcome = solve_latency(family, target, measure)
    else:
        outcome = solve_analytic(family, metric, target)

    best = outcome.best
    unit = {"macs": "MACs", "params": "parameters", "latency": "ms"}[metric]
    shown_target = f"{target:g} ms" if metric == "latency" else f"{_fmt_count(target)} {unit} ({target:,.0f})"
    if not outcome.reachable and abs(relative_error(figure(best, metric), target)) > TOLERANCE:
        lo = figure(outcome.floor, metric)
        nearest = outcome.floor if target < lo else outcome.ceiling
        where = "below the base's floor" if target < lo else f"beyond phi {PHI_MAX:g}"
        value = figure(nearest, metric)
        shown = f"{value:.2f} ms" if metric == "latency" else f"{value:,.0f} {unit}"
        raise UsageError(
            f"target {shown_target} is unreachable ({where}): the nearest reachable model has {shown} "
            f"(phi {nearest.phi:g}, resolution {nearest.resolution})"
        )

    if explicit:
        refined = explicit_refine(family, best, metric, target if metric == "macs" else None)
        if metric == "latency":
            refined = dataclasses.replace(refined, latency_ms=best.latency_ms)
        best = refined
    print(f"{family.loaded.spec.name}: target {shown_target}; alpha {alpha:g}, beta {beta:g}, gamma {gamma:g}")
    if metric == "latency":
        print(f"latency: generated {a.backend} model, {a.device or 'cpu'}, batch {a.batch or 1}, median of 20")  # type: ignore[attr-defined]
    print(_table([best if c.key == outcome.best.key else c for c in outcome.table], best, metric, target))
    error = relative_error(figure(best, metric), target)
    if abs(error) > TOLERANCE:
        print(
            f"warning: rounding allows no model within {TOLERANCE:.0%} of the target; the closest is "
            f"{100 * error:+.1f}% off",
            file=sys.stderr,
        )

    name = _name_for(out, family.loaded.spec.name, a.name)  # type: ignore[attr-defined]
    if explicit:
        scaling: dict[str, object] = {
            "method": "explicit",
            "width": best.width,
            "depth": best.depth,
            "resolution": best.resolution,
        }
    else:
        scaling = {
            "method": "compound",
            "phi": best.phi,
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "resolution_divisor": divisor,
        }
    measured = f", {best.latency_ms:.2f} ms" if best.latency_ms is not None else ""
    comment = [
        f"Written by `effspec scale` for a target of {shown_target}:",
        f"phi {best.phi:g} (alpha {alpha:g}, beta {beta:g}, gamma {gamma:g}) gives {best.params:,} parameters, "
        f"{best.macs:,} MACs{measured} ({100 * error:+.1f}%).",
    ]
    description = f"{family.loaded.spec.name} scaled to {shown_target} (phi {best.phi:g}) by effspec scale."
    text = render_spec(spec_path, out, name, scaling, comment, description)
    from effspec.emit.pipeline import build

    with output.staged_file(out, inputs=inputs, parents=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
        compiled = build(tmp)  # the file as written must build to the figures shown
        total = compiled.report.total
        if (total.params, total.macs) != (best.params, best.macs):
            raise RuntimeError(
                f"written spec builds to {total.params:,} / {total.macs:,}, not {best.params:,} / {best.macs:,}"
            )
    print(f"wrote {out} ({name}: {total.params:,} parameters, {total.macs:,} MACs, {100 * error:+.1f}% vs target)")
    return 0
