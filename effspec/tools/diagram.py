"""`effspec info SPEC --diagram FILE`: the architecture drawn as the papers draw it.

One row per part, top to bottom: input, stem, one box per stage, head, classifier. A box's width is
proportional to its output channels and its height to its output resolution (at least one text
line tall, so every label stays readable); the label beside it names the block kind x repeats,
kernel, stride, expansion, squeeze-excite width and the output shape. matplotlib is imported only
here, only when a diagram is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from effspec.core.analysis import Report, block_variants
from effspec.support.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = (".svg", ".png", ".pdf")
KIND_NAMES = {"mbconv": "MBConv", "fused_mbconv": "Fused-MBConv"}
COLORS = {
    "mbconv": "#9ecae1",
    "fused_mbconv": "#fdae6b",
    "conv-bn-act": "#d9d9d9",
    "pool-dropout-fc": "#c7e9c0",
    "input": "#ffffff",
}


def import_matplotlib(what: str) -> type[Figure]:
    """matplotlib's Figure class, or a one-line usage error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)  # files only, never a window
        matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, editable, small
        from matplotlib.figure import Figure
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "matplotlib":
            raise
        raise UsageError(f"{what} needs matplotlib: pip install 'effspec[plot]'") from None
    return Figure


def _check_suffix(path: Path, flag: str) -> None:
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"{flag} {path}: expected a file name ending in {', '.join(FORMATS)}")


def _rows(report: Report) -> list[dict[str, object]]:
    """The drawn rows (title, detail, channels, resolution, colour key), read from the IR."""
    model = report.model
    rows: list[dict[str, object]] = [
        {
            "title": "input",
            "detail": f"{model.input.height}x{model.input.width}x{model.input.channels}",
            "channels": model.input.channels,
            "resolution": model.input.height,
            "kind": "input",
        }
    ]

    def shape(s: object) -> str:
        return f"{s.height}x{s.width}x{s.channels}"  # type: ignore[attr-defined]

    conv = model.stem.conv
    rows.append(
        {
            "title": f"stem  conv{conv.kernel}x{conv.kernel}",
            "detail": f"stride {conv.stride}  ->  {shape(model.stem.bn.output)}",
            "channels": conv.out_channels,
            "resolution": model.stem.bn.output.height,
            "kind": "conv-bn-act",
        }
    )
    for stage in model.stages:
        first, out = stage.blocks[0], stage.output
        se = f", SE {first.se_channels}" if first.se_channels else ""
        kernels = tuple(getattr(first, "kernels", (first.kernel,)))
        kernel = f"k{kernels[0]}x{kernels[0]}" if len(kernels) == 1 else "k" + "/".join(map(str, kernels)) + " mixed"
        variants = block_variants(stage)  # per-block overrides, e.g. expand "6,3"
        if "kernel" in variants:
            kernel = "k" + variants["kernel"]  # mixed kernels 3.5.7, as in the info table
        expand = variants.get("expansion", f"{first.expansion:g}")
        groups = f", groups {variants['groups']}" if "groups" in variants else ""
        rows.append(
            {
                "title": f"stage {stage.index + 1}  {KIND_NAMES.get(stage.kind, stage.kind)}{first.expansion:g} "
                f"x{len(stage.blocks)}  ->  {shape(out)}",
                "detail": f"{kernel}, stride {first.stride}, expand {expand}{groups}{se}",
                "channels": out.channels,
                "resolution": out.height,
                "kind": stage.kind,
            }
        )
    head = model.head.conv
    rows.append(
        {
            "title": "head  conv1x1",
            "detail": f"->  {shape(head.bn.output)}",
            "channels": head.conv.out_channels,
            "resolution": head.bn.output.height,
            "kind": "conv-bn-act",
        }
    )
    rows.append(
        {
            "title": "pool, dropout, FC",
            "detail": f"dropout {model.head.dropout:g}  ->  {model.head.num_classes} classes",
            "channels": model.head.num_classes,
            "resolution": 1,
            "kind": "pool-dropout-fc",
        }
    )
    return rows


def save_figure(fig: object, path: Path, flag: str = "-o", inputs: Iterable[Path | str] = ()) -> Path:
    """``fig.savefig`` through effspec.support.output: a unique temporary file, then a rename (never through
    a link, never into a FIFO or a device, never over an input; a full disk is exit 2 with the
    previous figure intact)."""
    from effspec.support.output import staged_file

    with staged_file(path, flag=flag, inputs=inputs, parents=True) as temp:
        fig.savefig(temp, dpi=110, format=path.suffix.lower().lstrip("."))  # type: ignore[attr-defined]
    return path


def draw_diagram(report: Report, path: Path, inputs: Iterable[Path | str] = ()) -> Path:
    from effspec.support.output import check_early

    _check_suffix(path, "--diagram")
    check_early(path, "--diagram", inputs)  # before matplotlib loads
    figure_class = import_matplotlib("--diagram")
    from matplotlib.patches import Patch, Rectangle

    model = report.model
    rows = _rows(report)
    max_channels = max(int(r["channels"]) for r in rows)  # type: ignore[call-overload]
    box_width = 3.0  # inches for the widest part
    max_height = 1.8  # inches for the input resolution
    line = 0.42  # the least height of a row: two lines of text
    gap = 0.12
    heights = [max(line, max_height * int(r["resolution"]) / model.input.height) for r in rows]  # type: ignore[call-overload]
    label_x = box_width / 2 + 0.25
    total_h = sum(heights) + gap * (len(rows) - 1)
    fig_w, fig_h = box_width + 5.6, total_h + 1.4
    fig = figure_class(figsize=(fig_w, fig_h))  # type: ignore[operator]
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-box_width / 2 - 1.1, fig_w - box_width / 2 - 1.1)
    ax.set_ylim(-total_h - 0.55, 0.85)
    ax.axis("off")
    total = report.total
    ax.text(
        -box_width / 2 - 1.0,
        0.55,
        f"{model.name}: width {model.width:.3g}, depth {model.depth:.3g}, resolution {model.resolution}",
        fontsize=12,
        fontweight="bold",
        va="center",
    )
    ax.text(
        -box_width / 2 - 1.0,
        0.22,
        f"{len(model.blocks)} blocks, {total.params / 1e6:.2f} M parameters, {total.macs / 1e9:.2f} G MACs   "
        "(box width ~ channels, height ~ resolution)",
        fontsize=9,
        color="#444444",
        va="center",
    )
    y = 0.0
    for row, height in zip(rows, heights, strict=True):
        width = max(0.04, box_width * int(row["channels"]) / max_channels)  # type: ignore[call-overload]
        ax.add_patch(
            Rectangle(
                (-width / 2, y - height),
                width,
                height,
                facecolor=COLORS.get(str(row["kind"]), "#eeeeee"),
                edgecolor="#333333",
                linewidth=0.8,
            )
        )
        mid = y - height / 2
        ax.text(-box_width / 2 - 0.15, mid, f"{row['resolution']}px", ha="right", va="center", fontsize=8, color="#555")
        ax.text(label_x, mid + 0.09, str(row["title"]), ha="left", va="center", fontsize=9.5, fontweight="bold")
        ax.text(label_x, mid - 0.11, str(row["detail"]), ha="left", va="center", fontsize=8.5, color="#333333")
        y -= height + gap
    kinds = [k for k in ("mbconv", "fused_mbconv") if any(s.kind == k for s in model.stages)]
    handles = [Patch(facecolor=COLORS[k], edgecolor="#333333", label=KIND_NAMES[k]) for k in kinds] + [
        Patch(facecolor=COLORS["conv-bn-act"], edgecolor="#333333", label="conv-BN-act")
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=8, frameon=False, ncol=len(handles))
    return save_figure(fig, path, "--diagram", inputs)
