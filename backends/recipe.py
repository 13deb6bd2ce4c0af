"""The training recipe, defined once: what a spec's ``training`` section means to both trainers.

``Recipe`` is built from the IR (``recipe_from_model``) and printed as data into every generated
``train.py`` (``effspec.backends.common.recipe_source``); the torch and Keras runtimes read it
back as the defaults of one flag table (``effspec.backends.runtime_args``). Nothing here imports
torch or TensorFlow: the compile path uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from effspec.core.ir import ProgressiveStage, TrainingPlan

__all__ = ["AUGMENTATIONS", "OPTIMIZERS", "SCHEDULES", "ProgressiveStage", "Recipe", "recipe_from_model"]

#: The spec language's recipe choices, which every generated train.py accepts as flag choices.
OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine")
AUGMENTATIONS = ("autoaugment", "randaugment", "none")

# The TF reference's RMSProp constants (not spec fields; flags).
MOMENTUM = 0.9  # rmsprop and sgd
RMSPROP_DECAY = 0.9  # of the mean square
RMSPROP_EPS = 0.001  # added inside the square root


@dataclass(frozen=True, kw_only=True)
class Recipe(TrainingPlan):
    """A spec's resolved training section (``effspec.core.ir.TrainingPlan``, where every field is defined
    and commented) plus the model facts the trainers need: every flag's default."""

    spec_name: str
    spec_sha256: str
    num_classes: int
    dropout: float  # before the classifier
    drop_path_rate: float  # stochastic depth, x each block's depth fraction (effspec.core.scaling)

    def __post_init__(self) -> None:
        # Numbers as the Python type their flag parses (a spec may write warmup_epochs: 5).
        for item in fields(self):
            if item.type == "float":
                object.__setattr__(self, item.name, float(getattr(self, item.name)))
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _choice(self.schedule, SCHEDULES, "schedule")
        _choice(self.augmentation, AUGMENTATIONS, "augmentation")


def _choice(value: str, known: tuple[str, ...], what: str) -> str:
    if value not in known:
        raise ValueError(f"the training scripts have no {what} {value!r}. Known: {', '.join(known)}")
    return value


def recipe_from_model(model: Any) -> Recipe:
    """The recipe of an ``effspec.core.ir.Model``: its training plan and the model facts."""
    plan = model.training
    return Recipe(
        **{item.name: getattr(plan, item.name) for item in fields(plan)},
        spec_name=model.name,
        spec_sha256=model.spec_sha256,
        num_classes=model.head.num_classes,
        dropout=model.head.dropout,
        drop_path_rate=model.drop_path_rate,
    )
