"""IR -> the ready-to-print values of the torch ``model.py`` template. Templates only print these.

Module attribute paths in the generated code equal the IR's canonical layer names
(``blocks.3.1.depthwise.conv``), so ``state_dict()`` keys are the names of docs/backends.md. The
IR decides every layer; this module only checks that the generated code can build what it says.
"""

from __future__ import annotations

from dataclasses import dataclass

from effspec.core import ir

from ..common import check_activations, header_context

#: Spec activation name -> the torch module the generated ``ACTIVATIONS`` table maps it to.
ACTIVATIONS = {
    "swish": "nn.SiLU",
    "silu": "nn.SiLU",
    "relu": "nn.ReLU",
    "relu6": "nn.ReLU6",
    "gelu": "nn.GELU",
    "hard_swish": "nn.Hardswish",
    "hard_sigmoid": "nn.Hardsigmoid",
    "mish": "nn.Mish",
    "sigmoid": "nn.Sigmoid",
}


@dataclass(frozen=True)
class FeatureRow:
    """One entry of ``FEATURE_INFO``: what ``forward_stages`` returns at that position."""

    module: str
    channels: int
    reduction: int


def _feature_rows(model: ir.Model) -> tuple[FeatureRow, ...]:
    """Channels and total stride (input size / output size) of the stem's and each stage's output."""
    reduction = model.stem.conv.stride
    rows = [FeatureRow("stem", model.stem.conv.out_channels, reduction)]
    for stage in model.stages:
        for block in stage.blocks:
            reduction *= block.stride
        rows.append(FeatureRow(f"blocks.{stage.index}", stage.output.channels, reduction))
    return tuple(rows)


def model_context(model: ir.Model) -> dict[str, object]:
    """Everything ``model.py.j2`` prints, computed once from the IR."""
    check_activations(model, ACTIVATIONS, "torch")
    return {
        **header_context(model),
        "activations": {name: ACTIVATIONS[name] for name in ACTIVATIONS},
        "features": _feature_rows(model),
    }
