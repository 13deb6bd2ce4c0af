"""The flags both trainers share, read from the ``Recipe`` (their defaults), and their checks.

Each runtime (``backends/torch/runtime/args.py``, ``backends/keras/runtime/args.py``) adds only its
device and logging flags to ``add_recipe_flags``. Run-time code: nothing at compile time imports it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from effspec.core.ir import ProgressiveStage
from effspec.support.errors import TrainingError

from .finetune import InitError, add_finetune_flags, check_finetune_args
from .recipe import AUGMENTATIONS, MOMENTUM, OPTIMIZERS, RMSPROP_DECAY, RMSPROP_EPS, SCHEDULES, Recipe


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (``train.py: error: ...``) and exit status 2, like TrainingError."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout and show every flag's default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def describe_stages(stages: Sequence[ProgressiveStage]) -> str:
    if not stages:
        return "none in this spec"
    return "; ".join(
        f"{stage.image_size}px, RandAugment {stage.randaugment_magnitude:g}, "
        f"mixup {stage.mixup_alpha:g}, dropout {stage.dropout:g}"
        for stage in stages
    )


def add_recipe_flags(parser: argparse.ArgumentParser, recipe: Recipe, *, keras: bool = False) -> None:
    """The flags both trainers share, with the spec's recipe as defaults (help says where they differ)."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (seeded in-memory images) or a directory with train/<class>/<image> and "
        "val/<class>/<image> (JPEG, PNG, BMP, GIF or WebP"
        + ("; local or gs://)" if keras else ")")
        + "; files that are empty or not images are skipped and counted",
    )
    data.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help=f"classifier outputs (default: the spec's {recipe.num_classes} for synthetic data, "
        "the number of class folders for --data DIR)",
    )
    data.add_argument("--synthetic-train-size", type=int, default=1024, help="training images of --data synthetic")
    data.add_argument("--synthetic-val-size", type=int, default=256, help="validation images of --data synthetic")

    group = parser.add_argument_group("recipe (defaults: the spec's training section)")
    group.add_argument("--epochs", type=int, default=recipe.epochs, help="training epochs")
    group.add_argument(
        "--batch-size", type=int, default=recipe.batch_size, help="GLOBAL batch size, split evenly over the processes"
    )
    group.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=recipe.optimizer,
        help="rmsprop: TensorFlow's form (eps inside the square root, mean square starting at ones); "
        "sgd: nesterov momentum; adamw",
    )
    group.add_argument(
        *("--lr-per-256", "--lr"),
        dest="lr_per_256",
        type=float,
        default=recipe.lr_per_256,
        help="learning rate for a global batch of 256: lr = this x batch / 256",
    )
    group.add_argument("--momentum", type=float, default=MOMENTUM, help="momentum of rmsprop and sgd")
    group.add_argument("--rmsprop-decay", type=float, default=RMSPROP_DECAY, help="rmsprop: decay of the mean square")
    group.add_argument(
        "--rmsprop-eps", type=float, default=RMSPROP_EPS, help="rmsprop: epsilon, added inside the square root"
    )
    group.add_argument(
        "--weight-decay",
        type=float,
        default=recipe.weight_decay,
        help="on conv and linear weights, not on BN parameters or biases (L2 for rmsprop and sgd, decoupled for adamw)",
    )
    group.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=recipe.schedule,
        help="after warmup: exponential (staircase) or cosine decay, per step",
    )
    group.add_argument(
        "--decay-rate", type=float, default=recipe.decay_rate, help="exponential: lr x this every --decay-epochs"
    )
    group.add_argument(
        "--decay-epochs", type=float, default=recipe.decay_epochs, help="exponential: epochs between decays"
    )
    group.add_argument(
        "--warmup-epochs", type=float, default=recipe.warmup_epochs, help="linear warmup from 0 to the learning rate"
    )
    group.add_argument(
        "--label-smoothing", type=float, default=recipe.label_smoothing, help="cross-entropy label smoothing"
    )
    group.add_argument(
        "--ema-decay",
        type=float,
        default=recipe.ema_decay,
        help="moving average of the weights and batch-norm statistics (decay min(this, (1 + n) / (10 + n)) "
        "at update n), used for evaluation and the exported weights; 0 turns it off",
    )

    reg = parser.add_argument_group("regularization and image size")
    reg.add_argument(
        *("--dropout", "--drop-rate"),
        dest="dropout",
        type=float,
        default=recipe.dropout,
        help="dropout before the classifier",
    )
    reg.add_argument(
        "--drop-path-rate",
        type=float,
        default=recipe.drop_path_rate,
        help="stochastic depth: each block drops its residual branch with this x its depth_fraction (model.py)",
    )
    reg.add_argument(
        "--augmentation",
        choices=AUGMENTATIONS,
        default=recipe.augmentation,
        help=(
            "after random-resized crop and flip (--data DIR): RandAugment (2 ops, Keras' layer) or none; "
            "autoaugment also runs RandAugment, as Keras 3 has no AutoAugment layer"
            if keras
            else "after random-resized crop and flip (--data DIR): AutoAugment (ImageNet policy), "
            "RandAugment (2 ops) or none"
        ),
    )
    reg.add_argument(
        "--random-crop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--data DIR training images: random-resized crop (area 8-100%%, aspect 3/4-4/3); "
        "--no-random-crop: the evaluation view (resize to size / --crop-fraction, center crop), "
        "for small images such as digits; the same in both backends",
    )
    reg.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--data DIR training images: random horizontal flip (--no-flip for digits, text, ...)",
    )
    reg.add_argument(
        "--randaugment-magnitude",
        type=float,
        default=recipe.randaugment_magnitude,
        help="RandAugment magnitude on TensorFlow's 0..10 scale",
    )
    reg.add_argument(
        "--mixup-alpha", type=float, default=recipe.mixup_alpha, help="mixup Beta(alpha, alpha); 0 turns it off"
    )
    reg.add_argument(
        *("--train-resolution", "--image-size"),
        dest="train_resolution",
        type=int,
        default=recipe.train_resolution,
        help="training image size",
    )
    reg.add_argument(
        *("--eval-resolution", "--eval-image-size"),
        dest="eval_resolution",
        type=int,
        default=recipe.eval_resolution,
        help="evaluation image size",
    )
    reg.add_argument(
        "--crop-fraction",
        type=float,
        default=recipe.crop_fraction,
        help="evaluation: the centre crop is this fraction of the (resized) image",
    )
    reg.add_argument(
        "--progressive",
        action=argparse.BooleanOptionalAction,
        default=bool(recipe.progressive),
        help="progressive learning: the epochs split into equal stages whose image size, RandAugment "
        "magnitude, mixup alpha and dropout replace the four flags above; stages: "
        f"{describe_stages(recipe.progressive)}",
    )
    reg.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help=(
            "recompute the activation functions in the backward pass (keras.RematScope(mode='activations'); "
            "Keras' whole-layer remat does not run in TensorFlow's graph mode): somewhat less memory"
            if keras
            else "recompute the activations of the high-resolution stages (output stride <= 8) in the backward "
            "pass: about half the memory, about 1.3x the step time"
        ),
    )
    add_finetune_flags(parser)


#: Flags that must be at least 1 (or 0) when given: name -> minimum.
MINIMUMS = {
    "epochs": 1,
    "batch_size": 1,
    "num_classes": 1,
    "synthetic_train_size": 1,
    "synthetic_val_size": 1,
    "train_resolution": 1,
    "eval_resolution": 1,
    "max_steps": 1,
    "checkpoint_every": 0,
    "log_every": 1,
    "workers": 0,
    "threads": 1,
    "steps_per_epoch": 0,
    "cpu_devices": 1,
}
#: Float flags that must lie in [low, high].
RANGES = {
    "lr_per_256": (0.0, float("inf")),
    "weight_decay": (0.0, float("inf")),
    "label_smoothing": (0.0, 1.0),
    "ema_decay": (0.0, 1.0),
    "dropout": (0.0, 1.0),
    "drop_path_rate": (0.0, 1.0),
    "mixup_alpha": (0.0, float("inf")),
    "randaugment_magnitude": (0.0, 30.0),
    "crop_fraction": (1e-6, 1.0),
    "decay_epochs": (1e-9, float("inf")),
    "warmup_epochs": (0.0, float("inf")),
    "decay_rate": (0.0, float("inf")),
}


def check_numbers(args: argparse.Namespace, recipe: Recipe) -> None:
    """Every numeric flag in its range, else one TrainingError naming the flag."""
    for name, low in MINIMUMS.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    for name, (low, high) in RANGES.items():
        value = getattr(args, name, None)
        if value is not None and not low <= value <= high:  # also rejects nan
            raise TrainingError(f"--{name.replace('_', '-')} must be in [{low:g}, {high:g}], got {value}")
    if args.progressive and not recipe.progressive:
        raise TrainingError(f"--progressive: spec {recipe.spec_name} defines no stages")
    from effspec.core.limits import check_args
    from effspec.support.errors import EffspecError

    try:
        check_args(args)  # resolutions, classes, seed, batch: the bounds every effspec command applies
    except EffspecError as exc:
        raise TrainingError(str(exc)) from None
    try:
        check_finetune_args(args)
    except InitError as exc:
        raise TrainingError(str(exc)) from None


def training_stages(args: argparse.Namespace, recipe: Recipe) -> tuple[ProgressiveStage, ...]:
    """The spec's stage table with --progressive, else one stage built from the flags."""
    if args.progressive:
        return recipe.progressive
    single = ProgressiveStage(
        image_size=args.train_resolution,
        randaugment_magnitude=args.randaugment_magnitude,
        mixup_alpha=args.mixup_alpha,
        dropout=args.dropout,
    )
    return (single,)


def stage_index(epoch: int, epochs: int, stage_count: int) -> int:
    """Epochs split into equal runs of stages; the last stage takes any remainder."""
    return min(epoch * stage_count // epochs, stage_count - 1)
