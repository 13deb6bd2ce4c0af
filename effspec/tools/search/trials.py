"""One trial: compile the candidate's spec, train it with the generated torch train.py in a
subprocess (which dies with its worker), and read its last evaluation."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict


@dataclass(frozen=True)
class Settings:
    """What every trial of one search shares (from the command line)."""

    spec: Path
    out: Path
    ratio: float
    data: str
    trial_steps: int
    batch_size: int
    resolution: int | None
    divisor: int
    device: str
    seed: int
    train_args: tuple[str, ...]

    def fingerprint(self, spec_sha256: str) -> dict[str, Any]:
        """What makes two searches the same search (workers must agree on it)."""
        return {
            "spec_sha256": spec_sha256,
            "ratio": self.ratio,
            "data": self.data,
            "trial_steps": self.trial_steps,
            "batch_size": self.batch_size,
            "resolution": self.resolution,
            "resolution_divisor": self.divisor,
            "seed": self.seed,
            "train_args": list(self.train_args),
        }


class Metrics(TypedDict):
    """A completed trial's figures (recorded as the trial's user attributes, in this order)."""

    val_top1: float
    val_loss: float
    seconds: float


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """The trainer dies with its worker (Linux), so a killed search leaves no orphan training."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def train_command(settings: Settings, train_py: Path, train_resolution: int, trial_dir: Path) -> list[str]:
    """The train.py command line of one trial (it runs with cwd=trial_dir)."""
    # every path train.py gets is absolute (a relative -o or --data would be read from inside the trial folder)
    data = settings.data if settings.data == "synthetic" else os.path.abspath(settings.data)
    command = [
        sys.executable,
        str(train_py),
        "--data",
        data,
        "--max-steps",
        str(settings.trial_steps),
        "--batch-size",
        str(settings.batch_size),
        "--train-resolution",
        str(train_resolution),
        "--eval-resolution",
        str(train_resolution),
        "--output",
        str(trial_dir.resolve()),
        "--device",
        settings.device,
        "--seed",
        str(settings.seed),
        "--ema-decay",
        "0",
        "--no-tensorboard",
        "--log-every",
        str(max(1, settings.trial_steps // 10)),
    ]
    if settings.data == "synthetic":
        steps_images = settings.trial_steps * settings.batch_size
        command += [
            "--synthetic-train-size",
            str(steps_images),
            "--synthetic-val-size",
            str(4 * settings.batch_size),
        ]
    return command + list(settings.train_args)  # data workers and threads: train.py's defaults (effspec.support.cpus)


def train_trial(settings: Settings, spec_path: Path, train_resolution: int, trial_dir: Path) -> Metrics:
    """Compile the candidate, run its generated torch train.py, return val_top1 / val_loss / seconds."""
    from effspec.emit.pipeline import compile_specs
    from effspec.support.output import open_append

    trial_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="effspec-search-") as tmp:
        written, _ = compile_specs([spec_path], ["torch"], Path(tmp))
        command = train_command(settings, written[0] / "train.py", train_resolution, trial_dir)
        started = time.perf_counter()
        with os.fdopen(open_append(trial_dir / "train.log"), "a", encoding="utf-8") as log:  # never via a link
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            result = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=trial_dir,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        lines = (trial_dir / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        last = next((line for line in reversed(lines) if line.strip()), "")
        raise RuntimeError(f"train.py exited with status {result.returncode}: {last[-300:]}")
    metrics = trial_dir / "metrics.csv"
    rows = list(csv.DictReader(open(metrics, newline="", encoding="utf-8"))) if metrics.is_file() else []
    if not rows:
        raise RuntimeError(f"train.py wrote no evaluation row to {metrics}")
    return Metrics(val_top1=float(rows[-1]["val_top1"]), val_loss=float(rows[-1]["val_loss"]), seconds=seconds)
