"""`effspec plot SPEC... -o FILE`: a family's parameters and MACs against phi, like the papers' figures.

Each spec is a labelled point at its phi: a compound spec's own phi, an unscaled spec at 0, and an
explicit spec (the official B1..B7) at the phi whose alpha/beta/gamma^phi best fit its depth, width
and resolution multipliers (least squares on the logarithms). Specs with the same architecture form
a family: its points are joined, and a dashed line shows the compound rule's rounded models for
every phi, so hand-picked coefficients can be compared with the rule. With ``--accuracy CSV`` a third
panel plots top-1 against MACs (the paper's Figure 5). Figures come from effspec's own analysis.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from effspec.support.errors import UsageError
from effspec.tools.diagram import FORMATS, import_matplotlib, save_figure
from effspec.tools.scale import DEFAULT_COEFFICIENTS

#: One colour a family, in order; tab20 takes over past eight families.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
FAMILY_EXCLUDE = {"name", "description", "extends", "scaling", "training"}


@dataclass(frozen=True)
class Point:
    name: str
    path: Path
    phi: float
    params: int
    macs: int
    family: tuple[object, ...]
    coefficients: tuple[float, float, float]
    resolution_divisor: int
    top1: float | None = None


def fitted_phi(width: float, depth: float, resolution: int, base: int, coefficients: tuple[float, ...]) -> float:
    """The phi whose (alpha^phi, beta^phi, gamma^phi) best fit (depth, width, resolution / base)."""
    alpha, beta, gamma = coefficients
    logs = (math.log(alpha), math.log(beta), math.log(gamma))
    observed = (math.log(depth), math.log(width), math.log(resolution / base))
    denominator = sum(v * v for v in logs)
    return sum(a * b for a, b in zip(logs, observed, strict=True)) / denominator  # < 0: scaled down (TinyNets)


def load_point(path: Path) -> Point:
    from effspec.core.loader import load_spec
    from effspec.core.schema import CompoundScaling
    from effspec.emit.pipeline import build

    compiled = build(path)
    spec = load_spec(path).spec
    model = compiled.model
    scaling = spec.scaling
    if isinstance(scaling, CompoundScaling):
        coefficients = (scaling.alpha, scaling.beta, scaling.gamma)
        phi, divisor = scaling.phi, scaling.resolution_divisor
    else:
        coefficients, divisor = DEFAULT_COEFFICIENTS, 8
        phi = fitted_phi(model.width, model.depth, model.resolution, spec.input.resolution, coefficients)
    # One family: everything but the scaling (and the names and the training recipe) is the same.
    family = (json.dumps(spec.model_dump(mode="json", exclude=FAMILY_EXCLUDE), sort_keys=True),)
    return Point(
        spec.name,
        path,
        phi,
        compiled.report.total.params,
        compiled.report.total.macs,
        family,
        coefficients,
        divisor,
    )


MAX_ACCURACY_BYTES = 16 << 20


def _read_bounded(path: Path) -> bytes:
    """A regular file of at most MAX_ACCURACY_BYTES, read once, never blocking on a FIFO."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"--accuracy {path}: cannot read it: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ACCURACY_BYTES:
            raise UsageError(f"--accuracy {path}: expected a regular file of at most {MAX_ACCURACY_BYTES:,} bytes")
        return handle.read(MAX_ACCURACY_BYTES + 1)


def read_accuracy(path: Path, points: list[Point]) -> list[Point]:
    """Attach top-1 from a CSV with a name/spec column and a top1/val_top1/accuracy column."""
    import dataclasses

    raw = _read_bounded(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"--accuracy {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise UsageError(f"--accuracy {path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise UsageError(f"--accuracy {path}: no rows")
    key_col = next((c for c in ("name", "spec") if c in rows[0]), None)
    acc_col = next((c for c in ("top1", "val_top1", "accuracy") if c in rows[0]), None)
    if key_col is None or acc_col is None:
        raise UsageError(
            f"--accuracy {path}: expected a 'name' (or 'spec') column and a 'top1' (or 'val_top1') column, "
            f"found {', '.join(rows[0])}"
        )
    table: dict[str, float] = {}
    for number, row in enumerate(rows, start=2):
        try:
            value = float(row[acc_col])
        except (TypeError, ValueError):
            continue  # a failed trial or an empty cell
        if not math.isfinite(value):
            raise UsageError(
                f"--accuracy {path}: row {number}: {acc_col} is {row[acc_col]!r}, expected a finite number"
            )
        key = row[key_col] or ""
        table[key] = value
        table[Path(key).stem] = value
    out = []
    for point in points:
        top1 = table.get(point.name, table.get(point.path.stem))
        out.append(dataclasses.replace(point, top1=top1))
    if all(p.top1 is None for p in out):
        raise UsageError(f"--accuracy {path}: no row names any of the plotted specs")
    return out


def compound_curve(point: Point, phi_max: float) -> tuple[list[float], list[int], list[int]]:
    """The compound rule's rounded models for phi in [0, phi_max] (the family of ``point``'s architecture)."""
    from effspec.tools.scale import Family, Settings

    family = Family(point.path, Settings(*point.coefficients, point.resolution_divisor, False))
    phis = [phi_max * i / 120 for i in range(121)]
    models = [family.at(phi) for phi in phis]
    return phis, [m.params for m in models], [m.macs for m in models]


def _short(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) and len(name) > len(prefix) else name


def draw(points: list[Point], path: Path, inputs: list[Path] | tuple[Path, ...] = ()) -> Path:
    import os

    figure_class = import_matplotlib("effspec plot")
    with_accuracy = any(p.top1 is not None for p in points)
    panels = 3 if with_accuracy else 2
    family_count = len({p.family for p in points})
    legend_rows = math.ceil((family_count + 1) / 3)
    fig = figure_class(figsize=(5.2 * panels, 4.4 + 0.22 * legend_rows), layout="constrained")
    axes = fig.subplots(1, panels)
    families: dict[tuple[object, ...], list[Point]] = {}
    for point in points:
        families.setdefault(point.family, []).append(point)
    offsets = [((-6, 6), "right"), ((6, -11), "left"), ((6, 5), "left"), ((-6, -11), "right")]
    colors: list[str | tuple[float, float, float, float]] = list(PALETTE)
    if family_count > len(colors):
        from matplotlib import colormaps

        colors = [colormaps["tab20"](i % 20) for i in range(family_count)]
    for index, members in enumerate(families.values()):
        color = colors[index % len(colors)]
        offset, align = offsets[index % len(offsets)]
        members.sort(key=lambda p: p.phi)
        prefix = os.path.commonprefix([p.name for p in members]) if len(members) > 1 else ""
        prefix = prefix[: prefix.rfind("-") + 1] if "-" in prefix else ""
        phi_max = max(1.0, max(p.phi for p in members) * 1.08)
        alpha, beta, gamma = members[0].coefficients
        curve_phi, curve_params, curve_macs = compound_curve(members[0], phi_max)
        family_label = f"{members[0].name}" if len(members) == 1 else f"{members[0].name} .. {members[-1].name}"
        rule = f"compound rule, alpha {alpha:g} beta {beta:g} gamma {gamma:g}" if index == 0 else None
        for ax, values, curve in (
            (axes[0], [p.params / 1e6 for p in members], [v / 1e6 for v in curve_params]),
            (axes[1], [p.macs / 1e9 for p in members], [v / 1e9 for v in curve_macs]),
        ):
            ax.plot(curve_phi, curve, "--", color=color, linewidth=1, alpha=0.6, label=rule)
            ax.plot([p.phi for p in members], values, "o-", color=color, markersize=6, label=family_label)
            for p, v in zip(members, values, strict=True):
                ax.annotate(
                    _short(p.name, prefix),
                    (p.phi, v),
                    textcoords="offset points",
                    xytext=offset,
                    ha=align,
                    fontsize=8,
                    color=color,
                    annotation_clip=True,
                    clip_on=True,
                )
        if with_accuracy:
            scored = [p for p in members if p.top1 is not None]
            if scored:
                axes[2].plot(
                    [p.macs / 1e9 for p in scored], [p.top1 for p in scored], "o-", color=color, label=family_label
                )
                for p in scored:
                    axes[2].annotate(
                        _short(p.name, prefix),
                        (p.macs / 1e9, p.top1),
                        textcoords="offset points",
                        xytext=(5, -10),
                        fontsize=8,
                        color=color,
                    )
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    # minor ticks: label 2, 3 and 5 of each decade only
    sparse = FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and f"{v:.0e}"[0] in "235" else "")
    for ax, title, heading in ((axes[0], "parameters (M)", "Parameters"), (axes[1], "MACs (G)", "MACs")):
        ax.set_yscale("log")
        ax.margins(x=0.08)  # room for the labels of the first and last points
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(sparse)
        ax.set_xlabel("phi  (explicit specs: least-squares fit of their multipliers)", fontsize=8)
        ax.set_ylabel(title)
        ax.set_title(f"{heading} vs phi (dashed: the compound rule's rounded models)", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
    if with_accuracy:
        axes[2].set_xscale("log")
        axes[2].xaxis.set_major_formatter(plain)
        axes[2].set_xlabel("MACs (G)")
        axes[2].set_ylabel("top-1 (%)")
        axes[2].set_title("Accuracy vs MACs", fontsize=11)
        axes[2].grid(True, which="both", alpha=0.25)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return save_figure(fig, path, "-o", inputs)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"-o {out}: expected a file name ending in {', '.join(FORMATS)}")
    paths = [Path(p) for p in args.specs]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"spec not found: {p}")
    from effspec.emit.pipeline import spec_inputs
    from effspec.support.output import check_early

    inputs = [source for p in paths for source in spec_inputs(p)]
    if args.accuracy:
        inputs.append(Path(args.accuracy))
    check_early(out, "-o", inputs)  # a folder, a FIFO or an input is refused before any work
    import_matplotlib("effspec plot")  # fail before any work when it is missing
    points = [load_point(p) for p in paths]
    if args.accuracy:
        points = read_accuracy(Path(args.accuracy), points)
    draw(points, out, inputs)
    for point in sorted(points, key=lambda q: (q.family != points[0].family, q.phi)):
        top1 = f", top-1 {point.top1:.2f}%" if point.top1 is not None else ""
        print(f"{point.name}: phi {point.phi:.2f}, {point.params:,} parameters, {point.macs:,} MACs{top1}")
    print(f"wrote {out}")
    return 0
