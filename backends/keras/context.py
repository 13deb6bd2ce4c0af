"""IR -> the ready-to-print values of the Keras ``model.py`` template. Templates only print these.

Every name here is a Keras layer name: the IR's canonical name with ``.`` replaced by ``_``
(docs/backends.md), so weights map by name between backends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from effspec import ir

#: IR activation name -> Keras 3 activation identifier (gelu is exact in both torch and Keras).
ACTIVATIONS = {
    "swish": "silu",
    "silu": "silu",
    "relu": "relu",
    "relu6": "relu6",
    "gelu": "gelu",
    "hard_swish": "hard_silu",
}

#: Block kind -> the generated function that builds one block of that kind.
BLOCK_FUNCTIONS = {"mbconv": "mbconv_block", "fused_mbconv": "fused_mbconv_block"}


def description_lines(text: str, width: int = 80) -> tuple[str, ...]:
    """Split free text into pieces whose literals fit a line; joined they give ``text`` back.

    One piece when its literal fits an indented line: ruff would join shorter pieces anyway.
    """
    if len(repr(text)) <= 84:
        return (text,)
    tokens = [part for word in re.split(r"(\s+)", text) for part in _fit(word, width)]
    pieces: list[str] = []
    current = ""
    for token in tokens:
        if current and len(repr(current + token)) > width:
            pieces.append(current)
            current = ""
        current += token
    pieces.append(current)
    return tuple(pieces)


def _fit(word: str, width: int) -> list[str]:
    """A word whose literal is too long for a line, as single characters; otherwise itself."""
    return list(word) if len(repr(word)) > width else [word]


def keras_name(canonical: str) -> str:
    return canonical.replace(".", "_")


def keras_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"the keras backend has no activation {name!r}. Known activations are: {known}")
    return ACTIVATIONS[name]


@dataclass(frozen=True)
class BlockRow:
    """One row of the generated ``STAGES`` table (a ``BlockConfig``)."""

    name: str  # Keras layer-name prefix, e.g. "blocks_3_1" (a comment in the table)
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


def block_output_layer(block: ir.Block) -> str:
    """The Keras layer whose output is the block's output (what the next block consumes)."""
    name = keras_name(block.name)
    if block.residual:
        return f"{name}_add"
    if block.project is not None:
        return keras_name(block.project.bn.name)
    if block.se is not None:  # a fused block with expansion 1 and squeeze-excite ends at the gate
        return f"{keras_name(block.se.name)}_scale"
    if block.expand is None or block.expand.activation is None:
        raise ValueError(f"block {block.name}: no projection, so its expansion conv must have an activation")
    return f"{keras_name(block.expand.name)}_act"


def _block_row(block: ir.Block) -> BlockRow:
    return BlockRow(
        name=keras_name(block.name),
        kind=block.kind,
        in_channels=block.in_channels,
        out_channels=block.out_channels,
        expansion=block.expansion,
        kernel=block.kernel,
        stride=block.stride,
        se_channels=block.se_channels,
        activation=keras_activation(block.activation),
        drop_path_rate=block.drop_path_rate,
    )


def model_context(model: ir.Model) -> dict[str, object]:
    """Everything ``model.py.j2`` prints, computed once from the IR."""
    stem, head = model.stem, model.head.conv
    if stem.activation is None or head.activation is None:
        raise ValueError(f"{model.name}: the stem and head convs must have an activation")
    activation = keras_activation(stem.activation)
    if keras_activation(head.activation) != activation:
        raise ValueError(f"{model.name}: stem and head activations differ ({stem.activation}, {head.activation})")
    kinds = tuple(dict.fromkeys(block.kind for block in model.blocks))  # in order of first use
    stages = tuple(
        StageRow(stage.index, stage.kind, tuple(_block_row(block) for block in stage.blocks), stage.output)
        for stage in model.stages
    )
    stage_outputs = (f"{keras_name(stem.name)}_act",) + tuple(
        block_output_layer(stage.blocks[-1]) for stage in model.stages
    )
    return {
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "description_lines": description_lines(model.description),
        "description_inline": len(f"DESCRIPTION = {model.description!r}") <= 88,
        "model_name": model.model_name,
        "resolution": model.resolution,
        "input_channels": model.input.channels,
        "mean": tuple(model.mean),
        "std": tuple(model.std),
        "num_classes": model.head.num_classes,
        "drop_rate": model.head.dropout,
        "drop_path_rate": model.drop_path_rate,
        "activation": activation,
        "padding": model.padding,
        "bn_momentum": model.batch_norm.momentum,
        "bn_epsilon": model.batch_norm.eps,
        "stem_channels": stem.conv.out_channels,
        "stem_kernel": stem.conv.kernel,
        "stem_stride": stem.conv.stride,
        "head_channels": head.conv.out_channels,
        "block_kinds": kinds,
        "stages": stages,
        "stage_outputs": stage_outputs,
        "features_output": f"{keras_name(head.name)}_act",
        "params": model.params,
    }
