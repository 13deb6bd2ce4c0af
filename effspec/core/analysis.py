"""Analysis: parameters, MACs and activation memory per node, per stage and in total.

MACs count Conv2d and Linear multiply-accumulates only (output elements x kernel area x in/groups),
as docs/reference.md does. Activation memory is the float32 bytes of every conv, BN and linear output for
one image at the nominal resolution: what a training step keeps for backward, before activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from effspec.core import ir

BYTES_PER_ELEMENT = 4


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int
    activation_bytes: int

    @staticmethod
    def of(layers: tuple[ir.Layer, ...]) -> Cost:
        return Cost(
            params=sum(layer.params for layer in layers),
            macs=sum(layer.macs for layer in layers),
            activation_bytes=sum(layer.output.elements for layer in layers) * BYTES_PER_ELEMENT,
        )


@dataclass(frozen=True)
class StageReport:
    """One row of the scaled stage table (like the paper's Table 1)."""

    name: str  # "stem", "blocks.0".."blocks.N-1" (the canonical stage names), "head", "classifier"
    block: str  # the block kind of a stage ("mbconv", "fused_mbconv"), or what the stem / head run
    repeats: int
    kernel: tuple[int, ...]  # several for a mixed depthwise conv
    stride: int
    expansion: float
    in_channels: int
    out_channels: int
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    se_channels: int
    cost: Cost
    variants: dict[str, str] = field(default_factory=dict)  # per-block overrides: block_variants()


@dataclass(frozen=True)
class Report:
    model: ir.Model
    rows: tuple[StageReport, ...]
    total: Cost
    buffers: int  # BN moving mean/variance elements


def _runs(values: list[str]) -> str:
    """Per-block values, compactly: equal neighbours as ``value*count`` ("6,3*3": 6 then three 3s)."""
    runs: list[list[Any]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return ",".join(value if count == 1 else f"{value}*{count}" for value, count in runs)


def block_variants(stage: ir.Stage) -> dict[str, str]:
    """What differs between the blocks of a stage (per-block overrides): field -> the per-block values
    in ``_runs`` form ("expansion": "6,3"); empty when every block is built like the first. Kernels
    print as "3.5.7" (a mixed depthwise conv); groups as "expand/project"."""
    facts: dict[str, list[str]] = {"kernel": [], "expansion": [], "groups": []}
    for block in stage.blocks:
        facts["kernel"].append(".".join(map(str, block.kernels)))
        facts["expansion"].append(f"{block.expansion:g}")
        expand = block.expand.conv.groups if block.expand is not None else 1
        project = block.project.conv.groups if block.project is not None else 1
        facts["groups"].append(f"{expand}/{project}")
    return {name: _runs(values) for name, values in facts.items() if len(set(values)) > 1}


def _head_row(
    name: str, kind: str, layer: ir.Layer, input_size: tuple[int, int], output_size: tuple[int, int], cost: Cost
) -> StageReport:
    """A row of the head: one layer, 1x1, stride 1, no expansion and no squeeze-excitation."""
    return StageReport(
        name, kind, 1, (1,), 1, 1, layer.in_channels, layer.out_channels, input_size, output_size, 0, cost
    )


def analyze(model: ir.Model) -> Report:
    stem = model.stem
    rows = [
        StageReport(
            "stem",
            "conv-bn-act",
            1,
            (stem.conv.kernel,),
            stem.conv.stride,
            1,
            stem.conv.in_channels,
            stem.conv.out_channels,
            (model.input.height, model.input.width),
            (stem.bn.output.height, stem.bn.output.width),
            0,
            Cost.of(stem.layers),
        )
    ]
    for stage in model.stages:
        first = stage.blocks[0]
        layers = tuple(layer for block in stage.blocks for layer in block.layers)
        rows.append(
            StageReport(
                f"blocks.{stage.index}",
                stage.kind,
                len(stage.blocks),
                first.kernels,
                first.stride,
                first.expansion,
                first.in_channels,
                first.out_channels,
                (first.input.height, first.input.width),
                (stage.output.height, stage.output.width),
                first.se_channels,
                Cost.of(layers),
                block_variants(stage),
            )
        )
    head = model.head
    last = model.stages[-1].output
    size = (last.height, last.width)
    if head.conv is not None:
        conv = head.conv.conv
        rows.append(_head_row("head", "conv-bn-act", conv, size, size, Cost.of(head.conv.layers)))
    if head.pooled_conv is not None:
        pooled = head.pooled_conv.conv
        rows.append(_head_row("pooled_conv", "pool-conv-act", pooled, size, (1, 1), Cost.of((pooled,))))
    classifier = head.classifier
    pooled_input = size if head.pooled_conv is None else (1, 1)
    kind = "pool-dropout-fc" if head.pooled_conv is None else "dropout-fc"
    rows.append(_head_row("classifier", kind, classifier, pooled_input, (1, 1), Cost.of((classifier,))))
    total = Cost.of(model.layers)
    return Report(model, tuple(rows), total, sum(layer.buffers for layer in model.layers))
