"""IR -> the ready-to-print values of the torch ``train.py`` template. Templates only print these.

Every recipe default of the generated training script comes from the spec's ``training`` section
(``effspec.ir.TrainingPlan``) and the head's dropout / the model's drop-path rate
(``effspec.backends.common.recipe_context``); the template prints them as module constants that
``--help`` shows as the flags' defaults.
"""

from __future__ import annotations

from effspec import ir

from ..common import recipe_context


def train_context(model: ir.Model) -> dict[str, object]:
    """Values for ``train.py.j2``: the recipe, plus what names the spec and the sibling model.py."""
    return {
        **recipe_context(model),
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "module_name": f"{model.model_name}_model",  # sys.modules name of the sibling model.py
    }
