"""IR -> the ready-to-print values of the Keras ``model.py`` template. Templates only print these.

Every Keras layer name is the IR's canonical name with ``.`` replaced by ``_`` (``ir.flat_name``),
so weights map by name between backends. The IR decides every layer; this module only checks that
the generated code can build what the IR says.
"""

from __future__ import annotations

from effspec.core import ir

from ..common import check_activations, header_context

#: Spec activation name -> Keras 3 activation identifier (gelu is exact in both torch and Keras).
ACTIVATIONS = {
    "swish": "silu",
    "silu": "silu",
    "relu": "relu",
    "relu6": "relu6",
    "gelu": "gelu",
    "hard_swish": "hard_silu",
    "hard_sigmoid": "hard_sigmoid",
    "mish": "mish",
    "sigmoid": "sigmoid",
}


def block_output_layer(block: ir.Block) -> str:
    """The Keras layer whose output is the block's output (what the next block consumes)."""
    name = ir.flat_name(block.name)
    if block.residual:
        return f"{name}_add"
    last = block.parts[-1]
    if isinstance(last, ir.SqueezeExcite):
        return f"{ir.flat_name(last.name)}_scale"
    return ir.flat_name(f"{last.name}.act" if last.activation is not None else last.bn.name)


def _check_padding(model: ir.Model) -> None:
    """The generated conv_bn_act uses Keras' "same" at stride 1: the IR must pad dilation x (k - 1) // 2
    there, at every output stride."""
    dilated = (layer for plan in model.output_strides for change in plan.convs for layer in change.conv.convs)
    for layer in (*model.layers, *dilated):
        fixed = layer.kind in ("conv", "depthwise_conv") and layer.stride == 1
        if fixed and layer.padding != layer.dilation * (layer.kernel - 1) // 2:
            raise ValueError(f"{layer.name}: the keras backend cannot pad {layer.padding!r} at stride 1")


def model_context(model: ir.Model) -> dict[str, object]:
    """Everything ``model.py.j2`` prints, computed once from the IR."""
    check_activations(model, ACTIVATIONS, "keras")
    _check_padding(model)
    stage_outputs = (ir.flat_name(f"{model.stem.name}.act"),) + tuple(
        block_output_layer(stage.blocks[-1]) for stage in model.stages
    )
    return {
        **header_context(model),
        "activations": ACTIVATIONS,
        "stage_outputs": stage_outputs,
        "features_output": (
            ir.flat_name(f"{model.head.conv.name}.act") if model.head.conv is not None else stage_outputs[-1]
        ),
    }
