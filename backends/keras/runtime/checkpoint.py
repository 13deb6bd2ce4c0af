"""Resumable training state under OUTPUT/checkpoint, replaced atomically (local or gs://)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from effspec.support.errors import EffspecError, TrainingError
from effspec.support.output import clean_stale, staged_file, write_file


def write_json(path: str, record: dict[str, Any]) -> None:
    """Write a temporary file, then rename it over `path`: never half a file (a local path through
    effspec.support.output: a full disk is one TrainingError, a link or a FIFO is never written through)."""
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    if "://" not in path:
        with _local_output():
            write_file(Path(path), text, flag="")
        return
    staging = f"{path}.tmp"
    with tf.io.gfile.GFile(staging, "w") as file:
        file.write(text)
    tf.io.gfile.rename(staging, path, overwrite=True)


def save_weights(model: keras.Model, path: str) -> None:
    """``model.save_weights`` atomically: locally through effspec.support.output (a unique temporary name,
    then a rename; a full disk is one TrainingError), on gs:// through a staging name."""
    if "://" not in path:
        with _local_output(), staged_file(Path(path), flag="", suffix=".weights.h5") as staging:
            model.save_weights(str(staging), overwrite=True)
        return
    directory, name = path.rsplit("/", 1)
    staging = f"{directory}/.tmp-{name}"  # Keras wants a .weights.h5 suffix
    model.save_weights(staging)
    tf.io.gfile.rename(staging, path, overwrite=True)


@contextlib.contextmanager
def _local_output() -> Iterator[None]:
    try:
        yield
    except EffspecError as exc:
        raise TrainingError(str(exc)) from None


MAX_RECORD_BYTES = 16 << 20  # checkpoint.json: a few hundred bytes per random-generator state
_WEIGHTS_NAME = re.compile(r"state-\d{9,}\.weights\.h5")


def _read_record(path: str) -> Any:
    """checkpoint.json's JSON: locally a regular file of bounded size (a FIFO or /dev/zero in its
    place is refused at once, never read)."""
    if "://" not in path:
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except OSError as error:
            raise TrainingError(f"--resume: cannot read {path}: {error.strerror or error}") from None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
                raise TrainingError(
                    f"--resume: {path} is damaged: not a regular file of at most {MAX_RECORD_BYTES:,} bytes"
                )
            return json.loads(file.read(MAX_RECORD_BYTES + 1))
    with tf.io.gfile.GFile(path) as file:
        return json.load(file)


class Checkpoint:
    """state-<step>.weights.h5 holds the model and optimizer variables (step counter, moments, the
    weight average); checkpoint.json names it, with the random-generator states (dropout, drop
    path) and what the run must match. The JSON is renamed into place last: a run killed at any
    moment leaves the previous complete checkpoint."""

    def __init__(self, directory: str, model: keras.Model, identity: dict[str, Any], writer: bool) -> None:
        self.directory = directory
        self.model = model
        self.identity = identity
        self.writer = writer
        self.record_path = f"{directory}/checkpoint.json"
        self.saved_step: int | None = None

    def save(self, step: int) -> None:
        if not self.writer or step == self.saved_step:
            return
        tf.io.gfile.makedirs(self.directory)
        name = f"state-{step:09d}.weights.h5"
        save_weights(self.model, f"{self.directory}/{name}")
        seeds = [v.numpy().tolist() for v in self._seed_states()]
        record = {**self.identity, "step": step, "weights": name, "seeds": seeds}
        write_json(self.record_path, record)
        for old in tf.io.gfile.glob(f"{self.directory}/state-*.weights.h5"):
            if not old.endswith(name):
                tf.io.gfile.remove(old)
        self.saved_step = step

    def remove_temporaries(self) -> None:
        """What a run killed mid-write left: .tmp-state-*.weights.h5 and checkpoint.json.tmp."""
        if self.writer:
            if "://" not in self.directory:
                clean_stale(Path(self.directory))
            for stale in tf.io.gfile.glob(f"{self.directory}/.tmp-*") + tf.io.gfile.glob(f"{self.record_path}.tmp"):
                tf.io.gfile.remove(stale)

    def restore(self, source: str) -> int:
        """Load the checkpoint in directory `source`; return its step."""
        path = f"{source}/checkpoint.json"
        try:
            record = _read_record(path)
            if not isinstance(record, dict):
                raise TypeError(f"expected a JSON object, found {type(record).__name__}")
            if not isinstance(record.get("weights"), str):
                raise TypeError(f"weights: expected a file name, found {record.get('weights')!r}")
            weights = f"{source}/{record['weights']}"
            step = int(record["step"])
            seeds = list(record["seeds"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as error:
            raise TrainingError(f"--resume: {path} is not a checkpoint record: it is damaged ({error})") from None
        for key, value in self.identity.items():
            if record.get(key) != value:
                raise TrainingError(
                    f"--resume: incompatible checkpoint {path}: it was written with "
                    f"{key}={record.get(key)!r}, this run has {key}={value!r}"
                )
        if not _WEIGHTS_NAME.fullmatch(record["weights"]) or not tf.io.gfile.exists(weights):
            raise TrainingError(f"--resume: {path} names {record['weights']!r}, which is not in {source}")
        if "://" not in weights and not stat.S_ISREG(os.lstat(weights).st_mode):  # a FIFO would hang h5py
            raise TrainingError(f"--resume: {path} names {record['weights']!r}, which is not a regular file")
        try:
            self.model.load_weights(weights)
        except Exception as error:  # h5py / Keras raise many kinds for a foreign or damaged file
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise TrainingError(f"--resume: incompatible checkpoint {weights}: {reason}") from None
        states = self._seed_states()
        if len(seeds) != len(states):
            raise TrainingError(
                f"--resume: incompatible checkpoint {path}: {len(seeds)} random-generator states, "
                f"the model has {len(states)}"
            )
        try:
            for variable, state in zip(states, seeds, strict=True):
                variable.assign(np.array(state, variable.dtype))
        except (ValueError, TypeError) as error:
            raise TrainingError(f"--resume: {path} is damaged: its seeds do not fit ({error})") from None
        restored = int(self.model.optimizer.iterations.numpy())
        if restored != step:
            raise TrainingError(
                f"--resume: incompatible checkpoint {weights}: optimizer step {restored}, record says {step}"
            )
        self.saved_step = step
        return step

    def _seed_states(self) -> list[Any]:
        """Random-generator states (in model order): not in save_weights, but dropout masks depend on them."""
        return [v for v in self.model.variables if "seed_generator_state" in v.path]


def resume_directory(args: argparse.Namespace, own: str) -> str | None:
    """The checkpoint directory --resume continues from; None: start fresh."""
    present = tf.io.gfile.exists(f"{own}/checkpoint.json")
    if args.resume is None:
        if present:  # a fresh run must not mix with another run's checkpoint
            raise TrainingError(
                f"{own} holds a checkpoint: pass --resume to continue that run, or choose another --output"
            )
        return None
    if args.resume == "auto":
        return own if present else None
    source = own if args.resume == "last" else args.resume.rstrip("/")
    source = source.removesuffix("/checkpoint.json")
    if not tf.io.gfile.exists(f"{source}/checkpoint.json"):
        raise TrainingError(f"--resume: no checkpoint at {source}")
    return source
