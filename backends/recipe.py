"""The training recipe, defined once: what a spec's ``training`` section means to both trainers.

``Recipe`` is built from the IR (``recipe_from_model``) and printed as data into every generated
``train.py`` (``recipe_source``); the torch and Keras runtimes read it back as the defaults of one
flag table (``add_recipe_flags``). Nothing here imports torch or TensorFlow: the compile path
uses it.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from effspec.core.ir import ProgressiveStage, TrainingPlan
from effspec.emit.modules import import_file, import_source
from effspec.support.errors import TrainingError

from .finetune import InitError, add_finetune_flags, check_finetune_args

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
    drop_path_rate: float  # stochastic depth of the last block (block i of N: rate x i / N)

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


def _print_order(item: Any) -> int:
    """The model facts first, the plan in its own order, progressive learning last."""
    return {"spec_name": 0, "spec_sha256": 1, "num_classes": 2, "progressive": 4}.get(item.name, 3)


def recipe_source(recipe: Recipe, literal: Any) -> str:
    """``RECIPE = Recipe(...)`` as ruff formats it; ``literal`` prints one value (render.py_literal)."""
    lines = ["RECIPE = Recipe("]
    for item in sorted(fields(recipe), key=_print_order):
        value = getattr(recipe, item.name)
        if item.name != "progressive":
            lines.append(f"    {item.name}={literal(value)},")
        elif value:
            lines.append("    progressive=(")
            for stage in value:
                args = ", ".join(f"{part.name}={literal(getattr(stage, part.name))}" for part in fields(stage))
                line = f"        ProgressiveStage({args}),"
                if len(line) > 88:
                    inner = "".join(f"            {arg},\n" for arg in args.split(", "))
                    line = f"        ProgressiveStage(\n{inner}        ),"
                lines.append(line)
            lines.append("    ),")
    lines.append(")")
    return "\n".join(lines)


def load_module(path: Path, name: str) -> ModuleType:
    """Import a generated model.py by path under ``name`` (whatever the working directory)."""
    if not path.is_file():
        raise SystemExit(f"train.py: error: cannot find the model file {path}")
    return import_file(path, name)


def module_from_source(source: str, name: str, filename: str) -> ModuleType:
    """A generated model.py held in memory (``effspec train``), imported as module ``name``."""
    return import_source(source, name, filename)


def check_model(recipe: Recipe, net: ModuleType) -> None:
    if getattr(net, "SPEC_SHA256", None) != recipe.spec_sha256:
        raise TrainingError(f"{net.__file__} was generated from another spec than this train.py")


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
        help="stochastic depth of the last block (block i of N: rate x i / N)",
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


#: What a run of either trainer leaves in its --output folder.
RUN_FILES = (
    "checkpoint.pt",
    "checkpoint",
    "metrics.csv",
    "steps.csv",
    "log.jsonl",
    "model.pt",
    "model.weights.h5",
    "summary.json",
    "tensorboard",
)
MAX_LOG_BYTES = 256 << 20  # a metrics.csv, steps.csv or log.jsonl read back on --resume
_HELD: list[Any] = []  # the run-folder locks of this process, held until it exits


def prepare_output(
    output: str | Path, holder: str = "train.py", fresh: bool | Callable[[], bool] = True, resume: bool = False
) -> None:
    """Create and lock --output (a local directory), or refuse it in one line: not a folder, not
    writable, in use by another trainer (named), or holding a run (of either backend, any spec)
    when this one starts ``fresh`` (without --resume). On a resume, the logs it will extend must be
    readable."""
    from effspec.support.errors import EffspecError
    from effspec.support.output import lock_folder

    path = Path(output)
    release_outputs()  # runs in one process follow each other: the previous one is over
    try:
        _HELD.append(lock_folder(path, f"{holder}, started {_now()}"))
    except EffspecError as exc:
        raise TrainingError(str(exc)) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TrainingError(f"--output {output}: not writable")
    if callable(fresh):  # decided after the lock is held (it may read the folder)
        fresh = fresh()
    present = [name for name in RUN_FILES if os.path.lexists(path / name)]
    if fresh and present:
        advice = (
            "no checkpoint of this trainer to --resume from (another backend's or spec's run?)"
            if resume
            else "pass --resume to continue it"
        )
        found = ", ".join(present)
        what = "a checkpoint" if {"checkpoint.pt", "checkpoint"} & set(present) else "a run"
        raise TrainingError(f"--output {output} already holds {what} ({found}): {advice}, or choose another --output")
    if not fresh:
        for name in ("metrics.csv", "steps.csv", "log.jsonl"):
            check_log(path / name)


def release_outputs() -> None:
    """Release this process's run-folder locks (a process exiting releases them too)."""
    while _HELD:
        _HELD.pop().release()


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S")


def check_log(path: Path) -> None:
    """A log a resumed run extends: absent, or a regular UTF-8 text file of bounded size whose CSV
    (or JSON lines) parse; else one TrainingError naming it."""
    import csv
    import json
    import stat

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TrainingError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TrainingError(f"--resume: {path} is damaged: expected a regular file")
    if info.st_size > MAX_LOG_BYTES:
        raise TrainingError(f"--resume: {path} is damaged: {info.st_size:,} bytes, expected at most {MAX_LOG_BYTES:,}")
    try:
        text = path.read_bytes().decode("utf-8")
        if path.suffix == ".jsonl":
            for line in text.splitlines():
                if line.strip() and not isinstance(json.loads(line), dict):
                    raise ValueError("a line is not a JSON object")
        else:
            rows = list(csv.reader(text.splitlines()))
            if rows and any(len(row) != len(rows[0]) for row in rows[1:]):
                raise ValueError("rows of different lengths")
    except (ValueError, csv.Error, RecursionError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise TrainingError(
            f"--resume: {path} is damaged ({reason}); move it away to resume without its rows"
        ) from None


def build_network(net: ModuleType, num_classes: int, dropout: float, drop_path_rate: float) -> Any:
    """``net.build_model`` with the classifier dropout under its name in that model.py
    (``dropout``; files generated before it was renamed call it ``drop_rate``)."""
    parameters = inspect.signature(net.build_model).parameters
    name = "dropout" if "dropout" in parameters else "drop_rate"
    return net.build_model(num_classes=num_classes, drop_path_rate=drop_path_rate, **{name: dropout})


def run_summary(
    spec_name: str, metrics_csv: str, top1: str, scale: float, seconds: float, which: str, files: dict[str, str]
) -> str:
    """The last line of a run (both trainers): final and best validation top-1 from metrics.csv (all
    its epochs, those before a resume too; column ``top1`` times ``scale`` in percent, measured on
    ``which`` weights), the wall time of this process and where the outputs are."""
    import csv
    import io

    values: list[tuple[float, str]] = []
    try:
        with open(metrics_csv, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(io.StringIO(handle.read(MAX_LOG_BYTES))):
                if row.get(top1) not in (None, ""):
                    values.append((float(row[top1]) * scale, row.get("epoch", "")))
    except (OSError, ValueError, csv.Error):
        values = []
    if values:
        best, epoch = max(values, key=lambda value: value[0])
        accuracy = f"val top-1 ({which}) final {values[-1][0]:.2f}%, best {best:.2f}% (epoch {int(epoch) + 1})"
    else:
        accuracy = "no validation"
    where = ", ".join(f"{name} {path}" for name, path in files.items())
    return f"{spec_name}: done in {seconds:.1f} s; {accuracy}; {where}"
