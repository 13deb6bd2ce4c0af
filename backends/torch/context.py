"""IR -> the ready-to-print values of the torch ``model.py`` template. Templates only print these.

Module attribute paths in the generated code equal the IR's canonical layer names
(``blocks.3.1.depthwise.conv``), so ``state_dict()`` keys are the names of docs/backends.md.
Everything the generated code decides on its own (padding mode per conv, SE width, residuals) is
checked here against the IR, so a disagreement fails at compile time, not in a user's model.
"""

from __future__ import annotations

from dataclasses import dataclass

from effspec import ir

from ..common import header_context, stage_rows

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


def _check_convs(model: ir.Model) -> None:
    """Every conv pads the way the generated ConvBnAct will, and with the model-wide mode."""
    for layer in model.layers:
        if layer.kind not in ("conv", "depthwise_conv") or layer.name.endswith((".se.reduce", ".se.expand")):
            continue
        if layer.padding != model.padding:
            raise ValueError(f"{layer.name}: padding {layer.padding!r} differs from the model's {model.padding!r}")
        if dynamic_padding(layer.padding, layer.kernel, layer.stride) != layer.needs_dynamic_padding:
            raise ValueError(f"{layer.name}: the generated padding rule disagrees with the IR")


def _check_block(block: ir.Block) -> None:
    """What the generated classes derive from a table row must match the IR."""
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
    header = header_context(model)
    _check_convs(model)
    for block in model.blocks:
        _check_block(block)
    return {
        **header,
        "activation": torch_activation(model.stem.activation),
        "activations": ACTIVATIONS,
        "bn_eps": model.batch_norm.eps,
        "bn_momentum": model.batch_norm.torch_momentum,
        "bn_decay": model.batch_norm.momentum,
        "block_classes": BLOCK_CLASSES,
        "stages": stage_rows(model, name=str, activation=torch_activation),
        "features": _feature_rows(model),
        "macs": model.macs,
    }
