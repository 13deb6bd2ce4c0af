"""What every backend's ``model.py`` context shares: the stage table and the spec's header facts.

The ``STAGES`` table (``templates/stages.py.j2``) is the same text in every backend: the IR's
fields printed, with the spec's own names (activations as the spec spells them, momentum as the
spec's decay). A backend maps those names to its framework inside the generated file.
"""

from __future__ import annotations

from dataclasses import Field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effspec.core import ir
from effspec.emit.render import environment, py_literal

if TYPE_CHECKING:
    from .recipe import Recipe

#: The shared template every backend's model.py prints its stage table from.
TEMPLATE_DIR = Path(__file__).parent / "templates"


def stage_table(model: ir.Model) -> str:
    """The config dataclasses, ``STEM``, ``HEAD`` and the ``STAGES`` table: the same text in every
    backend's ``model.py``. Every value is an IR field printed; nothing is derived here."""
    return environment(TEMPLATE_DIR).get_template("stages.py.j2").render(model=model)


def recipe_context(model: ir.Model) -> dict[str, object]:
    """What every backend's ``train.py`` template prints: the spec's recipe as a ``Recipe(...)``
    literal (``effspec.backends.recipe``, where the recipe is defined once), the spec, and the
    module name its sibling ``model.py`` is imported under."""
    from .recipe import recipe_from_model

    return {
        "recipe_source": recipe_source(recipe_from_model(model)),
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "module_name": f"{model.python_name}_model",  # sys.modules name of the sibling model.py
    }


def _print_order(item: Field[Any]) -> int:
    """The model facts first, the plan in its own order, progressive learning last."""
    return {"spec_name": 0, "spec_sha256": 1, "num_classes": 2, "progressive": 4}.get(item.name, 3)


def recipe_source(recipe: Recipe) -> str:
    """``RECIPE = Recipe(...)``: one argument per line, each call closed by a trailing comma, so ruff
    format keeps the layout whatever the values' lengths."""
    lines = ["RECIPE = Recipe("]
    for item in sorted(fields(recipe), key=_print_order):
        value = getattr(recipe, item.name)
        if item.name != "progressive":
            lines.append(f"    {item.name}={py_literal(value)},")
        elif value:
            lines.append("    progressive=(")
            for stage in value:
                lines.append("        ProgressiveStage(")
                lines.extend(
                    f"            {part.name}={py_literal(getattr(stage, part.name))}," for part in fields(stage)
                )
                lines.append("        ),")
            lines.append("    ),")
    lines.append(")")
    return "\n".join(lines)


def check_activations(model: ir.Model, known: dict[str, str], backend: str) -> None:
    """Every activation and gate the IR names has an entry in the backend's table."""
    names = {part.activation for block in model.blocks for part in block.parts if part.activation is not None}
    names |= {block.se.gate for block in model.blocks if block.se is not None}
    names |= {part.activation for part in (model.stem, model.head.conv, model.head.pooled_conv) if part is not None}
    names.discard(None)
    for name in sorted(names - set(known)):
        raise ValueError(f"the {backend} backend has no activation {name!r}. Known: {', '.join(sorted(known))}")


def header_context(model: ir.Model) -> dict[str, object]:
    """The module constants every backend prints: the spec, its input, regularization, the table."""
    return {
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "description": model.description,
        "python_name": model.python_name,
        "resolution": model.resolution,
        "input_channels": model.input.channels,
        "mean": tuple(model.mean),
        "std": tuple(model.std),
        "num_classes": model.head.num_classes,
        "dropout": model.head.dropout,
        "drop_path_rate": model.drop_path_rate,
        "bn_eps": model.batch_norm.eps,
        "bn_momentum": model.batch_norm.momentum,
        "stage_table": stage_table(model),
        "model": model,
        "params": model.params,
        "macs": model.macs,
    }
