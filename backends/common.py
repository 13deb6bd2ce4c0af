"""What every backend's ``model.py`` context shares: the stage table and the spec's header facts.

The ``STAGES`` table (``templates/stages.py.j2``) is the same text in every backend: the IR's
fields printed, with the spec's own names (activations as the spec spells them, momentum as the
spec's decay). A backend maps those names to its framework inside the generated file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from effspec import ir
from effspec.render import environment, py_literal

#: Longest literal of one piece of a split DESCRIPTION constant, and of an unsplit one (ruff format
#: joins implicitly concatenated strings whenever they fit its 88 columns, indented by 4).
DESCRIPTION_WIDTH = 80
DESCRIPTION_UNSPLIT = 84


#: The shared template every backend's model.py prints its stage table from.
TEMPLATE_DIR = Path(__file__).parent / "templates"


def stage_table(model: ir.Model) -> str:
    """The config dataclasses, ``STEM``, ``HEAD`` and the ``STAGES`` table: the same text in every
    backend's ``model.py``. Every value is an IR field printed; nothing is derived here."""
    return environment(TEMPLATE_DIR).get_template("stages.py.j2").render(model=model)


def description_lines(text: str, width: int = DESCRIPTION_WIDTH) -> tuple[str, ...]:
    """Free text as pieces whose literals fit a line; joined they give ``text`` back exactly.

    One piece when its literal fits an indented line: ruff would join shorter pieces anyway.
    """
    if len(py_literal(text)) <= DESCRIPTION_UNSPLIT:
        return (text,)
    tokens = [piece for word in re.split(r"(\s+)", text) for piece in _fit(word, width)]
    pieces: list[str] = []
    current = ""
    for token in tokens:
        if current and len(py_literal(current + token)) > width:
            pieces.append(current)
            current = ""
        current += token
    pieces.append(current)
    return tuple(pieces)


def _fit(word: str, width: int) -> list[str]:
    """A token whose literal is too long for a line, as single characters; otherwise itself."""
    return list(word) if len(py_literal(word)) > width else [word]


#: The spec language's recipe choices, which every generated train.py accepts as flag choices.
OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine")
AUGMENTATIONS = ("autoaugment", "randaugment", "none")


@dataclass(frozen=True)
class ProgressiveRow:
    """One progressive-learning stage, as a generated ``train.py`` prints it."""

    image_size: int
    randaugment_magnitude: float
    mixup_alpha: float
    dropout: float


def _choice(value: str, known: tuple[str, ...], what: str) -> str:
    if value not in known:
        raise ValueError(f"the training scripts have no {what} {value!r}. Known: {', '.join(known)}")
    return value


def recipe_context(model: ir.Model) -> dict[str, object]:
    """The spec's training recipe as every ``train.py`` prints it: the defaults of its flags.

    Numbers are normalized to the Python type the flag parses (floats stay floats), so ``--help``
    shows the same text as the generated constants; names are checked against the choices.
    """
    plan = model.training
    return {
        "optimizers": OPTIMIZERS,
        "schedules": SCHEDULES,
        "augmentations": AUGMENTATIONS,
        "optimizer": _choice(plan.optimizer, OPTIMIZERS, "optimizer"),
        "lr_per_256": float(plan.lr_per_256),
        "batch_size": int(plan.batch_size),
        "schedule": _choice(plan.schedule, SCHEDULES, "schedule"),
        "decay_rate": float(plan.decay_rate),
        "decay_epochs": float(plan.decay_epochs),
        "warmup_epochs": float(plan.warmup_epochs),
        "epochs": int(plan.epochs),
        "weight_decay": float(plan.weight_decay),
        "label_smoothing": float(plan.label_smoothing),
        "ema_decay": float(plan.ema_decay),
        "augmentation": _choice(plan.augmentation, AUGMENTATIONS, "augmentation"),
        "randaugment_magnitude": float(plan.randaugment_magnitude),
        "mixup_alpha": float(plan.mixup_alpha),
        "train_resolution": int(plan.train_resolution),
        "eval_resolution": int(plan.eval_resolution),
        "crop_fraction": float(plan.crop_fraction),
        "progressive_stages": tuple(
            ProgressiveRow(
                image_size=int(stage.image_size),
                randaugment_magnitude=float(stage.randaugment_magnitude),
                mixup_alpha=float(stage.mixup_alpha),
                dropout=float(stage.dropout),
            )
            for stage in plan.progressive
        ),
        "num_classes": model.head.num_classes,
        "drop_rate": float(model.head.dropout),  # before the classifier
        "drop_path_rate": float(model.drop_path_rate),  # stochastic-depth base rate
    }


def header_context(model: ir.Model) -> dict[str, object]:
    """The module constants every backend prints: the spec, its input, regularization, the table."""
    description = description_lines(model.description)
    return {
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "description_lines": description,
        "description_inline": len(description) == 1 and len(f"DESCRIPTION = {py_literal(description[0])}") <= 88,
        "python_name": model.python_name,
        "resolution": model.resolution,
        "input_channels": model.input.channels,
        "mean": tuple(model.mean),
        "std": tuple(model.std),
        "num_classes": model.head.num_classes,
        "dropout": model.head.dropout,
        "drop_path_rate": model.drop_path_rate,
        "padding": model.padding,
        "bn_eps": model.batch_norm.eps,
        "bn_momentum": model.batch_norm.momentum,
        "stage_table": stage_table(model),
        "params": model.params,
        "macs": model.macs,
    }
