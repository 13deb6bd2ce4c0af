"""The torch trainer on XLA (issue 24), in the separate torch_xla environment tools/xla-env.sh builds:

    tools/xla-env.sh && EFFSPEC_XLA_PYTHON=.xla-venv/bin/python pytest tests/test_scaleout_xla.py

torch_xla's CPU runtime (PJRT_DEVICE=CPU) runs the XLA programs a TPU would run, on host devices:
`effspec train --backend torch --device xla` on tests/data/torch_v2_tiny.yaml, one process and
two (torchrun, the "xla" process group with init_method xla://, cross-process batch norm), then
stopped after 2 steps and resumed from checkpoint.pt. Compared: 2 processes x 4 images == 1 process
x 8 images after 4 steps (1e-5: summation order only), and the resumed run == the straight one
(the same XLA programs on the same inputs: bit-identical). Dropout and drop path are off (each
process draws its own masks), progressive resizing off (each image size is one more compilation).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, free_port

PYTHON = os.environ.get("EFFSPEC_XLA_PYTHON")
if not PYTHON:
    pytest.skip("set EFFSPEC_XLA_PYTHON to tools/xla-env.sh's interpreter", allow_module_level=True)
torch = pytest.importorskip("torch")

SPEC = ROOT / "tests" / "data" / "torch_v2_tiny.yaml"
FLAGS = [
    *("--data", "synthetic", "--synthetic-train-size", "32", "--synthetic-val-size", "16", "--batch-size", "8"),
    *("--epochs", "1", "--no-progressive", "--dropout", "0", "--drop-path-rate", "0", "--sync-bn", "--workers", "0"),
    *("--no-tensorboard", "--log-every", "1", "--checkpoint-every", "2", "--device", "xla"),
]
ATOL = 1e-5


def start(output: Path, *flags: str, processes: int = 1, port: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    train = ["-m", "effspec.cli", "train", str(SPEC), "--backend", "torch", *FLAGS, *flags, "--output", str(output)]
    launcher = [str(Path(PYTHON).with_name("torchrun")), f"--nproc-per-node={processes}", f"--master-port={port}"]
    command = [*launcher, *train] if processes > 1 else [PYTHON, *train]
    return subprocess.Popen(command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen) -> str:
    try:
        out, _ = process.communicate(timeout=900)
    finally:
        process.kill()
    assert process.returncode == 0, out[-4000:]
    return out


def checkpoint(output: Path) -> dict:
    return torch.load(output / "checkpoint.pt", map_location="cpu", weights_only=True)


def worst(one: dict, two: dict) -> tuple[str, float]:
    diffs = {
        name: (one[name].double() - two[name].double()).abs().max().item()
        for name in one
        if one[name].is_floating_point()
    }
    name = max(diffs, key=diffs.get)
    return name, diffs[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("xla")
    paths = {name: root / name for name in ("one", "two", "resumed")}
    started = [
        start(paths["one"]),
        start(paths["two"], processes=2, port=free_port()),
        start(paths["resumed"], "--max-steps", "2"),
    ]
    logs = [finish(process) for process in started]
    assert "1 process(es) on xla" in logs[0] and "2 process(es) on xla" in logs[1]
    finish(start(paths["resumed"], "--resume"))
    return paths


def test_two_xla_processes_match_one(runs: dict[str, Path]) -> None:
    one, two = checkpoint(runs["one"]), checkpoint(runs["two"])
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["position"] == two["position"] == {"epoch": 1, "step": 0, "global_step": 4}
    name, diff = worst(one["model"], two["model"])
    assert diff < ATOL, f"{name} differs by {diff:.3g}"
    moved = max(state["momentum_buffer"].abs().max().item() for state in one["optimizer"]["state"].values())
    assert moved > 1e-4  # the runs really trained


def test_xla_checkpoint_resumes_to_the_same_weights(runs: dict[str, Path]) -> None:
    straight, resumed = checkpoint(runs["one"]), checkpoint(runs["resumed"])
    assert resumed["position"] == straight["position"]
    for part in ("model", "ema"):
        name, diff = worst(straight[part], resumed[part])
        assert diff == 0, f"{part}: {name} differs by {diff:.3g}"
