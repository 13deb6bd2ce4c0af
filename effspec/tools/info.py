"""Render an analysis report: the scaled stage table (like the paper's Table 1) or JSON."""

from __future__ import annotations

from typing import Any

from effspec.core import ir
from effspec.core.analysis import Report


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _aligned(rows: list[tuple[str, ...]], left: int) -> list[str]:
    """A text table: the first ``left`` columns left-aligned, the rest right-aligned, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def info_table(report: Report) -> str:
    model = report.model
    header = (
        "stage",
        "block",
        "resolution",
        "channels",
        "repeats",
        "kernel",
        "stride",
        "expansion",
        "params",
        "MACs",
        "act. mem",
    )
    rows = [header]
    others = any(set(row.variants) - {"kernel", "expansion"} for row in report.rows)
    for row in report.rows:
        # per-block overrides: every block's value, equal neighbours as value*count ("6,3*3")
        rows.append(
            (
                row.name,
                row.block,
                f"{row.input_size[0]}x{row.input_size[1]}",
                f"{row.in_channels}->{row.out_channels}",
                str(row.repeats),
                row.variants.get("kernel", ".".join(map(str, row.kernel))),
                str(row.stride),
                row.variants.get("expansion", f"{row.expansion:g}"),
                f"{row.cost.params:,}",
                f"{row.cost.macs:,}",
                _mib(row.cost.activation_bytes),
                *(
                    [" ".join(f"{k} {v}" for k, v in row.variants.items() if k not in ("kernel", "expansion")) or "-"]
                    if others
                    else []
                ),
            )
        )
    if others:
        rows[0] = (*header, "per block")
    lines = [
        f"{model.name}: width {model.width:g}, depth {model.depth:g}, resolution {model.resolution}, "
        f"dropout {model.head.dropout:g}, drop-path {model.drop_path_rate:g}, {len(model.blocks)} blocks",
        *_aligned(rows, 2),
    ]
    if any(row.variants for row in report.rows):
        lines.append('per-block overrides: "6,3*2" = 6 for the first block, then 3 for two; groups = expand/project')
    t = report.total
    lines.append(
        f"total: {t.params:,} parameters, {t.macs:,} MACs ({t.macs / 1e9:.2f} G), "
        f"activation memory {_mib(t.activation_bytes)} per image, {report.buffers:,} BN buffer elements"
    )
    return "\n".join(lines)


def info_json(report: Report) -> dict[str, Any]:
    model = report.model
    return {
        "name": model.name,
        "spec": model.spec_path,
        "sha256": model.spec_sha256,
        "width": model.width,
        "depth": model.depth,
        "resolution": model.resolution,
        "dropout": model.head.dropout,
        "drop_path_rate": model.drop_path_rate,
        "blocks": len(model.blocks),
        "params": report.total.params,
        "macs": report.total.macs,
        "activation_bytes": report.total.activation_bytes,
        "buffers": report.buffers,
        "stages": [
            {
                "name": row.name,
                "operator": row.block,
                "repeats": row.repeats,
                "kernel": row.kernel[0] if len(row.kernel) == 1 else list(row.kernel),
                "stride": row.stride,
                "expansion": int(row.expansion) if row.expansion == int(row.expansion) else row.expansion,
                "in_channels": row.in_channels,
                "out_channels": row.out_channels,
                "se_channels": row.se_channels,
                "per_block": row.variants,  # only the fields whose blocks differ, e.g. {"expansion": "6,3"}
                "input_size": list(row.input_size),
                "output_size": list(row.output_size),
                "params": row.cost.params,
                "macs": row.cost.macs,
                "activation_bytes": row.cost.activation_bytes,
            }
            for row in report.rows
        ],
    }


def _levels(model: ir.Model, output_stride: int) -> list[dict[str, Any]]:
    """The backbone's levels at ``output_stride``: what ``build_model(features_only=True)`` returns."""
    plan = model.at_output_stride(output_stride)
    return [
        {
            "index": level.index,
            "name": level.name,
            "module": level.module,
            "channels": level.channels,
            "reduction": reduction,
            # every strided conv rounds up, so the map is ceil(resolution / reduction)
            "size": [ir.same_output_size(model.resolution, reduction)] * 2,
        }
        for level, reduction in zip(model.features, plan.reductions, strict=True)
    ]


def features_table(model: ir.Model, output_stride: int) -> str:
    """The level table of ``effspec info SPEC --features [--output-stride N]``."""
    plan = model.at_output_stride(output_stride)
    header = ("index", "level", "module", "channels", "reduction", f"size at {model.resolution}")
    rows = [header] + [
        (
            str(row["index"]),
            row["name"],
            row["module"],
            str(row["channels"]),
            str(row["reduction"]),
            "x".join(map(str, row["size"])),
        )
        for row in _levels(model, output_stride)
    ]
    title = (
        f"{model.name}: backbone at output stride {output_stride} "
        f"(build_model(features_only=True, output_stride={output_stride})), {len(plan.convs)} convs dilated"
    )
    return "\n".join([title, *_aligned(rows, 3)])


def features_json(model: ir.Model, output_stride: int) -> dict[str, Any]:
    plan = model.at_output_stride(output_stride)
    return {
        "name": model.name,
        "resolution": model.resolution,
        "output_stride": output_stride,
        "features": _levels(model, output_stride),
        "dilated": [
            {"conv": change.conv.name, "stride": change.conv.stride, "dilation": change.conv.dilation}
            for change in plan.convs
        ],
    }
