"""The torch trainer on XLA (issue 24), in the separate torch_xla environment tools/xla-env.sh builds:

    tools/xla-env.sh && EFFSPEC_XLA_PYTHON=.xla-venv/bin/python pytest tests/test_scaleout_xla.py

torch_xla's CPU runtime (PJRT_DEVICE=CPU) runs the XLA programs a TPU would run, on host devices:
`effspec train --backend torch --device xla` on tests/data/torch_v2_tiny.yaml for 4 steps, and the
same run stopped after 2 steps and resumed from checkpoint.pt: the same weights and weight average,
bit for bit (the same XLA programs on the same inputs). Progressive resizing is off (each image
size is one more compilation, minutes on a busy CPU). Dropout and drop path are off: with them, the
resumed run ends elsewhere (head batch-norm variance 0.059 apart after 4 steps), i.e. torch_xla's
random stream does not continue from the checkpointed xm.get_rng_state() as the CPU and CUDA ones
do: a known gap (docs/training.md).

Several processes: torch_xla's CPU runtime runs every CPU device as a thread of ONE process
(xmp.spawn / torch_xla.launch start one process on CPU), so `torchrun --nproc-per-node 2` gives two
processes that are each a world of their own. Their first real run trained two models apart,
silently; the trainer now stops with a one-line error (exit 2), which the last test checks.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, communicate, free_port

PYTHON = os.environ.get("EFFSPEC_XLA_PYTHON")
if not PYTHON:
    pytest.skip("set EFFSPEC_XLA_PYTHON to tools/xla-env.sh's interpreter", allow_module_level=True)
torch = pytest.importorskip("torch")
from torch_helpers import worst_difference  # noqa: E402

SPEC = ROOT / "tests" / "data" / "torch_v2_tiny.yaml"
FLAGS = [
    *("--data", "synthetic", "--synthetic-train-size", "32", "--synthetic-val-size", "16", "--batch-size", "8"),
    *("--epochs", "1", "--no-progressive", "--workers", "0", "--dropout", "0", "--drop-path-rate", "0"),
    *("--no-tensorboard", "--log-every", "1", "--checkpoint-every", "2", "--device", "xla"),
]


def start(output: Path, *flags: str, processes: int = 1, port: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    train = ["-m", "effspec.cli", "train", str(SPEC), "--backend", "torch", *FLAGS, *flags, "--output", str(output)]
    launcher = [str(Path(PYTHON).with_name("torchrun")), f"--nproc-per-node={processes}", f"--master-port={port}"]
    command = [*launcher, *train] if processes > 1 else [PYTHON, *train]
    return subprocess.Popen(command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen) -> str:
    out, _ = communicate(process, 900)
    assert process.returncode == 0, out[-4000:]
    return out


def checkpoint(output: Path) -> dict:
    return torch.load(output / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("xla")
    paths = {name: root / name for name in ("one", "resumed")}
    started = [start(paths["one"]), start(paths["resumed"], "--max-steps", "2")]
    logs = [finish(process) for process in started]
    assert all("1 process(es) on xla" in log for log in logs)
    finish(start(paths["resumed"], "--resume"))
    return paths


def test_xla_trains(runs: dict[str, Path]) -> None:
    one = checkpoint(runs["one"])
    assert one["world_size"] == 1 and one["position"] == {"epoch": 1, "step": 0, "global_step": 4}
    moved = max(state["momentum_buffer"].abs().max().item() for state in one["optimizer"]["state"].values())
    assert moved > 0  # the run really stepped


def test_xla_checkpoint_resumes_to_the_same_weights(runs: dict[str, Path]) -> None:
    straight, resumed = checkpoint(runs["one"]), checkpoint(runs["resumed"])
    assert resumed["position"] == straight["position"]
    for part, expected, actual in (
        ("model", straight["model"], resumed["model"]),
        ("ema", straight["ema"]["module"], resumed["ema"]["module"]),
    ):
        name, diff = worst_difference(expected, actual)
        assert diff == 0, f"{part}: {name} differs by {diff:.3g}"


def test_torchrun_on_the_xla_cpu_runtime_stops_with_a_clear_error(tmp_path: Path) -> None:
    process = start(tmp_path / "two", processes=2, port=free_port())
    out, _ = communicate(process, 600)
    assert process.returncode != 0
    assert "torchrun started 2 processes but torch_xla's process group (PJRT_DEVICE=CPU) has 1" in out, out[-3000:]
    assert not (tmp_path / "two" / "checkpoint.pt").exists()
