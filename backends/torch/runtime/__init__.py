"""effspec's torch trainer: what every generated ``generated/torch/<model>/train.py`` calls.

Split by job: ``optim`` (RMSpropTF, parameter groups, schedule, EMA), ``data`` (synthetic images,
image folders, mixup), ``checkpoint`` (resumable state), ``distributed`` (devices, DDP, batch norm
over processes, autocast), ``recompute`` (--grad-checkpointing), ``logs`` and ``loop``.
"""

from __future__ import annotations

from effspec.support.errors import TrainingError

from ...recipe import ProgressiveStage, Recipe
from ...runtime_shared import load_module
from .args import build_parser, parse_args
from .loop import main

__all__ = ["Recipe", "ProgressiveStage", "TrainingError", "build_parser", "load_module", "main", "parse_args"]
