"""IR invariants: checks that a valid-looking spec still describes a network that can run."""

from __future__ import annotations

from effspec.core import ir
from effspec.core.loader import LoadedSpec
from effspec.support.errors import SpecError


def verify(model: ir.Model, loaded: LoadedSpec) -> ir.Model:
    """Return ``model`` unchanged, or raise SpecError naming the spec field that breaks it."""
    if model.input.height < 1:
        raise SpecError(
            f"expected a scaled resolution >= 1, found {model.input.height}", loaded.locate(("scaling",)), "scaling"
        )
    for block in model.blocks:
        if block.input.height < block.kernel // 2 + 1 and block.stride > 1:
            path = ("stages", block.stage, "stride")
            raise SpecError(
                f"spatial size collapses: block {block.name} gets a {block.input.height}x{block.input.width} "
                f"input at resolution {model.resolution}; expected at least {block.kernel // 2 + 1} pixels "
                "before a stride-2 conv",
                loaded.locate(path),
                f"stages[{block.stage}].stride",
            )
    seen: set[str] = set()
    for layer in model.layers:
        if layer.name in seen:  # an internal bug, not a user error: fail loudly
            raise RuntimeError(f"duplicate canonical layer name {layer.name}")
        seen.add(layer.name)
    return model
