"""IR -> the ready-to-print values of the Keras ``model.py`` template. Templates only print these.

Every name here is a Keras layer name: the IR's canonical name with ``.`` replaced by ``_``
(docs/backends.md), so weights map by name between backends.
"""

from __future__ import annotations

from effspec import ir

from ..common import header_context, stage_rows

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


def keras_name(canonical: str) -> str:
    return canonical.replace(".", "_")


def keras_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"the keras backend has no activation {name!r}. Known activations are: {known}")
    return ACTIVATIONS[name]


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


def model_context(model: ir.Model) -> dict[str, object]:
    """Everything ``model.py.j2`` prints, computed once from the IR."""
    header = header_context(model)
    stem, head = model.stem, model.head.conv
    stage_outputs = (f"{keras_name(stem.name)}_act",) + tuple(
        block_output_layer(stage.blocks[-1]) for stage in model.stages
    )
    return {
        **header,
        "activation": keras_activation(stem.activation),
        "bn_momentum": model.batch_norm.momentum,
        "bn_epsilon": model.batch_norm.eps,
        "stages": stage_rows(model, name=keras_name, activation=keras_activation),
        "stage_outputs": stage_outputs,
        "features_output": f"{keras_name(head.name)}_act",
    }
