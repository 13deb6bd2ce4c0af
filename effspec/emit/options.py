"""Command-line options shared by the commands that build a model (info, check, export)."""

from __future__ import annotations

import argparse


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
