"""What a run reports: metrics.csv (per epoch), steps.csv (per log interval), TensorBoard, and a
one-line progress bar on stderr."""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any


class MetricsLog:
    EPOCH_FIELDS = (
        "epoch",
        "global_step",
        "lr",
        "train_loss",
        "val_loss",
        "val_top1",
        "val_top5",
        "image_size",
        "input_shapes",
        "randaugment_magnitude",
        "mixup_alpha",
        "dropout",
        "images_per_s",
        "seconds",
    )
    STEP_FIELDS = ("global_step", "epoch", "lr", "loss", "image_size")

    def __init__(
        self, output: Path, resume_step: int | None, tensorboard: bool, resume_epoch: int | None = None
    ) -> None:
        """On --resume, metrics.csv keeps the rows of the epochs before ``resume_epoch`` (a row that
        an earlier --max-steps stop wrote for the epoch being resumed is replaced by its full-epoch
        row: one row per epoch); steps.csv keeps the rows up to ``resume_step``."""
        self.epochs = output / "metrics.csv"
        self.steps = output / "steps.csv"
        self._start(self.epochs, self.EPOCH_FIELDS, resume_step, resume_epoch)
        self._start(self.steps, self.STEP_FIELDS, resume_step)
        self.writer: Any = None
        if tensorboard:
            # tensorboard's file writer imports TensorFlow when it is installed (20 s and its log
            # lines in a torch run); its own TF-free writer is used when tensorboard.compat.notf exists
            sys.modules.setdefault("tensorboard.compat.notf", ModuleType("tensorboard.compat.notf"))
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("note: tensorboard does not import; logging to CSV only", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(output / "tensorboard"))

    @staticmethod
    def _start(path: Path, fields: Sequence[str], resume_step: int | None, resume_epoch: int | None = None) -> None:
        """A fresh file, or on --resume the rows up to the checkpoint's step."""
        import io

        from effspec.support.errors import EffspecError, TrainingError
        from effspec.support.output import write_file

        from ...runtime_shared import check_log

        rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            check_log(path)  # a regular UTF-8 file of bounded size whose CSV parses
            try:
                reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
                rows = [row for row in reader if int(row["global_step"]) <= resume_step]
                if resume_epoch is not None:
                    rows = [row for row in rows if int(row["epoch"]) < resume_epoch]
            except (ValueError, KeyError, TypeError, csv.Error) as exc:
                raise TrainingError(
                    f"--resume: {path} is damaged (no global_step column or a bad value: {exc})"
                ) from None
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        try:
            write_file(path, text.getvalue(), flag="")  # atomic; never through a link or into a FIFO
        except EffspecError as exc:
            raise TrainingError(str(exc)) from None

    @staticmethod
    def _append(path: Path, fields: Sequence[str], row: dict[str, Any]) -> None:
        import os

        from effspec.support.output import open_append

        with os.fdopen(open_append(path), "a", newline="") as handle:  # never through a link or into a FIFO
            csv.DictWriter(handle, fieldnames=fields, lineterminator="\n").writerow(row)

    def step(self, row: dict[str, Any]) -> None:
        self._append(self.steps, self.STEP_FIELDS, row)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", row["loss"], row["global_step"])
            self.writer.add_scalar("train/lr", row["lr"], row["global_step"])

    def epoch(self, row: dict[str, Any]) -> None:
        self._append(self.epochs, self.EPOCH_FIELDS, row)
        if self.writer is not None:
            for key in ("train_loss", "val_loss", "val_top1", "val_top5", "images_per_s"):
                self.writer.add_scalar(f"epoch/{key}", row[key], row["global_step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A one-line progress bar on stderr: step, loss, lr, images/s, time left.

    The images/s it shows cover the steps since the previous line (the CSV's cover the whole
    epoch, compilation and warmup included).
    """

    def __init__(self, images_per_step: int) -> None:
        self.images_per_step = images_per_step
        self.tty = sys.stderr.isatty()
        self.reset()

    def reset(self) -> None:
        self.start = self.shown_at = time.perf_counter()
        self.steps = self.shown_steps = 0

    def images_per_s(self) -> float:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return self.steps * self.images_per_step / elapsed

    def show(self, epoch: int, epochs: int, step: int, steps: int, loss: float, lr: float) -> None:
        now = time.perf_counter()
        images = (self.steps - self.shown_steps) * self.images_per_step
        rate = images / max(now - self.shown_at, 1e-9)
        self.shown_at, self.shown_steps = now, self.steps
        left = (steps - step) * self.images_per_step / max(rate, 1e-9)
        done = int(20 * step / steps)
        bar = "#" * done + "." * (20 - done)
        line = (
            f"epoch {epoch + 1}/{epochs} [{bar}] {step}/{steps} loss {loss:.4f} "
            f"lr {lr:.3e} {rate:.1f} img/s epoch ends in {left:.0f}s"
        )
        end = "" if self.tty and step < steps else "\n"
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)
