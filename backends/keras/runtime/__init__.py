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


def _import_tensorflow_once() -> None:
    """Import TensorFlow with its start-up lines printed once: its two shared libraries each print
    the same absl/oneDNN lines before any log level applies. The C-level stderr is caught into a
    file during the import and written back without repeated lines."""
    import sys
    import tempfile

    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            seen: set[bytes] = set()
            for line in caught.read().splitlines(keepends=True):
                key = line.split(b"]", 1)[-1] if line.startswith(b"I0000") else line  # without time and pid
                if key not in seen:
                    seen.add(key)
                    os.write(2, line)


_import_tensorflow_once()

from effspec.support.errors import TrainingError  # noqa: E402

from ...recipe import ProgressiveStage, Recipe  # noqa: E402
from ...runtime_shared import load_module  # noqa: E402
from .args import build_parser, parse_args  # noqa: E402
from .loop import main  # noqa: E402

__all__ = ["Recipe", "ProgressiveStage", "TrainingError", "build_parser", "load_module", "main", "parse_args"]
