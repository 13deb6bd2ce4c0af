"""IR -> the ready-to-print values of the torch ``train.py`` template. Templates only print these.

Every recipe default of the generated training script comes from the spec's ``training`` section
(``effspec.ir.TrainingPlan``) and the head's dropout / the model's drop-path rate; the template prints
them as module constants that ``--help`` shows as the flags' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from effspec import ir

#: Augmentation policy names the generated script accepts (the spec language's choices).
AUGMENTATIONS = ("autoaugment", "randaugment", "none")
OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine")


@dataclass(frozen=True)
class StageRow:
    """One progressive-learning stage, as printed into the generated ``PROGRESSIVE_STAGES`` table."""

    image_size: int
    randaugment_magnitude: float
    mixup_alpha: float
    dropout: float


def _stage_row(stage: ir.ProgressiveStage) -> StageRow:
    return StageRow(
        image_size=int(stage.image_size),
        randaugment_magnitude=float(stage.randaugment_magnitude),
        mixup_alpha=float(stage.mixup_alpha),
        dropout=float(stage.dropout),
    )


def _choice(value: str, known: tuple[str, ...], what: str) -> str:
    if value not in known:
        raise ValueError(f"the torch training script has no {what} {value!r}. Known: {', '.join(known)}")
    return value


def train_context(model: ir.Model) -> dict[str, object]:
    """Values for ``train.py.j2``: numbers as floats/ints (never spec text), names checked against the choices."""
    plan = model.training
    return {
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "module_name": f"{model.model_name}_model",  # sys.modules name of the sibling model.py
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
        "dropout": float(model.head.dropout),
        "drop_path_rate": float(model.drop_path_rate),
        "progressive_stages": tuple(_stage_row(stage) for stage in plan.progressive),
    }
