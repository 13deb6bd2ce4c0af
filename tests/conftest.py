"""Shared fixtures: the repository root and the shipped specs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from effspec.core import ir
from effspec.emit.modules import import_file

if TYPE_CHECKING:
    import numpy as np

# No torchvision stand-in here: the product imports torchvision and timm through effspec.support.vision
# (see its docstring), and tests that import them directly call the same functions.

# The suite runs on two pytest-xdist workers (pyproject addopts) on a 2-core machine: one OpenMP /
# oneDNN thread per worker (and per process it starts) keeps torch's and TensorFlow's kernels from
# oversubscribing the cores, where OpenMP's spin-waits once made a 13 s test take 163 s. Numerics
# do not depend on it: every comparison in the suite has a stated tolerance or compares two runs
# made the same way.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))

#: One legal stage and the smallest legal spec, for the tests that write broken specs around them.
STAGE = "  - {block: mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16}\n"
GOOD = "name: tiny\nstages:\n" + STAGE


#: Flag values both trainers (torch and Keras) refuse with "FLAG must be ...", exit 2.
OUT_OF_RANGE = (
    ("--batch-size", "0"),
    ("--max-steps", "-1"),
    ("--num-classes", "0"),
    ("--train-resolution", "0"),
    ("--synthetic-val-size", "0"),
)


def stage(**fields: object) -> str:
    """STAGE with ``fields`` changed (in place) or added (at the end), written as flow YAML."""
    values = {"block": "mbconv", "repeats": 1, "kernel": 3, "stride": 1, "expansion": 1, "channels": 16, **fields}
    return "  - {" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}\n"


def spec_text(*lines: str, stages: str = STAGE) -> str:
    """A spec named x: ``lines`` (top-level YAML, from line 2 on), then ``stages``."""
    return "name: x\n" + "".join(line + "\n" for line in lines) + "stages:\n" + stages


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spec paths in headers and messages are relative to the working directory: pin it."""
    monkeypatch.chdir(ROOT)


def stage_sizes(model: ir.Model, size: int) -> list[int]:
    """Stem and every stage output size at input ``size``: ceil(size / stride) per strided conv
    (TF SAME and symmetric padding agree on output sizes)."""
    sizes = [ir.same_output_size(size, model.stem.conv.stride)]
    for stage in model.stages:
        current = sizes[-1]
        for block in stage.blocks:
            current = ir.same_output_size(current, block.stride)
        sizes.append(current)
    return sizes


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for a rendezvous or a worker)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def communicate(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """(stdout, stderr) of ``process`` once it exits; killed when it outlives ``timeout`` seconds."""
    try:
        return process.communicate(timeout=timeout)
    finally:
        process.kill()


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an HDF5 file (a Keras .weights.h5), by its path inside the file."""
    import h5py

    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as file:
        file.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


_GENERATED: dict[Path, ModuleType] = {}


def load_generated(folder: Path, spec_name: str) -> ModuleType:
    """``folder``/<python_name>/model.py (generated/torch, generated/keras), imported once, as
    "<backend>_generated_<python_name>", the way effspec imports generated code."""
    python_name = spec_name.replace("-", "_")
    path = folder / python_name / "model.py"
    if path not in _GENERATED:
        _GENERATED[path] = import_file(path, f"{folder.name}_generated_{python_name}")
    return _GENERATED[path]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (each over ~15 s on 2 cores: whole training runs, searches, the
    keras.applications and TFLite round trips) keep the README's suite near 8 minutes: they run when
    ``EFFSPEC_SLOW=1`` is set, which ``.ci/run`` does right after the suite (``-m slow``)."""
    if os.environ.get("EFFSPEC_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: EFFSPEC_SLOW=1 runs it (.ci/run does, after the suite)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
