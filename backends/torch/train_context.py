"""IR -> the values of the torch ``train.py`` template: the recipe as data, and the model's names.

The recipe is ``effspec.backends.recipe.Recipe`` (built once from the IR's ``TrainingPlan``); the
template prints it as ``RECIPE = Recipe(...)``, whose fields are the flags' defaults.
"""

from __future__ import annotations

from effspec import ir
from effspec.render import py_literal

from ..recipe import recipe_from_model, recipe_source


def train_context(model: ir.Model) -> dict[str, object]:
    """Values for ``train.py.j2``: the recipe literal, plus what names the spec and model.py."""
    return {
        "recipe_source": recipe_source(recipe_from_model(model), py_literal),
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "module_name": f"{model.python_name}_model",  # sys.modules name of the sibling model.py
    }
