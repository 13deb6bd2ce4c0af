"""effspec's Keras 3 trainer (TensorFlow backend): what every ``generated/keras/<model>/train.py``
calls.

Split by job: ``optim`` (schedule, RMSpropTF, the weight average), ``data`` (tf.data pipelines),
``checkpoint`` (resumable state), ``distribution`` (tf.distribute strategies, precision, sync BN),
``callbacks`` (logging, checkpoints, progress) and ``loop``.
"""

from __future__ import annotations

import os

# TensorFlow's C++ log: its "Local rendezvous is aborting with status: CANCELLED" (or
# OUT_OF_RANGE) warning at the end of every finite dataset would flood the log. Warnings and
# info are hidden unless the user set the level; errors still print. Before TensorFlow imports.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ...recipe import ProgressiveStage, Recipe, TrainingError, load_module  # noqa: E402
from .args import build_parser, parse_args  # noqa: E402
from .loop import main  # noqa: E402

__all__ = ["Recipe", "ProgressiveStage", "TrainingError", "build_parser", "load_module", "main", "parse_args"]
