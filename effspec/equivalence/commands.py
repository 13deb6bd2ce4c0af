"""`effspec check` here; `effspec convert-weights` and `effspec export` from ``effspec.weights.commands``.
``effspec.cli`` adds them when this module exists.

Nothing heavy is imported here: torch and TensorFlow load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from effspec.emit.options import add_backbone_options, positive_int
from effspec.support.errors import CheckFailed, UsageError


def _cmd_check(args: argparse.Namespace) -> int:
    from effspec.equivalence.check import Settings, run_check
    from effspec.equivalence.report import as_json, table

    if args.train_steps is not None:
        return _cmd_train_check(args)
    if args.optimizer or args.schedule or args.lr is not None:
        raise UsageError("--optimizer, --schedule and --lr go with --train-steps K")
    weights = Path(args.weights) if args.weights else None
    settings = Settings(
        resolution=args.resolution,
        batch=args.batch or 2,
        seed=args.seed,
        train_step=args.train_step,
        weights=weights,
        features=args.features,
        output_stride=args.output_stride or 32,
    )
    result = run_check(args.spec, settings)
    print(json.dumps(as_json(result), indent=2) if args.json else table(result))
    if not result.ok:
        worst = max(result.failures, key=lambda row: row.keras_error / row.budget if row.budget else float("inf"))
        raise CheckFailed(
            f"{result.spec_name}: {len(result.failures)} of {len(result.rows)} outputs over budget "
            f"(worst {worst.name}: error {worst.keras_error:.2e} > budget {worst.budget:.2e})"
        )
    return 0


def _cmd_train_check(args: argparse.Namespace) -> int:
    from effspec.equivalence import training

    if args.train_step or args.weights or args.features:
        raise UsageError(
            "--train-steps K runs from seeded weights: it does not combine with --train-step, --weights or --features"
        )
    settings = training.TrainSettings(
        steps=args.train_steps,
        optimizer=args.optimizer,
        schedule=args.schedule,
        resolution=args.resolution or training.DEFAULT_RESOLUTION,
        batch=args.batch or training.DEFAULT_BATCH,
        seed=args.seed,
        lr=args.lr,
    )
    result = training.run_train_check(args.spec, settings)
    print(json.dumps(training.as_json(result), indent=2) if args.json else training.table(result))
    first = result.first_failure
    if first is not None:
        failures = sum(not row.row.ok for row in result.rows)
        raise CheckFailed(
            f"{result.spec_name}: {failures} of {len(result.rows)} comparisons over budget; first {first.row.name} "
            f"at step {first.step} (error {first.row.keras_error:.2e} > budget {first.row.budget:.2e})"
        )
    return 0


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="run the generated torch and Keras models on the same weights and input; compare per stage",
        description=(
            "Build both generated models, initialize torch from the seed (random batch-norm statistics), convert "
            "its weights to Keras and compare stem, every stage, features and logits against a float64 torch run. "
            "Exit 1 when an output is over budget."
        ),
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--resolution", type=positive_int, metavar="N", help="input size (default: the spec's resolution)")
    p.add_argument(
        "--batch", type=positive_int, default=None, metavar="B", help="batch size (default: 2; 4 with --train-steps)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed for weights and input (default: 0)")
    p.add_argument(
        "--train-step",
        action="store_true",
        help="compare one SGD step (updated weights and batch-norm statistics) instead of eval outputs",
    )
    p.add_argument(
        "--train-steps",
        type=positive_int,
        metavar="K",
        help="run K steps of both trainers with the spec's recipe (optimizer, warmup and decay, weight decay, "
        "label smoothing, EMA) from the same weights on the same batches; compare loss, lr, weights, optimizer "
        "state, batch-norm statistics and EMA after every step (default resolution 64, batch 4)",
    )
    p.add_argument("--optimizer", choices=("rmsprop", "sgd", "adamw"), help="with --train-steps: instead of the spec's")
    p.add_argument("--schedule", choices=("exponential", "cosine"), help="with --train-steps: instead of the spec's")
    p.add_argument(
        "--lr",
        type=_nonnegative_float,
        metavar="RATE",
        help="with --train-steps: peak learning rate (default: the spec's lr_per_256, the rate of a 256 batch)",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="check with these weights (torch .pt/.safetensors or Keras .weights.h5, e.g. a trained checkpoint) "
        "instead of seeded random ones",
    )
    add_backbone_options(p, "compare the backbones (build_model(features_only=True)) level by level instead")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_check)

    from effspec.weights.commands import add_commands as add_weight_commands

    add_weight_commands(sub)
