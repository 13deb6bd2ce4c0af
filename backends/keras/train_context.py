"""IR -> the ready-to-print values of the Keras ``train.py`` template (the spec's training recipe).

Every value here becomes a default of a ``train.py`` flag; the template prints them with ``py``.
Numbers are normalized to the Python type the flag parses (floats stay floats), so ``--help``
shows the same text as the generated constants.
"""

from __future__ import annotations

from dataclasses import dataclass

from effspec import ir


@dataclass(frozen=True)
class StageRow:
    """One progressive-learning stage, as the generated ``Stage(...)`` prints it."""

    image_size: int
    randaugment_magnitude: float
    mixup_alpha: float
    dropout: float


@dataclass(frozen=True)
class TrainContext:
    optimizer: str
    lr_per_256: float
    batch_size: int
    schedule: str
    decay_rate: float
    decay_epochs: float
    warmup_epochs: float
    epochs: int
    weight_decay: float
    label_smoothing: float
    ema_decay: float
    augmentation: str
    randaugment_magnitude: float
    mixup_alpha: float
    train_resolution: int
    eval_resolution: int
    crop_fraction: float
    progressive: tuple[StageRow, ...]  # empty: the spec trains at one fixed size
    num_classes: int
    drop_rate: float  # dropout before the classifier
    drop_path_rate: float  # stochastic-depth base rate


def train_context(model: ir.Model) -> TrainContext:
    plan = model.training
    return TrainContext(
        optimizer=plan.optimizer,
        lr_per_256=float(plan.lr_per_256),
        batch_size=plan.batch_size,
        schedule=plan.schedule,
        decay_rate=float(plan.decay_rate),
        decay_epochs=float(plan.decay_epochs),
        warmup_epochs=float(plan.warmup_epochs),
        epochs=plan.epochs,
        weight_decay=float(plan.weight_decay),
        label_smoothing=float(plan.label_smoothing),
        ema_decay=float(plan.ema_decay),
        augmentation=plan.augmentation,
        randaugment_magnitude=float(plan.randaugment_magnitude),
        mixup_alpha=float(plan.mixup_alpha),
        train_resolution=plan.train_resolution,
        eval_resolution=plan.eval_resolution,
        crop_fraction=float(plan.crop_fraction),
        progressive=tuple(
            StageRow(
                image_size=stage.image_size,
                randaugment_magnitude=float(stage.randaugment_magnitude),
                mixup_alpha=float(stage.mixup_alpha),
                dropout=float(stage.dropout),
            )
            for stage in plan.progressive
        ),
        num_classes=model.head.num_classes,
        drop_rate=float(model.head.dropout),
        drop_path_rate=float(model.drop_path_rate),
    )
