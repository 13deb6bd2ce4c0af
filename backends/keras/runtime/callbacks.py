"""What each fit() call (one per epoch, or part of one) reports and saves."""

from __future__ import annotations

import argparse
import json
from typing import Any

import keras
import tensorflow as tf

from ...recipe import ProgressiveStage
from .checkpoint import Checkpoint


def head_dropout(model: keras.Model) -> keras.layers.Dropout | None:
    """The classifier's dropout (drop-path Dropouts drop samples: noise_shape)."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Dropout) and layer.noise_shape is None:
            return layer
    return None


class CheckpointEvery(keras.callbacks.Callback):
    """Save every `every` global steps and at the end of each fit() (<= an epoch)."""

    def __init__(self, checkpoint: Checkpoint, every: int) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.every = every
        self.first_step = 0  # global step at the start of the current fit()
        self.step = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.step = self.first_step + batch + 1
        if self.every and self.step % self.every == 0:
            self.checkpoint.save(self.step)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.checkpoint.save(self.step)


class WeightAverageCallback(keras.callbacks.Callback):
    """Updates the optimizer's weight average after every step; evaluation runs on it."""

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.model.optimizer.update_average()

    def on_test_begin(self, logs: Any = None) -> None:
        self.model.optimizer.swap_average()

    def on_test_end(self, logs: Any = None) -> None:
        self.model.optimizer.swap_average()


class RunProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, but "Epoch 3/12" counts the run's epochs (fit() runs once per epoch)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.total = epochs

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        self.epochs = self.total


class RunLog(keras.callbacks.Callback):
    """One row per epoch (or part of one) in metrics.csv and log.jsonl: the metrics and what
    produced them (step, stage, image size, dropout, learning rate). log.jsonl also has the shape
    of the batches, read from the dataset itself."""

    COLUMNS = ("epoch", "step", "stage", "image_size", "dropout", "lr")

    def __init__(self, output: str, schedule: Any, model: keras.Model, writer: bool) -> None:
        super().__init__()
        self.output = output
        self.schedule = schedule
        self.dropout = head_dropout(model)
        self.writer = writer
        self.stage: dict[str, Any] = {}  # the current stage's numbers
        self.batch_shape: list[int] = []  # of the first batch of the current fit()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if not self.writer:
            return
        step = int(self.model.optimizer.iterations.numpy())
        record = {
            "epoch": epoch,
            "step": step,
            **self.stage,
            "dropout": float(self.dropout.rate) if self.dropout else 0.0,
            "lr": float(self.schedule(max(0, step - 1))),  # of the last step
            **{name: float(value) for name, value in (logs or {}).items()},
        }
        self._append_csv(f"{self.output}/metrics.csv", record)
        _append(
            f"{self.output}/log.jsonl", json.dumps({**record, "batch_shape": self.batch_shape}, sort_keys=True) + "\n"
        )

    def _append_csv(self, path: str, record: dict[str, Any]) -> None:
        """Columns are fixed by the first row ever written, also across resumes."""
        header = None
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as file:
                first = file.readline().strip()
            header = first.split(",") if first else None
        columns = header or [*self.COLUMNS, *sorted(set(record) - set(self.COLUMNS))]
        lines = "" if header is not None else ",".join(columns) + "\n"
        _append(path, lines + ",".join(str(record.get(name, "")) for name in columns) + "\n")


def _append(path: str, text: str) -> None:
    """Append to a run's log: locally through effspec.support.output (never through a link or into a FIFO)."""
    if "://" in path:
        with tf.io.gfile.GFile(path, "a") as file:
            file.write(text)
        return
    import os

    from effspec.support.errors import EffspecError, TrainingError
    from effspec.support.output import open_append

    try:
        with os.fdopen(open_append(path), "a", encoding="utf-8") as file:
            file.write(text)
    except EffspecError as exc:
        raise TrainingError(str(exc)) from None


class Callbacks:
    """The callbacks of every fit() call in a run."""

    def __init__(
        self, args: argparse.Namespace, output: str, checkpoint: Checkpoint, schedule: Any, model: keras.Model
    ) -> None:
        writer = checkpoint.writer
        self.checkpointer = CheckpointEvery(checkpoint, args.checkpoint_every)
        self.run_log = RunLog(output, schedule, model, writer)
        self.keras: list[keras.callbacks.Callback] = []
        if args.ema_decay > 0:  # before the others: checkpoints hold the updated average
            self.keras.append(WeightAverageCallback())
        self.keras += [self.run_log, self.checkpointer, RunProgbar(args.epochs)]
        if writer and args.tensorboard:
            self.keras.append(keras.callbacks.TensorBoard(f"{output}/tensorboard"))

    def begin(self, epoch: int, index: int, stage: ProgressiveStage, step: int, dataset: tf.data.Dataset) -> None:
        """Record what this fit() runs; the batch shape is the dataset's own."""
        images, _ = next(iter(dataset.take(1)))
        self.checkpointer.first_step = step
        self.checkpointer.step = step
        self.run_log.batch_shape = list(images.shape)
        self.run_log.stage = {
            "stage": index,
            "image_size": stage.image_size,
            "randaugment_magnitude": stage.randaugment_magnitude,
            "mixup_alpha": stage.mixup_alpha,
        }
