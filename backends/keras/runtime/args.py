"""The Keras trainer's flags: the shared recipe table plus tf.distribute, checkpoints, logging."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ...recipe import Recipe
from ...runtime_args import HelpFormatter, OneLineParser, add_recipe_flags

USAGE = """\
One command for every scale (--batch-size is the GLOBAL batch, split over replicas):

    python train.py --data synthetic --max-steps 20       # smoke run, no data needed
    python train.py --data /data/imagenet                 # one GPU, or all: mirrored
    TF_CONFIG=... python train.py --data gs://b/imagenet  # on each worker: multiworker
    python train.py --tpu NAME --data gs://b/imagenet     # TPUStrategy, bfloat16
    python train.py --data /data/imagenet --resume        # continue after preemption

Keras' backend is KERAS_BACKEND's (tensorflow when unset). With KERAS_BACKEND=jax the same flags
train through keras.distribution.DataParallel over every device JAX sees, as Keras trains on
TPUs: on a TPU VM (pip install 'jax[tpu]' there), run on the VM itself, without --tpu:

    KERAS_BACKEND=jax python train.py --data gs://b/imagenet    # all TPU cores, bfloat16
    KERAS_BACKEND=jax python train.py --strategy multiworker ... # each host of a pod slice

--data DIR expects DIR/train/<class>/<image> and DIR/val/<class>/<image>. Under --output:
checkpoint/ (resumable state, replaced atomically), metrics.csv (a row per epoch), log.jsonl
(what each epoch ran: stage, batch shape, dropout, learning rate), tensorboard/ and
model.weights.h5 (final weights; the weight average when --ema-decay > 0). With
--deterministic, a run stopped at any point and continued with --resume ends with the same
weights. Exit status: 0 done, 2 bad input (data, checkpoint, flags).
"""


def build_parser(recipe: Recipe, prog: str = "train.py") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description=f"Train {recipe.spec_name} (model.py) with effspec's Keras 3 trainer.\n\n{USAGE}",
        formatter_class=HelpFormatter,
    )
    add_recipe_flags(parser, recipe, keras=True)
    data = next(group for group in parser._action_groups if group.title == "data")
    data.add_argument(
        "--steps-per-epoch", type=int, default=0, help="0: one pass over the training images; more repeats them"
    )

    devices = parser.add_argument_group("devices and speed")
    devices.add_argument(
        "--strategy",
        choices=("auto", "one", "mirrored", "multiworker", "tpu"),
        default="auto",
        help="auto: tpu with --tpu (or TPU_NAME), multiworker with a TF_CONFIG cluster, mirrored with "
        "several GPUs (or --cpu-devices > 1), else one; KERAS_BACKEND=jax: DataParallel over all "
        "devices unless one (multiworker: every host of a TPU pod slice joins first)",
    )
    devices.add_argument("--tpu", default=None, help="TPU name or address")
    devices.add_argument(
        "--cpu-devices", type=int, default=1, help="split the CPU into this many logical devices (mirrored on a CPU)"
    )
    devices.add_argument(
        "--precision",
        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
        default="auto",
        help="auto: mixed_bfloat16 on TPU, mixed_float16 on GPU, float32 on CPU",
    )
    devices.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="batch norm statistics over the global batch (default: on with several replicas, as the reference on TPU)",
    )
    devices.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic TensorFlow ops: bitwise-repeatable runs and resumes",
    )

    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument(
        "--output",
        default="runs/" + recipe.spec_name,
        help="checkpoint/, metrics.csv, log.jsonl, tensorboard/, model.weights.h5 and summary.json go here",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        help="continue from a checkpoint: a checkpoint directory, 'last' (OUTPUT/checkpoint, the value "
        "when the flag has none) or 'auto' (it if present, else start fresh)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="steps between checkpoints (one more at every epoch end); 0: epoch ends only",
    )
    run.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps in all (smoke runs; --resume continues)"
    )
    run.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard events under OUTPUT/tensorboard",
    )
    run.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="Keras progress: 1 a bar, 2 a line per epoch; default: 1 when stdout is a terminal, else 2 "
        "(plain lines in a redirected log, no colour codes)",
    )
    run.add_argument("--seed", type=int, default=0, help="initial weights, data order, dropout")
    return parser


def parse_args(recipe: Recipe, argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser(recipe).parse_args(argv)
    if args.verbose is None:
        args.verbose = 1 if sys.stdout.isatty() else 2
    return args
