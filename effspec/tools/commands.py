"""`effspec scale`, `effspec search` and `effspec plot`; ``effspec.cli`` adds them to its parser.

Nothing heavy is imported here: torch, Keras, optuna and matplotlib load inside the handlers.
"""

from __future__ import annotations

import argparse

from effspec.emit.options import positive_int
from effspec.emit.registry import BUILTIN_BACKENDS


def _coefficient(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None


def _cmd_scale(args: argparse.Namespace) -> int:
    from effspec.tools.scale import run

    return run(args)


def _cmd_plot(args: argparse.Namespace) -> int:
    from effspec.tools.plot import run

    return run(args)


def _cmd_search(args: argparse.Namespace) -> int:
    from effspec.tools.search import run

    return run(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scale",
        help="find phi so the scaled, rounded model meets a MACs, parameter or latency budget",
        description="Find the compound-scaling phi whose ROUNDED model (exact figures from effspec's "
        "analysis) is closest to the target, print the neighbouring candidates, and write a spec that "
        "extends SPEC with that scaling. Unreachable targets exit 2 with the nearest reachable figure.",
    )
    p.add_argument("spec", metavar="SPEC", help="the base spec (its own scaling section is replaced)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-macs", metavar="N", help="multiply-accumulates, e.g. 1e9")
    target.add_argument("--target-params", metavar="N", help="parameters, e.g. 20e6")
    target.add_argument("--target-latency", metavar="MS", help="milliseconds per forward pass (measured)")
    p.add_argument("--backend", choices=BUILTIN_BACKENDS, help="latency: the generated model to time")
    p.add_argument("--device", choices=("cpu", "cuda"), help="latency: where to time it (default cpu)")
    p.add_argument("--batch", type=positive_int, help="latency: images per forward pass (default 1)")
    p.add_argument("--alpha", type=_coefficient, help="depth coefficient (default: the spec's, else 1.2)")
    p.add_argument("--beta", type=_coefficient, help="width coefficient (default: the spec's, else 1.1)")
    p.add_argument("--gamma", type=_coefficient, help="resolution coefficient (default: the spec's, else 1.15)")
    p.add_argument(
        "--resolution-divisor",
        type=positive_int,
        help="round the resolution to a multiple of this (default: the spec's, else 8)",
    )
    p.add_argument(
        "--explicit",
        action="store_true",
        help="write explicit width/depth/resolution (for a MACs target the resolution is fitted too)",
    )
    p.add_argument("--name", help="the new spec's name (default: from OUT's file name)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.yaml", help="the spec to write")
    p.set_defaults(handler=_cmd_scale)

    p = sub.add_parser(
        "plot",
        help="the family's parameters and MACs against phi (and accuracy), each spec a labelled point",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help=".png, .svg or .pdf")
    p.add_argument(
        "--accuracy",
        metavar="CSV",
        help="top-1 per spec: columns name (or spec) and top1 (or val_top1); adds accuracy against MACs",
    )
    p.set_defaults(handler=_cmd_plot)

    p = sub.add_parser(
        "search",
        help="grid search for alpha, beta, gamma at a FLOPs ratio, each candidate trained briefly (optuna)",
        description="Enumerate (alpha, beta, gamma) on the grid near --flops-ratio, keep those whose rounded "
        "phi = 1 model has that MACs ratio (within 10%), train --trials of them for --trial-steps steps with the "
        "generated torch train.py, and write DIR/results.csv, DIR/search.png and DIR/best.yaml. Trials live in an "
        "optuna storage (default: DIR/search.db): a killed search resumes, and several workers on one storage "
        "split the trials.",
    )
    p.add_argument("spec", metavar="SPEC", help="the base spec (unscaled or compound)")
    p.add_argument("--flops-ratio", type=float, default=2.0, help="MACs of phi = 1 over the base (default 2)")
    p.add_argument(
        "--ratio-tolerance",
        type=float,
        default=0.05,
        help="keep grid points with alpha*beta^2*gamma^2 within this fraction of the ratio (default 0.05)",
    )
    p.add_argument(
        "--grid",
        default="alpha=1.0:2.0:0.05,beta=1.0:1.5:0.05,gamma=1.0:1.5:0.05",
        help="START:STOP:STEP per coefficient (default: %(default)s)",
    )
    p.add_argument("--data", required=True, metavar="DIR|synthetic", help="ImageFolder root (train/, val/)")
    p.add_argument("--trials", type=positive_int, default=8, help="candidates to train in all (default 8)")
    p.add_argument("--trial-steps", type=positive_int, default=100, help="training steps per trial (default 100)")
    p.add_argument("--resolution", type=positive_int, help="proxy base resolution: trials train at R x gamma")
    p.add_argument("--resolution-divisor", type=positive_int, help="as in scale (default: the spec's, else 8)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="global batch per step (default 16)")
    p.add_argument("--backend", choices=("torch",), default="torch", help="the trainer (torch)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="train.py --device")
    p.add_argument("--seed", type=int, default=0, help="the same seed for every trial")
    p.add_argument(
        "--train-arg",
        action="append",
        metavar="ARG",
        help="one more train.py argument for every trial, e.g. --train-arg=--warmup-epochs=0 (repeatable)",
    )
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of a shared optuna storage")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.set_defaults(handler=_cmd_search)
