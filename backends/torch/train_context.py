"""IR -> the values of the torch ``train.py`` template: the recipe as data, and the model's names.

The recipe is ``effspec.backends.recipe.Recipe`` (built once from the IR's ``TrainingPlan``); the
template prints it as ``RECIPE = Recipe(...)``, whose fields are the flags' defaults. The Keras
backend prints the same context (``effspec.backends.common.recipe_context``).
"""

from __future__ import annotations

from effspec.core import ir

from ..common import recipe_context


def train_context(model: ir.Model) -> dict[str, object]:
    """Values for ``train.py.j2``: the recipe literal, plus what names the spec and model.py."""
    return recipe_context(model)
