"""`effspec check` here; `effspec convert-weights` and `effspec export` from ``effspec.weights.commands``.
``effspec.cli`` adds them when this module exists.

Nothing heavy is imported here: torch and TensorFlow load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from effspec.errors import CheckFailed


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _cmd_check(args: argparse.Namespace) -> int:
    from effspec.equivalence.check import Settings, run_check
    from effspec.equivalence.report import as_json, table

    weights = Path(args.weights) if args.weights else None
    settings = Settings(
        resolution=args.resolution,
        batch=args.batch,
        seed=args.seed,
        train_step=args.train_step,
        weights=weights,
        features=args.features,
        output_stride=args.output_stride,
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
    p.add_argument("--resolution", type=_positive, metavar="N", help="input size (default: the spec's resolution)")
    p.add_argument("--batch", type=_positive, default=2, metavar="B", help="batch size (default: 2)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed for weights and input (default: 0)")
    p.add_argument(
        "--train-step",
        action="store_true",
        help="compare one SGD step (updated weights and batch-norm statistics) instead of eval outputs",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="check with these weights (torch .pt/.safetensors or Keras .weights.h5, e.g. a trained checkpoint) "
        "instead of seeded random ones",
    )
    p.add_argument(
        "--features",
        action="store_true",
        help="compare the backbones (build_model(features_only=True)) level by level instead",
    )
    p.add_argument(
        "--output-stride",
        type=int,
        choices=(32, 16, 8),
        default=32,
        metavar="N",
        help="with --features: the backbones' output stride, 32, 16 or 8 (default: 32)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_check)

    from effspec.weights.commands import add_commands as add_weight_commands

    add_weight_commands(sub)
