"""IR -> the ready-to-print values of the torch ``model.py`` template. Templates only print these.

Module attribute paths in the generated code equal the IR's canonical layer names
(``blocks.3.1.depthwise.conv``), so ``state_dict()`` keys are the names of docs/backends.md.
Everything the generated code decides on its own (padding mode per conv, SE width, residuals) is
checked here against the IR, so a disagreement fails at compile time, not in a user's model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from effspec import ir
from effspec.render import py_literal

#: IR activation name -> the torch module the generated ``ACTIVATIONS`` table maps it to.
ACTIVATIONS = {
    "swish": "nn.SiLU",
    "silu": "nn.SiLU",
    "relu": "nn.ReLU",
    "relu6": "nn.ReLU6",
    "gelu": "nn.GELU",
    "hard_swish": "nn.Hardswish",
}

#: Block kind -> the generated class that implements it.
BLOCK_CLASSES = {"mbconv": "MBConv", "fused_mbconv": "FusedMBConv"}

#: Block kind -> the macro in ``templates/_blocks.py.j2`` that prints its class.
BLOCK_MACROS = {"mbconv": "mbconv_class", "fused_mbconv": "fused_mbconv_class"}

#: Longest literal of one piece of the split DESCRIPTION constant, and of an unsplit one (ruff
#: format joins implicitly concatenated strings whenever they fit its 88 columns, indented by 4).
DESCRIPTION_WIDTH = 80
DESCRIPTION_UNSPLIT = 84


@dataclass(frozen=True)
class BlockRow:
    """One row of the generated ``STAGES`` table (a ``BlockConfig``)."""

    name: str  # canonical prefix, e.g. "blocks.3.1" (printed as a comment)
    kind: str
    in_channels: int
    out_channels: int
    expansion: int
    kernel: int
    stride: int
    se_channels: int
    activation: str
    drop_path_rate: float


@dataclass(frozen=True)
class StageRow:
    index: int
    kind: str
    blocks: tuple[BlockRow, ...]
    output: ir.Shape


@dataclass(frozen=True)
class FeatureRow:
    """One entry of ``FEATURE_INFO``: what ``forward_stages`` returns at that position."""

    module: str
    channels: int
    reduction: int


def dynamic_padding(padding: str, kernel: int, stride: int) -> bool:
    """The rule the generated ``ConvBnAct`` applies: pad per call only for TF-SAME strided k>1 convs."""
    return padding == "same" and stride > 1 and kernel > 1


def torch_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"the torch backend has no activation {name!r}. Known activations are: {known}")
    return name


def description_lines(text: str, width: int = DESCRIPTION_WIDTH) -> tuple[str, ...]:
    """Free text as pieces whose literals fit a line; joined they give ``text`` back exactly."""
    if len(py_literal(text)) <= DESCRIPTION_UNSPLIT:
        return (text,)
    tokens = [piece for word in re.split(r"(\s+)", text) for piece in _fit(word, width)]
    pieces: list[str] = []
    current = ""
    for token in tokens:
        if current and len(py_literal(current + token)) > width:
            pieces.append(current)
            current = ""
        current += token
    pieces.append(current)
    return tuple(pieces)


def _fit(word: str, width: int) -> list[str]:
    """A token whose literal is too long for a line, as single characters; otherwise itself."""
    return list(word) if len(py_literal(word)) > width else [word]


def _check_convs(model: ir.Model) -> None:
    """Every conv pads the way the generated ConvBnAct will, and with the model-wide mode."""
    for layer in model.layers:
        if layer.kind not in ("conv", "depthwise_conv") or layer.name.endswith((".se.reduce", ".se.expand")):
            continue
        if layer.padding != model.padding:
            raise ValueError(f"{layer.name}: padding {layer.padding!r} differs from the model's {model.padding!r}")
        if dynamic_padding(layer.padding, layer.kernel, layer.stride) != layer.needs_dynamic_padding:
            raise ValueError(f"{layer.name}: the generated padding rule disagrees with the IR")


def _block_row(block: ir.Block) -> BlockRow:
    """The table row, after checking that what the generated classes derive from it matches the IR."""
    if block.kind not in BLOCK_CLASSES:
        known = ", ".join(sorted(BLOCK_CLASSES))
        raise ValueError(f"{block.name}: the torch backend has no block kind {block.kind!r}. Known: {known}")
    if block.mid_channels != block.in_channels * block.expansion:
        raise ValueError(f"{block.name}: mid channels {block.mid_channels} != in channels x expansion")
    if block.residual != (block.stride == 1 and block.in_channels == block.out_channels):
        raise ValueError(f"{block.name}: residual flag disagrees with stride and channels")
    if block.se is not None:
        gated = block.se.expand.out_channels
        conv_out = block.expand.conv.out_channels if block.depthwise is None else block.depthwise.conv.out_channels
        if gated != conv_out or block.se.se_channels != block.se_channels:
            raise ValueError(f"{block.name}: squeeze-excite gates {gated} channels, the conv gives {conv_out}")
    return BlockRow(
        name=block.name,
        kind=block.kind,
        in_channels=block.in_channels,
        out_channels=block.out_channels,
        expansion=block.expansion,
        kernel=block.kernel,
        stride=block.stride,
        se_channels=block.se_channels,
        activation=torch_activation(block.activation),
        drop_path_rate=block.drop_path_rate,
    )


def _feature_rows(model: ir.Model) -> tuple[FeatureRow, ...]:
    """Channels and total stride of the stem's and each stage's output."""
    reduction = model.stem.conv.stride
    rows = [FeatureRow("stem", model.stem.conv.out_channels, reduction)]
    for stage in model.stages:
        for block in stage.blocks:
            reduction *= block.stride
        rows.append(FeatureRow(f"blocks.{stage.index}", stage.output.channels, reduction))
    return tuple(rows)


def model_context(model: ir.Model) -> dict[str, object]:
    """Everything ``model.py.j2`` prints, computed once from the IR."""
    stem, head = model.stem, model.head.conv
    if stem.activation is None or head.activation is None:
        raise ValueError(f"{model.name}: the stem and head convs must have an activation")
    if stem.activation != head.activation:
        raise ValueError(f"{model.name}: stem and head activations differ ({stem.activation}, {head.activation})")
    _check_convs(model)
    stages = tuple(
        StageRow(stage.index, stage.kind, tuple(_block_row(block) for block in stage.blocks), stage.output)
        for stage in model.stages
    )
    kinds = tuple(dict.fromkeys(block.kind for block in model.blocks))  # in order of first use
    description = description_lines(model.description)
    return {
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "description_lines": description,
        "description_inline": len(description) == 1 and len(f"DESCRIPTION = {py_literal(description[0])}") <= 88,
        "model_name": model.model_name,
        "resolution": model.resolution,
        "input_channels": model.input.channels,
        "mean": tuple(model.mean),
        "std": tuple(model.std),
        "num_classes": model.head.num_classes,
        "drop_rate": model.head.dropout,
        "drop_path_rate": model.drop_path_rate,
        "activation": torch_activation(stem.activation),
        "activations": ACTIVATIONS,
        "padding": model.padding,
        "bn_eps": model.batch_norm.eps,
        "bn_momentum": model.batch_norm.torch_momentum,
        "bn_decay": model.batch_norm.momentum,
        "stem_channels": stem.conv.out_channels,
        "stem_kernel": stem.conv.kernel,
        "stem_stride": stem.conv.stride,
        "head_channels": head.conv.out_channels,
        "block_kinds": kinds,
        "block_classes": BLOCK_CLASSES,
        "stages": stages,
        "features": _feature_rows(model),
        "params": model.params,
        "macs": model.macs,
    }
