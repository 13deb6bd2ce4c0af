"""The torch trainer's flags: the shared recipe table plus devices, checkpoints and logging."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ...recipe import Recipe
from ...runtime_args import HelpFormatter, OneLineParser, add_recipe_flags

USAGE = """\
One command for every scale (--batch-size is the GLOBAL batch; each process takes
batch_size / world_size images per step):

    python train.py --data synthetic --max-steps 20     # smoke run, no data needed
    python train.py --data /data/imagenet               # one GPU (or the CPU)
    torchrun --nproc_per_node=8 train.py --data /data/imagenet      # 8 GPUs, DDP
    PJRT_DEVICE=TPU python train.py --device xla --data /data/imagenet  # TPU

On several nodes, give torchrun --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT as
well. --data DIR expects DIR/train/<class>/<image> and DIR/val/<class>/<image> (torchvision is
imported only for this path). Every recipe default comes from the spec; the run writes
checkpoint.pt, metrics.csv (one row per epoch), steps.csv (one row per --log-every steps),
model.pt (the final weights: the EMA's when --ema-decay > 0) and, when tensorboard imports,
TensorBoard events to --output. Training is deterministic on the CPU: a run stopped at any point
and continued with --resume ends with the same weights. Exit status: 0 done, 2 bad input.
"""


def build_parser(recipe: Recipe, net: ModuleType, prog: str = "train.py") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description=f"Train {recipe.spec_name} (model.py) with effspec's torch trainer.\n\n{USAGE}",
        formatter_class=HelpFormatter,
    )
    add_recipe_flags(parser, recipe)
    data = next(group for group in parser._action_groups if group.title == "data")
    data.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data loading processes per process (--data DIR); default: from the CPUs this process may use "
        "(affinity mask and cgroup quota, shared by torchrun's local processes): none up to 4, else a quarter, "
        "at most 8",
    )

    speed = parser.add_argument_group("devices and speed")
    speed.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "xla"),
        default="auto",
        help="auto: cuda when a GPU is visible, else cpu; xla: TPU via torch_xla",
    )
    speed.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "none"),
        default="auto",
        help="autocast dtype; auto: bf16 (or fp16 with loss scaling) on CUDA, none elsewhere",
    )
    speed.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads per process; default: OMP_NUM_THREADS when set, else the usable CPUs "
        "(see --workers) less the data workers and, in a single process, less the CPUs other processes "
        "keep busy when training starts (a thread sharing a busy core slows every step)",
    )
    speed.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    speed.add_argument(
        "--sync-bn",
        action="store_true",
        help="with torchrun: batch norm statistics over the global batch (nn.SyncBatchNorm on CUDA)",
    )
    speed.add_argument("--deterministic", action="store_true", help="deterministic GPU kernels (the CPU always is)")

    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument(
        "--output",
        type=Path,
        default=Path("runs") / recipe.spec_name,
        help="checkpoint.pt, metrics.csv, steps.csv, model.pt and tensorboard/ go here",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        help="continue from a checkpoint: PATH, 'last' (OUTPUT/checkpoint.pt, the value when the flag "
        "has none) or 'auto' (it if present, else start fresh)",
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
    run.add_argument("--log-every", type=int, default=50, help="steps between progress lines")
    run.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorBoard events under OUTPUT/tensorboard when tensorboard imports",
    )
    run.add_argument("--seed", type=int, default=0, help="initial weights, data order, dropout")
    return parser


def parse_args(recipe: Recipe, net: ModuleType, argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser(recipe, net).parse_args(argv)
