"""What both trainers' runtimes share at run time: the error they report in one line, loading the
generated model.py, the locked run folder, the logs a resumed run extends, and a run's last line."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from effspec.emit.modules import import_file, import_source
from effspec.support.errors import TrainingError

from .recipe import Recipe


def load_module(path: Path, name: str) -> ModuleType:
    """Import a generated model.py by path under ``name`` (whatever the working directory)."""
    if not path.is_file():
        raise SystemExit(f"train.py: error: cannot find the model file {path}")
    return import_file(path, name)


def module_from_source(source: str, name: str, filename: str) -> ModuleType:
    """A generated model.py held in memory (``effspec train``), imported as module ``name``."""
    return import_source(source, name, filename)


def check_model(recipe: Recipe, net: ModuleType) -> None:
    if getattr(net, "SPEC_SHA256", None) != recipe.spec_sha256:
        raise TrainingError(f"{net.__file__} was generated from another spec than this train.py")


#: What a run of either trainer leaves in its --output folder.
RUN_FILES = (
    "checkpoint.pt",
    "checkpoint",
    "metrics.csv",
    "steps.csv",
    "log.jsonl",
    "model.pt",
    "model.weights.h5",
    "summary.json",
    "tensorboard",
)
MAX_LOG_BYTES = 256 << 20  # a metrics.csv, steps.csv or log.jsonl read back on --resume
_HELD: list[Any] = []  # the run-folder locks of this process, held until it exits


def prepare_output(
    output: str | Path, holder: str = "train.py", fresh: bool | Callable[[], bool] = True, resume: bool = False
) -> None:
    """Create and lock --output (a local directory), or refuse it in one line: not a folder, not
    writable, in use by another trainer (named), or holding a run (of either backend, any spec)
    when this one starts ``fresh`` (without --resume). On a resume, the logs it will extend must be
    readable."""
    from effspec.support.errors import EffspecError
    from effspec.support.output import lock_folder

    path = Path(output)
    release_outputs()  # runs in one process follow each other: the previous one is over
    try:
        _HELD.append(lock_folder(path, f"{holder}, started {_now()}"))
    except EffspecError as exc:
        raise TrainingError(str(exc)) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TrainingError(f"--output {output}: not writable")
    if callable(fresh):  # decided after the lock is held (it may read the folder)
        fresh = fresh()
    present = [name for name in RUN_FILES if os.path.lexists(path / name)]
    if fresh and present:
        advice = (
            "no checkpoint of this trainer to --resume from (another backend's or spec's run?)"
            if resume
            else "pass --resume to continue it"
        )
        found = ", ".join(present)
        what = "a checkpoint" if {"checkpoint.pt", "checkpoint"} & set(present) else "a run"
        raise TrainingError(f"--output {output} already holds {what} ({found}): {advice}, or choose another --output")
    if not fresh:
        for name in ("metrics.csv", "steps.csv", "log.jsonl"):
            check_log(path / name)


def release_outputs() -> None:
    """Release this process's run-folder locks (a process exiting releases them too)."""
    while _HELD:
        _HELD.pop().release()


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S")


def check_log(path: Path) -> None:
    """A log a resumed run extends: absent, or a regular UTF-8 text file of bounded size whose CSV
    (or JSON lines) parse; else one TrainingError naming it."""
    import csv
    import json
    import stat

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TrainingError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TrainingError(f"--resume: {path} is damaged: expected a regular file")
    if info.st_size > MAX_LOG_BYTES:
        raise TrainingError(f"--resume: {path} is damaged: {info.st_size:,} bytes, expected at most {MAX_LOG_BYTES:,}")
    try:
        text = path.read_bytes().decode("utf-8")
        if path.suffix == ".jsonl":
            for line in text.splitlines():
                if line.strip() and not isinstance(json.loads(line), dict):
                    raise ValueError("a line is not a JSON object")
        else:
            rows = list(csv.reader(text.splitlines()))
            if rows and any(len(row) != len(rows[0]) for row in rows[1:]):
                raise ValueError("rows of different lengths")
    except (ValueError, csv.Error, RecursionError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise TrainingError(
            f"--resume: {path} is damaged ({reason}); move it away to resume without its rows"
        ) from None


def run_summary(
    spec_name: str, metrics_csv: str, top1: str, scale: float, seconds: float, which: str, files: dict[str, str]
) -> str:
    """The last line of a run (both trainers): final and best validation top-1 from metrics.csv (all
    its epochs, those before a resume too; column ``top1`` times ``scale`` in percent, measured on
    ``which`` weights), the wall time of this process and where the outputs are."""
    import csv
    import io

    values: list[tuple[float, str]] = []
    try:
        with open(metrics_csv, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(io.StringIO(handle.read(MAX_LOG_BYTES))):
                if row.get(top1) not in (None, ""):
                    values.append((float(row[top1]) * scale, row.get("epoch", "")))
    except (OSError, ValueError, csv.Error):
        values = []
    if values:
        best, epoch = max(values, key=lambda value: value[0])
        accuracy = f"val top-1 ({which}) final {values[-1][0]:.2f}%, best {best:.2f}% (epoch {int(epoch) + 1})"
    else:
        accuracy = "no validation"
    where = ", ".join(f"{name} {path}" for name, path in files.items())
    return f"{spec_name}: done in {seconds:.1f} s; {accuracy}; {where}"
