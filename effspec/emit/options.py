"""Command-line options and argument types shared by the commands (info, check, export, scale, search)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts and sizes: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text}")
    return value


def add_backbone_options(parser: argparse.ArgumentParser, features_help: str) -> None:
    """``--features`` and ``--output-stride N`` (docs/backbone.md), the same in info, check and export."""
    from effspec.core.ir import OUTPUT_STRIDES

    parser.add_argument("--features", action="store_true", help=features_help)
    parser.add_argument(
        "--output-stride",
        type=int,
        choices=OUTPUT_STRIDES,
        metavar="N",
        help=f"with --features: the backbone's output stride, {', '.join(map(str, OUTPUT_STRIDES))} (default: 32)",
    )
