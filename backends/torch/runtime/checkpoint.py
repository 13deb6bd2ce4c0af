"""Resumable state: where training stands, every generator's state, atomic checkpoint files."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from effspec.support.errors import TrainingError

from .distributed import Runtime

CHECKPOINT_FORMAT = 1
#: What a checkpoint must hold, and the type of each entry.
REQUIRED = {
    "format": int,
    "spec_sha256": str,
    "num_classes": int,
    "batch_size": int,
    "world_size": int,
    "position": dict,
    "meters": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": list,
}


@dataclass
class Position:
    """Where training stands: the next step to run is `step` of `epoch`."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0


@dataclass
class EpochMeters:
    """Running sums of the current epoch (and log interval); saved mid-epoch."""

    loss_sum: torch.Tensor | float = 0.0  # float64, on the device: no sync per step
    steps: int = 0
    interval_loss_sum: torch.Tensor | float = 0.0
    interval_steps: int = 0
    input_shapes: list[str] = field(default_factory=list)

    def add(self, loss: torch.Tensor, images: torch.Tensor) -> None:
        self.loss_sum = self.loss_sum + loss.detach().double()
        self.interval_loss_sum = self.interval_loss_sum + loss.detach().double()
        self.steps += 1
        self.interval_steps += 1
        shape = "x".join(str(size) for size in images.shape[-2:])
        if shape not in self.input_shapes:
            self.input_shapes.append(shape)


def rng_state(runtime: Runtime) -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    if runtime.xm is not None:
        state["xla"] = runtime.xm.get_rng_state(runtime.device)
    return state


def set_rng_state(state: dict[str, Any], runtime: Runtime) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)
    if "xla" in state and runtime.xm is not None:
        runtime.xm.set_rng_state(state["xla"], runtime.device)


def gather_rng_states(runtime: Runtime) -> list[dict[str, Any]]:
    """Every process's generators (dropout draws differ per rank), rank order.

    On XLA only this process's (gathering Python objects needs gloo or NCCL): a multi-process XLA
    run reseeds on --resume instead of continuing exactly.
    """
    state = rng_state(runtime)
    if not runtime.distributed or runtime.xm is not None:
        return [state]
    states: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(states, state)
    return states


def to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(item) for item in value)
    return value


def remove_stale_temporaries(path: Path) -> None:
    """A run killed mid-write leaves a temporary checkpoint beside ``path``: a resumed run removes
    it (effspec.support.output's names of dead processes, and the older .checkpoint.pt.<pid>.tmp)."""
    from effspec.support.output import clean_stale

    clean_stale(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic (effspec.support.output): a crash or a full disk mid-write leaves the previous checkpoint in
    place, and a full disk is one TrainingError."""
    from effspec.support.errors import EffspecError
    from effspec.support.output import staged_file

    try:
        with staged_file(path, flag="", parents=True) as temporary, open(temporary, "wb") as handle:
            torch.save(to_cpu(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
    except EffspecError as exc:
        raise TrainingError(str(exc)) from None
    except RuntimeError as exc:  # torch's writer reports a full disk as "unexpected pos"
        raise TrainingError(f"cannot write {path}: {(str(exc).splitlines() or ['write failed'])[0]}") from None


def check_archive(path: Path) -> None:
    """The sizes in a checkpoint's zip directory, checked before torch inflates anything (as
    convert-weights does): a zip bomb or a forged size is refused without allocating."""
    import zipfile

    from effspec.support.errors import EffspecError
    from effspec.weights.files import check_zip

    if zipfile.is_zipfile(path):
        try:
            check_zip(path)
        except EffspecError as exc:
            raise TrainingError(f"--resume: cannot read {path} as a checkpoint: {exc}") from None


def load_checkpoint(path: Path, expected: dict[str, Any], spec_name: str) -> dict[str, Any]:
    """Read a checkpoint and refuse one that is forged, truncated or belongs to another setup."""
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint at {path}")
    check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, forged or foreign file: say which and why
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainingError(f"--resume: cannot read {path} as a checkpoint: {reason}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"--resume: {path} is not a train.py checkpoint (format {CHECKPOINT_FORMAT})")
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            found = type(state.get(key)).__name__ if key in state else "nothing"
            raise TrainingError(f"--resume: {path} is damaged: its {key} should be a {kind.__name__}, found {found}")
    for key, value in expected.items():
        if state[key] != value:
            raise TrainingError(
                f"--resume: {path} is incompatible: its {key} is {state[key]!r}, "
                f"this run's is {value!r} (spec {spec_name})"
            )
    try:
        Position(**state["position"])
        EpochMeters(**state["meters"])
    except TypeError as exc:
        raise TrainingError(f"--resume: {path} is damaged: {exc}") from exc
    return state
